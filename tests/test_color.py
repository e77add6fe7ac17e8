"""diffraw_jax.color against independent derivations: the sRGB primaries and D65 white
(IEC 61966-2-1), CIE 1976 L*a*b* written with the CIE's kappa/epsilon constants, published
Lab values; numpy and JAX inputs give the same numbers, and numpy input never loads JAX."""
import subprocess
import sys

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from diffraw_jax import color


def _xyz_from_primaries():
    """sRGB -> XYZ from the chromaticities of the primaries and of D65 (Y = 1)."""
    xy = np.array([[0.64, 0.33], [0.30, 0.60], [0.15, 0.06]])
    prim = np.stack([xy[:, 0] / xy[:, 1], np.ones(3), (1 - xy.sum(1)) / xy[:, 1]])  # columns: X, Y, Z per primary
    white = np.array([0.3127 / 0.3290, 1.0, (1 - 0.3127 - 0.3290) / 0.3290])
    return prim * np.linalg.solve(prim, white)


def _lab_cie(rgb):
    """sRGB -> CIELAB as the CIE writes it: kappa = 24389/27, epsilon = 216/24389 (float64)."""
    v = np.clip(np.asarray(rgb, np.float64), 0, 1)
    lin = np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)
    t = lin @ color.XYZ_FROM_SRGB.T / color.XYZ_FROM_SRGB.sum(1)
    kappa, eps = 24389 / 27, 216 / 24389
    f = np.where(t > eps, np.cbrt(t), (kappa * t + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def test_xyz_matrix_and_white_follow_from_the_srgb_primaries():
    # IEC 61966-2-1 rounds its matrix (and white) to 4 digits; the largest gap is Z of blue, 3e-4
    np.testing.assert_allclose(color.XYZ_FROM_SRGB, _xyz_from_primaries(), atol=4e-4)
    np.testing.assert_allclose(color.WHITE_D65_XYZ, (0.95047, 1.0, 1.08883), atol=1e-4)
    rgb = np.random.default_rng(0).uniform(size=(5, 3))
    np.testing.assert_allclose(color.linear_srgb_to_xyz(rgb), rgb @ color.XYZ_FROM_SRGB.T, rtol=1e-14)


def test_srgb_to_lab_known_values():
    lab = np.asarray(color.srgb_to_lab(jnp.array([[1.0, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1],
                                                  [0, 0, 0], [0.5, 0.5, 0.5]])))
    np.testing.assert_allclose(lab[0], (100, 0, 0), atol=1e-3)
    np.testing.assert_allclose(lab[1], (53.24, 80.09, 67.20), atol=0.02)
    np.testing.assert_allclose(lab[2], (87.73, -86.18, 83.18), atol=0.02)
    np.testing.assert_allclose(lab[3], (32.30, 79.19, -107.86), atol=0.02)
    np.testing.assert_allclose(lab[4], (0, 0, 0), atol=1e-4)
    np.testing.assert_allclose(lab[5], (53.39, 0, 0), atol=0.02)
    assert float(color.delta_e76(jnp.array([50.0, 3, 4]), jnp.array([50.0, 0, 0]))) == pytest.approx(5.0)


def test_lab_matches_the_cie_formula_in_float64_and_the_white_is_100_0_0():
    rgb = np.concatenate([np.random.default_rng(1).uniform(-0.1, 1.1, (200, 3)),
                          np.full((1, 3), 1.0), np.full((1, 3), 0.01)])  # 0.01: the linear part of f
    lab = color.srgb_to_lab(rgb)
    assert isinstance(lab, np.ndarray) and lab.dtype == np.float64
    np.testing.assert_allclose(lab, _lab_cie(rgb), atol=1e-10)
    np.testing.assert_allclose(color.xyz_to_lab(color.WHITE_D65_XYZ), (100, 0, 0), atol=1e-12)


def test_srgb_curve_round_trip_and_reference_points():
    v = np.linspace(0, 1, 4001)
    np.testing.assert_allclose(color.linear_to_srgb(color.srgb_to_linear(v)), v, atol=1e-12)
    # the two segments meet at the IEC break points
    assert color.srgb_to_linear(np.float64(0.04045)) == pytest.approx(0.04045 / 12.92, rel=1e-12)
    assert color.linear_to_srgb(np.float64(0.0031308)) == pytest.approx(0.04045, abs=1e-6)
    assert color.srgb_to_linear(np.float64(0.5)) == pytest.approx(0.21404114, abs=1e-8)


def test_numpy_and_jax_inputs_give_the_same_numbers():
    rgb = np.random.default_rng(2).uniform(size=(2, 9, 11, 3)).astype(np.float32)
    # float32 both ways; CIELAB's a and b scale f(t) differences by 500: atol in Lab units
    for fn, atol in ((color.srgb_to_linear, 1e-6), (color.linear_to_srgb, 1e-6), (color.srgb_to_lab, 2e-4),
                     (color.luma, 1e-6), (color.luma_laplacian, 1e-6)):
        out_np, out_jax = fn(rgb), jax.jit(fn)(jnp.asarray(rgb))
        assert isinstance(out_np, np.ndarray) and isinstance(out_jax, jax.Array), fn.__name__
        assert out_np.dtype == out_jax.dtype == np.float32, fn.__name__
        np.testing.assert_allclose(out_np, out_jax, rtol=2e-6, atol=atol, err_msg=fn.__name__)
    lab = color.srgb_to_lab(rgb)
    np.testing.assert_allclose(color.delta_e76(lab, lab[::-1]), jax.jit(color.delta_e76)(lab, lab[::-1]), rtol=1e-5)
    # gradients are finite where the unused power branch would give NaN
    g = jax.grad(lambda x: color.srgb_to_lab(x).sum())(jnp.array([0.0, 0.5, 1.0]))
    assert np.all(np.isfinite(np.asarray(g)))


def test_luma_and_its_laplacian():
    assert color.luma(np.ones(3)) == pytest.approx(1.0, rel=1e-15)
    assert color.luma(np.array([1.0, 0, 0])) == 0.299
    yy, xx = np.mgrid[0:6, 0:7].astype(np.float64)
    grey = np.repeat((0.01 * yy ** 2 + 0.02 * xx)[..., None], 3, axis=-1)  # luma = grey
    lap = color.luma_laplacian(np.stack([grey, 2 * grey]))  # [2, H - 2, W - 2]
    assert lap.shape == (2, 4, 5)
    np.testing.assert_allclose(lap, np.array([0.02, 0.04])[:, None, None] * np.ones((2, 4, 5)), atol=1e-12)


def test_camera_matrix_as_dcraw_builds_it():
    # a camera whose RGB is linear sRGB: XYZ -> camera = inverse of XYZ_FROM_SRGB
    np.testing.assert_allclose(color.srgb_matrix_from_cam_xyz(np.linalg.inv(color.XYZ_FROM_SRGB)),
                               np.eye(3), atol=1e-12)
    m = color.srgb_matrix_from_cam_xyz([[0.6722, -0.0635, -0.0963], [-0.4287, 1.2460, 0.2028],
                                        [-0.0908, 0.2162, 0.5668]])  # Canon EOS 5D Mark III (dcraw)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-12)  # white stays white
    assert color.srgb_matrix_from_cam_xyz(np.zeros((3, 3))) is None


def test_numpy_callers_never_load_jax():
    code = ("import sys, numpy as np; from diffraw_jax import color; from diffraw_jax.data import synthetic_zrr; "
            "color.srgb_to_lab(np.ones((2, 2, 3))); synthetic_zrr.make_pair(0, 'test', 0, 16); "
            "assert 'jax' not in sys.modules, 'jax was imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# Sharma, Wu & Dalal (2005), Table 1: the 34 published CIEDE2000 test pairs,
# (L1, a1, b1, L2, a2, b2, Delta E 2000), typed from the paper.
SHARMA_2005 = np.array([
    (50.0000, 2.6772, -79.7751, 50.0000, 0.0000, -82.7485, 2.0425),
    (50.0000, 3.1571, -77.2803, 50.0000, 0.0000, -82.7485, 2.8615),
    (50.0000, 2.8361, -74.0200, 50.0000, 0.0000, -82.7485, 3.4412),
    (50.0000, -1.3802, -84.2814, 50.0000, 0.0000, -82.7485, 1.0000),
    (50.0000, -1.1848, -84.8006, 50.0000, 0.0000, -82.7485, 1.0000),
    (50.0000, -0.9009, -85.5211, 50.0000, 0.0000, -82.7485, 1.0000),
    (50.0000, 0.0000, 0.0000, 50.0000, -1.0000, 2.0000, 2.3669),
    (50.0000, -1.0000, 2.0000, 50.0000, 0.0000, 0.0000, 2.3669),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0009, 7.1792),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0010, 7.1792),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0011, 7.2195),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0012, 7.2195),
    (50.0000, -0.0010, 2.4900, 50.0000, 0.0009, -2.4900, 4.8045),
    (50.0000, -0.0010, 2.4900, 50.0000, 0.0010, -2.4900, 4.8045),
    (50.0000, -0.0010, 2.4900, 50.0000, 0.0011, -2.4900, 4.7461),
    (50.0000, 2.5000, 0.0000, 50.0000, 0.0000, -2.5000, 4.3065),
    (50.0000, 2.5000, 0.0000, 73.0000, 25.0000, -18.0000, 27.1492),
    (50.0000, 2.5000, 0.0000, 61.0000, -5.0000, 29.0000, 22.8977),
    (50.0000, 2.5000, 0.0000, 56.0000, -27.0000, -3.0000, 31.9030),
    (50.0000, 2.5000, 0.0000, 58.0000, 24.0000, 15.0000, 19.4535),
    (50.0000, 2.5000, 0.0000, 50.0000, 3.1736, 0.5854, 1.0000),
    (50.0000, 2.5000, 0.0000, 50.0000, 3.2972, 0.0000, 1.0000),
    (50.0000, 2.5000, 0.0000, 50.0000, 1.8634, 0.5757, 1.0000),
    (50.0000, 2.5000, 0.0000, 50.0000, 3.2592, 0.3350, 1.0000),
    (60.2574, -34.0099, 36.2677, 60.4626, -34.1751, 39.4387, 1.2644),
    (63.0109, -31.0961, -5.8663, 62.8187, -29.7946, -4.0864, 1.2630),
    (61.2901, 3.7196, -5.3901, 61.4292, 2.2480, -4.9620, 1.8731),
    (35.0831, -44.1164, 3.7933, 35.0232, -40.0716, 1.5901, 1.8645),
    (22.7233, 20.0904, -46.6940, 23.0331, 14.9730, -42.5619, 2.0373),
    (36.4612, 47.8580, 18.3852, 36.2715, 50.5065, 21.2231, 1.4146),
    (90.8027, -2.0831, 1.4410, 91.1528, -1.6435, 0.0447, 1.4441),
    (90.9257, -0.5406, -0.9208, 88.6381, -0.8985, -0.7239, 1.5381),
    (6.7747, -0.2908, -2.4247, 5.8714, -0.0985, -2.2286, 0.6377),
    (2.0776, 0.0795, -1.1350, 0.9033, -0.0636, -0.5514, 0.9082),
])


def test_delta_e_2000_matches_sharma_wu_dalal_test_data():
    lab1, lab2, want = SHARMA_2005[:, 0:3], SHARMA_2005[:, 3:6], SHARMA_2005[:, 6]
    got = color.delta_e_2000(lab1, lab2)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64 and got.shape == (34,)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)  # the table rounds to 4 decimals
    np.testing.assert_allclose(color.delta_e_2000(lab2, lab1), want, atol=1e-4, rtol=0)  # symmetric
    # JAX (float32) gives the same numbers, under jit too
    got_j = jax.jit(color.delta_e_2000)(jnp.asarray(lab1, jnp.float32), jnp.asarray(lab2, jnp.float32))
    assert isinstance(got_j, jax.Array)
    np.testing.assert_allclose(np.asarray(got_j), want, atol=2e-3, rtol=0)
    # broadcasting [..., 3]; identical colours -> 0
    grid = np.broadcast_to(lab1[:, None], (34, 2, 3))
    assert color.delta_e_2000(grid, lab1[:, None]).shape == (34, 2)
    np.testing.assert_array_equal(color.delta_e_2000(grid, lab1[:, None]), 0.0)


def test_delta_e_2000_of_a_lightness_step_is_the_s_l_weighted_difference():
    # neutral pairs: only the lightness term is left, dL / S_L with S_L from the CIE formula
    lm = np.array([20.0, 50.0, 80.0])
    s_l = 1 + 0.015 * (lm - 50) ** 2 / np.sqrt(20 + (lm - 50) ** 2)
    lab1 = np.stack([lm - 1.5, np.zeros(3), np.zeros(3)], -1)
    lab2 = np.stack([lm + 1.5, np.zeros(3), np.zeros(3)], -1)
    np.testing.assert_allclose(color.delta_e_2000(lab1, lab2), 3.0 / s_l, rtol=1e-12)

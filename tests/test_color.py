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
    code = ("import sys, numpy as np; from diffraw_jax import color, synthetic_zrr; "
            "color.srgb_to_lab(np.ones((2, 2, 3))); synthetic_zrr.make_pair(0, 'test', 0, 16); "
            "assert 'jax' not in sys.modules, 'jax was imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

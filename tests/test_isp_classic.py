"""Tests for diffraw_jax.isp_classic: demosaic, white balance, CCM, and the sRGB curve it ends with
(diffraw_jax.color)."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from diffraw_jax import color
from diffraw_jax import isp_classic as isp


def _planes(rgb):
    """Full-colour [..., H, W, 3] -> RGGB canonical planes (plain numpy indexing)."""
    return np.stack([rgb[..., 0::2, 0::2, 0], rgb[..., 0::2, 1::2, 1],
                     rgb[..., 1::2, 0::2, 1], rgb[..., 1::2, 1::2, 2]], axis=-1)


def _psnr(a, b, crop=4):
    d = np.asarray(a, np.float64)[crop:-crop, crop:-crop] - b[crop:-crop, crop:-crop]
    return 10 * np.log10(1.0 / np.mean(d ** 2))


def _srgb_ref(x):
    x = np.asarray(x, np.float64)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.abs(x) ** (1 / 2.4) - 0.055)


H = W = 64
_Y, _X = np.mgrid[0:H, 0:W].astype(np.float64)


def _smooth_scene():
    return np.stack([0.5 + 0.3 * np.sin(2 * np.pi * _X / 64 + 0.3) * np.cos(2 * np.pi * _Y / 80),
                     0.45 + 0.25 * np.sin(2 * np.pi * (_X + _Y) / 90),
                     0.4 + 0.3 * np.cos(2 * np.pi * _Y / 70 - 0.5)], axis=-1)


def _edge_scene():
    r = np.hypot(_X - 30.3, _Y - 33.7)
    lum = np.where(r < 18, 0.8, 0.2) + 0.1 * (_X > 45)
    lum = np.where((_Y // 8 + _X // 8) % 2 == 0, lum, 0.6 * lum)
    return lum[..., None] * np.array([0.9, 0.7, 0.5]) + 0.05


# ----------------------------------------------------------------------------- kernels


def test_malvar_kernels_match_published_tables():
    # Malvar, He, Cutler 2004, Fig. 2, coefficients x 8.
    g_at_rb = [[0, 0, -1, 0, 0], [0, 0, 2, 0, 0], [-1, 2, 4, 2, -1], [0, 0, 2, 0, 0],
               [0, 0, -1, 0, 0]]
    rb_at_g_row = [[0, 0, .5, 0, 0], [0, -1, 0, -1, 0], [-1, 4, 5, 4, -1], [0, -1, 0, -1, 0],
                   [0, 0, .5, 0, 0]]
    rb_at_br = [[0, 0, -1.5, 0, 0], [0, 2, 0, 2, 0], [-1.5, 0, 6, 0, -1.5], [0, 2, 0, 2, 0],
                [0, 0, -1.5, 0, 0]]
    k = isp.MALVAR_KERNELS
    np.testing.assert_allclose(8 * k["G"], g_at_rb, atol=1e-12)
    np.testing.assert_allclose(8 * k["H"], rb_at_g_row, atol=1e-12)
    np.testing.assert_allclose(8 * k["V"], np.transpose(rb_at_g_row), atol=1e-12)
    np.testing.assert_allclose(8 * k["D"], rb_at_br, atol=1e-12)
    for kern in list(k.values()) + list(isp.BILINEAR_KERNELS.values()):
        assert kern.sum() == pytest.approx(1.0)


# ----------------------------------------------------------------------------- demosaic


def test_demosaic_exact_on_affine_scene_and_keeps_samples():
    rgb = np.stack([0.1 + 0.004 * _X + 0.003 * _Y, 0.2 + 0.002 * _X + 0.005 * _Y,
                    0.7 - 0.003 * _X - 0.004 * _Y], axis=-1)
    planes = _planes(rgb).astype(np.float32)
    for method in ("malvar", "bilinear"):
        out = np.asarray(isp.demosaic(planes, method))
        assert out.shape == (H, W, 3) and out.dtype == np.float32
        # away from the 2-pixel reflect border both are exact on affine colour
        np.testing.assert_allclose(out[2:-2, 2:-2], rgb[2:-2, 2:-2], atol=2e-6)
        # known samples pass through untouched everywhere
        np.testing.assert_array_equal(_planes(out), planes)


def test_demosaic_quality():
    smooth = _smooth_scene()
    p = _planes(smooth).astype(np.float32)
    assert _psnr(isp.demosaic(p, "malvar"), smooth) > 50
    assert _psnr(isp.demosaic(p, "bilinear"), smooth) > 50

    edges = _edge_scene()
    p = _planes(edges).astype(np.float32)
    psnr_m = _psnr(isp.demosaic(p, "malvar"), edges)
    psnr_b = _psnr(isp.demosaic(p, "bilinear"), edges)
    assert psnr_m > psnr_b + 2.0, (psnr_m, psnr_b)


def test_demosaic_batched_and_flat_exact_at_borders():
    rng = np.random.default_rng(0)
    colours = rng.uniform(0.1, 0.9, size=(2, 3, 3))
    rgb = np.broadcast_to(colours[:, :, None, None, :], (2, 3, 8, 10, 3))
    out = np.asarray(isp.demosaic(_planes(rgb).astype(np.float32)))
    assert out.shape == (2, 3, 8, 10, 3)
    np.testing.assert_allclose(out, rgb, atol=1e-6)  # constant colour: exact incl. border


# ----------------------------------------------------------------------------- white balance


def test_gray_patch_is_neutral_after_white_balance():
    sens = np.array([[0.5, 1.0, 0.7], [0.9, 0.8, 0.35]])  # per image, camera R, G, B
    grey = np.array([0.4, 0.25])
    rgb = np.broadcast_to((grey[:, None] * sens)[:, None, None, :], (2, 16, 16, 3))
    planes = _planes(rgb).astype(np.float32)

    gains = np.asarray(isp.gray_world_gains(planes))
    # float32 planes: the ratio of two rounded means is exact to a few ulps only
    np.testing.assert_allclose(gains, sens[:, 1:2] / sens, rtol=1e-5)

    for wb in (None, sens[:, 1:2] / sens):  # gray-world, or the inverse sensitivities
        out = np.asarray(isp.process(planes, wb_gains=wb))
        assert out.shape == (2, 16, 16, 3) and out.dtype == np.float32
        spread = out.max(-1) - out.min(-1)
        assert spread.max() < 1e-3
        # and it is the right grey: G level through the sRGB curve
        np.testing.assert_allclose(out[..., 1].mean((1, 2)), _srgb_ref(grey * sens[:, 1]),
                                   atol=1e-5)
    # without white balance it is not neutral
    raw_look = np.asarray(isp.process(planes, wb_gains=np.ones(3)))
    assert (raw_look.max(-1) - raw_look.min(-1)).min() > 0.05


def test_white_balance_gains_per_plane():
    planes = np.ones((1, 2, 2, 4), np.float32)
    out = np.asarray(isp.white_balance(planes, [2.0, 1.5, 0.5]))
    np.testing.assert_array_equal(out[0, 0, 0], [2.0, 1.5, 1.5, 0.5])
    # black image: gray-world falls back to unit gains, no NaN
    g = np.asarray(isp.gray_world_gains(np.zeros((4, 4, 4), np.float32)))
    np.testing.assert_array_equal(g, [1, 1, 1])


# ----------------------------------------------------------------------------- sRGB curve


def test_srgb_curve_known_points_and_roundtrip():
    pts = np.array([0.0, 0.0031308, 0.18, 0.5, 1.0], np.float32)
    enc = np.asarray(color.linear_to_srgb(pts))
    np.testing.assert_allclose(enc, [0.0, 0.04045, 0.46135613, 0.73535698, 1.0], atol=2e-6)
    np.testing.assert_allclose(enc, _srgb_ref(pts), atol=1e-6)
    dec = np.asarray(color.srgb_to_linear(np.array([0.0, 0.04045, 0.5, 1.0], np.float32)))
    np.testing.assert_allclose(dec, [0.0, 0.04045 / 12.92, 0.21404114, 1.0], atol=1e-7)
    # linear segment slope and the IEC formula on a dense grid
    assert float(color.linear_to_srgb(np.float32(0.001))) == pytest.approx(0.01292, rel=1e-6)
    v = np.linspace(0, 1, 2001).astype(np.float32)
    ref = np.where(v <= 0.04045, v / 12.92, ((v.astype(np.float64) + 0.055) / 1.055) ** 2.4)
    np.testing.assert_allclose(np.asarray(color.srgb_to_linear(v)), ref, atol=1e-6)
    np.testing.assert_allclose(np.asarray(color.linear_to_srgb(color.srgb_to_linear(v))), v, atol=2e-6)
    np.testing.assert_allclose(np.asarray(color.srgb_to_linear(color.linear_to_srgb(v))), v, atol=2e-6)
    # gradients are finite at 0 (no NaN from the unused power branch)
    g = jax.grad(lambda x: color.linear_to_srgb(x).sum())(jnp.zeros(3))
    assert np.all(np.isfinite(np.asarray(g)))


# ----------------------------------------------------------------------------- CCM and process


def test_ccm_applied_correctly():
    m = np.array([[1.6, -0.4, -0.2], [-0.3, 1.5, -0.2], [0.05, -0.55, 1.5]])
    rng = np.random.default_rng(1)
    rgb = rng.random((2, 4, 6, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(isp.apply_ccm(rgb, m)),
                               np.einsum("ij,...j->...i", m, rgb), atol=1e-6)
    batched = np.stack([m, np.eye(3)])
    out = np.asarray(isp.apply_ccm(rgb, batched))
    np.testing.assert_allclose(out[1], rgb[1], atol=1e-7)
    np.testing.assert_allclose(np.asarray(isp.normalize_ccm_rows(2 * m)).sum(-1), 1, atol=1e-6)

    # through the whole pipeline on a flat colour patch, no white balance
    colour = np.array([0.3, 0.5, 0.2])
    planes = _planes(np.broadcast_to(colour, (8, 8, 3))).astype(np.float32)
    out = np.asarray(isp.process(planes, wb_gains=[1.0, 1.0, 1.0], ccm=m))
    expect = _srgb_ref(np.clip(m @ colour, 0, 1))
    np.testing.assert_allclose(out, np.broadcast_to(expect, out.shape), atol=2e-6)
    # identity by default
    out_id = np.asarray(isp.process(planes, wb_gains=[1.0, 1.0, 1.0]))
    np.testing.assert_allclose(out_id[3, 3], _srgb_ref(colour), atol=2e-6)


def test_process_jit_matches_eager_and_range():
    rng = np.random.default_rng(2)
    scene = np.clip(_edge_scene() * np.array([0.6, 1.0, 0.8]) + 0.02 * rng.normal(size=(H, W, 3)),
                    0, 1)
    planes = _planes(np.stack([scene, scene[::-1]])).astype(np.float32)
    ccm = np.array([[1.5, -0.3, -0.2], [-0.2, 1.4, -0.2], [0.0, -0.5, 1.5]])
    eager = np.asarray(isp.process(planes, ccm=ccm))
    jitted = np.asarray(isp.process_jit(jnp.asarray(planes), ccm=jnp.asarray(ccm)))
    np.testing.assert_allclose(jitted, eager, atol=1e-5)
    assert eager.shape == (2, H, W, 3) and jitted.dtype == np.float32
    assert eager.min() >= 0.0 and eager.max() <= 1.0
    f = jax.jit(isp.process, static_argnames="demosaic")
    bil = np.asarray(f(planes, wb_gains=jnp.array([1.2, 1.0, 1.1]), demosaic="bilinear"))
    np.testing.assert_allclose(
        bil, np.asarray(isp.process(planes, wb_gains=[1.2, 1.0, 1.1], demosaic="bilinear")),
        atol=1e-5)
    with pytest.raises(ValueError, match="demosaic"):
        isp.process(planes, demosaic="ahd")

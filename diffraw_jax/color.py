"""Colour maths, once: the sRGB curve, sRGB <-> CIE XYZ (D65), CIELAB, CIE76 and CIEDE2000
Delta E, luma.

One implementation for numpy and JAX callers: every function works in the array
namespace of its input (``array_namespace``). numpy in, numpy out, in the input's
dtype (float64 stays float64; JAX is not even imported, so the numpy-only synthetic
generator's worker processes stay light); a JAX array (or tracer) in, a JAX array
out (jittable, vmappable, differentiable). Matrix products are written as
elementwise multiply-adds, so they run in full float32 on every backend (no TF32 /
bf16 matmul passes) and need no ``precision`` argument.

Value ranges: sRGB-encoded and linear values are nominally in [0, 1] (the curve
functions do not clip); XYZ is relative to a white of Y = 1; CIELAB has L in
[0, 100] and a, b roughly in [-128, 127].

Users: ``isp_classic`` (the sRGB curve), ``degradation`` (luma for grey noise),
``inference.camera`` (dcraw's colour matrix from ``rgb_xyz_matrix``), the synthetic
generator (inverse sRGB curve), ``metrics.align`` (luma), ``scripts/real_photos.py``
(Lab, Delta E, luma Laplacian, dcraw's colour matrix), ``metrics.real_camera`` (CIEDE2000,
luma), ``scripts/ablation.py`` (luma Laplacian) and the tests (Lab, Delta E of low-passes, in test_degradation).
"""
from __future__ import annotations

import sys
from typing import Optional

import numpy as np

__all__ = [
    "XYZ_FROM_SRGB",
    "WHITE_D65_XYZ",
    "LUMA_BT601",
    "array_namespace",
    "srgb_to_linear",
    "linear_to_srgb",
    "linear_srgb_to_xyz",
    "xyz_to_lab",
    "srgb_to_lab",
    "delta_e76",
    "delta_e_2000",
    "luma",
    "luma_laplacian",
    "srgb_matrix_from_cam_xyz",
]

#: Linear sRGB (D65) -> CIE XYZ, IEC 61966-2-1 (dcraw's ``xyz_rgb``), float64 [3, 3];
#: ``xyz = XYZ_FROM_SRGB @ rgb``. Its rows sum to the D65 white with Y = 1.
XYZ_FROM_SRGB = np.array([[0.412453, 0.357580, 0.180423],
                          [0.212671, 0.715160, 0.072169],
                          [0.019334, 0.119193, 0.950227]])
#: XYZ of sRGB white (1, 1, 1): the D65 white point with Y = 1, float64 [3].
WHITE_D65_XYZ = XYZ_FROM_SRGB.sum(axis=1)
#: ITU-R BT.601 luma weights of (R, G, B).
LUMA_BT601 = (0.299, 0.587, 0.114)

_LAB_DELTA = 6.0 / 29.0   # CIE 1976: f(t) = t^(1/3) above DELTA^3, linear below


def array_namespace(*arrays):
    """``jax.numpy`` if any argument is a JAX array (or tracer), else ``numpy``.

    A JAX array can only exist once JAX is imported, so for numpy input this
    never imports JAX."""
    jax = sys.modules.get("jax")
    if jax is not None and any(isinstance(a, jax.Array) for a in arrays):
        import jax.numpy as jnp

        return jnp
    return np


def srgb_to_linear(v):
    """sRGB-encoded -> linear (IEC 61966-2-1): v / 12.92 for v <= 0.04045, else
    ((v + 0.055) / 1.055)**2.4. Elementwise, any shape, the input's float dtype;
    does not clip (the power is taken of max(v, 0.04045), so the gradient is finite)."""
    xp = array_namespace(v)
    hi = xp.power((xp.maximum(v, 0.04045) + 0.055) / 1.055, 2.4)
    return xp.where(v <= 0.04045, v / 12.92, hi)


def linear_to_srgb(x):
    """Linear -> sRGB-encoded (IEC 61966-2-1): 12.92 x for x <= 0.0031308, else
    1.055 x**(1/2.4) - 0.055. Elementwise, any shape, the input's float dtype;
    does not clip (the power is taken of max(x, 0.0031308): finite gradient at 0)."""
    xp = array_namespace(x)
    hi = 1.055 * xp.power(xp.maximum(x, 0.0031308), 1.0 / 2.4) - 0.055
    return xp.where(x <= 0.0031308, 12.92 * x, hi)


def _apply_matrix(m: np.ndarray, x):
    """``m @ x`` over the last axis of x [..., 3] as elementwise multiply-adds."""
    xp = array_namespace(x)
    m = xp.asarray(m, x.dtype)
    return x[..., 0:1] * m[:, 0] + x[..., 1:2] * m[:, 1] + x[..., 2:3] * m[:, 2]


def linear_srgb_to_xyz(lin):
    """Linear sRGB [..., 3] -> CIE XYZ [..., 3] (D65, white Y = 1): ``XYZ_FROM_SRGB @ lin``."""
    return _apply_matrix(XYZ_FROM_SRGB, lin)


def xyz_to_lab(xyz, white=WHITE_D65_XYZ):
    """CIE XYZ [..., 3] -> CIELAB (CIE 1976) [..., 3] relative to ``white`` (XYZ [3],
    default D65 with Y = 1): L = 116 f(Y/Yn) - 16, a = 500 (f(X/Xn) - f(Y/Yn)),
    b = 200 (f(Y/Yn) - f(Z/Zn)), f(t) = t^(1/3) for t > (6/29)^3, else
    t / (3 (6/29)^2) + 4/29. L in [0, 100] for Y in [0, Yn]."""
    xp = array_namespace(xyz)
    t = xyz / xp.asarray(white, xyz.dtype)
    eps = _LAB_DELTA ** 3
    f = xp.where(t > eps, xp.cbrt(xp.maximum(t, eps)), t / (3 * _LAB_DELTA ** 2) + 4.0 / 29.0)
    lum = 116.0 * f[..., 1] - 16.0
    a = 500.0 * (f[..., 0] - f[..., 1])
    b = 200.0 * (f[..., 1] - f[..., 2])
    return xp.stack([lum, a, b], axis=-1)


def srgb_to_lab(rgb):
    """sRGB-encoded [..., 3] (clipped to [0, 1]) -> CIELAB (D65) [..., 3], L in [0, 100]."""
    xp = array_namespace(rgb)
    return xyz_to_lab(linear_srgb_to_xyz(srgb_to_linear(xp.clip(rgb, 0.0, 1.0))))


def delta_e76(lab1, lab2):
    """CIE76 colour difference: the Euclidean distance of two CIELAB arrays [..., 3] -> [...]."""
    xp = array_namespace(lab1, lab2)
    return xp.sqrt(xp.sum(xp.square(lab1 - lab2), axis=-1))


def delta_e_2000(lab1, lab2, *, k_l: float = 1.0, k_c: float = 1.0, k_h: float = 1.0):
    """CIEDE2000 colour difference (CIE 142-2001) of two CIELAB arrays [..., 3] -> [...].

    Written after Sharma, Wu & Dalal, "The CIEDE2000 color-difference formula:
    implementation notes, supplementary test data, and mathematical observations"
    (Color Res. Appl. 30(1), 2005), eqs. 1-22: a' = (1 + G) a with
    G = (1 - sqrt(Cbar^7 / (Cbar^7 + 25^7))) / 2, hue angles in degrees in [0, 360)
    (0 where a' = b = 0), the hue difference and mean hue taken the short way round the
    circle (and h1 + h2, dh = 0 where a chroma is 0), weights S_L, S_C, S_H, the rotation
    term R_T; ``k_l``, ``k_c``, ``k_h`` are the parametric factors (1 for reference
    conditions). Inputs broadcast against each other; float, the inputs' dtype (float64
    numpy stays float64); numpy or JAX (jittable). Differentiable except where a
    chroma is 0 or the two hues are 180 degrees apart (the formula is not smooth there).
    Values are >= 0, ~1 for a just-noticeable difference.
    """
    xp = array_namespace(lab1, lab2)
    l1, a1, b1 = lab1[..., 0], lab1[..., 1], lab1[..., 2]
    l2, a2, b2 = lab2[..., 0], lab2[..., 1], lab2[..., 2]
    c_mean = 0.5 * (xp.sqrt(a1 * a1 + b1 * b1) + xp.sqrt(a2 * a2 + b2 * b2))
    c7 = c_mean ** 7
    g = 0.5 * (1.0 - xp.sqrt(c7 / (c7 + 25.0 ** 7)))
    a1p, a2p = (1.0 + g) * a1, (1.0 + g) * a2
    c1p, c2p = xp.sqrt(a1p * a1p + b1 * b1), xp.sqrt(a2p * a2p + b2 * b2)
    h1p = xp.mod(xp.degrees(xp.arctan2(b1, a1p)), 360.0)  # atan2(0, 0) = 0, as the formula asks
    h2p = xp.mod(xp.degrees(xp.arctan2(b2, a2p)), 360.0)
    cc = c1p * c2p
    zero = cc == 0
    dh = h2p - h1p
    dh = xp.where(dh > 180.0, dh - 360.0, xp.where(dh < -180.0, dh + 360.0, dh))
    dh = xp.where(zero, 0.0, dh)
    d_l = l2 - l1
    d_c = c2p - c1p
    d_h = 2.0 * xp.sqrt(cc) * xp.sin(xp.radians(dh) / 2.0)
    l_mean = 0.5 * (l1 + l2)
    cp_mean = 0.5 * (c1p + c2p)
    hsum = h1p + h2p
    h_mean = xp.where(xp.abs(h1p - h2p) <= 180.0, 0.5 * hsum,
                      xp.where(hsum < 360.0, 0.5 * (hsum + 360.0), 0.5 * (hsum - 360.0)))
    h_mean = xp.where(zero, hsum, h_mean)
    t = (1.0 - 0.17 * xp.cos(xp.radians(h_mean - 30.0)) + 0.24 * xp.cos(xp.radians(2.0 * h_mean))
         + 0.32 * xp.cos(xp.radians(3.0 * h_mean + 6.0)) - 0.20 * xp.cos(xp.radians(4.0 * h_mean - 63.0)))
    d_theta = 30.0 * xp.exp(-xp.square((h_mean - 275.0) / 25.0))
    cp7 = cp_mean ** 7
    r_c = 2.0 * xp.sqrt(cp7 / (cp7 + 25.0 ** 7))
    l50 = xp.square(l_mean - 50.0)
    s_l = 1.0 + 0.015 * l50 / xp.sqrt(20.0 + l50)
    s_c = 1.0 + 0.045 * cp_mean
    s_h = 1.0 + 0.015 * cp_mean * t
    r_t = -xp.sin(xp.radians(2.0 * d_theta)) * r_c
    tl, tc, th = d_l / (k_l * s_l), d_c / (k_c * s_c), d_h / (k_h * s_h)
    return xp.sqrt(tl * tl + tc * tc + th * th + r_t * tc * th)


def luma(rgb):
    """BT.601 luma [...] of RGB [..., 3] (float; in the input's dtype): 0.299 R + 0.587 G + 0.114 B."""
    xp = array_namespace(rgb)
    return xp.sum(rgb * xp.asarray(LUMA_BT601, rgb.dtype), axis=-1)


def luma_laplacian(rgb):
    """5-point Laplacian of the luma of RGB [..., H, W, 3] at the interior pixels ->
    [..., H - 2, W - 2]: y(i-1, j) + y(i+1, j) + y(i, j-1) + y(i, j+1) - 4 y(i, j)."""
    y = luma(rgb)
    return (-4 * y[..., 1:-1, 1:-1] + y[..., :-2, 1:-1] + y[..., 2:, 1:-1]
            + y[..., 1:-1, :-2] + y[..., 1:-1, 2:])


def srgb_matrix_from_cam_xyz(cam_xyz) -> Optional[np.ndarray]:
    """dcraw's camera RGB -> linear sRGB colour matrix from a camera's XYZ (D65) -> camera RGB
    matrix ``cam_xyz`` [3, 3] (rows R, G, B): ``inv(rownorm(cam_xyz @ XYZ_FROM_SRGB))``, float64
    [3, 3] whose rows sum to 1 (white stays white). None when a row of ``cam_xyz @ XYZ_FROM_SRGB``
    sums to ~0 (no usable matrix). numpy only."""
    cam_rgb = np.asarray(cam_xyz, np.float64) @ XYZ_FROM_SRGB
    sums = cam_rgb.sum(axis=1, keepdims=True)
    if not np.all(np.abs(sums) > 1e-8):
        return None
    return np.linalg.inv(cam_rgb / sums)

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
from typing import NamedTuple, Optional

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


# ---------------------------------------------------------------------------
# DNG calibration: a camera's colour from its DNG tags (numpy only).
#
# Adobe, "Digital Negative (DNG) Specification" 1.7.1.0, chapter 6 "Mapping Camera
# Color Space to CIE XYZ Space", as the DNG SDK implements it (dng_color_spec,
# dng_temperature, dng_camera_profile): ColorMatrix1/2 map CIE XYZ to the reference
# camera space under their calibration illuminants; the matrix of a scene is
# interpolated between them linearly in inverse correlated colour temperature
# (CCT, Robertson's method on the CIE 1960 uv isotemperature lines, as
# dng_temperature.cpp) of the scene white, which is itself found from
# AsShotNeutral by iterating white xy -> CCT -> weight -> matrix -> xy. The
# profile connection space (PCS) is XYZ relative to D50; ForwardMatrix1/2 (when
# present) map white-balanced camera RGB straight to it, else the inverse
# ColorMatrix is adapted from the scene white to D50 with Bradford. D50 -> the
# D65 white of sRGB is Bradford too (von Kries adaptations compose exactly, so
# "white -> D50 -> D65" is "white -> D65").

#: CIE xy of the DNG PCS white D50 (the DNG SDK's PCStoXY) and its XYZ with Y = 1, float64.
WHITE_D50_XY = np.array([0.3457, 0.3585])
#: Bradford cone response matrix (as dng_color_spec.cpp's MapWhiteMatrix), XYZ -> LMS.
BRADFORD = np.array([[0.8951, 0.2664, -0.1614],
                     [-0.7502, 1.7135, 0.0367],
                     [0.0389, -0.0685, 1.0296]])
#: Correlated colour temperatures (K) of the EXIF LightSource codes of CalibrationIlluminant1/2,
#: as dng_camera_profile.cpp's IlluminantToTemperature (fluorescents: the middle of their range).
#: Codes not listed (0 unknown, 255 other) have no temperature.
DNG_ILLUMINANT_TEMPERATURE = {
    17: 2850.0, 3: 2850.0,                       # Standard light A, tungsten
    24: 3200.0,                                  # ISO studio tungsten
    23: 5000.0,                                  # D50
    20: 5500.0, 1: 5500.0, 9: 5500.0, 4: 5500.0, 18: 5500.0,  # D55, daylight, fine weather, flash, B
    21: 6500.0, 19: 6500.0, 10: 6500.0,          # D65, Standard light C, cloudy
    22: 7500.0, 11: 7500.0,                      # D75, shade
    12: (5700.0 + 7100.0) / 2, 13: (4600.0 + 5500.0) / 2,  # daylight / day white fluorescent
    14: (3800.0 + 4500.0) / 2, 2: (3800.0 + 4500.0) / 2,   # cool white fluorescent, fluorescent
    15: (3250.0 + 3800.0) / 2, 16: (2600.0 + 3250.0) / 2,  # white / warm white fluorescent
}
#: Robertson (1968) isotemperature lines: (reciprocal megakelvin, u, v, slope) in CIE 1960 UCS
#: (Wyszecki & Stiles, Table 1(3.11); the 325 line with Lindbloom's correction u = 0.24792).
_ROBERTSON = np.array([
    (0, 0.18006, 0.26352, -0.24341), (10, 0.18066, 0.26589, -0.25479),
    (20, 0.18133, 0.26846, -0.26876), (30, 0.18208, 0.27119, -0.28539),
    (40, 0.18293, 0.27407, -0.30470), (50, 0.18388, 0.27709, -0.32675),
    (60, 0.18494, 0.28021, -0.35156), (70, 0.18611, 0.28342, -0.37915),
    (80, 0.18740, 0.28668, -0.40955), (90, 0.18880, 0.28997, -0.44278),
    (100, 0.19032, 0.29326, -0.47888), (125, 0.19462, 0.30141, -0.58204),
    (150, 0.19962, 0.30921, -0.70471), (175, 0.20525, 0.31647, -0.84901),
    (200, 0.21142, 0.32312, -1.0182), (225, 0.21807, 0.32909, -1.2168),
    (250, 0.22511, 0.33439, -1.4512), (275, 0.23247, 0.33904, -1.7298),
    (300, 0.24010, 0.34308, -2.0637), (325, 0.24792, 0.34655, -2.4681),
    (350, 0.25591, 0.34951, -2.9641), (375, 0.26400, 0.35200, -3.5814),
    (400, 0.27218, 0.35407, -4.3633), (425, 0.28039, 0.35577, -5.3762),
    (450, 0.28863, 0.35714, -6.7262), (475, 0.29685, 0.35823, -8.5955),
    (500, 0.30505, 0.35907, -11.324), (525, 0.31320, 0.35968, -15.628),
    (550, 0.32129, 0.36011, -23.325), (575, 0.32931, 0.36038, -40.770),
    (600, 0.33724, 0.36051, -116.45)])


def xy_to_xyz(xy) -> np.ndarray:
    """CIE xy [2] -> XYZ [3] with Y = 1 (float64)."""
    x, y = (float(v) for v in np.asarray(xy, np.float64)[:2])
    return np.array([x / y, 1.0, (1.0 - x - y) / y])


def xyz_to_xy(xyz) -> np.ndarray:
    """CIE XYZ [3] -> xy [2] (float64); D50's xy when X + Y + Z <= 0 (as the DNG SDK)."""
    xyz = np.asarray(xyz, np.float64)
    s = xyz.sum()
    return WHITE_D50_XY.copy() if s <= 0 else xyz[:2] / s


WHITE_D50_XYZ = xy_to_xyz(WHITE_D50_XY)


def cct_robertson(xy) -> float:
    """Correlated colour temperature (K) of CIE xy [2] by Robertson's method (as the DNG SDK's
    dng_temperature::Set_xy_coord): xy -> CIE 1960 uv, find the two isotemperature lines the
    point lies between (signed distance along each line's normal) and interpolate linearly in
    reciprocal temperature. Valid from ~1667 K up (the table's 600 MK^-1 line); a point beyond
    the table's ends takes the end line's temperature (infinity for 0 MK^-1)."""
    x, y = (float(v) for v in np.asarray(xy, np.float64)[:2])
    den = 1.5 - x + 6.0 * y
    u, v = 2.0 * x / den, 3.0 * y / den
    last_dt = 0.0
    for i in range(1, len(_ROBERTSON)):
        r, tu, tv, slope = _ROBERTSON[i]
        n = np.hypot(1.0, slope)
        dt = -(u - tu) * (slope / n) + (v - tv) * (1.0 / n)
        if dt <= 0.0 or i == len(_ROBERTSON) - 1:
            dt = -min(dt, 0.0)
            f = 0.0 if i == 1 else dt / (last_dt + dt)
            mired = _ROBERTSON[i - 1, 0] * f + r * (1.0 - f)
            return float("inf") if mired <= 0 else 1e6 / mired
        last_dt = dt
    raise AssertionError("unreachable")


def bradford_adaptation(src_xy, dst_xy) -> np.ndarray:
    """Bradford chromatic adaptation XYZ (white ``src_xy``) -> XYZ (white ``dst_xy``), float64
    [3, 3] (``xyz_dst = M @ xyz_src``): inv(BRADFORD) diag(lms_dst / lms_src) BRADFORD, each
    cone ratio pinned to [0.1, 10] and negative cone whites to 0 (dng_color_spec's MapWhiteMatrix)."""
    w1 = np.maximum(BRADFORD @ xy_to_xyz(src_xy), 0.0)
    w2 = np.maximum(BRADFORD @ xy_to_xyz(dst_xy), 0.0)
    ratio = np.where(w1 > 0, w2 / np.where(w1 > 0, w1, 1.0), 10.0)
    return np.linalg.inv(BRADFORD) @ np.diag(np.clip(ratio, 0.1, 10.0)) @ BRADFORD


def _normalize_color_matrix(m: np.ndarray) -> np.ndarray:
    """dng_camera_profile's NormalizeColorMatrix: scale an XYZ -> camera matrix so that the D50
    white's largest camera coordinate is 1 (ColorMatrix1 and 2 then interpolate on one scale)."""
    top = (m @ WHITE_D50_XYZ).max()
    return m / top if top > 0 else m


def _normalize_forward_matrix(m: np.ndarray) -> np.ndarray:
    """dng_camera_profile's NormalizeForwardMatrix: scale the rows of a camera -> XYZ (D50)
    matrix so that camera white (1, 1, 1) maps to the D50 white exactly."""
    xyz = m.sum(axis=1)
    return np.diag(WHITE_D50_XYZ / np.where(xyz != 0, xyz, 1.0)) @ m


class DngColor(NamedTuple):
    """``dng_camera_to_srgb``'s result (float64).

    wb_gains: [3] max(neutral) / neutral: multiply the camera RGB planes by these. The largest
      channel of the scene white gets gain 1 and the others more (the DNG SDK normalises the
      camera white on its largest entry, dng_color_spec::SetWhiteXY; dcraw/LibRaw's
      scale_colors divides its multipliers by the smallest): a pixel clipped in every channel
      stays clipped, hence neutral, after white balance. G = 1 whenever green is the scene
      white's largest channel (daylight, tungsten); 1 / neutral with G = 1 otherwise scaled.
    ccm: [3, 3] white-balanced camera RGB -> linear sRGB (D65), rows summing to 1
      (``rgb = ccm @ (wb_gains * cam)``; isp_classic.apply_ccm's convention).
    white_xy: [2] the scene white's CIE xy the iteration converged to.
    cct: its correlated colour temperature (K, Robertson).
    weight1: the weight of ColorMatrix1 / ForwardMatrix1 / CameraCalibration1 (1 - weight1 on
      the second ones), in [0, 1]; 1.0 when the file has one usable calibration.
    """

    wb_gains: np.ndarray
    ccm: np.ndarray
    white_xy: np.ndarray
    cct: float
    weight1: float


def illuminant_temperature(code, xy=None) -> float:
    """The CCT (K) of a CalibrationIlluminant: ``DNG_ILLUMINANT_TEMPERATURE`` for the EXIF
    LightSource codes; for 255 ("other", DNG 1.6) the Robertson CCT of its IlluminantData's
    ``xy``; 0.0 (unknown) otherwise, as the DNG SDK's dng_camera_profile (a profile whose
    temperatures are unknown uses its first calibration only)."""
    if code is None:
        return 0.0
    if int(code) == 255:
        if xy is None:
            return 0.0
        t = cct_robertson(xy)
        return t if np.isfinite(t) else 0.0
    return DNG_ILLUMINANT_TEMPERATURE.get(int(code), 0.0)


def dng_camera_to_srgb(color_matrix1, neutral=None, *, color_matrix2=None, illuminant1=None,
                       illuminant2=None, forward_matrix1=None, forward_matrix2=None,
                       camera_calibration1=None, camera_calibration2=None, analog_balance=None,
                       white_xy=None, illuminant_xy1=None, illuminant_xy2=None) -> DngColor:
    """The DNG SDK's camera -> linear sRGB colour for a scene white (DNG 1.7.1 spec, chapter 6).

    Inputs (float, numpy; a 3-colour camera): ``color_matrix1``/``color_matrix2`` [3, 3]
    ColorMatrix1/2 (XYZ -> reference camera space), ``illuminant1``/``illuminant2`` their
    CalibrationIlluminant codes (``illuminant_temperature``; for 255 the CIE xy [2] of
    IlluminantData1/2 as ``illuminant_xy1/2``), ``forward_matrix1/2`` [3, 3]
    (white-balanced camera -> XYZ D50), ``camera_calibration1/2`` [3, 3], ``analog_balance`` [3]
    (identity / ones when None), and the scene white as ``neutral`` [3] (AsShotNeutral: the
    camera's response to it) or ``white_xy`` [2] (AsShotWhiteXY).

    Steps (as dng_color_spec.cpp): XYZtoCamera_i = AB CC_i CM_i for each calibration (each CM
    first scaled so that D50's largest camera value is 1); XYZtoCamera(w) = g XYZtoCamera_1 +
    (1 - g) XYZtoCamera_2, g = (1/T(w) - 1/T2) / (1/T1 - 1/T2) clipped to [0, 1] (T: CCT, the
    calibrations ordered by temperature; g = 1 when there is one ColorMatrix or either
    temperature is unknown or both are equal: then only the first calibration's matrices are
    used). The white w of a neutral is the fixed point of w <- xy(inverse(XYZtoCamera(w))
    neutral), from D50 (at most 30 passes, as the SDK). Camera -> XYZ(D50): with a
    ForwardMatrix, FM(w) diag(1 / ReferenceNeutral) inverse(AB CC(w)) with ReferenceNeutral =
    inverse(AB CC(w)) neutral, where FM(w) interpolates FM1 and FM2 with g when both exist and
    is whichever exists otherwise (ForwardMatrix2 alone is used in a two-calibration profile);
    without, Bradford(w -> D50) inverse(XYZtoCamera(w)). Then Bradford(D50 -> D65) and XYZ ->
    linear sRGB; ``ccm`` is that matrix times diag(neutral) (so it takes white-balanced camera
    RGB), rows normalised to sum 1 (the white maps to sRGB white exactly; the overall scale
    is exposure, which BaselineExposure carries). ``wb_gains`` = max(neutral) / neutral.
    ValueError for a singular matrix or a neutral with a value <= 0.
    """
    cm1 = _normalize_color_matrix(np.asarray(color_matrix1, np.float64).reshape(3, 3))
    cm2 = None if color_matrix2 is None else _normalize_color_matrix(
        np.asarray(color_matrix2, np.float64).reshape(3, 3))
    t1 = illuminant_temperature(illuminant1, illuminant_xy1)
    t2 = illuminant_temperature(illuminant2, illuminant_xy2)
    dual = cm2 is not None and t1 > 0 and t2 > 0 and t1 != t2
    eye = np.eye(3)
    cc1 = eye if camera_calibration1 is None else np.asarray(camera_calibration1, np.float64).reshape(3, 3)
    cc2 = eye if camera_calibration2 is None else np.asarray(camera_calibration2, np.float64).reshape(3, 3)
    fm1 = None if forward_matrix1 is None else _normalize_forward_matrix(
        np.asarray(forward_matrix1, np.float64).reshape(3, 3))
    fm2 = None if forward_matrix2 is None or not dual else _normalize_forward_matrix(
        np.asarray(forward_matrix2, np.float64).reshape(3, 3))
    ab = np.diag(np.ones(3) if analog_balance is None else np.asarray(analog_balance, np.float64).ravel()[:3])
    xyz_to_cam1 = ab @ cc1 @ cm1
    xyz_to_cam2 = ab @ cc2 @ cm2 if dual else None

    def weight(xy) -> float:
        if not dual:
            return 1.0
        lo, hi, swap = (t1, t2, False) if t1 < t2 else (t2, t1, True)
        t = cct_robertson(xy)
        g = 1.0 if t <= lo else 0.0 if t >= hi else (1.0 / t - 1.0 / hi) / (1.0 / lo - 1.0 / hi)
        return 1.0 - g if swap else g

    def mix(g, a, b):
        if b is None:
            return a
        if a is None:
            return b
        return a if g >= 1.0 else b if g <= 0.0 else g * a + (1.0 - g) * b

    def xyz_to_camera(g):
        return mix(g, xyz_to_cam1, xyz_to_cam2)

    if neutral is None:
        if white_xy is None:
            raise ValueError("a scene white is needed: AsShotNeutral or AsShotWhiteXY")
        w = np.asarray(white_xy, np.float64)[:2]
        g = weight(w)
        n = xyz_to_camera(g) @ xy_to_xyz(w)
        n = n / n.max()
    else:
        n = np.asarray(neutral, np.float64).ravel()[:3]
        if not np.all(np.isfinite(n)) or np.any(n <= 0):
            raise ValueError(f"AsShotNeutral {n.tolist()} has a value <= 0")
        w = WHITE_D50_XY.copy()
        for i in range(30):
            g = weight(w)
            nxt = xyz_to_xy(np.linalg.solve(xyz_to_camera(g), n))
            if np.abs(nxt - w).sum() < 1e-7:
                w = nxt
                break
            w = (w + nxt) / 2 if i == 29 else nxt
        g = weight(w)
    if np.any(n <= 0):
        raise ValueError(f"the scene white's camera response {n.tolist()} has a value <= 0")
    to_cam = xyz_to_camera(g)
    fm = mix(g, fm1, fm2)
    if fm is not None:
        abcc_inv = np.linalg.inv(ab @ mix(g, cc1, cc2 if dual else None))
        ref_neutral = abcc_inv @ n
        camera_to_pcs = fm @ np.diag(1.0 / ref_neutral) @ abcc_inv
    else:
        camera_to_pcs = bradford_adaptation(w, WHITE_D50_XY) @ np.linalg.inv(to_cam)
    srgb_from_xyz = np.linalg.inv(XYZ_FROM_SRGB)
    d65_xy = xyz_to_xy(WHITE_D65_XYZ)
    cam_to_srgb = srgb_from_xyz @ bradford_adaptation(WHITE_D50_XY, d65_xy) @ camera_to_pcs
    ccm = cam_to_srgb @ np.diag(n)
    sums = ccm.sum(axis=1, keepdims=True)
    if not np.all(np.abs(sums) > 1e-8):
        raise ValueError("the colour matrix maps the scene white to black (singular calibration)")
    return DngColor(wb_gains=n.max() / n, ccm=ccm / sums, white_xy=w, cct=cct_robertson(w), weight1=float(g))

__all__ += ["WHITE_D50_XY", "WHITE_D50_XYZ", "BRADFORD", "DNG_ILLUMINANT_TEMPERATURE", "xy_to_xyz",
            "xyz_to_xy", "cct_robertson", "bradford_adaptation", "DngColor", "illuminant_temperature",
            "dng_camera_to_srgb"]

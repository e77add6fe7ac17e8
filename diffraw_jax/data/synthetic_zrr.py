"""Synthetic data in the exact on-disk layout of the Zurich RAW-to-RGB dataset.

    python -m diffraw_jax.data.synthetic_zrr --out DIR --num_train N --num_test M [--size 448] [--seed S]

writes ``DIR/{train,test}/huawei_raw/<i>.png`` (single-channel RGGB Bayer mosaic,
10-bit codes, black level 63, white level 1020, 16-bit PNG, or 8-bit PNG when every
code fits in 8 bits, as in real ZRR), ``DIR/{train,test}/canon/<i>.jpg``
(size x size x 3 sRGB JPEG, quality 95), which ``tfds_zrr`` builds exactly like the
real data, and ``DIR/{train,test}/calibration/<i>.json``, the pair's TRUE calibration
(see "Calibration files" below; real ZRR has none).
The command writes 448x448 pairs, the size the builder's ``zrr/patches`` config
stores (``tfds_zrr.zrr.PATCH_SIZE``); ``--size`` other than that is refused, since
the builder would skip every pair. ``generate()``, ``make_example()`` and ``make_pair()``
take any even size from Python (tests, experiments that bypass TFDS).

A pair is made as follows (all numpy, deterministic per (seed, split, index); about
0.4 s per 448x448 pair on one core):

1. Scene (``render_scene``): textured dead leaves, after Achddou, Gousseau & Ladjal,
   "Synthetic images as a regularity prior for image restoration neural networks"
   (SSVM 2021) and "VibrantLeaves" (arXiv 2504.10201, 2025). Leaves of power-law
   radius (p(r) ~ r^-3: scale invariant) in five shapes (discs, ellipses, rectangles,
   convex polygons, thin bars), anti-aliased, composited front to back. Each leaf
   carries a texture between two colours: 1/f^beta fractal noise (FFT-shaped,
   beta in [1.4, 3]), an oriented periodic pattern (stripes or crossed gratings of
   period 2.2-24 px, sometimes warped by fractal noise or sharpened to bars), a
   stochastic micro-texture, or a flat colour; and a smooth shading gradient across
   it. Colours mix greys, muted and vivid (saturated) hues around one or two
   dominant hues. A near layer of larger leaves sits in front of a far layer that
   covers the plane; depth of field blurs one of them in about 37% of scenes
   (Gaussian sigma 0.8-3 px); a smooth illumination field (gradient and large-scale
   variation, in linear light) lights the scene. About 1.5% of leaves, and bright
   parts under the illumination, go beyond white (sRGB values up to 1.6): the DSLR
   target clips them to white, the RAW clips them at its white level where they
   exceed it. The luma's radially averaged power spectrum falls as ~1/f^2 to 1/f^3,
   like natural photographs (tests/test_synthetic_zrr.py measures it).
2. "DSLR": the centre crop of the sharp scene, clipped to [0, 1], saved as a
   quality-95 JPEG.
3. "Phone RAW", by unprocessing the scene (``unprocess``; Brooks et al. 2019, inverse
   ISP) with a sensor model spanning phones and cameras: a small random affine
   misalignment (shift up to 2 px, rotation up to 0.5 deg, scale +-1%) of the
   scene, inverse sRGB tone curve, inverse colour matrix (``random_ccm``: BASE_CCM
   + N(0, 0.1) per entry, or one of four real-camera-like matrices
   (``CAMERA_CCMS``) + N(0, 0.04), rows summing to 1), inverse white-balance gains
   (r ~ U(1.3, 2.8), b ~ U(1.2, 2.8): daylight to tungsten), optics blur (Gaussian
   sigma 0.6-1.8 px: detail loss), exposure (the fraction of the white level that a
   white maps to: dark log-U(0.06, 0.15) in 10% of pairs, bright U(0.85, 1.0) in
   20%, else U(0.3, 0.85)), RGGB mosaic, lens shading (vignetting on the RAW only:
   1 - f rho^2 with corner fall-off f = 0 in 70% of pairs, else U(0, 0.15)),
   heteroscedastic noise (variance shot * signal + read^2 in codes, shot
   log-U(0.05, 2.5), read log-U(0.2, 4): base-ISO cameras to high-ISO phones),
   saturation at the white level (clipped highlights) and 10-bit quantisation with
   black level 63 and white level 1020.

Calibration files: ``calibration/<i>.json`` holds the pair's true calibration in
the project's calibration interface, ``{"wb_gains": [r, 1.0, b], "ccm": [[3 x 3]],
"baseline_exposure": EV}``: ``wb_gains`` the gains of step 3 (multiply the RAW's
R, G, B planes by them to white-balance), ``ccm`` the colour matrix of step 3
(white-balanced camera RGB -> linear sRGB, rows sum to 1, applied as
``rgb = cam @ ccm.T``), ``baseline_exposure`` = -log2(exposure) (the intended
linear values are the normalised RAW [0, 1] times 2**EV). The classical ISP with
them (``isp_classic.process(planes * 2**EV, wb_gains, ccm)``) renders the RAW as the
DSLR image up to blur, lens shading, noise, clipping and demosaicking.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from diffraw_jax import color

BLACK_LEVEL = 63
WHITE_LEVEL = 1020
MAX_CODE = 1023
SPLIT_IDS = {"train": 0, "test": 1}

# A camera-RGB -> linear-sRGB matrix of the usual shape (rows sum to 1).
BASE_CCM = np.array(
    [[1.75, -0.60, -0.15],
     [-0.25, 1.55, -0.30],
     [0.05, -0.55, 1.50]], dtype=np.float64)


# ---------------------------------------------------------------- image helpers

def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of [H, W, C] with reflect padding."""
    radius = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    out = img
    for axis in (0, 1):
        pad = [(0, 0)] * img.ndim
        pad[axis] = (radius, radius)
        p = np.pad(out, pad, mode="reflect")
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for i, w in enumerate(k):
            acc += w * np.take(p, np.arange(i, i + n), axis=axis)
        out = acc
    return out


def affine_warp(img: np.ndarray, out_size: int, shift, angle: float, scale: float) -> np.ndarray:
    """Bilinear sample of the centre out_size crop of img [S, S, C] after a
    rotation/scale about the centre and a shift (pixels)."""
    s = img.shape[0]
    c = (s - 1) / 2.0
    off = (s - out_size) / 2.0
    yy, xx = np.meshgrid(np.arange(out_size) + off - c, np.arange(out_size) + off - c, indexing="ij")
    ca, sa = np.cos(angle) / scale, np.sin(angle) / scale
    sy = ca * yy - sa * xx + c + shift[0]
    sx = sa * yy + ca * xx + c + shift[1]
    y0 = np.clip(np.floor(sy).astype(np.int64), 0, s - 2)
    x0 = np.clip(np.floor(sx).astype(np.int64), 0, s - 2)
    fy = np.clip(sy - y0, 0.0, 1.0)[..., None]
    fx = np.clip(sx - x0, 0.0, 1.0)[..., None]
    return ((1 - fy) * (1 - fx) * img[y0, x0] + (1 - fy) * fx * img[y0, x0 + 1]
            + fy * (1 - fx) * img[y0 + 1, x0] + fy * fx * img[y0 + 1, x0 + 1])


# ----------------------------------------------------------------------- scene

def _fft_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of [H, W] or [H, W, C] by FFT (reflect padding of 3 sigma); sigma <= 0: a copy."""
    if sigma <= 0:
        return img.copy()
    pad = int(np.ceil(3 * sigma))
    widths = [(pad, pad), (pad, pad)] + [(0, 0)] * (img.ndim - 2)
    p = np.pad(img, widths, mode="reflect")
    fy = np.fft.fftfreq(p.shape[0])[:, None]
    fx = np.fft.rfftfreq(p.shape[1])[None, :]
    g = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fy**2 + fx**2))
    if img.ndim == 3:
        g = g[..., None]
    out = np.fft.irfft2(np.fft.rfft2(p, axes=(0, 1)) * g, s=p.shape[:2], axes=(0, 1))
    return out[pad:pad + img.shape[0], pad:pad + img.shape[1]]


def fractal_noise(rng: np.random.Generator, size: int, beta: float) -> np.ndarray:
    """Gaussian noise with power spectrum ~ 1/f**beta ([size, size] float64, zero mean, unit std):
    random phases shaped in the Fourier domain (1/f noise for beta ~ 2, natural images)."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    f = np.sqrt(fy**2 + fx**2)
    f[0, 0] = 1.0
    spec = (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) * f ** (-beta / 2.0)
    spec[0, 0] = 0.0
    n = np.fft.irfft2(spec, s=(size, size))
    return n / (n.std() + 1e-12)


def _hsv_to_rgb(h, s, v) -> np.ndarray:
    """h, s, v in [0, 1] (arrays of one shape) -> rgb [..., 3]."""
    h6 = (np.asarray(h) % 1.0) * 6.0
    c = v * s
    x = c * (1 - np.abs(h6 % 2 - 1))
    z = np.zeros_like(c)
    i = np.floor(h6).astype(int) % 6
    r = np.choose(i, [c, x, z, z, x, c])
    g = np.choose(i, [x, c, c, x, z, z])
    b = np.choose(i, [z, z, x, c, c, x])
    return np.stack([r, g, b], -1) + (v - c)[..., None]


def random_colours(rng: np.random.Generator, n: int) -> np.ndarray:
    """n sRGB colours [n, 3] in [0, 1]: hue uniform (around one or two dominant hues per scene),
    saturation a mixture of greys, muted and vivid colours, value from dark to bright."""
    base = rng.uniform(0, 1, 2)
    hue = np.where(rng.uniform(size=n) < 0.6, base[rng.integers(0, 2, n)] + rng.normal(0, 0.06, n),
                   rng.uniform(0, 1, n))
    kind = rng.uniform(size=n)
    sat = np.where(kind < 0.25, rng.uniform(0.0, 0.15, n),
                   np.where(kind < 0.6, rng.uniform(0.15, 0.6, n), rng.uniform(0.6, 1.0, n)))
    val = rng.uniform(0.05, 1.0, n) ** 0.8
    return _hsv_to_rgb(hue, sat, val)


def _leaf_sdf(kind: int, dy: np.ndarray, dx: np.ndarray, r: float, rng: np.random.Generator) -> np.ndarray:
    """Signed distance (pixels, negative inside) of a leaf of radius ~r centred at (0, 0):
    0 disc, 1 ellipse, 2 rectangle, 3 convex polygon, 4 thin bar (a branch or wire)."""
    if kind == 0:
        return np.sqrt(dy * dy + dx * dx) - r
    a = rng.uniform(0, np.pi)
    u, v = np.cos(a) * dx + np.sin(a) * dy, -np.sin(a) * dx + np.cos(a) * dy
    if kind == 1:
        e = rng.uniform(0.3, 1.0)
        return (np.sqrt(u * u + (v / e) ** 2) - r) * e
    if kind == 2:
        e = rng.uniform(0.25, 1.0)
        return np.maximum(np.abs(u) - r, np.abs(v) - r * e)
    if kind == 3:
        k = int(rng.integers(3, 8))
        angs = a + np.sort(rng.uniform(0, 2 * np.pi, k))
        d = np.full(dy.shape, -np.inf)
        for t in angs:
            d = np.maximum(d, np.cos(t) * dx + np.sin(t) * dy - r * 0.85)
        return d
    w = rng.uniform(0.4, 1.5)
    return np.maximum(np.abs(u) - r, np.abs(v) - w)


def render_scene(rng: np.random.Generator, size: int) -> np.ndarray:
    """A procedural photographic scene [size, size, 3] float64, sRGB-encoded, >= 0.

    Textured dead leaves (Achddou, Gousseau & Ladjal 2021; VibrantLeaves 2025): leaves
    of power-law radius (p(r) ~ r^-3, scale invariant) and five shapes (discs,
    ellipses, rectangles, convex polygons, thin bars) with anti-aliased edges, each
    carrying a texture between two colours (1/f^beta fractal noise, beta in [1.4, 3];
    oriented stripes or gratings of period 2-24 px, warped by fractal noise;
    stochastic micro-texture; or flat) and a linear shading gradient, in two depth
    layers with depth-of-field blur of either, under a smooth illumination field.
    Some scenes carry highlights beyond white (values up to ~1.5, linear ~2.6),
    which the DSLR target clips to white. Values are in [0, 1] elsewhere.
    """
    yy, xx = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32), indexing="ij")
    n_col = 16
    palette = random_colours(rng, n_col).astype(np.float32)
    fields = [(1.0 / (1.0 + np.exp(-1.7 * fractal_noise(rng, size, b)))).astype(np.float32)  # in (0, 1), ~uniform
              for b in (rng.uniform(1.4, 2.0), rng.uniform(2.0, 3.0))]

    def power_law(n, rmin, rmax):  # p(r) ~ r^-3 on [rmin, rmax]: scale-invariant
        u = rng.uniform(size=n)
        return 1.0 / np.sqrt(u / rmin**2 + (1 - u) / rmax**2)

    def paint(canvas, remaining, radii):
        """Top-down compositing of leaves onto canvas [S, S, 3]; remaining [S, S] = 1 - coverage."""
        n = radii.size
        cys, cxs = (rng.uniform(-radii, size + radii) for _ in range(2))
        kinds = rng.choice(5, n, p=[0.45, 0.18, 0.17, 0.12, 0.08]).tolist()
        for r, cy, cx, kind in zip(radii.tolist(), cys.tolist(), cxs.tolist(), kinds):
            y0, y1 = max(0, int(cy - r) - 1), min(size, int(cy + r) + 3)
            x0, x1 = max(0, int(cx - r) - 1), min(size, int(cx + r) + 3)
            if y0 >= y1 or x0 >= x1:
                continue
            rem = remaining[y0:y1, x0:x1]
            if rem.max() < 1e-3:
                continue
            dy, dx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
            alpha = np.clip(0.5 - _leaf_sdf(kind, dy, dx, r, rng), 0.0, 1.0)
            if not alpha.any():
                continue
            c0, c1 = palette[rng.integers(n_col)], palette[rng.integers(n_col)]
            tex = rng.uniform()
            if tex < 0.35 and r > 3:  # fractal texture between two colours
                f = fields[int(rng.integers(2))]
                oy, ox = rng.integers(0, size, 2)
                t = f[np.ix_((np.arange(y0, y1) + oy) % size, (np.arange(x0, x1) + ox) % size)]
                if rng.uniform() < 0.5:
                    t = np.clip((t - 0.5) * rng.uniform(1.0, 4.0) + 0.5, 0, 1)  # contrast
            elif tex < 0.55 and r > 4:  # oriented periodic pattern (stripes / grating), warped
                period = np.exp(rng.uniform(np.log(2.2), np.log(24.0)))
                a = rng.uniform(0, np.pi)
                ph = (np.cos(a) * dx + np.sin(a) * dy) * 2 * np.pi / period
                if rng.uniform() < 0.5:
                    f = fields[0]
                    ph = ph + rng.uniform(0.5, 3.0) * f[y0:y1, x0:x1]
                t = 0.5 + 0.5 * np.sin(ph)
                if rng.uniform() < 0.3:  # crossed grating
                    t = t * (0.5 + 0.5 * np.sin((-np.sin(a) * dx + np.cos(a) * dy) * 2 * np.pi / period))
                if rng.uniform() < 0.5:
                    t = (t > 0.5).astype(np.float64) * 0.8 + 0.2 * t  # sharper bars
            elif tex < 0.7:  # stochastic micro-texture
                t = 0.5 + rng.uniform(0.05, 0.35) * rng.standard_normal(alpha.shape)
                if rng.uniform() < 0.5:
                    t = 0.5 + (t - 0.5) * 0.5 + 0.25 * (t - 0.5)[::-1, ::-1]
                c1 = c0 * rng.uniform(0.4, 1.0)
            else:
                t = None
            col = c0 + 0 * alpha[..., None] if t is None else c0 + (c1 - c0) * t[..., None]
            # smooth shading: a linear gradient across the leaf
            g = rng.normal(0, 0.35, 2) / max(r, 1.0)
            col = col * np.clip(1.0 + g[0] * dy + g[1] * dx, 0.2, 1.8)[..., None]
            if rng.uniform() < 0.015:  # a highlight beyond white (clipped by the DSLR)
                col = col * 0.2 + rng.uniform(1.0, 1.5)
            w = alpha * rem
            canvas[y0:y1, x0:x1] += w[..., None] * col
            remaining[y0:y1, x0:x1] = rem * (1 - alpha)
        return canvas, remaining

    # far layer: covers the plane (~2000 leaves from 4 px to size / 3, a few hundred tiny ones)
    far_radii = np.concatenate([power_law(int(rng.integers(150, 400)), 1.0, 4.0),
                                power_law(int(rng.integers(1500, 2500)), 4.0, size / 3.0)])
    rng.shuffle(far_radii)
    far, rem = paint(np.zeros((size, size, 3), np.float32), np.ones((size, size), np.float32), far_radii)
    far += rem[..., None] * palette[0]  # anything left uncovered
    # near layer: fewer, larger leaves in front, partly covering
    near_radii = power_law(int(rng.integers(0, 40)), size / 30.0, size / 4.0)
    near, rem_near = paint(np.zeros((size, size, 3), np.float32), np.ones((size, size), np.float32), near_radii)
    alpha_near = 1.0 - rem_near
    dof = rng.uniform()
    if dof < 0.25:  # background out of focus
        far = _fft_blur(far, rng.uniform(0.8, 3.0))
    elif dof < 0.37 and near_radii.size:  # foreground out of focus
        s = rng.uniform(0.8, 3.0)
        near, alpha_near = _fft_blur(near, s), _fft_blur(alpha_near, s)
    img = near + (1.0 - alpha_near)[..., None] * far
    # illumination: a smooth gradient times a large-scale field, in linear light
    theta = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(theta) * yy + np.sin(theta) * xx) / size - 0.5
    illum = np.exp(rng.uniform(0, 0.8) * ramp + rng.uniform(0, 0.3) * _fft_blur(fields[1], size / 16.0) * 4)
    illum /= illum.mean()
    lin = color.srgb_to_linear(np.clip(img, 0.0, None)) * illum[..., None]
    return np.clip(color.linear_to_srgb(lin), 0.0, 1.6).astype(np.float64)


# ---------------------------------------------------------------------- a pair

# XYZ (D65) -> camera RGB matrices (x 10000) of the form of dcraw's adobe_coeff table, shaped
# after a few real cameras (Sony, Nikon, Panasonic, Olympus bodies); a Canon is deliberately
# absent (scripts/real_photos.py renders through a Canon 5D Mark III as its unseen camera).
CAMERA_CAM_XYZ = np.array([
    [7374, -2389, -551, -5435, 13162, 2519, -1006, 1795, 6552],
    [10405, -3755, -1270, -5461, 13787, 1793, -1040, 2015, 6785],
    [7122, -2108, -512, -3155, 11201, 2231, -541, 1423, 5045],
    [7687, -1984, -606, -4327, 11928, 2721, -1381, 2339, 6452],
], np.float64).reshape(-1, 3, 3) / 10000.0
#: Camera RGB -> linear sRGB matrices (rows sum to 1): BASE_CCM and the cameras above.
CAMERA_CCMS = np.stack([BASE_CCM] + [color.srgb_matrix_from_cam_xyz(m) for m in CAMERA_CAM_XYZ])

# Ranges of the drawn sensor parameters (see ``unprocess``).
GAIN_R_RANGE = (1.3, 2.8)   # daylight to tungsten
GAIN_B_RANGE = (1.2, 2.8)
SHOT_RANGE = (0.05, 2.5)    # codes per code of signal (log-uniform): base-ISO camera to high-ISO phone
READ_RANGE = (0.2, 4.0)     # codes (log-uniform)
SHADING_MAX = 0.15          # corner fall-off of the lens shading
SHADING_NONE = 0.7          # share of pairs without lens shading
# Dark pairs: white at log-U(DARK_EXPOSURE) of the white level (pushed 2.7-4 EV back by the
# calibration), DARK_SHARE of the pairs. Milder than first tried (0.02-0.15 in 20%, noise up to
# shot 4 / read 6, shading up to 0.3): the DTDM target carries gamma_s (x - y), so the noisiest
# pushed pairs dominated the loss and the model smeared and mottled clean input (issue 21).
DARK_EXPOSURE = (0.06, 0.15)
DARK_SHARE = 0.1


def random_ccm(rng: np.random.Generator) -> np.ndarray:
    """A camera colour matrix: one of ``CAMERA_CCMS`` (BASE_CCM with probability 1/2, else one of
    the real-camera-like ones) with a random perturbation (N(0, 0.1) per entry on BASE_CCM,
    N(0, 0.04) on the others), rows renormalised to sum to 1. [3, 3] float64."""
    if rng.uniform() < 0.5:
        ccm = BASE_CCM + rng.normal(0.0, 0.1, (3, 3))
    else:
        ccm = CAMERA_CCMS[1 + int(rng.integers(len(CAMERA_CCMS) - 1))] + rng.normal(0.0, 0.04, (3, 3))
    return ccm / ccm.sum(axis=1, keepdims=True)


def _log_uniform(rng, lo, hi):
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def lens_shading(h: int, w: int, falloff: float) -> np.ndarray:
    """Vignetting gain [h, w] float64: 1 at the centre, 1 - falloff at the corners, a cos^4-like
    smooth radial fall-off (1 - falloff * rho^2 with rho the distance to the centre over the half-diagonal)."""
    yy = (np.arange(h) - (h - 1) / 2.0)[:, None]
    xx = (np.arange(w) - (w - 1) / 2.0)[None, :]
    rho2 = (yy**2 + xx**2) / (((h - 1) / 2.0) ** 2 + ((w - 1) / 2.0) ** 2 + 1e-12)
    return 1.0 - falloff * rho2


def unprocess(scene_srgb: np.ndarray, rng: np.random.Generator, *, margin: int = 0,
              ccm=None, gains=None, blur_sigma=None, exposure=None, shot=None, read=None,
              warp: bool = True, shading=None):
    """sRGB image -> phone-like RGGB RAW (Brooks et al. 2019, inverse ISP); step 3 of the docstring.

    ``scene_srgb``: [H + 2 margin, W + 2 margin, 3] float, sRGB-encoded, >= 0 (values above 1
    are highlights beyond white: they clip in the RAW where they exceed the white level); the
    RAW covers its centre H x W (H, W even). ``warp``: a random affine misalignment (shift up
    to 2 px, rotation up to 0.5 deg, scale +-1%) of a square scene sampled onto that
    centre (pixels beyond the scene repeat its edge); ``warp=False`` crops the centre
    unchanged, so the RAW stays aligned with the input. Every parameter left at
    None is drawn from ``rng`` as ``make_pair`` draws it (in this order: warp,
    ``ccm`` = ``random_ccm``, ``gains`` (r, 1, b) with r ~ U(GAIN_R_RANGE) and
    b ~ U(GAIN_B_RANGE), ``blur_sigma`` ~ U(0.6, 1.8), ``exposure`` (dark: log-U(DARK_EXPOSURE)
    with probability DARK_SHARE, bright: U(0.85, 1.0) with probability 0.2, else U(0.3, 0.85)),
    ``shading`` (corner fall-off: 0 with probability SHADING_NONE, else U(0, SHADING_MAX)),
    ``shot`` ~ log-U(SHOT_RANGE), ``read`` ~ log-U(READ_RANGE)); a given one is used as is
    and draws nothing. ``ccm``: [3, 3] camera RGB -> linear sRGB, applied inverted;
    ``gains``: (r, g, b) white-balance gains, divided out; ``blur_sigma`` <= 0: no blur;
    ``exposure``: fraction of the white level that a white (after white balance) maps to;
    ``shading``: lens-shading corner fall-off in [0, 1) applied to the RAW only (0: none);
    noise variance ``shot * signal + read**2`` in codes (0 and 0: no noise). The noise
    itself is always drawn last.

    Returns (raw uint16 [H, W] RGGB codes, black 63 / white 1020, and a dict with
    the ``ccm``, ``gains``, ``blur_sigma``, ``exposure``, ``shot``, ``read``, ``shading`` and
    ``warp`` ((shift, angle_rad, scale) or None) used). The classical ISP with
    white balance ``gains / exposure`` and colour matrix ``ccm`` inverts it up to
    blur, lens shading, noise, clipping and quantisation (``calibration`` of the dict).
    """
    scene = np.asarray(scene_srgb, np.float64)
    if scene.ndim != 3 or scene.shape[-1] != 3:
        raise ValueError(f"expected an sRGB image [H, W, 3], got shape {scene.shape}")
    h, w = scene.shape[0] - 2 * margin, scene.shape[1] - 2 * margin
    if margin < 0 or h < 2 or w < 2 or h % 2 or w % 2:
        raise ValueError(f"the RAW (scene {scene.shape[:2]} less a margin of {margin}) must have "
                         f"even sides >= 2, got {h}x{w}")
    if warp:
        if h != w or scene.shape[0] != scene.shape[1]:
            raise ValueError(f"warp=True needs a square scene, got {scene.shape[:2]}")
        warp_params = (rng.uniform(-2, 2, 2), np.deg2rad(rng.uniform(-0.5, 0.5)), rng.uniform(0.99, 1.01))
        image = affine_warp(scene, h, *warp_params)
    else:
        warp_params = None
        image = scene[margin:margin + h, margin:margin + w]
    lin = color.srgb_to_linear(np.clip(image, 0.0, None))
    ccm = random_ccm(rng) if ccm is None else np.asarray(ccm, np.float64)
    cam = lin @ np.linalg.inv(ccm).T  # inverse colour matrix
    if gains is None:
        gains = np.array([rng.uniform(*GAIN_R_RANGE), 1.0, rng.uniform(*GAIN_B_RANGE)])
    gains = np.asarray(gains, np.float64)
    cam = np.clip(cam / gains, 0.0, None)  # inverse white balance
    blur_sigma = rng.uniform(0.6, 1.8) if blur_sigma is None else float(blur_sigma)
    if blur_sigma > 0:
        cam = _fft_blur(cam, blur_sigma)  # optics blur, detail loss
    if exposure is None:
        u = rng.uniform()
        exposure = (_log_uniform(rng, DARK_EXPOSURE[0], DARK_EXPOSURE[1]) if u < DARK_SHARE else
                    rng.uniform(0.85, 1.0) if u < DARK_SHARE + 0.2 else rng.uniform(0.3, 0.85))
    if shading is None:
        shading = 0.0 if rng.uniform() < SHADING_NONE else rng.uniform(0.0, SHADING_MAX)
    shading = float(shading)
    if not 0.0 <= shading < 1.0:
        raise ValueError(f"shading (corner fall-off) must be in [0, 1), got {shading}")
    mosaic = np.empty((h, w), np.float64)
    mosaic[0::2, 0::2] = cam[0::2, 0::2, 0]  # R
    mosaic[0::2, 1::2] = cam[0::2, 1::2, 1]  # G (red rows)
    mosaic[1::2, 0::2] = cam[1::2, 0::2, 1]  # G (blue rows)
    mosaic[1::2, 1::2] = cam[1::2, 1::2, 2]  # B
    if shading > 0:
        mosaic *= lens_shading(h, w, shading)
    signal = mosaic * exposure * (WHITE_LEVEL - BLACK_LEVEL)
    shot = _log_uniform(rng, *SHOT_RANGE) if shot is None else float(shot)
    read = _log_uniform(rng, *READ_RANGE) if read is None else float(read)
    # max(.., 0): the optics blur (an FFT Gaussian cut at Nyquist) rings a few % below zero beside
    # bright edges at small sigma, where shot * signal + read**2 can go negative (its sqrt NaN)
    noisy = signal + np.sqrt(np.maximum(shot * signal + read**2, 0.0)) * rng.standard_normal(signal.shape)
    # the sensor saturates at the white level (clipped highlights), codes stop at 10 bits
    raw = np.clip(np.round(np.minimum(noisy, WHITE_LEVEL - BLACK_LEVEL) + BLACK_LEVEL), 0, MAX_CODE)
    raw = raw.astype(np.uint16)
    info = {"ccm": ccm, "gains": gains, "blur_sigma": float(blur_sigma), "exposure": float(exposure),
            "shot": float(shot), "read": float(read), "shading": shading, "warp": warp_params}
    return raw, info


def calibration(info: dict) -> dict:
    """The true calibration of a pair from ``unprocess``'s info, in the project's calibration
    interface (JSON-ready): {"wb_gains": [r, 1.0, b], "ccm": [[3 x 3]] (camera RGB -> linear sRGB,
    rows sum to 1), "baseline_exposure": -log2(exposure) (EV; the intended linear values are the
    normalised RAW [0, 1] times 2**EV)}."""
    gains = np.asarray(info["gains"], np.float64)
    return {"wb_gains": [float(g) for g in gains / gains[1]],
            "ccm": [[float(v) for v in row] for row in np.asarray(info["ccm"], np.float64)],
            "baseline_exposure": float(-np.log2(info["exposure"]))}


def make_example(seed: int, split: str, index: int, size: int = 448, **sensor):
    """One synthetic pair with its true calibration, deterministic per (seed, split, index).

    Returns (raw uint16 [size, size] RGGB codes (black 63, white 1020), dslr uint8
    [size, size, 3] sRGB, calibration dict as ``calibration``). ``sensor``: keyword
    arguments of ``unprocess`` fixed instead of drawn (e.g. ``blur_sigma=0, shot=0,
    read=0, shading=0, warp=False`` for a clean, aligned RAW); the scene does not change.
    """
    if size % 2 or size < 2:
        raise ValueError(f"size must be even and >= 2 (2x2 Bayer cells), got {size}")
    if split not in SPLIT_IDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    margin = 8
    scene = render_scene(rng, size + 2 * margin)
    dslr = np.round(np.clip(scene[margin:margin + size, margin:margin + size], 0, 1) * 255).astype(np.uint8)
    raw, info = unprocess(scene, rng, margin=margin, **sensor)
    return raw, dslr, calibration(info)


def make_pair(seed: int, split: str, index: int, size: int = 448):
    """Returns (raw uint16 [size, size] RGGB mosaic, dslr uint8 [size, size, 3]); ``make_example``
    without the calibration."""
    raw, dslr, _ = make_example(seed, split, index, size)
    return raw, dslr


def write_pair(out: str, split: str, index: int, raw: np.ndarray, dslr: np.ndarray,
               calib: dict | None = None) -> None:
    """Writes huawei_raw/<index>.png, canon/<index>.jpg and, given ``calib``, calibration/<index>.json."""
    import json

    from PIL import Image

    raw_path = os.path.join(out, split, "huawei_raw", f"{index}.png")
    if raw.max() <= 255:  # real ZRR stores such dark frames as 8-bit PNG
        Image.fromarray(raw.astype(np.uint8), mode="L").save(raw_path)
    else:
        Image.fromarray(raw.astype(np.uint16)).save(raw_path)
    Image.fromarray(dslr, mode="RGB").save(os.path.join(out, split, "canon", f"{index}.jpg"), quality=95)
    if calib is not None:
        os.makedirs(os.path.join(out, split, "calibration"), exist_ok=True)
        with open(os.path.join(out, split, "calibration", f"{index}.json"), "w") as f:
            json.dump(calib, f)


def _work(args):
    out, seed, split, index, size, aligned = args
    raw, dslr, calib = make_example(seed, split, index, size, **({"warp": False} if aligned else {}))
    write_pair(out, split, index, raw, dslr, calib)
    return index


def generate(out: str, num_train: int, num_test: int, size: int = 448, seed: int = 0,
             workers: int | None = None, progress: bool = True, aligned: bool = False) -> None:
    """Writes the synthetic dataset under ``out`` (see the module docstring). Any even
    ``size``; only ``tfds_zrr.zrr.PATCH_SIZE`` (448) builds with ``zrr/patches``.
    ``aligned``: no misalignment warp (the RAW is pixel-aligned with the DSLR image)."""
    jobs = []
    for split, n in (("train", num_train), ("test", num_test)):
        if n < 0:
            raise ValueError(f"num_{split} must be >= 0, got {n}")
        os.makedirs(os.path.join(out, split, "huawei_raw"), exist_ok=True)
        os.makedirs(os.path.join(out, split, "canon"), exist_ok=True)
        os.makedirs(os.path.join(out, split, "calibration"), exist_ok=True)
        jobs += [(out, seed, split, i, size, aligned) for i in range(n)]
    workers = workers or min(len(jobs), os.cpu_count() or 1) or 1
    bar = None
    if progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=len(jobs), desc="synthetic ZRR pairs", unit="pair")
        except ImportError:
            pass
    if workers == 1:
        for job in jobs:
            _work(job)
            bar and bar.update(1)
    else:
        # "spawn": callers (tests, notebooks) may have JAX loaded, and forking a
        # multithreaded process can deadlock.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for _ in pool.map(_work, jobs, chunksize=4):
                bar and bar.update(1)
    if bar:
        bar.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m diffraw_jax.data.synthetic_zrr", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (ZRR layout)")
    p.add_argument("--num_train", type=int, required=True)
    p.add_argument("--num_test", type=int, required=True)
    p.add_argument("--size", type=int, default=448,
                   help="patch size; must be 448, the size the TFDS builder (zrr/patches) stores")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out")
    p.add_argument("--aligned", action="store_true",
                   help="no misalignment warp: the RAW is pixel-aligned with the DSLR image (the training "
                   "data of calibrated models, whose condition comes from the RAW itself)")
    a = p.parse_args(argv)
    from tfds_zrr.zrr import PATCH_SIZE  # the size the builder stores (loads tensorflow_datasets)

    if a.size != PATCH_SIZE:
        p.error(f"--size must be {PATCH_SIZE}, got {a.size}: the TFDS builder (zrr/patches) stores "
                f"{PATCH_SIZE}x{PATCH_SIZE} pairs and would skip every {a.size}x{a.size} one "
                f"(diffraw_jax.data.synthetic_zrr.generate() writes other even sizes from Python)")
    if a.num_train < 1 or a.num_test < 1:
        p.error(f"--num_train and --num_test must be >= 1, got {a.num_train} and {a.num_test}: "
                f"the TFDS builder needs pairs in both splits")
    if os.path.isdir(a.out) and os.listdir(a.out) and not a.overwrite:
        p.error(f"--out {a.out} is not empty; pass --overwrite to write into it")
    t0 = time.time()
    generate(a.out, a.num_train, a.num_test, a.size, a.seed, a.workers, aligned=a.aligned)
    print(f"wrote {a.num_train} train + {a.num_test} test pairs ({a.size}x{a.size}) to {a.out} "
          f"in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

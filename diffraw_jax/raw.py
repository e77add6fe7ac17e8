"""RAW (Bayer) conventions for diffraw-jax, in one place.

Every function here accepts numpy arrays or jax arrays (including tracers
inside ``jit``) and returns the same kind; only numpy and jax are imported.

Canonical plane order
---------------------
A Bayer mosaic ``raw[..., H, W]`` is packed into four half-resolution planes
``planes[..., H'/2, W'/2, 4]`` in ONE canonical order, whatever the sensor's
CFA pattern::

    index  name  position in the 2x2 cell      RGGB mosaic slice
    0      R     (row 0, col 0)                raw[0::2, 0::2]
    1      Gr    (row 0, col 1) green, red row  raw[0::2, 1::2]
    2      Gb    (row 1, col 0) green, blue row raw[1::2, 0::2]
    3      B     (row 1, col 1)                raw[1::2, 1::2]

i.e. the raster order of an RGGB 2x2 cell. We use it because it makes packing
a plain ``space_to_depth(2)`` of the RGGB mosaic, so ``depth_to_space(2)`` of
the planes (``unpack``) gives back the mosaic exactly, and a network's
pixel-shuffle output layer lines up with the sensor grid.

CFA crop rules
--------------
Input mosaics must have even ``H`` and ``W``. Other patterns are brought to
the RGGB layout by cropping one row and/or one column at the start and, to
keep the size even, one at the end (``crop_box`` returns the exact box)::

    pattern  (top, left)  kept region raw[top:bottom, left:right]  planes
    RGGB     (0, 0)       raw[0:H,   0:W  ]                        [H/2,   W/2,   4]
    GRBG     (0, 1)       raw[0:H,   1:W-1]  (first+last column)   [H/2,   W/2-1, 4]
    GBRG     (1, 0)       raw[1:H-1, 0:W  ]  (first+last row)      [H/2-1, W/2,   4]
    BGGR     (1, 1)       raw[1:H-1, 1:W-1]  (both)                [H/2-1, W/2-1, 4]

Plane pixel ``planes[i, j, k]`` is ``raw[top + 2*i + k//2, left + 2*j + k%2]``.
``unpack`` returns the cropped region (which is RGGB); ``unpack_frame`` puts
it back into a full ``H x W`` frame in the original pattern's layout.

PyNET / MW-ISPNet / LiteISPNet order
------------------------------------
Those projects take ``R = raw[0::2, 0::2]``, ``"Gb" = raw[0::2, 1::2]``,
``"Gr" = raw[1::2, 0::2]``, ``B = raw[1::2, 1::2]`` and stack
``(B, "Gb", R, "Gr")``. Their green names are swapped relative to ours (their
"Gb" is our Gr, the green on red rows), so in our indices their stack is
``ours[..., [3, 1, 0, 2]]``. Feeding planes in the wrong order swaps red and
blue (red-tinted output); convert with ``to_pynet_order`` /
``from_pynet_order``.

ZRR
---
Huawei P20 RAW, RGGB, 10-bit codes; LiteISPNet normalises
``max(raw - 63, 0) / (1020 - 63)``: ``ZRR_PATTERN``, ``ZRR_BLACK_LEVEL``,
``ZRR_WHITE_LEVEL``.
"""
from __future__ import annotations

from typing import Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "noise_profile",
    "CFA_PATTERNS",
    "CANONICAL_ORDER",
    "PYNET_ORDER",
    "ZRR_PATTERN",
    "ZRR_BLACK_LEVEL",
    "ZRR_WHITE_LEVEL",
    "check_pattern",
    "cfa_offset",
    "crop_box",
    "crop_to_rggb",
    "space_to_depth",
    "depth_to_space",
    "pack",
    "unpack",
    "unpack_frame",
    "rgb_to_planes",
    "pattern_from_rawpy",
    "canonical_channel_values",
    "normalize",
    "denormalize",
    "to_pynet_order",
    "from_pynet_order",
]

ArrayLike = Union[np.ndarray, jax.Array]

CFA_PATTERNS: Tuple[str, ...] = ("RGGB", "BGGR", "GRBG", "GBRG")
CANONICAL_ORDER: Tuple[str, ...] = ("R", "Gr", "Gb", "B")
# Their names, their stacking order: (B, "Gb", R, "Gr").
PYNET_ORDER: Tuple[str, ...] = ("B", "Gb", "R", "Gr")
# Our plane index for each PyNET slot, and PyNET slot for each of our planes.
_TO_PYNET = (3, 1, 0, 2)
_FROM_PYNET = (2, 1, 3, 0)

ZRR_PATTERN = "RGGB"
ZRR_BLACK_LEVEL = 63
ZRR_WHITE_LEVEL = 1020

# (row, col) of the first red pixel: where an RGGB cell starts.
_OFFSETS = {"RGGB": (0, 0), "GRBG": (0, 1), "GBRG": (1, 0), "BGGR": (1, 1)}


def _xp(x):
    """jax.numpy for jax arrays/tracers, numpy otherwise."""
    return jnp if isinstance(x, jax.Array) else np


def _xp_any(*xs):
    """jax.numpy if any argument is a jax array/tracer, numpy otherwise."""
    return jnp if any(isinstance(x, jax.Array) for x in xs) else np


def _as_array(x):
    return x if isinstance(x, jax.Array) else np.asarray(x)


def check_pattern(pattern) -> str:
    """Return ``pattern`` as an upper-case str; ValueError unless a 2x2 Bayer CFA."""
    if isinstance(pattern, bytes):
        pattern = pattern.decode("ascii", "replace")
    name = str(pattern).upper()
    if name not in _OFFSETS:
        raise ValueError(
            f"unknown CFA pattern {pattern!r}; expected one of {', '.join(CFA_PATTERNS)}")
    return name


def cfa_offset(pattern) -> Tuple[int, int]:
    """(top, left) of the first RGGB cell in a ``pattern`` mosaic: 0 or 1 each."""
    return _OFFSETS[check_pattern(pattern)]


def crop_box(pattern, height: int, width: int) -> Tuple[int, int, int, int]:
    """Region of an ``H x W`` mosaic that the canonical planes cover.

    Returns ``(top, left, bottom, right)`` with ``bottom``/``right`` exclusive:
    ``raw[top:bottom, left:right]`` is an RGGB mosaic with even size. ``top``
    (``left``) is 1 for patterns starting with a green/blue row (column) and
    then one trailing row (column) is dropped too. ValueError for unknown
    patterns, odd sizes, or a crop that leaves nothing.
    """
    top, left = cfa_offset(pattern)
    height, width = int(height), int(width)
    if height % 2 or width % 2:
        raise ValueError(
            f"Bayer mosaic height and width must be even, got {height}x{width}")
    bottom, right = height - top, width - left
    if bottom - top < 2 or right - left < 2:
        raise ValueError(
            f"mosaic {height}x{width} is too small for pattern {check_pattern(pattern)}")
    return top, left, bottom, right


def _check_mosaic(raw) -> None:
    if raw.ndim < 2:
        raise ValueError(
            f"expected a Bayer mosaic [..., H, W] (rank >= 2), got shape {tuple(raw.shape)}")


def _check_planes(planes, channels: int = 4) -> None:
    if planes.ndim < 3 or planes.shape[-1] != channels:
        raise ValueError(
            f"expected planes [..., h, w, {channels}], got shape {tuple(planes.shape)}")


def crop_to_rggb(raw: ArrayLike, pattern="RGGB") -> ArrayLike:
    """Crop ``raw[..., H, W]`` (``pattern`` layout) to its RGGB region (see ``crop_box``)."""
    raw = _as_array(raw)
    _check_mosaic(raw)
    top, left, bottom, right = crop_box(pattern, raw.shape[-2], raw.shape[-1])
    return raw[..., top:bottom, left:right]


def space_to_depth(x: ArrayLike, block_size: int = 2) -> ArrayLike:
    """[..., H, W, C] -> [..., H/b, W/b, b*b*C], channel ``(dy*b + dx)*C + c``.

    TensorFlow's NHWC convention (PyTorch's PixelUnshuffle orders channels
    ``c*b*b + dy*b + dx`` instead; the two agree when C == 1). Any leading
    dims; dtype kept. ValueError if H or W is not a multiple of ``b``.
    """
    x = _as_array(x)
    xp = _xp(x)
    b = int(block_size)
    if x.ndim < 3:
        raise ValueError(f"expected [..., H, W, C], got shape {tuple(x.shape)}")
    *lead, h, w, c = x.shape
    if h % b or w % b:
        raise ValueError(f"H and W ({h}x{w}) must be multiples of block_size {b}")
    n = len(lead)
    y = xp.reshape(x, (*lead, h // b, b, w // b, b, c))
    perm = (*range(n), n, n + 2, n + 1, n + 3, n + 4)
    y = xp.transpose(y, perm)
    return xp.reshape(y, (*lead, h // b, w // b, b * b * c))


def depth_to_space(x: ArrayLike, block_size: int = 2) -> ArrayLike:
    """[..., h, w, b*b*C] -> [..., h*b, w*b, C]; exact inverse of ``space_to_depth``.

    With C == 1 this is ``unpack``: ``depth_to_space(pack(raw), 2)[..., 0]``
    is the RGGB mosaic ``raw``.
    """
    x = _as_array(x)
    xp = _xp(x)
    b = int(block_size)
    if x.ndim < 3:
        raise ValueError(f"expected [..., h, w, C], got shape {tuple(x.shape)}")
    *lead, h, w, cc = x.shape
    if cc % (b * b):
        raise ValueError(f"channels ({cc}) must be a multiple of block_size**2 = {b * b}")
    c = cc // (b * b)
    n = len(lead)
    y = xp.reshape(x, (*lead, h, w, b, b, c))
    perm = (*range(n), n, n + 2, n + 1, n + 3, n + 4)
    y = xp.transpose(y, perm)
    return xp.reshape(y, (*lead, h * b, w * b, c))


def pack(raw: ArrayLike, pattern="RGGB") -> ArrayLike:
    """Bayer mosaic [..., H, W] -> canonical planes [..., h, w, 4] (R, Gr, Gb, B).

    ``h, w`` are ``H/2, W/2`` for RGGB and one less along each cropped axis for
    other patterns (``crop_box``). dtype is kept (uint16 stays uint16).
    """
    return space_to_depth(crop_to_rggb(raw, pattern)[..., None], 2)


def unpack(planes: ArrayLike) -> ArrayLike:
    """Canonical planes [..., h, w, 4] -> RGGB mosaic [..., 2h, 2w]; dtype kept.

    For a non-RGGB source this is the cropped region ``raw[top:bottom,
    left:right]``; use ``unpack_frame`` to get the original frame layout.
    """
    planes = _as_array(planes)
    _check_planes(planes)
    return depth_to_space(planes, 2)[..., 0]


def unpack_frame(planes: ArrayLike, pattern, height: int, width: int,
                 fill_value=0) -> ArrayLike:
    """Planes -> mosaic [..., H, W] in the original ``pattern`` layout.

    Pixels inside ``crop_box(pattern, H, W)`` are restored exactly; the rows
    and columns that packing dropped are set to ``fill_value``.
    """
    planes = _as_array(planes)
    _check_planes(planes)
    top, left, bottom, right = crop_box(pattern, height, width)
    h, w = planes.shape[-3], planes.shape[-2]
    if (2 * h, 2 * w) != (bottom - top, right - left):
        raise ValueError(
            f"planes {h}x{w} do not match a {height}x{width} {check_pattern(pattern)} "
            f"frame (expected {(bottom - top) // 2}x{(right - left) // 2})")
    mosaic = unpack(planes)
    xp = _xp(planes)
    out = xp.full((*planes.shape[:-3], int(height), int(width)), fill_value,
                  dtype=planes.dtype)
    if xp is jnp:
        return out.at[..., top:bottom, left:right].set(mosaic)
    out[..., top:bottom, left:right] = mosaic
    return out


def rgb_to_planes(rgb: ArrayLike) -> ArrayLike:
    """Sample a full-colour image [..., H, W, 3] on an RGGB grid -> planes [..., H/2, W/2, 4].

    Simulates a Bayer sensor: R from (0,0), G from (0,1) and (1,0), B from
    (1,1) of every 2x2 cell. H and W must be even. dtype kept.
    """
    rgb = _as_array(rgb)
    xp = _xp(rgb)
    if rgb.ndim < 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected rgb [..., H, W, 3], got shape {tuple(rgb.shape)}")
    if rgb.shape[-3] % 2 or rgb.shape[-2] % 2:
        raise ValueError(f"H and W must be even, got {rgb.shape[-3]}x{rgb.shape[-2]}")
    return xp.stack([rgb[..., 0::2, 0::2, 0], rgb[..., 0::2, 1::2, 1],
                     rgb[..., 1::2, 0::2, 1], rgb[..., 1::2, 1::2, 2]], axis=-1)


def pattern_from_rawpy(raw_pattern, color_desc) -> str:
    """CFA pattern name from rawpy metadata (``raw.raw_pattern``, ``raw.color_desc``).

    ``raw_pattern`` is the 2x2 int array of colour indices into ``color_desc``
    (bytes or str, e.g. b'RGBG', where both G's are green). Returns one of
    "RGGB", "BGGR", "GRBG", "GBRG". ValueError for anything else: no CFA
    (None), X-Trans (6x6), a cell missing a colour, CMYG, RGBE, ...
    """
    if raw_pattern is None:
        raise ValueError("no CFA pattern (raw_pattern is None): not a Bayer sensor")
    rp = np.asarray(raw_pattern)
    if rp.shape != (2, 2):
        raise ValueError(
            f"non-Bayer CFA: raw_pattern has shape {rp.shape} (X-Trans is 6x6), expected 2x2")
    desc = color_desc.decode("ascii", "replace") if isinstance(color_desc, bytes) \
        else str(color_desc)
    try:
        name = "".join(desc[int(i)] for i in rp.ravel()).upper()
    except (IndexError, ValueError) as e:
        raise ValueError(f"raw_pattern {rp.tolist()} does not index color_desc {desc!r}") from e
    if name not in _OFFSETS:
        raise ValueError(
            f"non-Bayer CFA {name!r} (raw_pattern {rp.tolist()}, color_desc {desc!r}); "
            f"expected one of {', '.join(CFA_PATTERNS)}")
    return name


def canonical_channel_values(values, raw_pattern, color_desc) -> np.ndarray:
    """Per-colour-index values (e.g. rawpy ``black_level_per_channel``) -> 4 values
    in canonical plane order (R, Gr, Gb, B), float64 numpy.

    Plane ``k`` sits at ``(top + k//2, left + k%2)`` of the original frame, so
    its value is ``values[raw_pattern[(top + k//2) % 2, (left + k%2) % 2]]``.
    """
    top, left = cfa_offset(pattern_from_rawpy(raw_pattern, color_desc))
    rp = np.asarray(raw_pattern)
    vals = np.asarray(values, dtype=np.float64).ravel()
    return np.array([vals[rp[(top + k // 2) % 2, (left + k % 2) % 2]] for k in range(4)])


def _level(level, name: str, xp):
    lv = level if isinstance(level, jax.Array) else np.asarray(level, dtype=np.float32)
    if lv.ndim == 0 or (lv.ndim == 1 and lv.shape[0] == 4):
        return xp.asarray(lv, dtype=xp.float32)
    raise ValueError(f"{name} must be a scalar or 4 per-plane values (R, Gr, Gb, B), "
                     f"got shape {tuple(lv.shape)}")


def normalize(planes: ArrayLike, black_level=ZRR_BLACK_LEVEL,
              white_level=ZRR_WHITE_LEVEL) -> ArrayLike:
    """Codes -> float32 in [0, 1]: ``clip((x - black) / (white - black), 0, 1)``.

    ``planes`` [..., 4] canonical order (any dtype); ``black_level`` and
    ``white_level`` are scalars or 4 values in canonical order (R, Gr, Gb, B).
    Defaults are ZRR's (63, 1020), i.e. LiteISPNet's normalisation.
    """
    planes = _as_array(planes)
    _check_planes(planes)
    xp = _xp_any(planes, black_level, white_level)
    black = _level(black_level, "black_level", xp)
    white = _level(white_level, "white_level", xp)
    try:
        bad = bool(np.any(np.asarray(white) <= np.asarray(black)))
    except jax.errors.TracerArrayConversionError:  # traced levels: cannot check
        bad = False
    if bad:
        raise ValueError(f"white_level {white_level} must exceed black_level {black_level}")
    x = planes.astype(xp.float32)
    y = (x - black) / (white - black)
    return xp.clip(y, 0.0, 1.0).astype(xp.float32)


def denormalize(x: ArrayLike, black_level=ZRR_BLACK_LEVEL,
                white_level=ZRR_WHITE_LEVEL) -> ArrayLike:
    """[0, 1] planes [..., 4] -> float32 codes ``black + x * (white - black)`` (no rounding)."""
    x = _as_array(x)
    _check_planes(x)
    xp = _xp_any(x, black_level, white_level)
    black = _level(black_level, "black_level", xp)
    white = _level(white_level, "white_level", xp)
    return (black + x.astype(xp.float32) * (white - black)).astype(xp.float32)


def to_pynet_order(planes: ArrayLike) -> ArrayLike:
    """Canonical (R, Gr, Gb, B) -> PyNET/LiteISPNet/MW-ISPNet stack (B, "Gb", R, "Gr").

    Their "Gb" = raw[0::2, 1::2] = our Gr; their "Gr" = raw[1::2, 0::2] = our Gb.
    """
    planes = _as_array(planes)
    _check_planes(planes)
    return planes[..., list(_TO_PYNET)]


def from_pynet_order(planes: ArrayLike) -> ArrayLike:
    """PyNET/LiteISPNet/MW-ISPNet stack (B, "Gb", R, "Gr") -> canonical (R, Gr, Gb, B)."""
    planes = _as_array(planes)
    _check_planes(planes)
    return planes[..., list(_FROM_PYNET)]


# ---------------------------------------------------------------------------
# Noise of a RAW file (issue 28; numpy only, host side).

#: Side (plane pixels) of the blocks ``noise_profile`` measures, and the low percentile of block
#: variances per brightness bin it takes as the noise (the flattest blocks).
NOISE_BLOCK = 8
NOISE_PERCENTILE = 10.0


def _chi2_quantile_over_k(p: float, k: int) -> float:
    """The p-quantile of chi^2_k / k (Wilson-Hilferty: (1 - 2/(9k) + z_p sqrt(2/(9k)))**3; z_p the
    standard normal quantile by bisection on erf). Scalar float."""
    import math

    lo, hi = -10.0, 10.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            lo = mid
        else:
            hi = mid
    z = 0.5 * (lo + hi)
    c = 2.0 / (9.0 * k)
    return (1.0 - c + z * math.sqrt(c)) ** 3


def noise_profile(planes, *, block: int = NOISE_BLOCK, percentile: float = NOISE_PERCENTILE,
                  bins: int = 12) -> dict:
    """The heteroscedastic noise of a RAW frame: variance = ``shot`` x signal + ``read``**2.

    ``planes``: [h, w, 4] (any channel count) float, black-subtracted and normalised to [0, 1]
    (``normalize``). Per plane, the second differences along rows, p[j-1] - 2 p[j] + p[j+1] (same
    colour, two mosaic pixels apart), have variance 6 sigma^2 where the signal is flat or linear
    (a first difference also counts a gradient; on small textured photographs it read a clean
    sensor's noise up to 3x too high, the second difference up to 1.7x). In blocks of ``block`` x
    ``block`` plane pixels: the block's mean signal and mean(d**2) / 6. Blocks with clipped pixels
    (> 0.98) are dropped; the rest are put into ``bins`` log-spaced brightness bins (0.002 to 1);
    in each bin with >= 20 blocks the ``percentile`` (10th) of the block variances, divided by that
    percentile of chi^2_k / k (k = block**2 / 1.94: a block holds block**2 second differences,
    correlated -2/3 at lag 1 and 1/6 at lag 2 for white noise, which leaves
    1 / (1 + 2 (4/9 + 1/36)) of their degrees of freedom) -- the flattest blocks' variance is the noise's, and the low
    percentile of a noisy estimate is corrected back to its mean -- is the noise variance at the
    bin's median signal. A least-squares line through those points (weights: 1 / variance**2,
    i.e. relative errors) gives ``shot`` (variance per unit of signal, in units of the white
    level) and ``read`` (std at zero signal, clipped at >= 0).

    Returns {"shot": float, "read": float, "points": [[signal, variance], ...]}; ``shot`` = ``read``
    = nan when fewer than two bins have enough blocks (a tiny or saturated frame).
    """
    x = np.asarray(planes, np.float64)
    if x.ndim == 2:
        x = x[..., None]
    h, w = (x.shape[0] // block) * block, (x.shape[1] // block) * block
    pts = []
    edges = np.geomspace(0.002, 1.0, bins + 1)
    k = block * block / (1.0 + 2.0 * (4.0 / 9.0 + 1.0 / 36.0))
    corr = _chi2_quantile_over_k(percentile / 100.0, max(k, 1.0))
    means, variances = [], []
    for c in range(x.shape[-1] if h >= block and w >= block else 0):
        p = x[:h, :w, c]
        d2 = np.zeros((h, w))
        d2[:, 1:-1] = (p[:, :-2] - 2.0 * p[:, 1:-1] + p[:, 2:]) ** 2
        valid = np.zeros((h, w))
        valid[:, 1:-1] = 1.0  # the frame's first and last columns have no second difference
        blocks = lambda a: a.reshape(h // block, block, w // block, block)  # noqa: E731
        m = blocks(p).mean(axis=(1, 3))
        v = (blocks(d2) * blocks(valid)).sum(axis=(1, 3)) / blocks(valid).sum(axis=(1, 3)) / 6.0
        clipped = blocks(p).max(axis=(1, 3)) > 0.98
        means.append(m[~clipped])
        variances.append(v[~clipped])
    if means:
        m, v = np.concatenate(means), np.concatenate(variances)
        idx = np.digitize(m, edges) - 1
        for i in range(bins):
            sel = idx == i
            if sel.sum() >= 20:
                pts.append([float(np.median(m[sel])), float(np.percentile(v[sel], percentile) / corr)])
    if len(pts) < 2:
        return {"shot": float("nan"), "read": float("nan"), "points": pts}
    a = np.asarray(pts)
    wts = 1.0 / np.maximum(a[:, 1], 1e-20)
    design = np.stack([a[:, 0], np.ones(len(a))], axis=1) * wts[:, None]
    shot, var0 = np.linalg.lstsq(design, a[:, 1] * wts, rcond=None)[0]
    return {"shot": float(max(shot, 0.0)), "read": float(np.sqrt(max(var0, 0.0))), "points": pts}

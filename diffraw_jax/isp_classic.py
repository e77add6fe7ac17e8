"""Classical ISP in JAX: the "simple ISP pipeline" of DiffRAW Fig. 3a.

Used to visualise RAW and as a fallback colour condition. Everything is pure
and jit-able (string/None options are static); any leading batch dims.

Pipeline (``process``)::

    planes [..., h, w, 4]  normalised canonical (R, Gr, Gb, B) in [0, 1]
      -> white balance on the planes (gains (r, g, b); gray-world if None)
      -> demosaic (Malvar-He-Cutler 2004, or bilinear) -> linear camera RGB
         [..., 2h, 2w, 3]
      -> 3x3 colour matrix (camera RGB -> linear sRGB; identity if None)
      -> clip to [0, 1] -> sRGB tone curve (IEC 61966-2-1, ``color.linear_to_srgb``)
    -> sRGB [..., 2h, 2w, 3] float32 in [0, 1]

White balance is applied before demosaicking, as in camera pipelines:
Malvar's gradient correction borrows the high frequencies of one channel for
another, which assumes the channels are balanced.

Demosaic filters are applied with exact float32 shifted-slice sums (no
convolution primitive, so no TF32 on GPUs). Edges use ``reflect`` padding
(mirror about the edge pixel, edge not repeated): it keeps the CFA parity,
pixel -1 gets the colour of pixel -1, so the filters see a valid mosaic.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from . import color
from .raw import unpack

__all__ = [
    "MALVAR_KERNELS",
    "BILINEAR_KERNELS",
    "DEMOSAIC_METHODS",
    "gray_world_gains",
    "white_balance",
    "demosaic",
    "apply_ccm",
    "normalize_ccm_rows",
    "process",
    "process_jit",
]

Array = jax.Array

# ---------------------------------------------------------------------------
# Demosaic kernels (5x5, centre at [2, 2], applied as correlation; all are
# symmetric so correlation == convolution).
#
# Malvar, He & Cutler (ICASSP 2004): bilinear interpolation of the missing
# colour plus a gain times a discrete Laplacian of the colour known at the
# pixel ("gradient correction"), gains alpha = 1/2, beta = 5/8, gamma = 3/4:
#   G at R/B : bilinear 4-neighbour cross + alpha * (X0 - mean of X at +-2 on axes)
#   R/B at G : bilinear pair along the row (H) or column (V)
#              + beta * (G0 - (4 diagonal G + 2 G at +-2 along the pair axis)/5
#                           + (2 G at +-2 across the pair axis)/10)
#   R at B, B at R : bilinear 4 diagonals + gamma * (X0 - mean of X at +-2 on axes)
# Expanding gives the published integer tables (x 1/8); see tests.
# ---------------------------------------------------------------------------


def _kernel(taps: Dict[Tuple[int, int], float]) -> np.ndarray:
    k = np.zeros((5, 5), np.float64)
    for (dy, dx), v in taps.items():
        k[2 + dy, 2 + dx] += v
    return k


_AXIS2 = [(-2, 0), (2, 0), (0, -2), (0, 2)]
_DIAG1 = [(-1, -1), (-1, 1), (1, -1), (1, 1)]
_CROSS1 = [(-1, 0), (1, 0), (0, -1), (0, 1)]

_BIL_G = _kernel({p: 0.25 for p in _CROSS1})
_BIL_H = _kernel({(0, -1): 0.5, (0, 1): 0.5})
_BIL_V = _BIL_H.T.copy()
_BIL_D = _kernel({p: 0.25 for p in _DIAG1})

# Laplacian-type corrections (each sums to zero).
_LAP_AXIS = _kernel({(0, 0): 1.0, **{p: -0.25 for p in _AXIS2}})
_LAP_G_H = _kernel({(0, 0): 1.0, **{p: -0.2 for p in _DIAG1},
                    (0, -2): -0.2, (0, 2): -0.2, (-2, 0): 0.1, (2, 0): 0.1})
_LAP_G_V = _LAP_G_H.T.copy()

_ALPHA, _BETA, _GAMMA = 0.5, 5.0 / 8.0, 0.75

#: Kernels by role: "G" (green at R/B), "H" (R/B at G whose row neighbours
#: carry that colour), "V" (column neighbours), "D" (R at B / B at R).
MALVAR_KERNELS: Dict[str, np.ndarray] = {
    "G": _BIL_G + _ALPHA * _LAP_AXIS,
    "H": _BIL_H + _BETA * _LAP_G_H,
    "V": _BIL_V + _BETA * _LAP_G_V,
    "D": _BIL_D + _GAMMA * _LAP_AXIS,
}
BILINEAR_KERNELS: Dict[str, np.ndarray] = {"G": _BIL_G, "H": _BIL_H, "V": _BIL_V, "D": _BIL_D}
DEMOSAIC_METHODS = {"malvar": MALVAR_KERNELS, "bilinear": BILINEAR_KERNELS}

# For each output colour, which kernel fills each canonical plane position
# (R, Gr, Gb, B); None = the sample itself. Gr sits on a red row (row
# neighbours R, column neighbours B); Gb on a blue row.
_PLAN = {
    0: (None, "H", "V", "D"),   # red
    1: ("G", None, None, "G"),  # green
    2: ("D", "V", "H", None),   # blue
}


# ---------------------------------------------------------------------------
# White balance and colour matrix.
# ---------------------------------------------------------------------------

def gray_world_gains(planes: Array, eps: float = 1e-8) -> Array:
    """Gray-world gains [..., 3] = (mean G / mean R, 1, mean G / mean B).

    ``planes`` [..., h, w, 4] canonical; means over h, w per image (mean G
    averages both greens). A channel with mean <= eps gets gain 1.
    """
    x = jnp.asarray(planes, jnp.float32)
    m = jnp.mean(x, axis=(-3, -2))
    r, g, b = m[..., 0], 0.5 * (m[..., 1] + m[..., 2]), m[..., 3]
    gr = jnp.where(r > eps, g / jnp.maximum(r, eps), 1.0)
    gb = jnp.where(b > eps, g / jnp.maximum(b, eps), 1.0)
    return jnp.stack([gr, jnp.ones_like(g), gb], axis=-1)


def white_balance(planes: Array, gains: Array) -> Array:
    """Multiply canonical planes [..., h, w, 4] by gains (r, g, b) of shape [3]
    or [..., 3] (one per image); both greens get g. float32, not clipped."""
    x = jnp.asarray(planes, jnp.float32)
    g = jnp.asarray(gains, jnp.float32)
    g4 = jnp.stack([g[..., 0], g[..., 1], g[..., 1], g[..., 2]], axis=-1)
    return x * g4[..., None, None, :]


def apply_ccm(rgb: Array, ccm: Array) -> Array:
    """out[..., i] = sum_j ccm[i, j] * rgb[..., j].

    ``rgb`` [..., H, W, 3]; ``ccm`` [3, 3] or [..., 3, 3] (one per image),
    camera RGB -> linear sRGB. Rows of a camera->sRGB matrix normally sum to
    1 so that a white-balanced neutral stays neutral (``normalize_ccm_rows``).
    Exact float32 (elementwise products, no matmul precision modes).
    """
    rgb = jnp.asarray(rgb, jnp.float32)
    m = jnp.asarray(ccm, jnp.float32)
    return jnp.sum(m[..., None, None, :, :] * rgb[..., None, :], axis=-1)


def normalize_ccm_rows(ccm: Array) -> Array:
    """Scale each row of ``ccm`` [..., 3, 3] to sum to 1 (white preserved)."""
    m = jnp.asarray(ccm, jnp.float32)
    return m / jnp.sum(m, axis=-1, keepdims=True)


# ---------------------------------------------------------------------------
# Demosaic.
# ---------------------------------------------------------------------------

def _filter_at(padded: Array, kernel: np.ndarray, py: int, px: int,
               h: int, w: int) -> Array:
    """Correlate the 2-padded mosaic with ``kernel`` at cell position (py, px)
    only -> [..., h, w]. Static taps: exact float32 shifted-slice sum."""
    acc = None
    for (ky, kx) in zip(*np.nonzero(kernel)):
        y0, x0 = int(py + ky), int(px + kx)  # padded offset 2 + py + (ky - 2)
        term = float(kernel[ky, kx]) * padded[..., y0:y0 + 2 * h:2, x0:x0 + 2 * w:2]
        acc = term if acc is None else acc + term
    return acc


def _demosaic(planes: Array, method: str) -> Array:
    kernels = DEMOSAIC_METHODS[method]
    x = jnp.asarray(planes, jnp.float32)
    if x.ndim < 3 or x.shape[-1] != 4:
        raise ValueError(f"expected planes [..., h, w, 4], got shape {tuple(x.shape)}")
    h, w = x.shape[-3], x.shape[-2]
    if h < 2 or w < 2:
        raise ValueError(f"planes must be at least 2x2 for demosaicking, got {h}x{w}")
    mosaic = unpack(x)
    pad = [(0, 0)] * (mosaic.ndim - 2) + [(2, 2), (2, 2)]
    padded = jnp.pad(mosaic, pad, mode="reflect")
    channels = []
    for c in range(3):
        cells = []
        for k, role in enumerate(_PLAN[c]):
            if role is None:
                cells.append(x[..., k])
            else:
                cells.append(_filter_at(padded, kernels[role], k // 2, k % 2, h, w))
        channels.append(unpack(jnp.stack(cells, axis=-1)))
    return jnp.stack(channels, axis=-1)


_demosaic_jit = jax.jit(_demosaic, static_argnums=1)


def _run_demosaic(planes: Array, method: str) -> Array:
    """Validate ``method`` eagerly, then run the jitted demosaic (inlined under jit)."""
    if method not in DEMOSAIC_METHODS:
        raise ValueError(f"unknown demosaic method {method!r}; "
                         f"expected one of {sorted(DEMOSAIC_METHODS)}")
    return _demosaic_jit(planes, method)


def demosaic(planes: Array, method: str = "malvar") -> Array:
    """Canonical planes [..., h, w, 4] -> linear RGB [..., 2h, 2w, 3] float32.

    ``method``: "malvar" (Malvar-He-Cutler 5x5 gradient-corrected linear) or
    "bilinear". Known samples pass through unchanged; output is not clipped
    (Malvar can overshoot slightly at edges). Exact on per-channel affine
    images away from the 2-pixel border.
    """
    return _run_demosaic(planes, method)


# ---------------------------------------------------------------------------
# Full pipeline.
# ---------------------------------------------------------------------------

def process(planes: Array, wb_gains: Optional[Array] = None,
            ccm: Optional[Array] = None, demosaic: str = "malvar") -> Array:
    """Normalised canonical planes [..., h, w, 4] in [0, 1] -> sRGB [..., 2h, 2w, 3]
    float32 in [0, 1].

    ``wb_gains``: (r, g, b) [3] or [..., 3]; None = gray-world per image.
    ``ccm``: camera RGB -> linear sRGB [3, 3] or [..., 3, 3]; None = identity.
    ``demosaic``: "malvar" or "bilinear" (static under jit).
    """
    x = jnp.asarray(planes, jnp.float32)
    gains = gray_world_gains(x) if wb_gains is None else wb_gains
    rgb = _run_demosaic(white_balance(x, gains), demosaic)
    if ccm is not None:
        rgb = apply_ccm(rgb, ccm)
    return color.linear_to_srgb(jnp.clip(rgb, 0.0, 1.0))


#: ``process`` jitted with ``demosaic`` static.
process_jit = jax.jit(process, static_argnames=("demosaic",))

"""DiffRAW inference on full-resolution frames: the Python API.

    from diffraw_jax.pipeline import DiffRAWPipeline

    pipe = DiffRAWPipeline.from_checkpoint("workdir/demo", method="dtdm_ddim", num_steps=10,
                                           color="classic", tile=448, overlap=64, batch=4)
    srgb = pipe(mosaic, black_level=63, white_level=1020, cfa="RGGB", seed=0)
    with rawpy.imread("IMG_0001.DNG") as r:
        srgb = pipe.from_rawpy(r, seed=0)       # [H', W', 3] float32 sRGB in [0, 1]

Imports only jax, numpy and the project's core modules at import time (the
checkpoint loaders are imported when ``from_checkpoint`` runs; rawpy is never
imported here: ``from_rawpy`` takes an open ``rawpy.RawPy`` object).

Frame geometry
--------------
A mosaic [H, W] in any Bayer layout is trimmed to even H, W (a trailing odd
row/column is dropped; the CFA phase is kept), then cropped to its canonical
RGGB region ``raw.crop_box`` (one leading and one trailing row/column for
non-RGGB layouts) and packed to planes [h, w, 4] (R, Gr, Gb, B). The output
covers exactly that region: [H', W', 3] = [2h, 2w, 3]; every coordinate below
is in the pixels of this canonical crop.

Tiling
------
The U-Net runs on T x T tiles (``tile``; T must be a multiple of the U-Net's
2**(levels-1), and even). Tile origins along an axis of length L >= T are
``n = ceil((L - T) / (T - overlap)) + 1`` positions spread evenly over
[0, L - T] and rounded to even numbers, so the first tile starts at 0, the
last ends exactly at the frame edge (a frame that is not a multiple of the
tile comes back at full size), neighbours overlap by at least ``overlap``
pixels, and every origin is even in mosaic pixels (Bayer phase: the packed w
tile is an exact slice of the frame's planes). ``tile=None`` (or 0) runs the
whole frame as a single tile.

Tiles go through ONE jitted sampler ``sample_tiles(params, w, c, x, key_data)``
in batches of ``min(batch, number of tiles)`` (the last batch is padded with
copies of its last tile), so it compiles once per (batch, tile shape) and
memory is bounded by the tile batch. The next batch is dispatched before the
previous one is blended.

Noise
-----
Tile (iy, ix) (grid indices) draws all its noise from
``fold_in(key(seed), iy * 65536 + ix)``: outputs are reproducible, do not
depend on the batch size, and two frames with the same canonical crop (e.g.
the same scene stored in different CFA layouts) get the same noise. A frame
that fits in one tile uses ``fold_in(key(seed), 0)``, i.e. exactly what an
untiled call of ``dtdm.sample`` with that key draws.

Blending
--------
Every tile gets a separable weight ``wy[i] * wx[j]``: 1 inside, and a
raised-cosine ramp ``0.5 - 0.5 cos(pi (k + 0.5) / o)`` across the whole
overlap ``o`` with each neighbour (no ramp on sides at the frame edge). The
ramps of two neighbours sum to 1 across their overlap (a partition of unity),
weights are floored at ``WINDOW_FLOOR`` so no pixel has zero total weight, and
the output is ``sum(weight * tile) / sum(weight)``.

Colour condition
----------------
c (= x, Algorithm 2) is computed ONCE for the whole frame and sliced with the
same tile boxes: ``color="g"`` runs the trained colour network G (fully
convolutional; the planes are reflect-padded to a multiple of 8 for its three
Haar levels and the result cropped back), ``color="classic"`` the classical ISP
(``isp_classic.process``: white balance, Malvar demosaic, colour matrix, sRGB
curve), or an sRGB image given per call (``color_image``).

Camera colour for the classical ISP (``camera_color``): white balance from
rawpy's as-shot ``camera_whitebalance`` (fallback ``daylight_whitebalance``,
then gray world), gains (R/G, 1, B/G); colour matrix from rawpy's
``color_matrix`` (LibRaw's ``rgb_cam``: white-balanced camera RGB -> linear
sRGB, rows summing to 1; the second green's column is folded into G), or, when
LibRaw leaves it empty, from ``rgb_xyz_matrix`` as dcraw does
(``inv(rownorm(cam_xyz @ XYZ_FROM_SRGB))``), else identity.

Export
------
``export_sampler(pipe, tile_shape, path)`` serialises the tile sampler with the
parameters baked in (``jax.export``, StableHLO) as a function of
``(w, c, x, key_data)``; ``load_exported(path)`` runs it without the model code.
"""
from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from typing import Callable, NamedTuple, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from diffraw_jax import dtdm, isp_classic, raw

__all__ = [
    "BayerFrame",
    "Tile",
    "DiffRAWPipeline",
    "WINDOW_FLOOR",
    "TILE_KEY_STRIDE",
    "XYZ_FROM_SRGB",
    "unet_multiple",
    "prepare_planes",
    "frame_from_rawpy",
    "camera_color",
    "tile_origins",
    "tile_grid",
    "ramp",
    "tile_window",
    "tile_key_data",
    "make_tile_sampler",
    "classic_condition",
    "export_sampler",
    "load_exported",
]

#: Smallest blending weight (keeps sum(weight) > 0 everywhere).
WINDOW_FLOOR = 1e-3
#: Tile (iy, ix) folds ``iy * TILE_KEY_STRIDE + ix`` into the seed's key.
TILE_KEY_STRIDE = 1 << 16
#: Linear sRGB (D65) -> CIE XYZ, IEC 61966-2-1 (dcraw's ``xyz_rgb``).
XYZ_FROM_SRGB = np.array([[0.412453, 0.357580, 0.180423],
                          [0.212671, 0.715160, 0.072169],
                          [0.019334, 0.119193, 0.950227]])

Level = Union[float, Sequence[float], np.ndarray]


# ---------------------------------------------------------------------------
# Input frames.


@dataclasses.dataclass
class BayerFrame:
    """A Bayer mosaic and the metadata inference needs.

    Attributes:
      mosaic: [H, W] codes (any int or float dtype) in the ``cfa`` layout.
      cfa: "RGGB", "BGGR", "GRBG" or "GBRG".
      black_level, white_level: codes, a scalar or 4 values in canonical plane
        order (R, Gr, Gb, B).
      wb_gains: (r, g, b) gains for the classical ISP, or None (gray world).
      ccm: [3, 3] camera RGB -> linear sRGB for the classical ISP, or None (identity).
    """

    mosaic: np.ndarray
    cfa: str = raw.ZRR_PATTERN
    black_level: Level = raw.ZRR_BLACK_LEVEL
    white_level: Level = raw.ZRR_WHITE_LEVEL
    wb_gains: Optional[np.ndarray] = None
    ccm: Optional[np.ndarray] = None


def prepare_planes(frame: BayerFrame) -> np.ndarray:
    """Mosaic -> normalised canonical planes float32 [h, w, 4] in [0, 1].

    Trims a trailing odd row/column, crops to the canonical RGGB region
    (``raw.crop_box``), packs and normalises with the frame's levels.
    ValueError for a mosaic that is not 2-D, a bad CFA, or no signal above the
    black level (an all-black frame would silently give a black output).
    """
    m = np.asarray(frame.mosaic)
    if m.ndim != 2:
        raise ValueError(f"expected a single-channel Bayer mosaic [H, W], got shape {m.shape}")
    m = m[: m.shape[0] - m.shape[0] % 2, : m.shape[1] - m.shape[1] % 2]
    planes = raw.normalize(raw.pack(m, frame.cfa), frame.black_level, frame.white_level)
    if not np.any(planes > 0):
        raise ValueError("no signal above the black level (all-black RAW)")
    return np.asarray(planes, np.float32)


def _desc(raw_obj) -> str:
    d = raw_obj.color_desc
    return d.decode("ascii", "replace") if isinstance(d, bytes) else str(d)


def _bayer_cell(raw_obj) -> np.ndarray:
    """The 2x2 colour indices of the top-left of ``raw_image_visible``.

    ``raw_pattern`` is checked first (non-Bayer sensors are rejected there);
    the cell itself is read from ``raw_colors_visible`` when rawpy provides it,
    which is the ground truth for the visible array whatever the margins.
    """
    cell = np.asarray(raw_obj.raw_pattern) if raw_obj.raw_pattern is not None else None
    raw.pattern_from_rawpy(cell, raw_obj.color_desc)  # ValueError unless 2x2 Bayer
    try:
        vis = np.asarray(raw_obj.raw_colors_visible)
        if vis.ndim == 2 and vis.shape[0] >= 2 and vis.shape[1] >= 2:
            cell = vis[:2, :2]
    except Exception:  # noqa: BLE001 -- older rawpy / unusual files: keep raw_pattern
        pass
    return cell


def _letter_index(desc: str, letter: str) -> int:
    i = desc.upper().find(letter)
    if i < 0:
        raise ValueError(f"colour description {desc!r} has no {letter!r} channel")
    return i


def _gains(mults, desc: str) -> Optional[np.ndarray]:
    m = np.asarray(mults, np.float64).ravel()
    if m.size < 3 or not np.all(np.isfinite(m)):
        return None
    r, g, b = (m[_letter_index(desc, ch)] for ch in "RGB")
    if min(r, g, b) <= 0:
        return None
    return np.array([r / g, 1.0, b / g], np.float32)


def camera_color(raw_obj) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """(wb_gains [3] or None, ccm [3, 3] or None) of an open rawpy object.

    White balance: as-shot ``camera_whitebalance`` (by colour index, mapped
    through ``color_desc``) as (R/G, 1, B/G); else ``daylight_whitebalance``;
    else None (the classical ISP then uses gray world).
    Colour matrix (camera RGB -> linear sRGB): rawpy's ``color_matrix``
    (LibRaw's rgb_cam, [3, 4] by colour index; every green column is summed into
    G because the demosaic averages both greens); if that is all zero, dcraw's
    construction from ``rgb_xyz_matrix`` (XYZ -> camera):
    ``inv(rownorm(cam_xyz[R, G, B] @ XYZ_FROM_SRGB))``; else None (identity).
    """
    desc = _desc(raw_obj)
    wb = _gains(raw_obj.camera_whitebalance, desc)
    if wb is None:
        wb = _gains(getattr(raw_obj, "daylight_whitebalance", []), desc)
    ccm = None
    cm = np.asarray(raw_obj.color_matrix, np.float64)
    if cm.shape[0] == 3 and cm.shape[1] >= 3 and np.all(np.isfinite(cm)) and np.any(cm != 0):
        cols = [_letter_index(desc, "R"), _letter_index(desc, "G"), _letter_index(desc, "B")]
        ccm = cm[:, cols].copy()
        for k, ch in enumerate(desc[: cm.shape[1]].upper()):
            if ch == "G" and k != cols[1]:
                ccm[:, 1] += cm[:, k]
    else:
        cam_xyz = np.asarray(raw_obj.rgb_xyz_matrix, np.float64)
        if cam_xyz.shape[0] >= 3 and np.any(cam_xyz != 0):
            rows = [_letter_index(desc, ch) for ch in "RGB"]
            cam_rgb = cam_xyz[rows, :3] @ XYZ_FROM_SRGB
            sums = cam_rgb.sum(axis=1, keepdims=True)
            if np.all(np.abs(sums) > 1e-8):
                ccm = np.linalg.inv(cam_rgb / sums)
    return wb, (None if ccm is None else ccm.astype(np.float32))


def frame_from_rawpy(raw_obj) -> BayerFrame:
    """BayerFrame from an open ``rawpy.RawPy`` (copies the pixels).

    Uses ``raw_image_visible``, the CFA from ``raw_pattern``/``color_desc``
    (``raw.pattern_from_rawpy``), per-channel black levels
    (``black_level_per_channel`` reordered with ``raw.canonical_channel_values``),
    ``white_level``, and ``camera_color`` for the classical ISP. ValueError for
    non-Bayer sensors (no / non-2x2 pattern: Foveon, X-Trans, linear DNG) or a
    3-channel ``raw_image``.
    """
    if getattr(getattr(raw_obj, "raw_type", None), "name", "") == "Stack":
        raise ValueError("non-Bayer RAW: the raw image is stacked (linear DNG / Foveon), "
                         "not a colour filter array mosaic")
    cell = _bayer_cell(raw_obj)
    desc = raw_obj.color_desc
    visible = np.asarray(raw_obj.raw_image_visible)
    if visible.ndim != 2:
        raise ValueError(f"non-Bayer RAW: raw_image has shape {visible.shape} (not one channel)")
    black = raw.canonical_channel_values(raw_obj.black_level_per_channel, cell, desc)
    wb, ccm = camera_color(raw_obj)
    return BayerFrame(mosaic=visible.copy(), cfa=raw.pattern_from_rawpy(cell, desc),
                      black_level=black.astype(np.float32),
                      white_level=float(raw_obj.white_level), wb_gains=wb, ccm=ccm)


# ---------------------------------------------------------------------------
# Tiles.


class Tile(NamedTuple):
    """One tile: grid indices (iy, ix) and its top-left (y0, x0) in frame pixels (even)."""

    iy: int
    ix: int
    y0: int
    x0: int


def unet_multiple(model) -> int:
    """Tile sides must be multiples of this: 2**(levels-1), and at least 2 (packed w)."""
    return max(2, 2 ** (len(model.channel_mults) - 1))


def tile_origins(length: int, tile: int, overlap: int) -> np.ndarray:
    """Even tile starts int64 [n] along an axis: 0 first, ``length - tile`` last.

    ``length`` and ``tile`` are even, ``0 <= overlap < tile`` even. n is the
    fewest tiles whose neighbours overlap by at least ``overlap``; the starts
    are spread evenly and rounded to even numbers. ValueError if
    ``length < tile``.
    """
    length, tile, overlap = int(length), int(tile), int(overlap)
    if length == tile and length > 0:
        return np.zeros(1, np.int64)
    if length % 2 or tile % 2 or overlap % 2:
        raise ValueError(f"length {length}, tile {tile} and overlap {overlap} must be even")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile={tile}), got {overlap}")
    if length < tile:
        raise ValueError(f"length {length} is smaller than one tile ({tile})")
    n = math.ceil((length - tile) / (tile - overlap)) + 1
    starts = 2 * np.round(np.arange(n) * ((length - tile) / (n - 1)) / 2.0).astype(np.int64)
    return starts


def tile_grid(height: int, width: int, tile: Tuple[int, int], overlap: int) -> list:
    """All tiles of a [height, width] frame, row-major: list of ``Tile``."""
    ys = tile_origins(height, tile[0], overlap)
    xs = tile_origins(width, tile[1], overlap)
    return [Tile(iy, ix, int(y0), int(x0)) for iy, y0 in enumerate(ys) for ix, x0 in enumerate(xs)]


def ramp(length: int, lo: int, hi: int, floor: float = WINDOW_FLOOR) -> np.ndarray:
    """1-D blending weight float32 [length]: raised-cosine ramps over the first
    ``lo`` and last ``hi`` samples (0: none), 1 elsewhere, floored at ``floor``.

    Up-ramp ``r[k] = 0.5 - 0.5 cos(pi (k + 0.5) / lo)``; the down-ramp over an
    overlap of the same length is its mirror, so the two sum to exactly 1.
    """
    k = np.arange(length, dtype=np.float64)
    w = np.ones(length)
    if lo > 0:
        w = np.where(k < lo, 0.5 - 0.5 * np.cos(np.pi * (k + 0.5) / lo), w)
    if hi > 0:
        kk = length - 1 - k
        w = w * np.where(kk < hi, 0.5 - 0.5 * np.cos(np.pi * (kk + 0.5) / hi), 1.0)
    return np.maximum(w, floor).astype(np.float32)


def _axis_overlaps(starts: np.ndarray, tile: int, i: int) -> Tuple[int, int]:
    lo = int(starts[i - 1] + tile - starts[i]) if i > 0 else 0
    hi = int(starts[i] + tile - starts[i + 1]) if i + 1 < len(starts) else 0
    return max(lo, 0), max(hi, 0)


def tile_window(t: Tile, ys: np.ndarray, xs: np.ndarray, tile: Tuple[int, int]) -> np.ndarray:
    """Blending weight float32 [th, tw] of tile ``t`` in the grid with starts ``ys``, ``xs``."""
    wy = ramp(tile[0], *_axis_overlaps(ys, tile[0], t.iy))
    wx = ramp(tile[1], *_axis_overlaps(xs, tile[1], t.ix))
    return wy[:, None] * wx[None, :]


@jax.jit
def _fold_keys(seed, ids):
    base = jax.random.key(seed)
    return jax.vmap(lambda i: jax.random.key_data(jax.random.fold_in(base, i)))(ids)


def tile_key_data(seed: int, tiles: Sequence[Tile]) -> np.ndarray:
    """Raw key data uint32 [n, 2] of ``fold_in(key(seed), iy * TILE_KEY_STRIDE + ix)`` per tile."""
    if not 0 <= int(seed) < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    ids = np.array([t.iy * TILE_KEY_STRIDE + t.ix for t in tiles], np.uint32)
    return np.asarray(_fold_keys(np.uint32(seed), ids))


# ---------------------------------------------------------------------------
# The tile sampler.


def make_tile_sampler(model, schedule: dtdm.Schedule, s: int, *, method: str = "dtdm",
                      num_steps: Optional[int] = None, eta: float = 0.0) -> Callable:
    """``fn(params, w, c, x, key_data) -> y``: one independent ``dtdm.sample`` per tile.

    w: [B, th/2, tw/2, 4] float32 planes in [0, 1]; c, x: [B, th, tw, 3] in
    [-1, 1]; key_data: uint32 [B, 2] (``jax.random.key_data`` of each tile's
    key); y: [B, th, tw, 3] float32 in [-1, 1] (not clipped). Tile i is
    exactly ``dtdm.sample(..., x[i:i+1], s, key_i)`` (vmapped), so its result
    does not depend on the batch. Not jitted (callers jit or export it).
    """
    if method not in dtdm.METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {dtdm.METHODS}")

    def sample_tiles(params, w, c, x, key_data):
        keys = jax.random.wrap_key_data(key_data)

        def one(w1, c1, x1, key):
            def denoise(m, t):
                return model.apply({"params": params}, m, w1[None], c1[None], t, train=False)

            return dtdm.sample(denoise, schedule, x1[None], s, key, method=method,
                               num_steps=num_steps, eta=eta)[0]

        return jax.vmap(one)(w, c, x, keys)

    return sample_tiles


# ---------------------------------------------------------------------------
# Colour conditions (whole frame).


def classic_condition(planes, wb_gains=None, ccm=None) -> np.ndarray:
    """Classical ISP of planes [h, w, 4] -> sRGB float32 [2h, 2w, 3] in [0, 1]."""
    wb = None if wb_gains is None else jnp.asarray(wb_gains, jnp.float32)
    m = None if ccm is None else jnp.asarray(ccm, jnp.float32)
    return np.asarray(isp_classic.process_jit(jnp.asarray(planes, jnp.float32), wb, m))


def _pad_planes(planes: np.ndarray, multiple: int) -> np.ndarray:
    h, w = planes.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not ph and not pw:
        return planes
    mode = "reflect" if ph < h and pw < w else "symmetric"
    return np.pad(planes, ((0, ph), (0, pw), (0, 0)), mode=mode)


# ---------------------------------------------------------------------------
# The pipeline.


def _as_tile_shape(tile) -> Optional[Tuple[int, int]]:
    if tile is None or (np.isscalar(tile) and int(tile) == 0):
        return None
    if np.isscalar(tile):
        return int(tile), int(tile)
    th, tw = (int(v) for v in tile)
    return th, tw


class DiffRAWPipeline:
    """RAW mosaic -> sRGB with a trained DiffRAW U-Net, in overlapping tiles.

    Build with ``from_checkpoint`` (or directly from a model and parameters).
    Calling it returns sRGB float32 [H', W', 3] in [0, 1] for the canonical crop
    of the mosaic (see the module docstring for the geometry, tiling, blending
    and noise conventions).
    """

    def __init__(self, model, params, schedule: dtdm.Schedule, s: int, *, method: str = "dtdm",
                 num_steps: Optional[int] = None, eta: float = 0.0, color: str = "classic",
                 color_model=None, color_params=None, tile=448, overlap: int = 64,
                 batch: int = 4, config=None, step: Optional[int] = None):
        if color not in ("g", "classic", "image"):
            raise ValueError(f"color must be 'g', 'classic' or 'image', got {color!r}")
        if color == "g" and color_model is None:
            raise ValueError("color 'g' needs color_model and color_params")
        if method not in dtdm.METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {dtdm.METHODS}")
        if num_steps is not None and not 1 <= int(num_steps) <= int(s):
            raise ValueError(f"num_steps must be in [1, s={s}], got {num_steps}")
        if method == "ddpm" and num_steps not in (None, s):
            raise ValueError("method 'ddpm' runs s steps; num_steps must be None or s")
        if int(batch) < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.model, self.params, self.schedule, self.s = model, params, schedule, int(s)
        self.method, self.eta = method, float(eta)
        self.num_steps = None if num_steps is None else int(num_steps)
        self.color, self.color_model, self.color_params = color, color_model, color_params
        self.tile = _as_tile_shape(tile)
        self.overlap, self.batch = int(overlap), int(batch)
        self.config, self.step = config, step
        self.multiple = unet_multiple(model)
        if self.tile is not None:
            self._check_tile(self.tile)
        if self.overlap < 0 or self.overlap % 2 or (self.tile and self.overlap >= min(self.tile)):
            raise ValueError(f"overlap must be even and in [0, tile), got {self.overlap}")
        self.sample_tiles = jax.jit(make_tile_sampler(
            model, schedule, self.s, method=method, num_steps=self.num_steps, eta=self.eta))
        self._g_apply = None
        if color_model is not None:
            self._g_apply = jax.jit(lambda p, w: color_model.apply({"params": p}, w))

    # ---- construction ----------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str, *, method: str = "dtdm", num_steps: Optional[int] = None,
                        color: str = "g", tile="train", overlap: Optional[int] = None, batch: int = 4,
                        eta: float = 0.0, use_ema: Optional[bool] = None) -> "DiffRAWPipeline":
        """Loads a training workdir (``config.json`` + ``checkpoints/``).

        ``color``: "g" (the trained G of the config's ``color_net.workdir``;
        ValueError if there is none), "classic", or "image" (c given per call).
        ``tile``: "train" (the training crop size, the default), a side or
        (H, W), or None / 0 for the whole frame in one piece. ``overlap``:
        default min(64, tile / 4) rounded down to even.
        ``use_ema``: default the config's ``sample.use_ema``. Raises
        FileNotFoundError (no config / checkpoint), ValueError (a checkpoint
        that does not match the config's model, bad options).
        """
        from diffraw_jax import evaluate, train

        config = train.load_workdir_config(path)
        if config.get("task", "diffraw") != "diffraw":
            raise ValueError(f"{path} is a {config.task!r} workdir, not a DiffRAW model")
        if use_ema is None:
            use_ema = bool(config.sample.use_ema) if "sample" in config else True
        model, params, step = evaluate.load_params(config, path, use_ema=use_ema)
        if isinstance(tile, str):
            if tile != "train":
                raise ValueError(f"tile must be 'train', a size, (H, W) or None, got {tile!r}")
            tile = int(config.data.crop_size)
        if overlap is None:
            shape = _as_tile_shape(tile)
            overlap = 64 if shape is None else min(64, (min(shape) // 4) // 2 * 2)
        g_model = g_params = None
        if color == "g":
            g_model, g_params = evaluate.load_color_net(config, path)
        return cls(model, params, train.create_schedule(config), config.diffusion.s, method=method,
                   num_steps=num_steps, eta=eta, color=color, color_model=g_model,
                   color_params=g_params, tile=tile, overlap=overlap, batch=batch,
                   config=config, step=step)

    def _check_tile(self, tile: Tuple[int, int]) -> None:
        th, tw = tile
        if th <= 0 or tw <= 0 or th % self.multiple or tw % self.multiple:
            raise ValueError(f"tile {th}x{tw} must be positive multiples of {self.multiple} "
                             f"(the U-Net's 2**(levels-1), and even)")

    # ---- colour condition ----------------------------------------------------
    def condition(self, planes: np.ndarray, *, wb_gains=None, ccm=None,
                  color_image: Optional[np.ndarray] = None) -> np.ndarray:
        """Whole-frame colour condition, sRGB float32 [2h, 2w, 3] in [0, 1].

        ``color_image`` (sRGB [2h, 2w, 3], floats in [0, 1] or uint8/uint16)
        overrides the pipeline's ``color``.
        """
        h, w = planes.shape[:2]
        if color_image is not None:
            img = _to_unit(color_image)
            if img.shape != (2 * h, 2 * w, 3):
                raise ValueError(f"colour image has shape {img.shape}, expected {(2 * h, 2 * w, 3)} "
                                 "(the output size)")
            return img
        if self.color == "image":
            raise ValueError("this pipeline was built with color='image': pass color_image")
        if self.color == "classic":
            return classic_condition(planes, wb_gains, ccm)
        padded = _pad_planes(planes, 8)
        out = np.asarray(self._g_apply(self.color_params, jnp.asarray(padded)[None]))[0]
        return np.clip(out[: 2 * h, : 2 * w], 0.0, 1.0).astype(np.float32)

    # ---- tiles ---------------------------------------------------------------
    def frame_tiles(self, height: int, width: int):
        """(tile shape, tiles, y starts, x starts) for a [height, width] canonical frame."""
        tile = self.tile
        if tile is None:
            tile = (height, width)
            self._check_tile(tile)
        if height < tile[0] or width < tile[1]:
            raise ValueError(f"image {height}x{width} (after the CFA crop) is smaller than one "
                             f"tile ({tile[0]}x{tile[1]}); use a smaller tile")
        ys = tile_origins(height, tile[0], self.overlap)
        xs = tile_origins(width, tile[1], self.overlap)
        tiles = [Tile(iy, ix, int(y0), int(x0)) for iy, y0 in enumerate(ys) for ix, x0 in enumerate(xs)]
        return tile, tiles, ys, xs

    def sample_planes(self, planes: np.ndarray, cond01: np.ndarray, *, seed: int = 0,
                      progress: bool = False) -> np.ndarray:
        """Tiled sampling. planes [h, w, 4] in [0, 1], cond01 [2h, 2w, 3] in [0, 1]
        -> sRGB float32 [2h, 2w, 3] in [0, 1]."""
        planes = np.asarray(planes, np.float32)
        height, width = 2 * planes.shape[0], 2 * planes.shape[1]
        if cond01.shape != (height, width, 3):
            raise ValueError(f"condition shape {cond01.shape} != {(height, width, 3)}")
        tile, tiles, ys, xs = self.frame_tiles(height, width)
        th, tw = tile
        c_all = np.clip(np.asarray(cond01, np.float32), 0.0, 1.0) * 2.0 - 1.0
        keys = tile_key_data(seed, tiles)
        bsz = min(self.batch, len(tiles))
        acc = np.zeros((height, width, 3), np.float32)
        wsum = np.zeros((height, width), np.float32)
        bar = _progress(len(tiles), progress)

        def dispatch(chunk_ids):
            idx = list(chunk_ids) + [chunk_ids[-1]] * (bsz - len(chunk_ids))
            w_b = np.stack([planes[tiles[i].y0 // 2:(tiles[i].y0 + th) // 2,
                                   tiles[i].x0 // 2:(tiles[i].x0 + tw) // 2] for i in idx])
            c_b = np.stack([c_all[tiles[i].y0:tiles[i].y0 + th, tiles[i].x0:tiles[i].x0 + tw]
                            for i in idx])
            return self.sample_tiles(self.params, w_b, c_b, c_b, keys[np.asarray(idx)])

        def blend(chunk_ids, out):
            out = np.asarray(out)
            for i, o in zip(chunk_ids, out):
                t = tiles[i]
                win = tile_window(t, ys, xs, tile)
                acc[t.y0:t.y0 + th, t.x0:t.x0 + tw] += win[..., None] * o
                wsum[t.y0:t.y0 + th, t.x0:t.x0 + tw] += win
            if bar is not None:
                bar.update(len(chunk_ids))

        chunks = [list(range(i, min(i + bsz, len(tiles)))) for i in range(0, len(tiles), bsz)]
        pending = None
        try:
            for chunk in chunks:
                out = dispatch(chunk)  # async: runs while the previous batch is blended
                if pending is not None:
                    blend(*pending)
                pending = (chunk, out)
            blend(*pending)
        finally:
            if bar is not None:
                bar.close()
        y = acc / wsum[..., None]
        return np.clip((y + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)

    # ---- entry points --------------------------------------------------------
    def process(self, frame: BayerFrame, *, seed: int = 0, color_image=None,
                progress: bool = False) -> np.ndarray:
        """BayerFrame -> sRGB float32 [H', W', 3] in [0, 1] (canonical crop)."""
        planes = prepare_planes(frame)
        cond = self.condition(planes, wb_gains=frame.wb_gains, ccm=frame.ccm,
                              color_image=color_image)
        return self.sample_planes(planes, cond, seed=seed, progress=progress)

    def __call__(self, mosaic, *, black_level: Level = raw.ZRR_BLACK_LEVEL,
                 white_level: Level = raw.ZRR_WHITE_LEVEL, cfa: str = raw.ZRR_PATTERN,
                 seed: int = 0, wb_gains=None, ccm=None, color_image=None,
                 progress: bool = False) -> np.ndarray:
        """Bayer mosaic [H, W] (``cfa`` layout, codes) -> sRGB float32 [H', W', 3] in [0, 1].

        ``black_level``/``white_level``: scalars or 4 values in canonical order
        (R, Gr, Gb, B); ZRR's by default. ``wb_gains``/``ccm`` feed the classical
        ISP (gray world / identity when None). H' x W' is the canonical crop.
        """
        frame = BayerFrame(mosaic=np.asarray(mosaic), cfa=raw.check_pattern(cfa),
                           black_level=black_level, white_level=white_level,
                           wb_gains=wb_gains, ccm=ccm)
        return self.process(frame, seed=seed, color_image=color_image, progress=progress)

    def from_rawpy(self, raw_obj, *, seed: int = 0, color_image=None,
                   progress: bool = False) -> np.ndarray:
        """An open ``rawpy.RawPy`` -> sRGB float32 [H', W', 3] in [0, 1] (``frame_from_rawpy``)."""
        return self.process(frame_from_rawpy(raw_obj), seed=seed, color_image=color_image,
                            progress=progress)


def _to_unit(img) -> np.ndarray:
    """sRGB image (uint8 / uint16 / float in [0, 1]) [H, W, 3 or 4] -> float32 [H, W, 3]."""
    a = np.asarray(img)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise ValueError(f"colour image must be RGB [H, W, 3], got shape {a.shape}")
    a = a[..., :3]
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 65535.0
    return np.clip(a.astype(np.float32), 0.0, 1.0)


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional for the API
        return None
    # disable=None: no bar when stderr is not a terminal (logs, pipes).
    return tqdm(total=total, desc="tiles", unit="tile", leave=False, disable=None)


# ---------------------------------------------------------------------------
# Export.


def _tile_avals(tile_shape, batch: int):
    th, tw = _as_tile_shape(tile_shape)
    f32 = jnp.float32
    return (jax.ShapeDtypeStruct((batch, th // 2, tw // 2, 4), f32),
            jax.ShapeDtypeStruct((batch, th, tw, 3), f32),
            jax.ShapeDtypeStruct((batch, th, tw, 3), f32),
            jax.ShapeDtypeStruct((batch, 2), jnp.uint32))


def export_sampler(pipe: DiffRAWPipeline, tile_shape, path: str, *, batch: Optional[int] = None,
                   platforms: Optional[Sequence[str]] = None) -> str:
    """Serialises ``pipe``'s tile sampler with its parameters baked in.

    The artifact (``jax.export``, StableHLO) is a function of
    ``(w [B, th/2, tw/2, 4], c [B, th, tw, 3], x [B, th, tw, 3], key_data uint32 [B, 2])``
    -> y [B, th, tw, 3] in [-1, 1], with B = ``batch`` (default ``pipe.batch``),
    exactly ``pipe.sample_tiles(pipe.params, ...)``. ``platforms``: e.g.
    ("cpu", "cuda"); default the current backend. Written atomically; returns ``path``.
    """
    th, tw = _as_tile_shape(tile_shape)
    pipe._check_tile((th, tw))
    fn = make_tile_sampler(pipe.model, pipe.schedule, pipe.s, method=pipe.method,
                           num_steps=pipe.num_steps, eta=pipe.eta)
    params = pipe.params
    exported = jax.export.export(jax.jit(lambda w, c, x, k: fn(params, w, c, x, k)),
                                 platforms=platforms)(*_tile_avals((th, tw), batch or pipe.batch))
    data = exported.serialize()
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".export-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


class ExportedSampler:
    """A deserialised tile sampler: ``sampler(w, c, x, key_data) -> y`` (see ``export_sampler``).

    Attributes: ``exported`` (the ``jax.export.Exported``), ``tile_shape`` (th, tw), ``batch``.
    """

    def __init__(self, exported):
        self.exported = exported
        w_aval = exported.in_avals[0]
        self.batch = int(w_aval.shape[0])
        self.tile_shape = (2 * int(w_aval.shape[1]), 2 * int(w_aval.shape[2]))

    def __call__(self, w, c, x, key_data):
        return self.exported.call(jnp.asarray(w, jnp.float32), jnp.asarray(c, jnp.float32),
                                  jnp.asarray(x, jnp.float32), jnp.asarray(key_data, jnp.uint32))


def load_exported(path: str) -> ExportedSampler:
    """Deserialises an ``export_sampler`` file; runs without the model code."""
    with open(path, "rb") as f:
        return ExportedSampler(jax.export.deserialize(bytearray(f.read())))

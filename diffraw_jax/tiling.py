"""Frames larger than the network's crop: one sample of the whole frame, evaluated in tiles.

The U-Net sees T x T tiles (the training crop, say) but the reverse process
runs on the whole frame: one frame-level state ``m_t`` [1, H, W, 3], one
frame-level noise field per step (``dtdm.sample`` draws it for the frame), and
at every step a **tiled denoiser**: the network output of every tile, blended
across overlaps with raised-cosine windows,

    f(m_t)[p] = sum_i W_i[p] f_i(m_t restricted to tile i)[p] / sum_i W_i[p].

This is MultiDiffusion (Bar-Tal et al. 2023) for DiffRAW: every reverse step
(DTDM ancestral, DTDM-DDIM, DDPM) is affine in f at fixed m_t, x and noise,
so blending f and then stepping equals stepping every tile with the shared
noise and blending the stepped states (MultiDiffusion's least-squares fusion).
Overlap bands are therefore one sample, not the average of two independent
ones, and keep their texture; memory is the tile batch plus O(frame) state.

Geometry
--------
Tile origins along an axis of length L >= T are ``n = ceil((L - T) / (T -
overlap)) + 1`` positions spread evenly over [0, L - T], rounded to even
numbers (the packed RAW tile is an exact slice of the frame's planes): the
first tile starts at 0, the last ends at the frame edge, neighbours overlap by
at least ``overlap`` pixels. Every tile gets a separable weight
``wy[i] * wx[j]``: 1 inside and a raised-cosine ramp
``0.5 - 0.5 cos(pi (k + 0.5) / o)`` across the whole overlap ``o`` with each
neighbour (none at the frame edge); the ramps of two neighbours sum to 1, and
weights are floored at ``WINDOW_FLOOR`` so every pixel has weight.

Imports only jax and numpy.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

#: Smallest blending weight (keeps sum(weight) > 0 everywhere).
WINDOW_FLOOR = 1e-3


class Tile(NamedTuple):
    """One tile: grid indices (iy, ix) and its top-left (y0, x0) in frame pixels (even)."""

    iy: int
    ix: int
    y0: int
    x0: int


def as_tile_shape(tile) -> Optional[Tuple[int, int]]:
    """None / 0 -> None (whole frame); n -> (n, n); (h, w) -> (h, w)."""
    if tile is None or (np.isscalar(tile) and int(tile) == 0):
        return None
    if np.isscalar(tile):
        return int(tile), int(tile)
    th, tw = (int(v) for v in tile)
    return th, tw


def unet_multiple(model) -> int:
    """Tile sides must be multiples of this: 2**(levels-1), and at least 2 (packed w)."""
    return max(2, 2 ** (len(model.channel_mults) - 1))


def tile_origins(length: int, tile: int, overlap: int) -> np.ndarray:
    """Even tile starts int64 [n] along an axis: 0 first, ``length - tile`` last.

    ``length`` and ``tile`` are even, ``0 <= overlap < tile`` even. n is the
    fewest tiles whose neighbours overlap by at least ``overlap``; the starts
    are spread evenly and rounded to even numbers. ValueError if ``length < tile``.
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
    return 2 * np.round(np.arange(n) * ((length - tile) / (n - 1)) / 2.0).astype(np.int64)


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


@dataclasses.dataclass(frozen=True)
class TilePlan:
    """How a [height, width] frame is cut into tiles of ``tile`` = (th, tw).

    ``batch`` tiles go through the network at once (the last batch is padded
    with weight-0 copies), so memory is bounded by the tile batch.
    """

    height: int
    width: int
    tile: Tuple[int, int]
    overlap: int
    batch: int
    ys: Tuple[int, ...]
    xs: Tuple[int, ...]

    @classmethod
    def make(cls, height: int, width: int, tile: Optional[Tuple[int, int]], overlap: int,
             batch: int = 4) -> "TilePlan":
        """``tile=None``: the whole frame as one tile. ValueError for a frame smaller than a tile."""
        height, width = int(height), int(width)
        tile = (height, width) if tile is None else (int(tile[0]), int(tile[1]))
        if height < tile[0] or width < tile[1]:
            raise ValueError(f"image {height}x{width} is smaller than one tile "
                             f"({tile[0]}x{tile[1]}); use a smaller tile")
        if int(batch) < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        ys = tuple(int(v) for v in tile_origins(height, tile[0], overlap))
        xs = tuple(int(v) for v in tile_origins(width, tile[1], overlap))
        return cls(height, width, tile, int(overlap), int(batch), ys, xs)

    @property
    def tiles(self) -> list:
        return [Tile(iy, ix, y0, x0) for iy, y0 in enumerate(self.ys) for ix, x0 in enumerate(self.xs)]

    def windows(self) -> np.ndarray:
        """float32 [n, th, tw]: each tile's blending weight."""
        ys, xs = np.asarray(self.ys), np.asarray(self.xs)
        return np.stack([tile_window(t, ys, xs, self.tile) for t in self.tiles])

    def weight_sum(self, windows: Optional[np.ndarray] = None) -> np.ndarray:
        """float32 [height, width]: sum of the windows (``windows()`` unless given) over the
        tiles covering each pixel."""
        th, tw = self.tile
        total = np.zeros((self.height, self.width), np.float32)
        for t, win in zip(self.tiles, self.windows() if windows is None else windows):
            total[t.y0:t.y0 + th, t.x0:t.x0 + tw] += win
        return total


ApplyFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


def frame_sharding(tile_sharding, height: int, multiple: int):
    """How a whole frame of ``height`` rows (a plan of one tile) is split over the devices of
    ``tile_sharding`` (``parallel.tile_sharding``, n devices): in ``d = gcd(height / multiple,
    n)`` bands of rows, each on n / d of the devices, so every level of the U-Net (``multiple``
    = ``unet_multiple``: its coarsest level has height / multiple rows) has whole, equal bands.
    A NamedSharding of [B, rows, cols, C] arrays (spec (None, "bands")), or None for one
    device or d = 1 (the frame then runs on one device). E.g. on 8 devices with multiple 8:
    256 rows in 8 bands, 96 in 4, 104 in none. (Bands that do not divide a level evenly were
    measured to split little: XLA's cost analysis of a 264 x 384 frame in 4 or 8 uneven bands, about
    1/2 of one device's flops per device, against 1/7.9 for 256 x 384 in 8 even bands.)"""
    if tile_sharding is None:
        return None
    devices = np.asarray(tile_sharding.mesh.devices).reshape(-1)
    d = math.gcd(int(height) // int(multiple), devices.size)
    if d == 1:
        return None
    mesh = jax.sharding.Mesh(devices.reshape(d, devices.size // d), ("bands", "copies"))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "bands"))


def tiled_denoiser(apply_fn: ApplyFn, plan: TilePlan, w: jax.Array, c: jax.Array,
                   tile_sharding=None) -> Callable:
    """The frame-level denoiser ``denoise(m_t [1, H, W, 3], t int32 [1]) -> f [1, H, W, 3]``.

    ``apply_fn(m, w, c, t)`` runs the network on a batch of tiles (m, c:
    [B, th, tw, 3]; w: [B, th/2, tw/2, 4]; t: [B]). ``w`` [1, H/2, W/2, 4] and
    ``c`` [1, H, W, 3] are the whole frame's conditions. The tile batches run in
    a ``lax.scan`` (one network trace); the windowed outputs are summed into a
    frame buffer in tile order and normalised by the window sum. For a plan
    with one tile this is exactly ``apply_fn`` on the frame.

    ``tile_sharding`` (``parallel.tile_sharding``): each tile batch is split over its
    devices (the batch rounded up to a multiple of their number, padded with weight-0
    tiles), so every local device evaluates its share of the tiles; the result does
    not depend on it (tested on 1 and 8 devices). For a plan of one tile (the whole
    frame) it is instead the frame's sharding in bands of rows (``frame_sharding``):
    XLA's SPMD partitioner gives each device its band of every layer and exchanges the
    convolutions' borders.
    """
    th, tw = plan.tile
    tiles = plan.tiles
    if len(tiles) == 1:
        if tile_sharding is None:
            return lambda m, t: apply_fn(m, w, c, t)
        w_b, c_b = (jax.lax.with_sharding_constraint(a, tile_sharding) for a in (w, c))
        return lambda m, t: apply_fn(jax.lax.with_sharding_constraint(m, tile_sharding), w_b, c_b, t)
    bsz = min(plan.batch, len(tiles))
    if tile_sharding is not None:
        n = tile_sharding.mesh.size
        bsz = -(-bsz // n) * n
    pad = (-len(tiles)) % bsz
    origins = np.array([(t.y0, t.x0) for t in tiles] + [(tiles[-1].y0, tiles[-1].x0)] * pad, np.int32)
    tile_windows = plan.windows()
    inv_sum = (1.0 / plan.weight_sum(tile_windows)).astype(np.float32)
    windows = np.concatenate([tile_windows, np.zeros((pad, th, tw), np.float32)])
    origins = jnp.asarray(origins.reshape(-1, bsz, 2))
    windows = jnp.asarray(windows.reshape(-1, bsz, th, tw, 1))
    w0, c0 = w[0], c[0]

    def crop(img, y, x, h, wd, scale=1):
        return jax.lax.dynamic_slice(img, (y // scale, x // scale, 0), (h // scale, wd // scale, img.shape[-1]))

    def denoise(m, t):
        m0 = m[0]
        t_b = jnp.full((bsz,), t.reshape(-1)[0], jnp.int32)

        def body(acc, chunk):
            org, win = chunk
            ys, xs = org[:, 0], org[:, 1]
            m_b = jax.vmap(lambda y, x: crop(m0, y, x, th, tw))(ys, xs)
            w_b = jax.vmap(lambda y, x: crop(w0, y, x, th, tw, 2))(ys, xs)
            c_b = jax.vmap(lambda y, x: crop(c0, y, x, th, tw))(ys, xs)
            t_s = t_b
            if tile_sharding is not None:  # the tiles of this batch over the local devices
                m_b, w_b, c_b, t_s = (jax.lax.with_sharding_constraint(a, tile_sharding)
                                      for a in (m_b, w_b, c_b, t_b))
            f_b = jnp.asarray(apply_fn(m_b, w_b, c_b, t_s), jnp.float32) * win

            def add(i, a):
                cur = jax.lax.dynamic_slice(a, (ys[i], xs[i], 0), (th, tw, 3))
                return jax.lax.dynamic_update_slice(a, cur + f_b[i], (ys[i], xs[i], 0))

            return jax.lax.fori_loop(0, bsz, add, acc), None

        acc, _ = jax.lax.scan(body, jnp.zeros(m0.shape, jnp.float32), (origins, windows))
        return (acc * inv_sum[..., None])[None]

    return denoise

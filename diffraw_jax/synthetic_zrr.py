"""Synthetic data in the exact on-disk layout of the Zurich RAW-to-RGB dataset.

    python -m diffraw_jax.synthetic_zrr --out DIR --num_train N --num_test M [--size 448] [--seed S]

writes ``DIR/{train,test}/huawei_raw/<i>.png`` (single-channel RGGB Bayer mosaic,
10-bit codes, black level 63, white level 1020, 16-bit PNG, or 8-bit PNG when every
code fits in 8 bits, as in real ZRR) and ``DIR/{train,test}/canon/<i>.jpg``
(size x size x 3 sRGB JPEG), which ``tfds_zrr`` builds exactly like the real data.
The command writes 448x448 pairs, the size the builder's ``zrr/patches`` config
stores (``tfds_zrr.zrr.PATCH_SIZE``); ``--size`` other than that is refused, since
the builder would skip every pair. ``generate()`` and ``make_pair()`` take any
even size from Python (tests, experiments that bypass TFDS).

A pair is made as follows (all numpy, deterministic per (seed, split, index)):

1. Scene: a dead-leaves occlusion model (discs with a power-law radius
   distribution, as in camera texture-loss charts), some discs carrying stripe or
   noise textures, plus rectangles (sharp straight edges) and thin anti-aliased
   lines, on a smooth two-colour gradient. Rendered in sRGB at size + 2*margin.
2. "DSLR": the centre crop of the sharp scene, saved as a quality-95 JPEG.
3. "Phone RAW", by unprocessing the scene (``unprocess``; Brooks et al. 2019, inverse ISP):
   a small random affine misalignment (shift up to 2 px, rotation up to 0.5 deg,
   scale +-1%) of the scene, inverse sRGB tone curve, inverse colour matrix
   (a random perturbation per pair: unstable colour mapping), inverse white-balance
   gains (random per pair), optics blur (Gaussian sigma 0.8-1.6 px: detail loss),
   a random exposure, RGGB mosaic, heteroscedastic noise (shot variance
   proportional to the signal plus read noise) and 10-bit quantisation with black
   level 63 and white level 1020.
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

def render_scene(rng: np.random.Generator, size: int) -> np.ndarray:
    """A procedural sRGB scene [size, size, 3] float64 in [0, 1]."""
    yy, xx = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64), indexing="ij")
    c0, c1 = rng.uniform(0.1, 0.9, 3), rng.uniform(0.1, 0.9, 3)
    theta = rng.uniform(0, 2 * np.pi)
    ramp = ((np.cos(theta) * yy + np.sin(theta) * xx) / size + 1.0) / 2.0
    img = c0 + (c1 - c0) * np.clip(ramp, 0, 1)[..., None]

    palette = rng.uniform(0.02, 0.98, (12, 3))

    def power_law(n, rmin, rmax):  # p(r) ~ r^-3 on [rmin, rmax]: scale-invariant
        u = rng.uniform(size=n)
        return 1.0 / np.sqrt(u / rmin**2 + (1 - u) / rmax**2)

    # ~2000 leaves of radius >= 4 cover the plane (expected coverage ~3x);
    # a few hundred tiny ones on top add fine detail.
    radii = np.concatenate([power_law(int(rng.integers(1500, 2500)), 4.0, size / 3.0),
                            power_law(int(rng.integers(150, 400)), 1.0, 4.0)])
    # Paint top-down (the last leaf first), only where nothing is painted yet:
    # the same picture as painting bottom-up, but it stops once the plane is covered.
    covered = np.zeros((size, size), bool)
    for n, r in enumerate(radii[::-1]):
        if n % 128 == 127 and covered.all():
            break
        cy, cx = rng.uniform(-r, size + r, 2)
        y0, y1 = max(0, int(cy - r)), min(size, int(cy + r) + 2)
        x0, x1 = max(0, int(cx - r)), min(size, int(cx + r) + 2)
        if y0 >= y1 or x0 >= x1:
            continue
        dy, dx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
        free = ~covered[y0:y1, x0:x1]
        mask = (dy * dy + dx * dx <= r * r) & free
        colour = palette[rng.integers(len(palette))] * rng.uniform(0.7, 1.1)
        kind = rng.uniform()
        if not mask.any():
            continue
        if kind < 0.2 and r > 6:  # stripes
            period = rng.uniform(2.5, 12.0)
            ang = rng.uniform(0, np.pi)
            phase = (np.cos(ang) * dy[mask] + np.sin(ang) * dx[mask]) * 2 * np.pi / period
            alt = palette[rng.integers(len(palette))]
            w = (0.5 + 0.5 * np.sin(phase))[:, None]
            patch = colour * w + alt * (1 - w)
        elif kind < 0.35 and r > 6:  # fine noise texture
            patch = colour * (1 + 0.25 * rng.standard_normal((int(mask.sum()), 1)))
        else:
            patch = colour
        img[y0:y1, x0:x1][mask] = patch
        covered[y0:y1, x0:x1] |= mask

    for _ in range(int(rng.integers(1, 5))):  # rectangles: long straight edges
        h, w = rng.integers(size // 12, size // 3, 2)
        y0, x0 = rng.integers(0, size - h), rng.integers(0, size - w)
        img[y0:y0 + h, x0:x0 + w] = palette[rng.integers(len(palette))]

    for _ in range(int(rng.integers(6, 16))):  # thin anti-aliased lines
        p = rng.uniform(0, size, 2)
        ang = rng.uniform(0, np.pi)
        width = rng.uniform(0.6, 2.0)
        dist = np.abs(-np.sin(ang) * (yy - p[0]) + np.cos(ang) * (xx - p[1]))
        cover = np.clip(width / 2 + 0.5 - dist, 0.0, 1.0)[..., None]
        img = img * (1 - cover) + palette[rng.integers(len(palette))] * cover
    return np.clip(img, 0.0, 1.0)


# ---------------------------------------------------------------------- a pair

def random_ccm(rng: np.random.Generator) -> np.ndarray:
    """BASE_CCM with a random perturbation, rows renormalised to sum to 1."""
    ccm = BASE_CCM + rng.normal(0.0, 0.06, (3, 3))
    return ccm / ccm.sum(axis=1, keepdims=True)


def unprocess(scene_srgb: np.ndarray, rng: np.random.Generator, *, margin: int = 0,
              ccm=None, gains=None, blur_sigma=None, exposure=None, shot=None, read=None,
              warp: bool = True):
    """sRGB image -> phone-like RGGB RAW (Brooks et al. 2019, inverse ISP); step 3 of the docstring.

    ``scene_srgb``: [H + 2 margin, W + 2 margin, 3] float in [0, 1]; the RAW covers
    its centre H x W (H, W even). ``warp``: a random affine misalignment (shift up
    to 2 px, rotation up to 0.5 deg, scale +-1%) of a square scene sampled onto that
    centre (pixels beyond the scene repeat its edge); ``warp=False`` crops the centre
    unchanged, so the RAW stays aligned with the input. Every parameter left at
    None is drawn from ``rng`` as ``make_pair`` draws it (in this order: warp,
    ``ccm`` = ``random_ccm``, ``gains`` (r, 1, b) with r ~ U(1.6, 2.4) and
    b ~ U(1.4, 2.0), ``blur_sigma`` ~ U(0.8, 1.6), ``exposure`` (U(0.05, 0.2) with
    probability 0.1, else U(0.5, 1.0)), ``shot`` ~ U(0.3, 1.5), ``read`` ~ U(0.5, 2.5));
    a given one is used as is and draws nothing. ``ccm``: [3, 3] camera RGB ->
    linear sRGB, applied inverted; ``gains``: (r, g, b) white-balance gains, divided
    out; ``blur_sigma`` <= 0: no blur; ``exposure``: fraction of the white level that
    a white (after white balance) maps to; noise variance ``shot * signal + read**2``
    in codes (0 and 0: no noise). The noise itself is always drawn last.

    Returns (raw uint16 [H, W] RGGB codes, black 63 / white 1020, and a dict with
    the ``ccm``, ``gains``, ``blur_sigma``, ``exposure``, ``shot``, ``read`` and
    ``warp`` ((shift, angle_rad, scale) or None) used). The classical ISP with
    white balance ``gains / exposure`` and colour matrix ``ccm`` inverts it up to
    blur, noise, clipping and quantisation.
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
    lin = color.srgb_to_linear(np.clip(image, 0.0, 1.0))
    ccm = random_ccm(rng) if ccm is None else np.asarray(ccm, np.float64)
    cam = lin @ np.linalg.inv(ccm).T  # inverse colour matrix
    if gains is None:
        gains = np.array([rng.uniform(1.6, 2.4), 1.0, rng.uniform(1.4, 2.0)])
    gains = np.asarray(gains, np.float64)
    cam = np.clip(cam / gains, 0.0, None)  # inverse white balance
    blur_sigma = rng.uniform(0.8, 1.6) if blur_sigma is None else float(blur_sigma)
    if blur_sigma > 0:
        cam = gaussian_blur(cam, blur_sigma)  # optics blur, detail loss
    if exposure is None:
        exposure = rng.uniform(0.05, 0.2) if rng.uniform() < 0.1 else rng.uniform(0.5, 1.0)
    mosaic = np.empty((h, w), np.float64)
    mosaic[0::2, 0::2] = cam[0::2, 0::2, 0]  # R
    mosaic[0::2, 1::2] = cam[0::2, 1::2, 1]  # G (red rows)
    mosaic[1::2, 0::2] = cam[1::2, 0::2, 1]  # G (blue rows)
    mosaic[1::2, 1::2] = cam[1::2, 1::2, 2]  # B
    signal = mosaic * exposure * (WHITE_LEVEL - BLACK_LEVEL)
    shot = rng.uniform(0.3, 1.5) if shot is None else float(shot)
    read = rng.uniform(0.5, 2.5) if read is None else float(read)
    noisy = signal + np.sqrt(shot * signal + read**2) * rng.standard_normal(signal.shape)
    raw = np.clip(np.round(noisy + BLACK_LEVEL), 0, MAX_CODE).astype(np.uint16)
    info = {"ccm": ccm, "gains": gains, "blur_sigma": float(blur_sigma), "exposure": float(exposure),
            "shot": float(shot), "read": float(read), "warp": warp_params}
    return raw, info


def make_pair(seed: int, split: str, index: int, size: int = 448):
    """Returns (raw uint16 [size, size] RGGB mosaic, dslr uint8 [size, size, 3])."""
    if size % 2:
        raise ValueError(f"size must be even (2x2 Bayer cells), got {size}")
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    margin = 8
    scene = render_scene(rng, size + 2 * margin)
    dslr = np.round(scene[margin:margin + size, margin:margin + size] * 255).astype(np.uint8)
    raw, _ = unprocess(scene, rng, margin=margin)
    return raw, dslr


def write_pair(out: str, split: str, index: int, raw: np.ndarray, dslr: np.ndarray) -> None:
    from PIL import Image

    raw_path = os.path.join(out, split, "huawei_raw", f"{index}.png")
    if raw.max() <= 255:  # real ZRR stores such dark frames as 8-bit PNG
        Image.fromarray(raw.astype(np.uint8), mode="L").save(raw_path)
    else:
        Image.fromarray(raw.astype(np.uint16)).save(raw_path)
    Image.fromarray(dslr, mode="RGB").save(os.path.join(out, split, "canon", f"{index}.jpg"), quality=95)


def _work(args):
    out, seed, split, index, size = args
    raw, dslr = make_pair(seed, split, index, size)
    write_pair(out, split, index, raw, dslr)
    return index


def generate(out: str, num_train: int, num_test: int, size: int = 448, seed: int = 0,
             workers: int | None = None, progress: bool = True) -> None:
    """Writes the synthetic dataset under ``out`` (see the module docstring). Any even
    ``size``; only ``tfds_zrr.zrr.PATCH_SIZE`` (448) builds with ``zrr/patches``."""
    jobs = []
    for split, n in (("train", num_train), ("test", num_test)):
        if n < 0:
            raise ValueError(f"num_{split} must be >= 0, got {n}")
        os.makedirs(os.path.join(out, split, "huawei_raw"), exist_ok=True)
        os.makedirs(os.path.join(out, split, "canon"), exist_ok=True)
        jobs += [(out, seed, split, i, size) for i in range(n)]
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
    p = argparse.ArgumentParser(prog="python -m diffraw_jax.synthetic_zrr", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (ZRR layout)")
    p.add_argument("--num_train", type=int, required=True)
    p.add_argument("--num_test", type=int, required=True)
    p.add_argument("--size", type=int, default=448,
                   help="patch size; must be 448, the size the TFDS builder (zrr/patches) stores")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out")
    a = p.parse_args(argv)
    from tfds_zrr.zrr import PATCH_SIZE  # the size the builder stores (loads tensorflow_datasets)

    if a.size != PATCH_SIZE:
        p.error(f"--size must be {PATCH_SIZE}, got {a.size}: the TFDS builder (zrr/patches) stores "
                f"{PATCH_SIZE}x{PATCH_SIZE} pairs and would skip every {a.size}x{a.size} one "
                f"(diffraw_jax.synthetic_zrr.generate() writes other even sizes from Python)")
    if a.num_train < 1 or a.num_test < 1:
        p.error(f"--num_train and --num_test must be >= 1, got {a.num_train} and {a.num_test}: "
                f"the TFDS builder needs pairs in both splits")
    if os.path.isdir(a.out) and os.listdir(a.out) and not a.overwrite:
        p.error(f"--out {a.out} is not empty; pass --overwrite to write into it")
    t0 = time.time()
    generate(a.out, a.num_train, a.num_test, a.size, a.seed, a.workers)
    print(f"wrote {a.num_train} train + {a.num_test} test pairs ({a.size}x{a.size}) to {a.out} "
          f"in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Real photographs as clean targets, unprocessed into RAW pairs beside the textured dead leaves
(issue 28, item 2), in the ZRR layout of ``synthetic_zrr``.

    python -m diffraw_jax.data.photos --out data/photos --num_train 1024 --num_test 32 \\
        [--photo_share 0.5] [--seed 0] [--debs data/debs] [--workers N] [--warp] [--blur LOW,HIGH]

(the shipped models: ``--blur 0,0.3``; ``make photos``).

1. **Download** the Debian packages ``PACKAGES`` (``plasma-workspace-wallpapers``,
   ``mate-backgrounds``) with ``apt-get download`` into ``--debs`` (default
   ``data/debs``; a package already there is not fetched again) and extract each with
   ``dpkg-deb -x`` into ``DEBS/root`` -- nothing is installed system-wide. This is the only
   step that needs the network.
2. **Select** the photographs by the explicit list ``PHOTOS`` (23 files: piers, boats,
   leaves, forest, moss, beach grass, meadow, flowers, storm, wood, water, sky; the
   drawings, renders and abstract images of both packages are left out). A listed file
   that is missing stops the command.
3. **Licences**: each package's ``usr/share/doc/<package>/copyright`` is copied to
   ``OUT/LICENSES/<package>.copyright`` (mate-backgrounds: GPL-2+, authors per file); ``OUT/photos.json``
   names every photograph, its package and version, its own licence and authors where the
   package gives them per wallpaper (plasma's ``metadata.json``: LGPLv3 for all 11 used), size and
   SHA-256, and the pairs made from it.
4. **Pairs** (deterministic per (seed, split, index)): with probability ``--photo_share`` a
   photograph (uniformly drawn) is the scene, else the textured dead leaves of
   ``synthetic_zrr.render_scene``. A photograph is downscaled by a random factor (its short
   side to 1-3 times the crop, never upscaled: the downscale removes the file's own noise
   and JPEG blocks, so the target is clean), a random square crop of ``size + 16`` px is
   cut from it, randomly flipped / rotated by 90 degrees, and unprocessed exactly as a
   dead-leaves scene (``synthetic_zrr.unprocess``: pixel-aligned unless ``--warp``, inverse tone
   curve and colour matrix, white balance, optics blur, exposure, mosaic, lens shading, the sensor's
   noise, clipping, 10 bits), each pair with its own calibration in ``calibration/<i>.json``.
   The sensor noise is drawn by ``draw_noise`` for every pair (photo or dead leaves): base
   ISO to ISO-3200-like, clean inputs well represented (docs/real-detail.md). A photograph
   whose short side is smaller than a crop is skipped (no pair is made from it) and counted
   in the summary.

Bad input ends in one line and exit status 2: a package that cannot be downloaded, an
extracted folder without the listed photographs, no usable photograph, a non-empty ``--out``
without ``--overwrite``.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from diffraw_jax.data import synthetic_zrr

#: The Debian packages the photographs come from (Debian bookworm: plasma-workspace-wallpapers
#: 4:5.27.5-2, mate-backgrounds 1.26.0-1).
PACKAGES = ("plasma-workspace-wallpapers", "mate-backgrounds")

#: The photographs, relative to the extracted packages' root (largest version of each). Left out:
#: mate desktop/ and abstract/ (drawings, gradients, logos, a painting), and the plasma wallpapers
#: Altai, Autumn, Canopee, Cascade, Cluster, Elarun, Flow, FlyingKonqui, Honeywave, IceCold, Kay,
#: Kokkini, MilkyWay, Opal, PastelHills, Patak, SafeLanding, Shell, Volna (renders and drawings).
PHOTOS = (
    "usr/share/backgrounds/mate/nature/Aqua.jpg",            # water drop splash
    "usr/share/backgrounds/mate/nature/Blinds.jpg",          # leaf veins
    "usr/share/backgrounds/mate/nature/Dune.jpg",            # beach grass, sea
    "usr/share/backgrounds/mate/nature/FreshFlower.jpg",     # flower
    "usr/share/backgrounds/mate/nature/Garden.jpg",          # marigold, bokeh
    "usr/share/backgrounds/mate/nature/GreenMeadow.jpg",     # grass
    "usr/share/backgrounds/mate/nature/LadyBird.jpg",        # forget-me-nots, ladybird
    "usr/share/backgrounds/mate/nature/RainDrops.jpg",       # leaves with drops
    "usr/share/backgrounds/mate/nature/Storm.jpg",           # storm clouds, road
    "usr/share/backgrounds/mate/nature/TwoWings.jpg",        # dandelion seeds
    "usr/share/backgrounds/mate/nature/Wood.jpg",            # wooden boards
    "usr/share/backgrounds/mate/nature/YellowFlower.jpg",    # flower
    "usr/share/wallpapers/BytheWater/contents/images/2560x1600.jpg",    # pier, lake
    "usr/share/wallpapers/ColdRipple/contents/images/2560x1600.jpg",    # pier in fog
    "usr/share/wallpapers/ColorfulCups/contents/images/2560x1600.jpg",  # cups
    "usr/share/wallpapers/DarkestHour/contents/images/2560x1600.jpg",   # lake at dusk
    "usr/share/wallpapers/EveningGlow/contents/images/2560x1600.jpg",   # boats, sunset
    "usr/share/wallpapers/FallenLeaf/contents/images/2560x1600.jpg",    # autumn leaves
    "usr/share/wallpapers/Grey/contents/images/2560x1600.jpg",          # architecture
    "usr/share/wallpapers/Kite/contents/images/2560x1600.jpg",          # sky, clouds
    "usr/share/wallpapers/OneStandsOut/contents/images/2560x1600.jpg",  # moss
    "usr/share/wallpapers/Path/contents/images/2560x1600.jpg",          # forest path
    "usr/share/wallpapers/summer_1am/contents/images/2560x1600.jpg",    # lake at dawn
)

MARGIN = 8  # scene margin around the RAW (as synthetic_zrr.make_example), for the warp


class DataError(RuntimeError):
    """Bad input of the data command (one line)."""


# ---------------------------------------------------------------------- noise (item 3)

#: Share of pairs drawn in the "clean" (base-ISO) range.
CLEAN_SHARE = 0.4
#: 10-bit codes (white - black = 957): shot (codes per code of signal) and read (codes) ranges,
#: log-uniform. Clean: a base-ISO camera (the shared DNG measures shot 0.021, read 0.20 on this
#: scale); noisy: up to an ISO-3200-like file.
CLEAN_SHOT, CLEAN_READ = (0.01, 0.1), (0.05, 0.5)
NOISY_SHOT, NOISY_READ = (0.1, 2.5), (0.5, 4.0)


def draw_noise(rng: np.random.Generator) -> tuple:
    """(shot, read) of ``synthetic_zrr.unprocess`` for one pair: with probability ``CLEAN_SHARE``
    log-U(CLEAN_SHOT), log-U(CLEAN_READ), else log-U(NOISY_SHOT), log-U(NOISY_READ)."""
    lu = lambda lo_hi: float(np.exp(rng.uniform(np.log(lo_hi[0]), np.log(lo_hi[1]))))  # noqa: E731
    if rng.uniform() < CLEAN_SHARE:
        return lu(CLEAN_SHOT), lu(CLEAN_READ)
    return lu(NOISY_SHOT), lu(NOISY_READ)


# ---------------------------------------------------------------------- the packages

def download(debs: str, packages=PACKAGES) -> dict:
    """``apt-get download`` of each package into ``debs`` (skipped when a ``<package>_*.deb`` is
    there already) -> {package: .deb path}. DataError (one line) when one cannot be fetched."""
    os.makedirs(debs, exist_ok=True)
    found = {}
    for pkg in packages:
        have = sorted(glob.glob(os.path.join(debs, f"{pkg}_*.deb")))
        if not have:
            try:
                r = subprocess.run(["apt-get", "download", pkg], cwd=debs, capture_output=True, text=True)
            except FileNotFoundError:
                raise DataError(f"package {pkg}: apt-get is not available to download it") from None
            have = sorted(glob.glob(os.path.join(debs, f"{pkg}_*.deb")))
            if r.returncode != 0 or not have:
                why = (r.stderr or r.stdout).strip().splitlines()
                raise DataError(f"package {pkg} could not be downloaded: {why[-1] if why else 'no .deb written'}")
        found[pkg] = have[-1]
    return found


def extract(debs: dict, root: str) -> dict:
    """``dpkg-deb -x`` of each .deb into ``root`` -> {package: version}. DataError on failure."""
    os.makedirs(root, exist_ok=True)
    versions = {}
    for pkg, deb in debs.items():
        for args in (["dpkg-deb", "-x", deb, root], ["dpkg-deb", "-f", deb, "Version"]):
            try:
                r = subprocess.run(args, capture_output=True, text=True)
            except FileNotFoundError:
                raise DataError("dpkg-deb is not available to extract the packages") from None
            if r.returncode != 0:
                raise DataError(f"package {pkg}: {' '.join(args[:2])} failed: {r.stderr.strip()[-300:]}")
        versions[pkg] = r.stdout.strip()
    return versions


def find_photos(root: str, photos=PHOTOS) -> list:
    """The listed photographs under ``root`` (paths). DataError when the folder is empty or any
    listed file is missing (one line naming how many and the first)."""
    if not os.path.isdir(root) or not os.listdir(root):
        raise DataError(f"{root} is empty: no extracted packages to take photographs from")
    missing = [p for p in photos if not os.path.isfile(os.path.join(root, p))]
    if missing:
        raise DataError(f"{len(missing)} of the {len(photos)} listed photographs are missing under {root} "
                        f"(first: {missing[0]})")
    return [os.path.join(root, p) for p in photos]


def photo_licence(root: str, rel_path: str) -> dict:
    """A plasma wallpaper's own licence and authors from its ``metadata.json`` (KPlugin License,
    Authors), {} for the mate photographs (their licence is in the package's copyright file, per
    file)."""
    parts = rel_path.split("/")
    if "wallpapers" not in parts:
        return {}
    meta = os.path.join(root, *parts[:parts.index("wallpapers") + 2], "metadata.json")
    if not os.path.isfile(meta):
        return {}
    with open(meta, encoding="utf-8") as f:
        m = json.load(f)
    k = m.get("KPlugin", m)
    return {"licence": k.get("License"), "authors": [a.get("Name") for a in k.get("Authors", [])]}


def package_of(rel_path: str) -> str:
    """The package a listed photograph comes from."""
    return "mate-backgrounds" if rel_path.startswith("usr/share/backgrounds/mate/") else "plasma-workspace-wallpapers"


def copy_licences(root: str, out: str, packages=PACKAGES) -> list:
    """Copies each package's ``usr/share/doc/<package>/copyright`` to ``out/LICENSES/<package>.copyright``
    -> the written paths. DataError when a copyright file is missing."""
    dst = os.path.join(out, "LICENSES")
    os.makedirs(dst, exist_ok=True)
    written = []
    for pkg in packages:
        src = os.path.join(root, "usr", "share", "doc", pkg, "copyright")
        if not os.path.isfile(src):
            raise DataError(f"package {pkg} has no copyright file at {src}")
        written.append(shutil.copyfile(src, os.path.join(dst, f"{pkg}.copyright")))
    return written


# ---------------------------------------------------------------------- pairs

def load_photo(path: str) -> np.ndarray:
    """A photograph as sRGB float32 [H, W, 3] in [0, 1] (8-bit JPEG/PNG, alpha dropped)."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), np.float32) / 255.0


def photo_scene(photo: np.ndarray, rng: np.random.Generator, side: int) -> np.ndarray:
    """A random square [side, side, 3] float64 scene from ``photo`` [H, W, 3] (min(H, W) >= side):
    downscaled (area average, PIL BOX) so its short side is U(1, 3) x side but at most the original
    (no upscaling), a uniform random crop, a random flip and rotation by k x 90 degrees."""
    from PIL import Image

    h, w = photo.shape[:2]
    short = min(h, w)
    target = min(short, int(round(side * rng.uniform(1.0, 3.0))))
    scale = target / short
    nh, nw = max(side, int(round(h * scale))), max(side, int(round(w * scale)))
    if (nh, nw) != (h, w):
        chans = [np.asarray(Image.fromarray(photo[..., c]).resize((nw, nh), Image.BOX)) for c in range(3)]
        img = np.stack(chans, -1)
    else:
        img = photo
    y0, x0 = int(rng.integers(0, nh - side + 1)), int(rng.integers(0, nw - side + 1))
    crop = img[y0:y0 + side, x0:x0 + side].astype(np.float64)
    if rng.uniform() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(np.rot90(crop, int(rng.integers(4))))


def make_example(seed: int, split: str, index: int, size: int, photos: list, photo_share: float,
                 warp: bool = False, blur=None):
    """One pair: (raw uint16 [size, size], dslr uint8 [size, size, 3], calibration dict, source),
    deterministic per (seed, split, index) given the same ``photos`` (arrays, in ``PHOTOS`` order;
    None for a skipped one). ``source``: the photograph's index in ``photos``, or -1 for dead leaves.
    ``warp``: the ZRR-like misalignment of ``unprocess``; off by default (pixel-aligned pairs: the
    data of calibrated models, whose condition comes from the RAW itself -- synthetic_zrr's
    ``--aligned``; pretrained/synthetic/TRAINING.md stage 3). ``blur``: (low, high) px, the range of
    the optics blur's sigma (drawn from its own stream); None: ``unprocess``'s own U(0.6, 1.8)."""
    rng = np.random.default_rng([seed, synthetic_zrr.SPLIT_IDS[split], index, 28])
    side = size + 2 * MARGIN
    usable = [i for i, p in enumerate(photos) if p is not None]
    if usable and rng.uniform() < photo_share:
        source = usable[int(rng.integers(len(usable)))]
        scene = photo_scene(photos[source], rng, side)
    else:
        source = -1
        scene = synthetic_zrr.render_scene(rng, side)
    shot, read = draw_noise(rng)
    dslr = np.round(np.clip(scene[MARGIN:MARGIN + size, MARGIN:MARGIN + size], 0, 1) * 255).astype(np.uint8)
    blur_sigma = None
    if blur is not None:
        blur_sigma = np.random.default_rng([seed, synthetic_zrr.SPLIT_IDS[split], index, 29]).uniform(*blur)
    raw, info = synthetic_zrr.unprocess(scene, rng, margin=MARGIN, shot=shot, read=read, warp=warp,
                                        blur_sigma=blur_sigma)
    return raw, dslr, synthetic_zrr.calibration(info), source


_PHOTOS = None  # per worker process: the loaded photographs


def _init(paths, size):
    global _PHOTOS
    _PHOTOS = [None if p is None else load_photo(p) for p in paths]


def _work(args):
    out, seed, split, index, size, share, warp, blur = args
    raw, dslr, calib, source = make_example(seed, split, index, size, _PHOTOS, share, warp, blur)
    synthetic_zrr.write_pair(out, split, index, raw, dslr, calib)
    return source


def usable_photos(paths: list, size: int) -> tuple:
    """(paths with None for the photographs whose short side is below a crop (size + 16 px), the
    number skipped). Reads only the image headers."""
    from PIL import Image

    kept, skipped = [], 0
    for p in paths:
        with Image.open(p) as im:
            ok = min(im.size) >= size + 2 * MARGIN
        kept.append(p if ok else None)
        skipped += not ok
    return kept, skipped


def generate(out: str, root: str, num_train: int, num_test: int, size: int = 448, seed: int = 0,
             photo_share: float = 0.5, workers=None, photos=PHOTOS, warp: bool = False, blur=None) -> dict:
    """Writes the pairs and ``photos.json`` under ``out`` from the photographs under ``root``
    (extracted packages) -> the summary dict (counts of pairs from photographs and from dead leaves,
    photographs used and skipped). ``blur``: see ``make_example``."""
    if blur is not None and not 0.0 <= blur[0] <= blur[1]:
        raise DataError(f"--blur must be LOW,HIGH with 0 <= LOW <= HIGH (px), got {blur}")
    if not 0.0 <= photo_share <= 1.0:
        raise DataError(f"--photo_share must be in [0, 1], got {photo_share}")
    paths = find_photos(root, photos)
    kept, skipped = usable_photos(paths, size)
    if photo_share > 0 and all(p is None for p in kept):
        raise DataError(f"none of the {len(paths)} photographs is at least {size + 2 * MARGIN} px on its short "
                        f"side (a crop); nothing to make photo pairs from")
    jobs = []
    for split, n in (("train", num_train), ("test", num_test)):
        for sub in ("huawei_raw", "canon", "calibration"):
            os.makedirs(os.path.join(out, split, sub), exist_ok=True)
        jobs += [(out, seed, split, i, size, photo_share, warp, blur) for i in range(n)]
    workers = max(1, min(len(jobs), workers or os.cpu_count() or 1))
    if workers == 1:
        _init(kept, size)
        sources = [_work(j) for j in jobs]
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init, initargs=(kept, size)) as pool:
            sources = list(pool.map(_work, jobs, chunksize=8))
    counts = np.bincount(np.asarray(sources) + 1, minlength=len(photos) + 1)
    entries = []
    for i, (rel, p) in enumerate(zip(photos, paths)):
        with open(p, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        from PIL import Image

        with Image.open(p) as im:
            wh = list(im.size)
        entries.append({"file": rel, "package": package_of(rel), **photo_licence(root, rel), "size": wh,
                        "sha256": digest, "skipped_smaller_than_crop": kept[i] is None,
                        "pairs": int(counts[i + 1])})
    summary = {"pairs": len(jobs), "photo_pairs": int(counts[1:].sum()), "dead_leaves_pairs": int(counts[0]),
               "photographs": len(paths), "photographs_skipped": skipped, "size": size, "seed": seed,
               "photo_share": photo_share, "clean_share": CLEAN_SHARE, "warp": warp,
               "blur": list(blur) if blur is not None else [0.6, 1.8]}
    return {"summary": summary, "photos": entries}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m diffraw_jax.data.photos", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (ZRR layout)")
    p.add_argument("--num_train", type=int, required=True)
    p.add_argument("--num_test", type=int, required=True)
    p.add_argument("--size", type=int, default=448, help="patch size (448: the TFDS builder's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--photo_share", type=float, default=0.5, help="share of pairs made from photographs")
    p.add_argument("--debs", default="data/debs", help="where the .deb files go and are extracted (DEBS/root)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--warp", action="store_true",
                   help="misaligned pairs (ZRR-like warp); default pixel-aligned, as calibrated models train")
    p.add_argument("--blur", default=None, metavar="LOW,HIGH",
                   help="range of the optics blur's sigma in px (default 0.6,1.8: synthetic_zrr's, phone-like; "
                   "0,0.3: the shipped models', which are not taught to sharpen a camera's picture)")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out")
    a = p.parse_args(argv)
    try:
        if a.num_train < 1 or a.num_test < 1:
            raise DataError(f"--num_train and --num_test must be >= 1, got {a.num_train} and {a.num_test}")
        blur = None
        if a.blur is not None:
            try:
                blur = tuple(float(v) for v in a.blur.split(","))
            except ValueError:
                blur = ()
            if len(blur) != 2 or not 0.0 <= blur[0] <= blur[1]:
                raise DataError(f"--blur must be LOW,HIGH (two numbers, 0 <= LOW <= HIGH px), got {a.blur!r}")
        if a.size % 2 or a.size < 2:
            raise DataError(f"--size must be even and >= 2, got {a.size}")
        if os.path.isdir(a.out) and os.listdir(a.out) and not a.overwrite:
            raise DataError(f"--out {a.out} is not empty; pass --overwrite to write into it")
        t0 = time.time()
        root = os.path.join(a.debs, "root")
        versions = extract(download(a.debs), root)
        os.makedirs(a.out, exist_ok=True)
        copy_licences(root, a.out)
        result = generate(a.out, root, a.num_train, a.num_test, a.size, a.seed, a.photo_share, a.workers,
                          warp=a.warp, blur=blur)
    except DataError as e:
        print(f"photos: error: {e}", file=sys.stderr)
        return 2
    result["summary"]["packages"] = versions
    result["summary"]["wall_s"] = round(time.time() - t0, 1)
    with open(os.path.join(a.out, "photos.json"), "w") as f:
        json.dump(result, f, indent=1)
    s = result["summary"]
    print(f"wrote {a.num_train} train + {a.num_test} test pairs ({a.size}x{a.size}) to {a.out}: "
          f"{s['photo_pairs']} from {s['photographs'] - s['photographs_skipped']} photographs, "
          f"{s['dead_leaves_pairs']} dead leaves; {s['photographs_skipped']} photographs skipped "
          f"(smaller than a {a.size + 2 * MARGIN}-px crop); {s['wall_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

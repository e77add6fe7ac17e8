"""Estimate a camera calibration for ZRR pairs from the pairs themselves.

    python -m tfds_zrr.calibrate --manual_dir ZRR_ROOT --out CAL_ROOT [--split train --split test]
                                 [--max_pairs N] [--fit_pairs M] [--workers W]

writes ``CAL_ROOT/<split>/calibration/<stem>.json`` for every usable pair, in the format
``zrr/calibrated`` reads (``tfds_zrr.zrr.read_calibration``)::

    {"wb_gains": [r, 1.0, b], "ccm": [[3x3]], "baseline_exposure": EV}

and ``CAL_ROOT/calibration_summary.json`` (the shared ccm, the fit's residual, each
split's counts, the pairs written with the fallback gains and the pairs left out). Then
``python -m tfds_zrr.build --manual_dir ZRR_ROOT --data_dir D --config calibrated
--calibration_dir CAL_ROOT`` builds ``zrr/calibrated``; nothing is written into ZRR_ROOT
(unless CAL_ROOT is ZRR_ROOT).

What is fitted
--------------
ZRR records no calibration: the Huawei P20 RAW PNGs carry no white balance, no colour
matrix and no exposure. The model is the classical ISP's, on the DSLR's linear light::

    dslr_lin  ~=  e_p * ccm @ diag(g_p) @ cam          (per pair p, per block)

with ``cam`` the phone's camera RGB (normalised RAW: black 63, white 1020; G the mean of
Gr and Gb), ``g_p = (r_p, 1, b_p)`` a white balance per pair (the Canon JPEG is white-
balanced by the Canon's own auto white balance, scene by scene, so each pair needs its
own), ``e_p`` an exposure gain per pair (the phone and the Canon expose differently) and
ONE ``ccm`` shared by every pair (the phone's sensor: one colour matrix; rows sum to 1, so
a white-balanced grey stays grey and the gains and exposure are unambiguous). It is fitted
by alternating least squares: with the ccm fixed, each pair's ``h_p = e_p g_p`` is a
3-parameter linear least-squares problem; with the ``h_p`` fixed, each ccm row is a
2-parameter linear problem (its third entry is one minus the other two). Starting from
the identity, the loop runs until the ccm moves by < 1e-6 (at most 200 rounds); blocks
whose relative residual exceeds 3x their pair's median (misaligned edges, moving objects,
specular highlights) are then dropped once and the loop runs again. The ccm is fitted on
at most ``--fit_pairs`` evenly spaced pairs of the ``train`` split (of the splits given
when train is not among them); every pair's ``h_p`` is then fitted with that ccm. A pair
gets ``wb_gains = h_p / h_p[1]`` and ``baseline_exposure = log2(h_p[1])`` (the rendering
is the normalised RAW times 2**EV, as DNG's BaselineExposure).

Why blocks
----------
The statistics are demosaic-free and alignment-tolerant: the RAW is packed to its four
half-resolution planes (``diffraw_jax.raw.pack``), the DSLR JPEG is linearised
(``diffraw_jax.color.srgb_to_linear``: colour is fitted in linear light, where the model
above holds) and averaged over 2x2 pixels to the planes' grid, and both are averaged over
8x8-plane-pixel blocks (16x16 DSLR pixels; 784 blocks per 448x448 pair). ZRR's pairs are
aligned to a few pixels only; a block mean moves little under such a shift, while a
per-pixel fit would mostly fit edges that do not line up. A block is dropped when any of
its RAW codes is within 2% of the white level (clipped: the ratio is wrong there), when
any DSLR value is >= 250 (clipped JPEG), or when it is dark (RAW green mean < 1% of the
range or DSLR linear mean < 0.002: noise and JPEG quantisation dominate). RAW block means
are not clipped at the black level, so noise does not bias dark blocks upwards.

Pairs that cannot be fitted
---------------------------
A pair the builder would skip (unreadable, wrong size, all black, missing partner:
``tfds_zrr.zrr.load_pair``) is left out. A black or fully clipped RAW has no usable
block: no file is written for it (``zrr/calibrated`` then skips it, "no calibration");
it is listed in the summary. A pair with fewer than ``MIN_BLOCKS`` usable blocks, or
whose fitted gains are not positive and within 0.1-10, gets the median white balance of
the fitted pairs and only its exposure is fitted (on the blocks it has); the summary
lists these as ``fallback``.

The test split's white balance comes from its own DSLR images (as the train split's):
an oracle white balance, the counterpart of a recorded AsShotNeutral. Scores on
``zrr/calibrated`` test are therefore not comparable to the paper's ZRR table, which
``zrr/patches`` (unchanged) still reproduces.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import numpy as np

from diffraw_jax import color
from diffraw_jax import raw as raw_lib

log = logging.getLogger("tfds_zrr")

BLOCK = 8             # block side in plane pixels (16 DSLR pixels)
CLIP_RAW = 0.98       # a normalised RAW code at or above this is clipped
CLIP_DSLR = 250       # a DSLR value at or above this is clipped
DARK_RAW = 0.01       # block green mean below this (normalised RAW): too dark
DARK_DSLR = 0.002     # block linear mean below this (DSLR): too dark
MIN_BLOCKS = 16       # fewer usable blocks: the pair gets the median white balance
OUTLIER = 3.0         # blocks with a relative residual > OUTLIER x their pair's median are dropped
SUMMARY_FILE = "calibration_summary.json"


def pair_blocks(raw: np.ndarray, dslr: np.ndarray, block: int = BLOCK,
                black=raw_lib.ZRR_BLACK_LEVEL, white=raw_lib.ZRR_WHITE_LEVEL):
    """Block statistics of one pair: (cam float64 [n, 3], lin float64 [n, 3]).

    ``raw``: uint16 [H, W] RGGB codes; ``dslr``: uint8 [H, W, 3] sRGB, the same scene
    (H, W even). ``cam``: the mean normalised camera RGB (R, (Gr + Gb)/2, B;
    ``(code - black) / (white - black)``, not clipped) of each usable ``block`` x ``block``
    block of the planes; ``lin``: the mean linear-sRGB DSLR of the same block. Clipped and
    dark blocks are left out (module docstring); n may be 0 (a black RAW)."""
    planes = raw_lib.pack(np.asarray(raw)).astype(np.float64)
    norm = (planes - black) / (white - black)
    h, w = norm.shape[:2]
    hb, wb = h // block, w // block
    if hb == 0 or wb == 0:
        raise ValueError(f"a {raw.shape} RAW has no {block}x{block} block of planes")
    dslr = np.asarray(dslr)
    if dslr.shape != (2 * h, 2 * w, 3):
        raise ValueError(f"the DSLR image {dslr.shape} does not match the RAW {raw.shape}")
    lin = color.srgb_to_linear(dslr.astype(np.float64) / 255.0)
    lin = lin.reshape(h, 2, w, 2, 3).mean(axis=(1, 3))  # to the planes' grid

    def blocks(x):  # [h, w, c] -> [hb, wb, block*block, c]
        x = x[:hb * block, :wb * block]
        return x.reshape(hb, block, wb, block, -1).transpose(0, 2, 1, 3, 4).reshape(hb, wb, block * block, -1)

    nb, lb = blocks(norm), blocks(lin)
    db = blocks(dslr.reshape(h, 2, w, 2, 3).transpose(0, 2, 1, 3, 4).reshape(h, w, 12))
    cam4 = nb.mean(axis=2)
    cam = np.stack([cam4[..., 0], (cam4[..., 1] + cam4[..., 2]) / 2, cam4[..., 3]], axis=-1)
    lmean = lb.mean(axis=2)
    ok = ((nb.max(axis=(2, 3)) < CLIP_RAW) & (db.max(axis=(2, 3)) < CLIP_DSLR)
          & (cam[..., 1] >= DARK_RAW) & (lmean.mean(axis=-1) >= DARK_DSLR))
    return cam[ok], lmean[ok]


# ----------------------------------------------------------------- least squares

def fit_h(ccm: np.ndarray, cam: np.ndarray, lin: np.ndarray) -> np.ndarray:
    """Least-squares ``h`` [3] of ``lin ~= ccm @ (h * cam)`` over the blocks ([n, 3] each)."""
    x = ccm[None, :, :] * cam[:, None, :]           # [n, 3 out, 3 in]: d lin_i / d h_j
    a = np.einsum("nij,nik->jk", x, x)
    b = np.einsum("nij,ni->j", x, lin)
    return np.linalg.lstsq(a, b, rcond=None)[0]


def fit_ccm(zs, lins) -> np.ndarray:
    """Least-squares ccm [3, 3] with rows summing to 1 of ``lin ~= ccm @ z`` over every
    pair's blocks (``z = h_p * cam``; lists of [n_p, 3])."""
    z, y = np.concatenate(zs), np.concatenate(lins)
    d = z[:, :2] - z[:, 2:3]                        # m_i2 = 1 - m_i0 - m_i1
    ccm = np.empty((3, 3))
    for i in range(3):
        m01 = np.linalg.lstsq(d, y[:, i] - z[:, 2], rcond=None)[0]
        ccm[i] = (m01[0], m01[1], 1.0 - m01.sum())
    return ccm


def _als(cams, lins, ccm, max_rounds=200, tol=1e-6):
    for _ in range(max_rounds):
        hs = [fit_h(ccm, c, l) for c, l in zip(cams, lins)]
        new = fit_ccm([h * c for h, c in zip(hs, cams)], lins)
        moved = np.abs(new - ccm).max()
        ccm = new
        if moved < tol:
            break
    return ccm, [fit_h(ccm, c, l) for c, l in zip(cams, lins)]


def relative_residual(ccm, h, cam, lin) -> np.ndarray:
    """Per block ``|lin - ccm @ (h * cam)| / (|lin| + 0.01)`` ([n])."""
    pred = (h * cam) @ ccm.T
    return np.linalg.norm(lin - pred, axis=-1) / (np.linalg.norm(lin, axis=-1) + 0.01)


def _inliers(ccm, h, cam, lin):
    r = relative_residual(ccm, h, cam, lin)
    return r <= OUTLIER * max(np.median(r), 1e-3)


def fit_shared_ccm(cams, lins):
    """The shared ccm [3, 3] (rows sum to 1) and each pair's ``h`` [3] by alternating least
    squares, with one round of outlier-block rejection (module docstring). ``cams``,
    ``lins``: per pair [n_p, 3] block statistics (``pair_blocks``), n_p >= MIN_BLOCKS."""
    if not cams:
        raise ValueError("no pair with enough usable blocks to fit a colour matrix")
    ccm, hs = _als(cams, lins, np.eye(3))
    keep = [_inliers(ccm, h, c, l) for h, c, l in zip(hs, cams, lins)]
    return _als([c[k] for c, k in zip(cams, keep)], [l[k] for l, k in zip(lins, keep)], ccm)


def pair_calibration(ccm, cam, lin, fallback_gains=None):
    """(calibration dict, how) for one pair with the shared ``ccm``: "fitted" (its own white
    balance), "fallback" (``fallback_gains`` [3], only the exposure fitted) or (None, "no
    usable block")."""
    how = "fitted"
    if len(cam) >= MIN_BLOCKS:
        h = fit_h(ccm, cam, lin)
        keep = _inliers(ccm, h, cam, lin)
        if keep.sum() >= MIN_BLOCKS:
            h = fit_h(ccm, cam[keep], lin[keep])
        gains = h / h[1] if h[1] > 0 else np.full(3, -1.0)
        if not (h[1] > 0 and np.all((gains > 0.1) & (gains < 10))):
            how = "fallback"
    else:
        how = "fallback"
    if how == "fallback":
        if len(cam) == 0 or fallback_gains is None:
            return None, "no usable block"
        gains = np.asarray(fallback_gains, np.float64)
        pred = (gains * cam) @ ccm.T
        e = float((pred * lin).sum() / (pred * pred).sum())
        if not e > 0:
            return None, "no usable block"
        h = e * gains
    cal = {"wb_gains": [float(v) for v in h / h[1]], "ccm": ccm.tolist(),
           "baseline_exposure": float(np.log2(h[1]))}
    return cal, how


# ----------------------------------------------------------------- files

def _pair_stats(args):
    raw_path, dslr_path = args
    from tfds_zrr.zrr import load_pair

    try:
        raw, dslr = load_pair(raw_path, dslr_path)
    except ValueError as e:  # BadPairError: the builder skips it too
        return None, str(e)
    cam, lin = pair_blocks(raw, dslr)
    return (cam.astype(np.float32), lin.astype(np.float32)), None


def _map(fn, jobs, workers):
    if workers <= 1:
        return [fn(j) for j in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(fn, jobs, chunksize=16))


def calibrate(manual_dir: str, out: str, splits=("train", "test"), max_pairs: int | None = None,
              fit_pairs: int = 2000, workers: int = 1) -> dict:
    """Writes ``out/<split>/calibration/<stem>.json`` for the pairs of ``manual_dir`` (ZRR
    layout) and ``out/calibration_summary.json``; returns the summary. ``max_pairs``: the
    first N pairs of each split only; ``fit_pairs``: the ccm is fitted on at most this many
    evenly spaced pairs (module docstring). Raises ``tfds_zrr.zrr.DataLayoutError`` for a
    folder without the ZRR layout and ValueError when no pair can be fitted."""
    from tfds_zrr.zrr import CALIBRATION_FOLDER, check_layout, scan_split

    check_layout(manual_dir)
    stats, left_out = {}, []
    for split in splits:
        skipped = []
        pairs = scan_split(manual_dir, split, skipped)[:max_pairs]
        left_out += [{"split": split, "id": s["id"], "reason": s["reason"]} for s in skipped]
        res = _map(_pair_stats, [(r, d) for _, r, d in pairs], workers)
        stats[split] = []
        for (stem, _, _), (st, err) in zip(pairs, res):
            if st is None:
                left_out.append({"split": split, "id": stem, "reason": err})
            else:
                stats[split].append((stem, st[0].astype(np.float64), st[1].astype(np.float64)))
    fit_from = ["train"] if "train" in splits else list(splits)
    pool = [(c, l) for s in fit_from for _, c, l in stats[s] if len(c) >= MIN_BLOCKS]
    if not pool:
        raise ValueError(f"no pair of {manual_dir} ({', '.join(fit_from)}) has {MIN_BLOCKS} usable "
                         "blocks: cannot fit a colour matrix")
    idx = np.unique(np.linspace(0, len(pool) - 1, min(fit_pairs, len(pool))).round().astype(int))
    ccm, hs = fit_shared_ccm([pool[i][0] for i in idx], [pool[i][1] for i in idx])
    median_gains = np.median(np.stack([h / h[1] for h in hs if h[1] > 0]), axis=0)
    resid = np.concatenate([relative_residual(ccm, h, pool[i][0], pool[i][1]) for h, i in zip(hs, idx)])
    summary = {"ccm": ccm.tolist(), "fit_pairs": int(len(idx)), "fit_splits": fit_from,
               "median_relative_residual": float(np.median(resid)),
               "median_wb_gains": median_gains.tolist(), "splits": {}, "fallback": [], "left_out": left_out}
    for split in splits:
        folder = os.path.join(out, split, CALIBRATION_FOLDER)
        os.makedirs(folder, exist_ok=True)
        written = 0
        for stem, cam, lin in stats[split]:
            cal, how = pair_calibration(ccm, cam, lin, median_gains)
            if cal is None:
                left_out.append({"split": split, "id": stem, "reason": how})
                log.warning("calibrate: no calibration for %s/%s: %s", split, stem, how)
                continue
            if how == "fallback":
                summary["fallback"].append({"split": split, "id": stem, "blocks": int(len(cam))})
            with open(os.path.join(folder, f"{stem}.json"), "w") as f:
                json.dump(cal, f)
            written += 1
        summary["splits"][split] = {"written": written,
                                    "left_out": sum(s["split"] == split for s in left_out)}
    with open(os.path.join(out, SUMMARY_FILE), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tfds_zrr.calibrate", description=__doc__.split("\n\n")[0])
    p.add_argument("--manual_dir", required=True, help="folder holding train/ and test/ (ZRR layout)")
    p.add_argument("--out", required=True, help="calibration root: writes <split>/calibration/<stem>.json")
    p.add_argument("--split", action="append", choices=["train", "test"],
                   help="a split to calibrate (repeatable; default: train and test)")
    p.add_argument("--max_pairs", type=int, default=None, help="only the first N pairs of each split")
    p.add_argument("--fit_pairs", type=int, default=2000, help="pairs the shared ccm is fitted on")
    p.add_argument("--workers", type=int, default=1, help="processes reading the pairs")
    a = p.parse_args(argv)
    for name in ("max_pairs", "fit_pairs", "workers"):
        v = getattr(a, name)
        if v is not None and v < 1:
            p.error(f"--{name} must be >= 1, got {v}")
    from tfds_zrr.zrr import DataLayoutError

    splits = tuple(dict.fromkeys(a.split or ("train", "test")))
    try:
        s = calibrate(a.manual_dir, a.out, splits, a.max_pairs, a.fit_pairs, a.workers)
    except (DataLayoutError, ValueError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{k}: {v['written']} written, {v['left_out']} left out" for k, v in s["splits"].items())
    print(f"calibration in {a.out}: {counts}; ccm fitted on {s['fit_pairs']} pairs "
          f"(median relative residual {s['median_relative_residual']:.3f}), "
          f"{len(s['fallback'])} with the median white balance; summary in {os.path.join(a.out, SUMMARY_FILE)}")
    print("ccm: " + json.dumps(np.round(np.asarray(s["ccm"]), 4).tolist()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

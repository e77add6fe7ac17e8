"""Timings of diffraw_jax.evaluation.metrics on ZRR-sized images (448x448), per image, on this machine.

    python -m benchmarks.metrics_bench [--batch 4] [--inception]

Prints one line per metric: seconds for the first call (compile included) and the
mean of the following calls. ``--inception`` also times the FID Inception-v3 forward
with random weights (299x299 after resize), which is what FID costs per image.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.ndimage import gaussian_filter


def _images(b, h, w, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, h, w, 3))
    x = 2 * gaussian_filter(x, (0, 1, 1, 0)) + 6 * gaussian_filter(x, (0, 4, 4, 0))
    return np.clip(0.5 + 0.25 * x / x.std(), 0, 1).astype(np.float32)


def _time(fn, reps=3):
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return first, float(np.mean(ts))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--inception", action="store_true")
    args = ap.parse_args()

    from diffraw_jax.evaluation import metrics as M

    b, s = args.batch, args.size
    x = _images(b, s, s, 0)
    y = np.clip(gaussian_filter(x, (0, 1, 1, 0)) + 0.02, 0, 1).astype(np.float32)
    shifted = np.roll(y, (2, -3), axis=(1, 2))
    rows = [
        ("psnr", lambda: M.psnr(x, y)),
        ("ssim", lambda: M.ssim(x, y)),
        ("lpips", lambda: M.lpips(x, y)),
        ("niqe", lambda: M.niqe(x)),
        ("align (DIS + warp)", lambda: M.align_gt_to_output(x, shifted)),
        ("compute_metrics original", lambda: M.compute_metrics(x, y, metrics=("psnr", "ssim", "lpips", "niqe"))),
        ("compute_metrics aligned", lambda: M.compute_metrics(x, shifted, metrics=("psnr", "ssim", "lpips"),
                                                              protocol="aligned")),
    ]
    if args.inception:
        from diffraw_jax.evaluation.metrics.inception import inception_features, init_inception_params

        v = init_inception_params(0)
        rows.append(("inception pool3 (299x299)", lambda: inception_features(x, v, batch_size=b)))
    print(f"{b} images of {s}x{s}; seconds per image")
    for name, fn in rows:
        first, mean = _time(fn)
        print(f"  {name:28s} first {first / b:8.4f}   then {mean / b:8.4f}")


if __name__ == "__main__":
    main()

"""Throughput of the high-order degradation D2 (diffraw_jax.degradation).

    python -m benchmarks.degradation_bench [--batch 8] [--sizes 64 448]
        [--iters 20 2] [--breakdown]

For each image size: compile time of ``jax.jit(degrade)`` on a [batch, S, S, 3]
input, then images/s over ``iters`` calls with fresh keys (after one warm-up
call). ``--breakdown`` also times D2 with one stage switched off at a time
(the difference is that stage's cost). Runs on JAX's default backend.
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffraw_jax import degradation as D


def make_batch(batch: int, size: int) -> jax.Array:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([0.5 + 0.4 * np.sin(6 * xx), 0.5 + 0.4 * np.sin(9 * yy),
                     0.5 + 0.3 * np.cos(20 * (xx + yy))], -1)
    imgs = base[None] + 0.1 * rng.standard_normal((batch, size, size, 3))
    return jnp.asarray(np.clip(imgs, 0, 1), jnp.float32)


def bench(size: int, batch: int, iters: int, config=D.DegradationConfig()) -> tuple[float, float]:
    """(compile seconds, images/s)."""
    y = make_batch(batch, size)
    fn = jax.jit(lambda y, k: D.degrade(y, k, config))
    t = time.perf_counter()
    fn(y, jax.random.PRNGKey(0)).block_until_ready()
    compile_s = time.perf_counter() - t
    fn(y, jax.random.PRNGKey(1)).block_until_ready()
    t = time.perf_counter()
    for i in range(iters):
        out = fn(y, jax.random.PRNGKey(2 + i))
    out.block_until_ready()
    return compile_s, batch * iters / (time.perf_counter() - t)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 448])
    ap.add_argument("--iters", type=int, nargs="+", default=[20, 2],
                    help="timed calls per size (last value repeats)")
    ap.add_argument("--breakdown", action="store_true")
    args = ap.parse_args(argv)
    print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), "
          f"batch {args.batch}")
    for i, size in enumerate(args.sizes):
        iters = args.iters[min(i, len(args.iters) - 1)]
        c, ips = bench(size, args.batch, iters)
        print(f"D2 {size}x{size}: compile {c:6.1f} s, {ips:9.1f} images/s "
              f"({iters} calls of {args.batch})", flush=True)
        if args.breakdown:
            for flag in ("use_blur", "use_resize", "use_noise", "use_jpeg",
                         "use_final_sinc", "color_fix"):
                cfg = dataclasses.replace(D.DegradationConfig(), **{flag: False})
                _, ips_off = bench(size, args.batch, iters, cfg)
                share = 1.0 - ips / ips_off
                print(f"    without {flag:15s}: {ips_off:9.1f} images/s "
                      f"(stage ~{100 * share:5.1f}% of the time)", flush=True)


if __name__ == "__main__":
    main()

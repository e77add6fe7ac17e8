"""Inference speed of the tiled DiffRAW pipeline: seconds per megapixel.

    python -m benchmarks.infer_bench [--checkpoint W] [--size 256] [--tile 0]
        [--overlap 64] [--batch 4] [--runs dtdm:100 dtdm_ddim:10] [--repeats 1]

Times ``DiffRAWPipeline.sample_planes`` (all tiles, blending included; the
colour condition is the classical ISP and is not timed) on a synthetic
``size x size`` frame, for each ``method:steps`` run: one warm-up call (compile
time reported separately), then ``repeats`` timed calls. Without
``--checkpoint`` a throwaway model with the demo config
(configs/synthetic.py: the "demo" U-Net, s = 100) is trained for 2 steps in a
temporary folder: its outputs are meaningless, but the network, and therefore
the timing, is the demo model's. Runs on JAX's default backend.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import jax
import numpy as np


def train_throwaway(workdir: str, size: int = 64):
    """Trains the demo config for 2 steps on random in-memory data into ``workdir``."""
    from configs import synthetic
    from diffraw_jax.training import train

    cfg = synthetic.get_config()
    cfg.data.data_dir = ""
    cfg.data.manual_dir = ""
    cfg.color_net.workdir = ""
    cfg.degradation.enabled = False
    cfg.train.num_train_steps = 2
    cfg.train.log_every_steps = 1
    cfg.train.checkpoint_every_steps = 2
    rng = np.random.default_rng(0)
    src = []
    for i in range(16):
        dslr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        mosaic = np.clip(dslr.mean(-1) * 3 + 63 + rng.normal(0, 5, (size, size)), 0, 1023)
        src.append({"raw": mosaic.astype(np.uint16), "dslr": dslr, "id": str(i).encode()})
    train.train_and_evaluate(cfg, workdir, data_sources=(src, src[:4]))
    return workdir


def synthetic_planes(size: int) -> np.ndarray:
    """Smooth-ish normalised planes float32 [size/2, size/2, 4] in [0, 1]."""
    h = size // 2
    yy, xx = np.mgrid[0:h, 0:h] / h
    base = 0.4 + 0.3 * np.sin(6 * xx) * np.cos(4 * yy)
    rng = np.random.default_rng(0)
    planes = np.stack([base * g for g in (0.6, 1.0, 1.0, 0.5)], -1)
    return np.clip(planes + 0.01 * rng.standard_normal(planes.shape), 0, 1).astype(np.float32)


def bench(pipe, planes, cond, repeats: int):
    """(compile + first call seconds, mean wall seconds per call, mean CPU seconds per call).

    CPU seconds (``time.process_time``, all threads of this process) change less than
    wall time when other work shares the machine."""
    t = time.perf_counter()
    pipe.sample_planes(planes, cond, seed=0)
    first = time.perf_counter() - t
    times, cpu = [], []
    for r in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        pipe.sample_planes(planes, cond, seed=r + 1)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return first, float(np.mean(times)), float(np.mean(cpu))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="training workdir (default: a throwaway demo model)")
    ap.add_argument("--size", type=int, default=256, help="frame side in output pixels")
    ap.add_argument("--tile", type=int, default=0, help="tile side (0: the whole frame, one tile)")
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--runs", nargs="+", default=["dtdm:100", "dtdm_ddim:10"], help="method:steps")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args(argv)

    from diffraw_jax import sampling
    from diffraw_jax.inference.pipeline import DiffRAWPipeline
    from diffraw_jax.models import factory

    workdir = args.checkpoint
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="infer_bench_")
        t = time.perf_counter()
        workdir = train_throwaway(tmp.name)
        print(f"trained a throwaway demo model for 2 steps in {time.perf_counter() - t:.1f} s")
    base = DiffRAWPipeline.from_checkpoint(workdir, color="classic", tile=args.tile or None,
                                              overlap=args.overlap, batch=args.batch)
    cfg = base.config
    planes = synthetic_planes(args.size)
    cond = np.asarray(sampling.to_unit_range(sampling.make_color_condition()(planes[None])))[0]
    mp = args.size * args.size / 1e6
    tiles = base.plan(args.size, args.size).tiles
    print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}); model "
          f"{cfg.model.name}, s = {base.s}; frame {args.size}x{args.size} ({mp:.4f} MP), "
          f"{len(tiles)} tile(s) of {args.tile or args.size}, batch {min(args.batch, len(tiles))}")
    print(f"{'run':<16}{'compile+1st (s)':>16}{'s/frame':>10}{'CPU s/frame':>12}{'s/MP':>10}{'ms/step/MP':>12}")
    for run in args.runs:
        method, steps = run.split(":")
        steps = min(int(steps), base.s)
        pipe = DiffRAWPipeline(base.model, base.params, base.schedule,
                               factory.sampler_settings(base.config, method, steps), color="classic",
                               tile=base.tile, overlap=base.overlap, batch=base.batch)
        first, per_call, cpu = bench(pipe, planes, cond, args.repeats)
        print(f"{method + '-' + str(steps):<16}{first:>16.1f}{per_call:>10.2f}{cpu:>12.2f}{per_call / mp:>10.1f}"
              f"{1000 * per_call / mp / steps:>12.0f}", flush=True)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()

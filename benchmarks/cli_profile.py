"""Where ``diffraw``'s time goes on one RAW file: the network's own time against the wall time.

    python -m benchmarks.cli_profile --input FILE.dng [--checkpoint pretrained/distill-1]
        [--tile 448] [--batch 4] [--out results/benchmarks/cli_profile.json]

Runs the CLI's own steps (``diffraw_jax.inference.cli``: read, prepare, colour
condition, sampling, PNG) on ``FILE`` twice, the first run warming JAX's compilation
cache as a user's first run does, and times each step of the second. The network's
own time is measured apart: the U-Net f alone on batches of tiles of the same plan
(``batch`` tiles of ``tile`` px per call, as many calls as the sampler makes: tile
batches x network evaluations), and G alone on the frame. Reports the wall time,
f's and G's time, and their ratio (issue #22's goal: wall <= 1.3 x network).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def _timed(fn, *a, **kw):
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0


def profile(path: str, checkpoint: str, tile: int, batch: int, repeats: int = 1) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from diffraw_jax.inference import camera, cli, outputs
    from diffraw_jax.inference.pipeline import DiffRAWPipeline

    cli.enable_compilation_cache()
    pipe = DiffRAWPipeline.from_checkpoint(checkpoint, tile=tile, batch=batch)
    out_dir = tempfile.mkdtemp(prefix="cli_profile_")
    args = cli.build_parser().parse_args(["--checkpoint", checkpoint, "--input", path, "--output", out_dir,
                                          "--quiet", "--overwrite"])
    steps = {}
    for run in range(2):  # the first run compiles (or loads the cache); the second is timed
        t_all = time.perf_counter()
        frame, steps["read"] = _timed(cli.read_input, path, args)
        prepared, steps["prepare"] = _timed(camera.prepare_frame, frame)
        (planes, cond), steps["colour condition (G or calibrated)"] = _timed(pipe.inputs, prepared, frame)
        img, steps["sampling (f, tiled)"] = _timed(pipe.sample_planes, planes, cond, seed=0)
        final, steps["finish (crop, orient)"] = _timed(camera.finish, img, prepared)
        png, steps["PNG encode"] = _timed(outputs.encode, final)
        _, steps["write"] = _timed(cli.write_atomic, os.path.join(out_dir, "out.png"), png, True)
        wall = time.perf_counter() - t_all
    plan = pipe.plan(2 * prepared.planes.shape[0], 2 * prepared.planes.shape[1])
    n_tiles = len(plan.tiles)
    bsz = min(plan.batch, n_tiles)
    calls = -(-n_tiles // bsz) * pipe.num_evaluations

    # f alone: the same batches of tiles through the jitted U-Net.
    th, tw = plan.tile
    rng = np.random.default_rng(0)
    m = jnp.asarray(rng.standard_normal((bsz, th, tw, 3)), jnp.float32)
    w = jnp.asarray(rng.uniform(0, 1, (bsz, th // 2, tw // 2, 4)), jnp.float32)
    t = jnp.full((bsz,), 50, jnp.int32)
    fwd = jax.jit(lambda p, m, w, c, t: pipe.model.apply({"params": p}, m, w, c, t, train=False))
    fwd(pipe.params, m, w, m, t).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(calls * repeats):
        fwd(pipe.params, m, w, m, t).block_until_ready()
    f_seconds = (time.perf_counter() - t0) / repeats
    # G alone on the frame (what the colour condition costs without its padding and conversions).
    g_seconds = None
    if pipe.color == "g":
        planes = jnp.asarray(camera.pad_planes(prepared.planes, 8))[None]
        g = jax.jit(lambda p, x: pipe.color_model.apply({"params": p}, x))
        g(pipe.color_params, planes).block_until_ready()
        t0 = time.perf_counter()
        g(pipe.color_params, planes).block_until_ready()
        g_seconds = time.perf_counter() - t0
    network = f_seconds + (g_seconds or 0.0)
    megapixels = prepared.height * prepared.width / 1e6
    return {"file": os.path.basename(path), "checkpoint": checkpoint, "sampler": pipe.label,
            "megapixels": round(megapixels, 2), "tiles": n_tiles, "tile": plan.tile, "batch": bsz,
            "network_calls": calls, "devices": jax.local_device_count(), "backend": jax.default_backend(),
            "steps_s": {k: round(v, 2) for k, v in steps.items()}, "wall_s": round(wall, 2),
            "f_s": round(f_seconds, 2), "g_s": None if g_seconds is None else round(g_seconds, 2),
            "network_s": round(network, 2), "wall_over_network": round(wall / network, 3),
            "wall_s_per_mp": round(wall / megapixels, 3)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cli_profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True)
    p.add_argument("--checkpoint", default="pretrained/distill-1")
    p.add_argument("--tile", type=int, default=448)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--out", default="")
    a = p.parse_args(argv)
    result = profile(a.input, a.checkpoint, a.tile, a.batch)
    text = json.dumps(result, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The training loop against the bare jitted step: does the loop keep the device busy?

    python -m benchmarks.loop_bench [--config configs/synthetic.py] [--steps 60] [--repeats 3]
        [--out results/benchmarks/loop-cpu]

Both sides run the trainer's own pieces at the config's size (default the demo
setting: `demo` U-Net, batch 8, 64 px crops):

* **bare step**: ``train.make_train_step`` on one batch already on the device,
  called ``--steps`` times, one wait at the end: the device's pace.
* **full loop**: ``train.train_and_evaluate`` on an in-memory synthetic source of
  448 px pairs (Grain crops and augments them, uint16/uint8 codes go to the device
  with ``data.prefetch_to_device`` batches in flight, reports every 20 steps, one
  checkpoint at the end), timed from the first report (compilation excluded) to
  the last.

Reports steps/s of both and their ratio (goal >= 0.95), the median of
``--repeats`` runs, and writes JSON and Markdown next to ``--out``. Compilation
is excluded from both.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import re
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def synthetic_source(n: int, size: int = 448, seed: int = 0):
    """ZRR-format records (uint16 RGGB codes, uint8 DSLR) with random content."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        dslr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        raw = np.clip(dslr.mean(-1) * 3 + 63 + rng.normal(0, 5, (size, size)), 0, 1023).astype(np.uint16)
        out.append({"raw": raw, "dslr": dslr, "id": str(i).encode()})
    return out


def code_batch(records) -> dict:
    """What the trainer's loader yields (``as_codes``) for ``records``: {"raw": uint16 packed
    RGGB codes [B, h, w, 4], "dslr": uint8 [B, H, W, 3]} (normalised inside the step)."""
    import numpy as np

    from diffraw_jax import raw as raw_lib

    return {"raw": np.stack([raw_lib.pack(np.asarray(r["raw"])) for r in records]),
            "dslr": np.stack([r["dslr"] for r in records])}


def bare_train_step(config, num_batches: int = 1):
    """The trainer's own jitted step for ``config`` and synthetic batches already on the devices.

    Returns (state, step_fn, batches, key): ``train.create_train_state`` and
    ``train.make_train_step`` on ``parallel.create_mesh(config.mesh.fsdp)``, and
    ``num_batches`` distinct batches of ``data.global_batch_size`` random pairs at
    ``data.crop_size`` (uint16/uint8 codes, as the loader yields them). The trainer
    passes one key to every step (the step folds in its own count), and so does this.
    """
    import jax

    from diffraw_jax import parallel
    from diffraw_jax.training import train
    from diffraw_jax.models import factory

    mesh = parallel.create_mesh(config.mesh.fsdp)
    model, schedule, tx = factory.create_model(config), factory.create_schedule(config), train.create_optimizer(config)
    state = train.create_train_state(config, model, tx, mesh, jax.random.key(0))
    step_fn = train.make_train_step(config, model, tx, schedule, mesh, jax.tree.map(lambda x: x.sharding, state))
    b, crop = config.data.global_batch_size, config.data.crop_size
    batches = [jax.device_put(code_batch(synthetic_source(b, size=crop, seed=i)), parallel.batch_sharding(mesh))
               for i in range(num_batches)]
    return state, step_fn, batches, jax.random.key(1)


def bare_step_rate(config, steps: int) -> float:
    import jax

    state, step_fn, (batch,), key = bare_train_step(config)
    state, m = step_fn(state, batch, key)  # compile
    jax.block_until_ready(m)
    t = time.perf_counter()
    for _ in range(steps):
        state, m = step_fn(state, batch, key)
    jax.block_until_ready((state, m))
    return steps / (time.perf_counter() - t)


class _ReportTimes(logging.Handler):
    """Collects (step, wall time) of the trainer's progress lines."""

    def __init__(self):
        super().__init__()
        self.times = []

    def emit(self, record):
        m = re.match(r"step (\d+)/", record.getMessage())
        if m:
            self.times.append((int(m.group(1)), time.perf_counter()))


def loop_rate(config, steps: int, report_every: int = 20) -> float:
    from diffraw_jax.training import train

    cfg = config.copy_and_resolve_references()
    cfg.train.num_train_steps = steps + report_every
    cfg.train.log_every_steps = report_every
    cfg.train.checkpoint_every_steps = 10 ** 9  # one save, at the end
    cfg.train.eval_every_steps = 0
    handler = _ReportTimes()
    logger = logging.getLogger("diffraw_jax.training.train")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        with tempfile.TemporaryDirectory() as wd:
            train.train_and_evaluate(cfg, wd, data_sources=(synthetic_source(64), synthetic_source(2, seed=1)))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    (s0, t0), (s1, t1) = handler.times[0], handler.times[-1]  # the first report follows compilation
    return (s1 - s0) / (t1 - t0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/synthetic.py")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="", help="write OUT.json and OUT.md")
    a = p.parse_args(argv)
    if a.steps < 20 or a.repeats < 1:
        p.error("--steps must be >= 20 and --repeats >= 1")

    import jax

    from diffraw_jax.runtime import logs

    logs.setup()
    config = load_config(a.config)
    bare, loop = [], []
    for r in range(a.repeats):
        bare.append(bare_step_rate(config, a.steps))
        loop.append(loop_rate(config, a.steps))
        print(f"[loop_bench] run {r + 1}/{a.repeats}: bare step {bare[-1]:.3f} steps/s, "
              f"full loop {loop[-1]:.3f} steps/s", flush=True)
    result = {
        "config": a.config, "steps": a.steps, "repeats": a.repeats,
        "model": config.model.name, "batch": config.data.global_batch_size, "crop": config.data.crop_size,
        "bare_steps_per_s": statistics.median(bare), "loop_steps_per_s": statistics.median(loop),
        "runs": {"bare": bare, "loop": loop},
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores, {jax.devices()[0].platform}", "jax": jax.__version__,
    }
    result["ratio"] = result["loop_steps_per_s"] / result["bare_steps_per_s"]
    line = (f"full loop {result['loop_steps_per_s']:.3f} steps/s vs bare jitted step "
            f"{result['bare_steps_per_s']:.3f} steps/s: ratio {result['ratio']:.3f} (goal >= 0.95)")
    print(f"[loop_bench] {line}")
    if a.out:
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        with open(a.out + ".json", "w") as f:
            json.dump(result, f, indent=1)
        with open(a.out + ".md", "w") as f:
            f.write(f"# Training loop vs bare jitted step\n\n`python -m benchmarks.loop_bench --config "
                    f"{a.config} --steps {a.steps} --repeats {a.repeats} --out {a.out}` "
                    f"({result['date']}, {result['machine']}, jax {result['jax']})\n\n"
                    f"| | steps/s (median of {a.repeats}) | runs |\n|---|---|---|\n"
                    f"| bare jitted step | {result['bare_steps_per_s']:.3f} | "
                    f"{', '.join(f'{v:.3f}' for v in bare)} |\n"
                    f"| full loop | {result['loop_steps_per_s']:.3f} | {', '.join(f'{v:.3f}' for v in loop)} |\n\n"
                    f"Ratio {result['ratio']:.3f} (goal >= 0.95).\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

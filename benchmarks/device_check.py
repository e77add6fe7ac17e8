"""One short device check: everything worth measuring in the few minutes a GPU/TPU is lent.

    python -m benchmarks.device_check [--smoke] [--out results/benchmarks] [--budget_s 480]
        [--overwrite]
    make device-check            # the same, on the device;   make device-check SMOKE=1: --smoke

On a GPU or TPU (JAX's default backend) it runs four stages and writes
``<out>/<device>.md`` and ``.json`` (device: the accelerator's kind as a file stem,
e.g. ``nvidia-h200``, ``tpu-v5-lite``):

(a) **train step and forward pass** in bfloat16, with MFU: ``benchmarks.run``'s
    "train", "forward" and "torch" cases (the zrr U-Net, 448 px, batch 8; PyTorch
    on CUDA where torch is installed, else its row says skipped);
(b) **the memory plan's goal rows** (``benchmarks.plan.goals`` of the committed
    ``results/plan/zrr.json``) compiled for the device by ``benchmarks.plan``'s own
    child: XLA's ``memory_analysis()`` on the device next to the plan's XLA:CPU
    total and estimate, to confirm or refute the estimate docs/evaluation.md plans with
    (XLA:CPU cannot see remat). A row for more devices than JAX sees is compiled as
    its per-device stand-in: one device with that row's batch per device and the
    data-parallel row's unsharded state, compared with the plan's data-parallel row;
(c) **sampling throughput** (images/s, s/MP) of the 1-step student (DTDM-DDIM-1) and
    of DTDM-100: ``benchmarks.run``'s "sample" case, zrr U-Net, 448 px, batch 8,
    bfloat16, random weights (the time does not depend on the values);
(d) **a 200-step run of configs/zrr.py**: the trainer's jitted step
    (``benchmarks.loop_bench.bare_train_step``) on 4 synthetic batches of the
    config's shapes; the loss must fall, and steps/s. The warm-up is cut to 20 steps
    (the config's 10,000 would keep the rate near 0), and the batch is the largest
    power of two up to the config's 32 that the plan's per-image bytes fit into 80%
    of the device's memory (said in the report).

The time budget (``--budget_s``, default 480 s = 8 minutes) is enforced: the stages
get shares of it (``STAGES``; time one leaves unused passes on), every item runs in
its own subprocess with the rest of its share as timeout, and an item whose share is
spent is not started (or stopped) and reported as "skipped: out of time"; the short
run stops itself when its share is nearly spent and reports the steps it ran. The
subprocesses share a persistent compilation cache for the run (a fresh temporary
folder), so a program an earlier case compiled (the forward pass the sampler cases
time against) is not compiled again; every compile time reported is a first compile.

``--smoke`` runs the same stages and code on the CPU at a tiny size (tiny U-Net,
32 px crops, a few steps; the plan rows with the tiny config, compared with the
plan's own estimate of the same row) and writes ``<out>/cpu-smoke.md``: CI runs it
(tests/test_device_check.py). Like ``benchmarks.run`` it refuses, before running
anything, to replace a result file git tracks unless ``--overwrite``.
Exit status: 0 when every item ran or was skipped for time, 1 when one failed, 2 for
bad usage (no accelerator without ``--smoke``, a tracked result).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from benchmarks import plan, run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZRR_CONFIG = os.path.join(REPO, "configs", "zrr.py")
COMMITTED_PLAN = os.path.join(REPO, "results", "plan", "zrr.json")
OUT_OF_TIME = "skipped: out of time"
# (stage, share of the budget); a stage's unused time passes on to the next ones.
STAGES = (("bench", 0.28), ("plan", 0.26), ("sample", 0.22), ("train_run", 0.24))
MIN_ITEM_S = 2.0  # an item with less time than this left is not started
RESERVE_S = 2.0   # kept back from the budget for writing the report
TITLES = {"bench": "(a) Train step and forward pass, bfloat16 (benchmarks.run)",
          "plan": "(b) The memory plan's goal rows on this device (benchmarks.plan)",
          "sample": "(c) Sampling throughput: the 1-step student and DTDM-100 (benchmarks.run)",
          "train_run": "(d) A short run of configs/zrr.py (the trainer's jitted step)"}


# --------------------------------------------------------------------- sizes

def sizes(smoke: bool) -> dict:
    """The workloads: the paper's on a device, tiny ones for ``--smoke``."""
    if smoke:
        return dict(model="tiny", crop=32, batch=2, steps=1, sample_batch=2, run_steps=40,
                    plan_overrides=["model.name=tiny", "color_net.name=tiny", "data.crop_size=32",
                                    "data.global_batch_size=8"],
                    run_overrides=["model.name=tiny", "color_net.name=tiny", "data.crop_size=32",
                                   "data.global_batch_size=4", "optim.learning_rate=0.001",
                                   "optim.warmup_steps=5"])
    return dict(model="zrr", crop=448, batch=8, steps=10, sample_batch=8, run_steps=200,
                plan_overrides=[], run_overrides=["optim.warmup_steps=20"])


# ------------------------------------------------------------------- budget

class Budget:
    """Deadlines for weighted shares of the time left: ``share(w, rest)`` gives an item
    ``w / (w + rest)`` of what is left before ``deadline`` (so unused time passes on)."""

    def __init__(self, seconds: float, clock=time.monotonic):
        self.clock = clock
        self.deadline = clock() + max(0.0, seconds)

    def left(self) -> float:
        return max(0.0, self.deadline - self.clock())

    def share(self, weight: float, rest: float) -> "Budget":
        sub = Budget(0.0, self.clock)
        sub.deadline = self.clock() + self.left() * weight / (weight + rest)
        return sub


def run_items(items: list, budget: Budget, call) -> list[dict]:
    """Runs ``call(item, timeout)`` for each (item, weight) with its share of ``budget``;
    items it cannot start in time are ``dict(item, skipped=OUT_OF_TIME)``, and items
    stopped by their timeout say so too."""
    out = []
    for i, (item, weight) in enumerate(items):
        share = budget.share(weight, sum(w for _, w in items[i + 1:]))
        timeout = share.left()
        if timeout < MIN_ITEM_S:
            out.append(dict({k: v for k, v in item.items() if k != "config"}, skipped=OUT_OF_TIME))
            continue
        print(f"  {_label(item)} (up to {timeout:.0f} s) ...", end=" ", flush=True)
        r = call(item, timeout)
        if str(r.get("error", "")).startswith("timed out after"):
            r.pop("error")
            r["skipped"] = f"{OUT_OF_TIME} (stopped after {timeout:.0f} s, its share of the budget)"
        print(r.get("skipped") or ("error: " + r["error"] if "error" in r else f"done in {r.get('wall_s', 0):.0f} s"),
              flush=True)
        out.append(r)
    return out


SHOWN = ("kind", "goal", "what", "model", "crop", "batch", "dtype", "method", "num_steps", "devices", "fsdp",
         "remat", "steps")  # an item's fields named in the report's "skipped" lines


def _label(item: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in item.items() if k not in ("config", "reference"))


# ------------------------------------------------------------------- stages

def bench_cases(s: dict, device: bool) -> list[tuple[dict, float]]:
    """(a): benchmarks.run's train / forward / torch cases in bfloat16, with weights."""
    base = dict(model=s["model"], crop=s["crop"], batch=s["batch"], dtype="bfloat16", steps=s["steps"])
    return [(dict(kind="train", **base), 0.45), (dict(kind="forward", **base), 0.25),
            (dict(kind="torch", **base, device="cuda" if device else "cpu"), 0.30)]


def sample_cases(s: dict) -> list[tuple[dict, float]]:
    """(c): benchmarks.run's sample case for the 1-step student and DTDM-100."""
    base = dict(kind="sample", model=s["model"], crop=s["crop"], batch=s["sample_batch"], dtype="bfloat16")
    return [(dict(base, method="dtdm_ddim", num_steps=1), 0.4), (dict(base, method="dtdm", num_steps=100), 0.6)]


def plan_specs(s: dict, num_devices: int, smoke: bool) -> list[tuple[dict, float]]:
    """(b): the plan's goal rows (``plan.goals`` of the committed plan) as specs for
    ``plan.run_variant``, each with the committed row it is compared with ("reference";
    None in smoke mode, where the row's own estimate is the reference). A goal row on
    more devices than ``num_devices`` becomes its per-device stand-in on one device."""
    with open(COMMITTED_PLAN) as f:
        committed = json.load(f)
    rows = committed["rows"]
    config = plan.load_config(ZRR_CONFIG, s["plan_overrides"]).to_dict()
    scale = int(config["data"]["global_batch_size"]) / committed["meta"]["batch"]
    specs = []
    for goal in plan.goals(rows):
        row = rows[goal["row"]]
        spec = dict(config=config, what="train", devices=row["devices"], fsdp=row["fsdp"], remat=row["remat"],
                    batch=max(1, int(row["batch"] * scale)), crop=int(config["data"]["crop_size"]),
                    sample_batch=row["sample_batch"], estimate=smoke, goal=goal["goal"], stand_in=False)
        ref = row
        if row["devices"] > num_devices:  # per-device stand-in: one device, that batch per device
            spec.update(devices=1, fsdp=1, batch=max(1, spec["batch"] // row["devices"]), stand_in=True)
            ref = next((r for r in rows if r["what"] == "train" and r["devices"] == row["devices"]
                        and r["fsdp"] == 1 and r["remat"] == row["remat"] and "error" not in r), None)
        spec["reference"] = None if smoke else ref
        specs.append((spec, 1.0))
    return specs


def run_plan_row(spec: dict, timeout: float, device: bool) -> dict:
    t0 = time.perf_counter()
    child = {k: v for k, v in spec.items() if k not in ("reference", "goal", "stand_in")}
    row = plan.run_variant(child, "default" if device else "cpu", timeout)
    row.update(goal=spec["goal"], stand_in=spec["stand_in"], reference=spec["reference"],
               wall_s=time.perf_counter() - t0)
    if "error" not in row:
        row.update(verdict(row))
    elif any(k in row["error"] for k in ("RESOURCE_EXHAUSTED", "out of memory", "Out of memory")):
        row["verdict"] = f"does not fit this device: {row.pop('error')}"  # a finding, not a failure
    return row


def verdict(row: dict, tolerance: float = 1.10) -> dict:
    """The device's XLA total against the plan's estimate (the committed row's, or in smoke
    mode the row's own): confirmed when the device needs at most ``tolerance`` x it."""
    ref = row.get("reference") or row
    estimate = ref.get("estimate_bytes")
    if not estimate:
        return dict(verdict="no estimate to compare with")
    ratio = row["total_bytes"] / estimate
    text = (f"confirmed: the device needs {ratio:.2f}x the estimate" if ratio <= tolerance else
            f"refuted: the device needs {ratio:.2f}x the estimate "
            f"({_gib(row['total_bytes'] - estimate)} GiB more)")
    return dict(device_over_estimate=ratio, verdict=text)


def train_run(c: dict) -> dict:
    """(d), in a child process: ``c["steps"]`` steps of the trainer's jitted step on
    configs/zrr.py (with ``c["overrides"]``) over 4 synthetic batches; the loss curve
    and steps/s after the first (compiling) step. ``c["per_image_bytes"]``,
    ``c["state_bytes"]`` (from the committed plan; None in smoke mode): the batch is
    lowered to the largest power of two whose estimate fits 80% of the device's memory."""
    import jax
    import numpy as np

    from benchmarks import loop_bench

    config = plan.load_config(ZRR_CONFIG, c["overrides"])
    wanted = int(config.data.global_batch_size)
    batch, notes = wanted, []
    stats = jax.local_devices()[0].memory_stats() or {}
    limit = stats.get("bytes_limit")
    if limit and c.get("per_image_bytes"):
        per_device = max(1, wanted // jax.device_count())
        while per_device > 1 and c["state_bytes"] + per_device * c["per_image_bytes"] > 0.8 * limit:
            per_device //= 2
        batch = per_device * jax.device_count()
        if batch < wanted:
            notes.append(f"batch {batch} instead of the config's {wanted}: the plan's estimate for "
                         f"{2 * per_device} images per device exceeds 80% of the device's "
                         f"{limit / plan.GIB:.1f} GiB")
    config.data.global_batch_size = batch
    t_begin = time.perf_counter()
    state, step_fn, batches, key = loop_bench.bare_train_step(config, num_batches=4)
    t0 = time.perf_counter()
    state, m = step_fn(state, batches[0], key)
    losses = [m["loss"]]
    finite = [m["finite"]]
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    limit = c.get("time_limit_s") or float("inf")
    for i in range(1, c["steps"]):
        state, m = step_fn(state, batches[i % len(batches)], key)
        losses.append(m["loss"])
        finite.append(m["finite"])
        if i % 10 == 0:  # a wait every 10 steps, so the clock sees the device's pace
            jax.block_until_ready(m["loss"])
            if time.perf_counter() - t_begin > limit:
                notes.append(f"stopped after {i + 1} of {c['steps']} steps: its share of the time budget was spent")
                break
    jax.block_until_ready((state, m))
    dt = time.perf_counter() - t0
    steps = len(losses)
    losses = np.asarray(jax.device_get(losses), np.float64)
    k = max(1, len(losses) // 10)
    first, last = float(losses[:k].mean()), float(losses[-k:].mean())
    return dict(steps=steps, steps_asked=c["steps"], batch=batch, config_batch=wanted, crop=int(config.data.crop_size),
                model=config.model.name, remat=config.model.remat_policy, dtype=config.model.dtype,
                warmup_steps=int(config.optim.warmup_steps), learning_rate=float(config.optim.learning_rate),
                compile_s=compile_s, steps_per_s=(steps - 1) / dt, images_per_s=(steps - 1) * batch / dt,
                loss_first=first, loss_last=last, loss_falls=bool(last < first), window=k,
                all_finite=bool(np.all(jax.device_get(finite))),
                loss_every=[float(x) for x in losses[::max(1, len(losses) // 10)]], notes=notes)


RUNNERS = {"train_run": train_run}


def train_run_case(s: dict, smoke: bool) -> list[tuple[dict, float]]:
    per_image = state = None
    if not smoke:  # the plan's per-image bytes without remat: its 8-device data-parallel row
        with open(COMMITTED_PLAN) as f:
            rows = json.load(f)["rows"]
        row = next(r for r in rows if r["what"] == "train" and r["devices"] == 8 and r["fsdp"] == 1
                   and r["remat"] == "none")
        per_device = row["batch"] // row["devices"]
        state = row["argument_bytes"]
        per_image = (row["estimate_bytes"] - state) / per_device
    return [(dict(kind="train_run", steps=s["run_steps"], overrides=s["run_overrides"],
                  per_image_bytes=per_image, state_bytes=state), 1.0)]


# ------------------------------------------------------------------- report

def _gib(x) -> str:
    return plan._gib(x)


def markdown(report: dict) -> str:
    m = report["meta"]
    L = [f"# diffraw-jax device check: {m['tag']}", "",
         f"`{m['command']}` on {m['device_kind']} ({m['backend']}, {m['num_devices']} device(s)), "
         f"{m['cpu_count']} CPU core(s), jax {m['jax']}, flax {m['flax']}, {m['date']}, commit {m['commit']}. "
         f"Budget {m['budget_s']:.0f} s, took {m['wall_s']:.0f} s.", ""]
    if m["smoke"]:
        L += ["**Smoke mode** (CPU, tiny U-Net, 32 px crops, few steps): it checks that every stage runs; "
              "the numbers say nothing about an accelerator.", ""]
    L += ["| stage | share of the budget s | took s | items | ran | skipped (out of time) | failed |",
          "|---|---|---|---|---|---|---|"]
    for name, st in report["stages"].items():
        items = st["items"]
        skipped = sum(1 for r in items if "skipped" in r and str(r["skipped"]).startswith(OUT_OF_TIME))
        failed = sum(1 for r in items if "error" in r)
        L.append(f"| {TITLES[name]} | {st['share_s']:.0f} | {st['wall_s']:.0f} | {len(items)} | "
                 f"{len(items) - skipped - failed} | {skipped} | {failed} |")
    L.append("")
    for name, st in report["stages"].items():
        L += [f"## {TITLES[name]}", ""]
        timed_out = [r for r in st["items"] if str(r.get("skipped", "")).startswith(OUT_OF_TIME)]
        rest = [r for r in st["items"] if r not in timed_out]
        L += [f"- {_label({k: v for k, v in r.items() if k in SHOWN})}: {r['skipped']}"
              for r in timed_out] + ([""] if timed_out else [])
        if rest:
            L += globals()["_md_" + name](rest, report) + [""]
    return "\n".join(L)


def _md_bench(rows: list[dict], report: dict) -> list[str]:
    sub = dict(meta=report["meta"], results=rows,
               summary=run.summarize(rows, device=not report["meta"]["smoke"]))
    lines = run.markdown(sub).splitlines()
    start = next((i for i, x in enumerate(lines) if x.startswith("## ")), len(lines))
    return ["#" + x if x.startswith("## ") else x for x in lines[start:]]


def _md_plan(rows: list[dict], report: dict) -> list[str]:
    ref_name = ("the same row's own estimate (smoke mode: XLA:CPU, tiny config)" if report["meta"]["smoke"]
                else f"`{os.path.relpath(COMMITTED_PLAN, REPO)}` (XLA:CPU, "
                     f"{report['meta'].get('plan_date', '?')})")
    L = [f"XLA's `memory_analysis()` of the trainer's step compiled for {report['meta']['device_kind']}, "
         f"per device, GiB; the plan's figures from {ref_name}. Confirmed: the device needs at most "
         f"1.1x the estimate. XLA:CPU cannot see remat, so the plan's XLA:CPU total is expected to "
         "be far above the device's with remat.", "",
         "| goal | compiled here (devices, fsdp, remat, batch) | arguments | outputs | aliased | temporaries "
         "| XLA total (device) | plan: XLA:CPU total | plan: estimate | verdict | compile s |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        where = (f"{r['devices']}, {r['fsdp']}, {r['remat']}, {r['batch']}"
                 + (" (per-device stand-in)" if r.get("stand_in") else ""))
        if "error" in r or "total_bytes" not in r:
            L.append(f"| {r['goal']} | {where} | {r.get('verdict') or 'error: ' + r['error']} |||||||||")
            continue
        ref = r.get("reference") or r
        L.append(f"| {r['goal']} | {where} | {_gib(r['argument_bytes'])} | {_gib(r['output_bytes'])} | "
                 f"{_gib(r['alias_bytes'])} | {_gib(r['temp_bytes'])} | **{_gib(r['total_bytes'])}** | "
                 f"{_gib(ref.get('total_bytes')) if r.get('reference') else '-'} | "
                 f"{_gib(ref.get('estimate_bytes'))} | {r['verdict']} | {r['compile_s']:.1f} |")
    if any(r.get("stand_in") for r in rows):
        L += ["", "A per-device stand-in compiles one device with the goal row's batch per device and an "
                  "unsharded state; it is compared with the plan's data-parallel row of the same device count "
                  "(the same per-device batch and state)."]
    return L


def _md_sample(rows: list[dict], report: dict) -> list[str]:
    L = ["Random weights: the time does not depend on their values. s/MP: seconds per megapixel of output.",
         "", "| sampler | model | crop | batch | dtype | compile s | s/call | images/s | s/MP | ms/step "
         "| step / forward | compiled once |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = f"{'DTDM' if r['method'] == 'dtdm' else 'DTDM-DDIM'}-{r['num_steps']}"
        if r["method"] == "dtdm_ddim" and r["num_steps"] == 1:
            name += " (the 1-step student)"
        head = f"| {name} | {r['model']} | {r['crop']} | {r['batch']} | {r['dtype']} |"
        if "error" in r:
            L.append(f"{head} error: {r['error']} |||||||")
            continue
        mp = r["batch"] * r["crop"] ** 2 / 1e6
        L.append(f"{head} {r['compile_s']:.1f} | {r['seconds_per_call']:.3f} | {r['images_per_s']:.2f} | "
                 f"{r['seconds_per_call'] / mp:.3f} | {r['ms_per_step']:.2f} | {r['step_over_forward']:.3f} | "
                 f"{'yes' if r['compiled_once'] else 'NO'} |")
    return L


def _md_train_run(rows: list[dict], report: dict) -> list[str]:
    L = []
    for r in rows:
        if "error" in r:
            L.append(f"error: {r['error']}")
            continue
        L += [f"configs/zrr.py with {', '.join(r['overrides']) or 'no overrides'}: the `{r['model']}` U-Net "
              f"({r['dtype']}, remat {r['remat']}), crop {r['crop']}, batch {r['batch']}, learning rate "
              f"{r['learning_rate']:g} after a {r['warmup_steps']}-step warm-up, 4 synthetic batches in turn.", ""]
        L += [f"Note: {n}." for n in r["notes"]] + ([""] if r["notes"] else [])
        steps = f"{r['steps']}" + (f" of {r['steps_asked']}" if r["steps"] != r["steps_asked"] else "")
        L += ["| steps | batch | compile s | steps/s | images/s | loss, first steps | loss, last steps | "
              "loss falls | all finite |", "|---|---|---|---|---|---|---|---|---|",
              f"| {steps} | {r['batch']} | {r['compile_s']:.1f} | {r['steps_per_s']:.3f} | "
              f"{r['images_per_s']:.2f} | {r['loss_first']:.4f} | {r['loss_last']:.4f} | "
              f"{'yes' if r['loss_falls'] else 'NO'} | {'yes' if r['all_finite'] else 'NO'} |", "",
              f"Loss means over the first and last {r['window']} steps; steps/s after the first (compiling) "
              f"step. Loss every {max(1, r['steps'] // 10)} steps: "
              + ", ".join(f"{x:.4f}" for x in r["loss_every"]) + "."]
    return L


# --------------------------------------------------------------------- main

def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="every stage on the CPU at a tiny size (CI)")
    p.add_argument("--out", default="results/benchmarks", help="folder for <device>.json and .md")
    p.add_argument("--budget_s", type=float, default=480.0, help="seconds for the whole check (default 8 min)")
    p.add_argument("--overwrite", action="store_true", help="allow replacing result files git tracks")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.case is not None:
        run._run_case_here(json.loads(a.case), RUNNERS)
        return 0
    t_start = time.monotonic()
    budget = Budget(a.budget_s - RESERVE_S)
    device = not a.smoke
    meta = run._meta(argv, device)
    if device and meta["backend"] == "cpu":
        print("error: JAX sees no accelerator (backend cpu); on a CPU run the smoke mode: --smoke",
              file=sys.stderr)
        return 2
    tag = "cpu-smoke" if a.smoke else run.default_tag(False, True, meta["device_kind"])
    try:
        json_path, md_path = run.output_paths(a.out, tag, a.overwrite)
    except run.OutputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with open(COMMITTED_PLAN) as f:
        plan_date = json.load(f)["meta"]["date"]
    meta.update(tag=tag, smoke=a.smoke, budget_s=a.budget_s, plan_date=plan_date,
                command=" ".join(["python -m benchmarks.device_check"] + list(argv)))
    s = sizes(a.smoke)
    print(f"device check on {meta['device_kind']} ({meta['backend']}), budget {a.budget_s:.0f} s", flush=True)
    work = {
        "bench": (lambda: bench_cases(s, device), lambda c, t: run.run_case(c, device, t)),
        "plan": (lambda: plan_specs(s, meta["num_devices"], a.smoke), lambda c, t: run_plan_row(c, t, device)),
        "sample": (lambda: sample_cases(s), lambda c, t: run.run_case(c, device, t)),
        "train_run": (lambda: train_run_case(s, a.smoke),  # it stops itself before its timeout
                      lambda c, t: run.run_case(dict(c, time_limit_s=t - min(0.5 * t, 15.0)), device, t,
                                                module="benchmarks.device_check")),
    }
    stages = {}
    cache = tempfile.TemporaryDirectory(prefix="device_check_cache_")
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", cache.name)  # the children inherit it
    for i, (name, weight) in enumerate(STAGES):
        share = budget.share(weight, sum(w for _, w in STAGES[i + 1:]))
        t0 = time.monotonic()
        print(f"[{i + 1}/{len(STAGES)}] {TITLES[name]}: {share.left():.0f} s", flush=True)
        make, call = work[name]
        items = run_items(make(), share, call)
        stages[name] = dict(share_s=share.deadline - t0, wall_s=time.monotonic() - t0, items=items)
    cache.cleanup()
    meta["wall_s"] = time.monotonic() - t_start
    report = dict(meta=meta, stages=stages)
    run.write_report(report, markdown(report), json_path, md_path)
    return 1 if any("error" in r for st in stages.values() for r in st["items"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())

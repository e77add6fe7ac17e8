"""benchmarks/device_check.py (`make device-check`): its CPU smoke mode runs every stage and
reports numbers, the short run's loss falls, and the time budget skips what it cannot fit.

The smoke mode runs the device check's own code (benchmarks.run's cases, benchmarks.plan's
goal rows, the trainer's step) at a tiny size; no timing is asserted.
"""
import json
import os
import subprocess
import sys

import pytest

from benchmarks import device_check, run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = [f"## {device_check.TITLES[name]}" for name, _ in device_check.STAGES]
FAKE_META = dict(backend="gpu", device_kind="cpu", num_devices=1, jax="x", flax="x", cpu_count=2, python="3",
                 commit="x", date="x", command="x")  # run._meta without its jax probe


def _check(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "benchmarks.device_check", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("device_check")
    r = _check("--smoke", "--out", str(out))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads((out / "cpu-smoke.json").read_text()), (out / "cpu-smoke.md").read_text()


def test_smoke_mode_reports_every_stage_with_numbers(smoke):
    report, md = smoke
    assert report["meta"]["smoke"] and report["meta"]["tag"] == "cpu-smoke"
    for heading in SECTIONS:
        assert heading in md, heading
    assert "error" not in md.lower() and device_check.OUT_OF_TIME not in md
    stages = report["stages"]
    assert list(stages) == [name for name, _ in device_check.STAGES]
    for st in stages.values():
        assert st["items"] and all("error" not in r for r in st["items"]), st["items"]
    bench = {r["kind"]: r for r in stages["bench"]["items"]}
    for kind in ("train", "forward"):
        r = bench[kind]
        assert r["dtype"] == "bfloat16" and r["ms_per_call"] > 0 and r["gflop_per_call"] > 0, r
    assert 2.5 <= bench["train"]["gflop_per_call"] / bench["forward"]["gflop_per_call"] <= 4.0
    assert bench["torch"].get("skipped") or bench["torch"]["train_ms"] > 0
    assert "### Train step and forward pass (JAX)" in md and "### PyTorch reference" in md
    rows = stages["plan"]["items"]
    assert {r["goal"] for r in rows} == {g["goal"] for g in _committed_goals()}
    for r in rows:
        assert r["total_bytes"] == r["argument_bytes"] + r["output_bytes"] - r["alias_bytes"] + r["temp_bytes"]
        assert r["total_bytes"] > 0 and r["estimate_bytes"] > 0 and r["remat"] == "full"
        assert r["verdict"].startswith(("confirmed", "refuted"))
        assert r["device_over_estimate"] == pytest.approx(r["total_bytes"] / r["estimate_bytes"])
    assert [r["stand_in"] for r in rows].count(True) == 1  # the 8-device goal row on one CPU device
    samples = {(r["method"], r["num_steps"]): r for r in stages["sample"]["items"]}
    assert set(samples) == {("dtdm_ddim", 1), ("dtdm", 100)}
    for r in samples.values():
        assert r["images_per_s"] > 0 and r["compiled_once"] and r["dtype"] == "bfloat16"
    assert "DTDM-DDIM-1 (the 1-step student)" in md and "s/MP" in md
    (tr,) = stages["train_run"]["items"]
    assert tr["steps"] == 40 and tr["all_finite"] and tr["steps_per_s"] > 0
    assert tr["loss_falls"] and tr["loss_last"] < tr["loss_first"], tr
    assert "| loss falls |" in md and "| yes | yes |" in md


def _committed_goals():
    from benchmarks import plan

    with open(device_check.COMMITTED_PLAN) as f:
        return plan.goals(json.load(f)["rows"])


def test_a_tiny_budget_skips_every_stage(tmp_path):
    r = _check("--smoke", "--out", str(tmp_path), "--budget_s", "1", timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((tmp_path / "cpu-smoke.json").read_text())
    md = (tmp_path / "cpu-smoke.md").read_text()
    for heading in SECTIONS:
        assert heading in md
    for st in report["stages"].values():
        assert st["items"] and all(x["skipped"] == device_check.OUT_OF_TIME for x in st["items"]), st
    assert md.count(device_check.OUT_OF_TIME) >= sum(len(st["items"]) for st in report["stages"].values())
    assert "error" not in md.lower()


def test_budget_shares_pass_unused_time_on():
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731
    b = device_check.Budget(100, clock)
    first = b.share(1, 3)
    assert first.left() == pytest.approx(25)
    now[0] = 5.0  # the first item used 5 of its 25 s: the rest passes on
    second = b.share(1, 2)
    assert second.left() == pytest.approx(95 / 3)
    calls = []
    call = lambda item, t: calls.append((item["kind"], t)) or dict(item, wall_s=0.0)  # noqa: E731
    out = device_check.run_items([(dict(kind="a"), 1.0), (dict(kind="b"), 1.0)], device_check.Budget(3, clock), call)
    # a's 1.5 s share is under MIN_ITEM_S: a is skipped and b gets its time too
    assert out[0] == dict(kind="a", skipped=device_check.OUT_OF_TIME) and calls == [("b", 3.0)]
    out = device_check.run_items([(dict(kind="a"), 1.0), (dict(kind="b"), 1.0)], device_check.Budget(1, clock), call)
    assert [x["skipped"] for x in out] == [device_check.OUT_OF_TIME] * 2 and len(calls) == 1
    out = device_check.run_items([(dict(kind="a"), 1.0)], device_check.Budget(60, clock),
                                 lambda item, t: dict(item, error="timed out after 60 s"))
    assert out[0]["skipped"].startswith(device_check.OUT_OF_TIME) and "error" not in out[0]


def test_refuses_tracked_results_and_cpu_without_smoke(monkeypatch, capsys):
    """A device whose result file git tracks (here: a fake device named "cpu", whose file stem is
    the committed results/benchmarks/cpu.json) stops before running anything without --overwrite;
    on a machine with no accelerator the check asks for --smoke."""
    monkeypatch.setattr(run, "_meta", lambda args, device: dict(FAKE_META))
    monkeypatch.setattr(device_check, "run_items", lambda *a: pytest.fail("a stage ran"))
    committed = os.path.join(REPO, "results", "benchmarks")
    assert device_check.main(["--out", committed]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tracked by git" in err[0] and "--overwrite" in err[0], err
    monkeypatch.setattr(run, "_meta", lambda args, device: dict(FAKE_META, backend="cpu"))
    assert device_check.main(["--out", committed]) == 2
    assert "--smoke" in capsys.readouterr().err


def test_device_sizes_are_the_papers():
    """The device workloads: zrr U-Net at 448 px in bfloat16, a 200-step run of configs/zrr.py,
    and the goal rows of the committed plan (the 8-device one as its one-device stand-in)."""
    s = device_check.sizes(smoke=False)
    cases = [c for c, _ in device_check.bench_cases(s, device=True)]
    assert {(c["kind"], c["model"], c["crop"], c["dtype"]) for c in cases} == {
        (k, "zrr", 448, "bfloat16") for k in ("train", "forward", "torch")}
    assert [c for c in cases if c["kind"] == "torch"][0]["device"] == "cuda"
    assert {(c["method"], c["num_steps"], c["crop"]) for c, _ in device_check.sample_cases(s)} == {
        ("dtdm_ddim", 1, 448), ("dtdm", 100, 448)}
    specs = {sp["goal"]: sp for sp, _ in device_check.plan_specs(s, num_devices=1, smoke=False)}
    gpu = specs["one 80 GB GPU (H100 / A100 80GB) with remat"]
    assert (gpu["devices"], gpu["batch"], gpu["crop"], gpu["remat"], gpu["stand_in"]) == (1, 32, 448, "full", False)
    assert gpu["reference"]["estimate_bytes"] > 0 and not gpu["estimate"]
    tpu = specs["8 x TPU v5e (16 GiB) with FSDP + remat"]
    assert (tpu["devices"], tpu["batch"], tpu["stand_in"]) == (1, 4, True)
    assert (tpu["reference"]["devices"], tpu["reference"]["fsdp"], tpu["reference"]["remat"]) == (8, 1, "full")
    native = {sp["goal"]: sp for sp, _ in device_check.plan_specs(s, num_devices=8, smoke=False)}
    assert native["8 x TPU v5e (16 GiB) with FSDP + remat"]["devices"] == 8
    (run_case, _), = device_check.train_run_case(s, smoke=False)
    assert run_case["steps"] == 200 and run_case["per_image_bytes"] > 1e9


def test_makefile_runs_the_device_check():
    """`make device-check` runs the check on the device, `SMOKE=1` its smoke mode (the recipe
    printed by `make -n`, the install step taken as done)."""
    def recipe(*args):
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
        r = subprocess.run(["make", "--no-print-directory", "-n", "-o", "install", "device-check", *args],
                           cwd=REPO, capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == 0, r.stderr
        return r.stdout.split()

    assert recipe()[1:] == ["-m", "benchmarks.device_check"]
    assert recipe("SMOKE=1")[1:] == ["-m", "benchmarks.device_check", "--smoke"]
    assert recipe("DEVICE_CHECK_ARGS=--overwrite")[-1] == "--overwrite"
    with open(os.path.join(REPO, "Makefile")) as f:
        text = f.read()
    assert "git add results/benchmarks/<device>.*" in text  # how to commit the result


def test_device_report_renders_the_verdicts(tmp_path):
    """The device-mode report on made-up numbers: a plan row against the committed row's
    estimate (confirmed and refuted), a row the device could not fit, a short run that
    stopped early, skipped items; no jax needed."""
    s = device_check.sizes(smoke=False)
    specs = [sp for sp, _ in device_check.plan_specs(s, num_devices=1, smoke=False)]
    gib = 2 ** 30
    rows = []
    for spec, total in zip(specs, (0.9, 3.0)):
        ref = spec["reference"]
        row = {k: v for k, v in spec.items() if k != "config"}
        row.update(argument_bytes=gib, output_bytes=gib, alias_bytes=gib, temp_bytes=int(total * ref["estimate_bytes"]) - gib,
                   compile_s=12.0)
        row["total_bytes"] = row["argument_bytes"] + row["output_bytes"] - row["alias_bytes"] + row["temp_bytes"]
        row.update(device_check.verdict(row))
        rows.append(row)
    assert rows[0]["verdict"].startswith("confirmed") and rows[1]["verdict"].startswith("refuted")
    assert rows[0]["device_over_estimate"] == pytest.approx(0.9, rel=1e-6)
    rows.append(dict(goal="g", devices=1, fsdp=1, remat="full", batch=64, stand_in=False, reference=None,
                     verdict="does not fit this device: RESOURCE_EXHAUSTED"))
    meta = dict(FAKE_META, device_kind="NVIDIA H200", tag="nvidia-h200", smoke=False, budget_s=480.0,
                wall_s=470.0, plan_date="2026-11-29", command="python -m benchmarks.device_check")
    run_row = dict(kind="train_run", steps=120, steps_asked=200, batch=8, config_batch=32, crop=448, model="zrr",
                   remat="none", dtype="bfloat16", warmup_steps=20, learning_rate=1e-4, compile_s=60.0,
                   steps_per_s=10.0, images_per_s=80.0, loss_first=1.5, loss_last=0.9, loss_falls=True, window=12,
                   all_finite=True, loss_every=[1.5, 0.9], overrides=["optim.warmup_steps=20"],
                   notes=["batch 8 instead of the config's 32: ...", "stopped after 120 of 200 steps: ..."])
    report = dict(meta=meta, stages=dict(
        bench=dict(share_s=134, wall_s=1, items=[dict(kind="train", model="zrr", crop=448, batch=8,
                                                      dtype="bfloat16", skipped=device_check.OUT_OF_TIME)]),
        plan=dict(share_s=100, wall_s=90, items=rows),
        sample=dict(share_s=100, wall_s=0, items=[dict(kind="sample", method="dtdm", num_steps=100,
                                                       skipped=device_check.OUT_OF_TIME)]),
        train_run=dict(share_s=110, wall_s=100, items=[run_row])))
    md = device_check.markdown(report)
    assert "| 120 of 200 | 8 |" in md and "Note: stopped after 120 of 200 steps" in md
    assert "confirmed: the device needs 0.90x the estimate" in md and "refuted: the device needs 3.00x" in md
    assert "results/plan/zrr.json` (XLA:CPU, 2026-11-29)" in md and "(per-device stand-in)" in md
    assert "does not fit this device: RESOURCE_EXHAUSTED" in md
    assert md.count(device_check.OUT_OF_TIME) == 2 and "error" not in md.lower()

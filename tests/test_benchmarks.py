"""benchmarks/run.py end to end with the tiny U-Net: every case runs and the report is consistent.

No timing is asserted (speed goals live in the benchmark's own report); the test checks
that each case produced its numbers, that they agree with each other (XLA's FLOP count
of a train step is 2.5-4x that of a forward pass; the PyTorch reference has the JAX
parameter count; the sampler compiled once) and that JSON and Markdown are written.
torch is the optional `bench` extra: without it the benchmark's torch rows say
"skipped" and the test of the PyTorch rows is skipped. Also: quick runs get their
own tag and no run replaces committed (git-tracked) results without --overwrite.
"""
import fcntl
import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_TORCH = importlib.util.find_spec("torch") is not None
NO_TORCH = ("torch is not installed: the PyTorch reference is the `bench` extra "
            "(.venv/bin/python -m pip install torch==2.13.0; .ci/run installs it)")
QUICK = ["--quick", "--model", "tiny", "--crop", "32", "--batch", "4"]
FAKE_META = dict(backend="cpu", device_kind="cpu", num_devices=1, jax="x", flax="x", cpu_count=2, python="3",
                 commit="x", date="x", command="python -m benchmarks.run")  # run._meta without its jax probe


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    """One `benchmarks.run --quick` (tiny U-Net) for the tests below. Under pytest-xdist
    the workers share it (a lock in the session's base folder), so it runs once."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    folder = (tmp_path_factory.getbasetemp().parent / "bench_quick" if worker
              else tmp_path_factory.mktemp("bench_quick"))
    folder.mkdir(exist_ok=True)
    with open(folder / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = folder / "run.json"
        if not done.exists():
            r = subprocess.run([sys.executable, "-m", "benchmarks.run", *QUICK, "--out", str(folder), "--tag", "t"],
                               cwd=REPO, capture_output=True, text=True, timeout=900)
            done.write_text(json.dumps(dict(returncode=r.returncode, log=r.stdout[-3000:] + r.stderr[-3000:])))
    run = json.loads(done.read_text())
    assert run["returncode"] == 0, run["log"]
    report = json.loads((folder / "t.json").read_text())
    res = {(x["kind"], x.get("method")): x for x in report["results"]}
    return report, res, (folder / "t.md").read_text()


def test_benchmark_run_quick_tiny(quick_run):
    """Every JAX case ran; the PyTorch rows either ran (checked below) or, without
    torch, say so instead of failing the run."""
    report, res, md = quick_run
    for x in report["results"]:
        assert "error" not in x, x
    train, fwd = res[("train", None)], res[("forward", None)]
    assert train["params"] == 49_787 and train["images_per_s"] > 0 and train["compile_s"] > 0
    assert 2.5 <= train["gflop_per_call"] / fwd["gflop_per_call"] <= 4.0, (train, fwd)
    assert train["peak_memory_bytes"] > 50 * 2**20  # process RSS on CPU
    for method in ("dtdm", "dtdm_ddim"):
        s = res[("sample", method)]
        assert s["compiled_once"] and s["jit_cache_size"] == 1 and s["denoiser_traces"] == 1
        assert s["ms_per_step"] > 0 and s["forward_ms"] > 0
    conv = res[("conv", None)]
    assert len(conv["rows"]) == 2 and conv["torch"] == HAVE_TORCH
    for q in conv["rows"]:
        assert q["gflop"] == 2 * q["batch"] * q["size"] ** 2 * q["cin"] * q["cout"] * 9 / 1e9
        assert min(q["jax_forward_ms"], q["jax_fwd_bwd_ms"]) > 0
    torch_row = res[("torch", None)]
    if not HAVE_TORCH:
        assert "torch is not installed" in torch_row["skipped"], torch_row
        assert report["summary"]["jax_vs_torch"] == []
        assert "skipped: torch is not installed" in md and "## JAX / PyTorch" not in md
    inp = res[("input", None)]
    assert inp["d2"] and inp["grain"] and all(row["images_per_s"] > 0 for row in inp["grain"])
    goals = {g["goal"] for g in report["summary"]["goals"]}
    assert "sampler compiles once" in goals and any("Grain" in g for g in goals)
    for heading in ("## Train step", "## Sampling", "## PyTorch reference",
                    "## One conv3x3 layer", "## Input pipeline", "## Goals"):
        assert heading in md, heading


@pytest.mark.skipif(not HAVE_TORCH, reason=NO_TORCH)
def test_benchmark_run_quick_torch_reference(quick_run):
    """The PyTorch rows of the same run: the JAX parameter count, both layouts, the ratios."""
    report, res, md = quick_run
    train, torch_row = res[("train", None)], res[("torch", None)]
    assert torch_row.get("skipped") is None, torch_row
    assert torch_row["params"] == train["params"] and torch_row["train_ms"] > 0
    assert set(torch_row["layouts"]) == {"contiguous", "channels_last"}
    assert {q["what"] for q in report["summary"]["jax_vs_torch"]} == {"train", "forward"}
    for q in res[("conv", None)]["rows"]:
        assert min(q["torch_forward_ms"], q["torch_fwd_bwd_ms"]) > 0
    assert "## JAX / PyTorch" in md


def test_quick_runs_get_their_own_tag():
    from benchmarks import run

    assert run.default_tag(quick=False, device=False) == "cpu"
    assert run.default_tag(quick=True, device=False) == "cpu-quick"
    assert run.default_tag(quick=False, device=True, device_kind="NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert run.default_tag(quick=True, device=True, device_kind="TPU v5 lite") == "tpu-v5-lite-quick"


def test_committed_results_are_not_replaced_without_overwrite(tmp_path):
    from benchmarks import run

    committed = os.path.join(REPO, "results", "benchmarks")
    assert run.git_tracked(os.path.join(committed, "cpu.json"))
    with pytest.raises(run.OutputError, match=r"cpu\.json and .*cpu\.md are tracked by git.*--overwrite"):
        run.output_paths(committed, "cpu")
    assert run.output_paths(committed, "cpu", overwrite=True) == (
        os.path.join(committed, "cpu.json"), os.path.join(committed, "cpu.md"))
    assert run.output_paths(committed, "cpu-quick")[0].endswith("cpu-quick.json")  # not tracked
    (tmp_path / "cpu.json").write_text("{}")  # outside the repository: never tracked
    assert run.output_paths(str(tmp_path), "cpu")[0] == str(tmp_path / "cpu.json")
    for bad in ("", "..", "a/b"):
        with pytest.raises(run.OutputError, match="plain file name"):
            run.output_paths(str(tmp_path), bad)


def test_benchmark_cli_refuses_tracked_files_before_running(monkeypatch, capsys):
    """`--tag cpu` into results/benchmarks: exit 2 with one error line, no case run, files untouched."""
    from benchmarks import run

    monkeypatch.setattr(run, "_meta", lambda args, device: dict(FAKE_META))
    monkeypatch.setattr(run, "run_case", lambda *a, **k: pytest.fail("a case ran"))
    committed = os.path.join(REPO, "results", "benchmarks")
    before = {f: open(os.path.join(committed, f), "rb").read() for f in ("cpu.json", "cpu.md")}
    assert run.main(QUICK + ["--out", committed, "--tag", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--overwrite" in err[0], err
    assert before == {f: open(os.path.join(committed, f), "rb").read() for f in before}


def test_benchmark_cli_quick_writes_its_own_files(monkeypatch, tmp_path):
    """Without --tag, --quick writes <out>/cpu-quick.json and .md (cases stubbed out)."""
    from benchmarks import run

    monkeypatch.setattr(run, "_meta", lambda args, device: dict(FAKE_META))
    monkeypatch.setattr(run, "run_case", lambda case, device, timeout: dict(case, error="stubbed", wall_s=0.0))
    assert run.main(QUICK + ["--out", str(tmp_path), "--only", "train,conv"]) == 1  # the stub's errors
    assert sorted(os.listdir(tmp_path)) == ["cpu-quick.json", "cpu-quick.md"]
    assert json.loads((tmp_path / "cpu-quick.json").read_text())["meta"]["tag"] == "cpu-quick"


def test_peak_flops_table():
    from benchmarks.run import peak_flops

    assert peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.4e12
    assert peak_flops("NVIDIA H100 PCIe", "bfloat16") == 756e12
    assert peak_flops("NVIDIA H200", "float32") == 494.7e12
    assert peak_flops("TPU v5 lite", "bfloat16") == 197e12
    assert peak_flops("cpu", "float32") is None


def test_profile_step_attributes_the_time_to_op_kinds():
    r = subprocess.run([sys.executable, "-m", "benchmarks.profile_step", "--model", "tiny", "--crop", "32",
                        "--batch", "2", "--iters", "2", "--top", "3"], cwd=REPO, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    total = float(lines[0].split(": ")[1].split(" ms")[0])
    shares = {l.split()[0]: (float(l.split()[1]), float(l.split()[3].rstrip("%")))
              for l in lines[1:] if l.startswith("  ") and l.strip().split()[0] in
              ("convolution", "elementwise", "transpose/copy", "reduce", "concatenate", "dot")}
    assert "convolution" in shares and total > 0
    assert abs(sum(ms for ms, _ in shares.values()) - total) < 0.02 * total + 0.2
    assert abs(sum(pct for _, pct in shares.values()) - 100) < 0.5


def test_device_cases_and_goal_logic():
    """The --device plan and the goal checks, on made-up GPU numbers (no GPU needed)."""
    from benchmarks import run

    cases = run.case_list(quick=False, device=True)
    zrr_train = [c for c in cases if c["kind"] == "train" and c["model"] == "zrr"]
    assert {c["dtype"] for c in zrr_train} == {"float32", "bfloat16"} and zrr_train[0]["crop"] == 448
    assert {(c["method"], c["num_steps"]) for c in cases if c["kind"] == "sample" and c["crop"] == 448} == {
        ("dtdm", 100), ("dtdm_ddim", 10)}
    assert all(c["device"] == "cuda" for c in cases if c["kind"] == "torch")

    kind = "NVIDIA H100 80GB HBM3"
    train = dict(kind="train", model="zrr", crop=448, batch=8, dtype="bfloat16")
    run._rates(train, 0.5, 8, 0.5 * 0.5 * 989.4e12, kind, "bfloat16")  # 50% of the bf16 peak
    assert abs(train["mfu"] - 0.5) < 1e-12 and abs(train["images_per_s"] - 16) < 1e-12
    torch_row = dict(kind="torch", model="zrr", crop=448, batch=8, dtype="bfloat16", train_ms=600.0,
                     forward_ms=200.0)
    fwd = dict(kind="forward", model="zrr", crop=448, batch=8, dtype="bfloat16", ms_per_call=150.0)
    summary = run.summarize([train, fwd, torch_row], device=True)
    goals = {g["goal"]: g for g in summary["goals"]}
    assert goals["bf16 train MFU >= 45% (zrr, 448)"]["met"]
    speedup = goals["JAX >= 1.3x faster than PyTorch per train step (GPU)"]
    assert abs(speedup["value"] - 1.2) < 1e-9 and not speedup["met"]  # 600 ms / 500 ms
    ratios = {r["what"]: r["jax_over_torch"] for r in summary["jax_vs_torch"]}
    assert abs(ratios["train"] - 500 / 600) < 1e-9 and abs(ratios["forward"] - 0.75) < 1e-9


BARE = """
import importlib.abc, json, sys
BLOCKED = {"ml_collections", "tensorflow", "tensorflow_datasets", "grain", "clu", "orbax", "torch", "PIL",
           "rawpy", "scipy", "dm_pix", "tqdm"}  # absl and etils come with optax and flax

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not on a bare accelerator machine")

sys.meta_path.insert(0, Block())
from benchmarks import run
for case in json.loads(sys.argv[1]):
    run._run_case_here(case)
print("ML_COLLECTIONS", type(sys.modules["ml_collections"]).__name__)
"""


def test_benchmark_cases_run_with_only_jax_flax_optax_numpy():
    """train / forward / sample cases import nothing beyond jax, flax, optax, numpy and core modules."""
    cases = [dict(kind="train", model="tiny", crop=32, batch=2, dtype="float32", steps=1),
             dict(kind="forward", model="tiny", crop=32, batch=2, dtype="bfloat16", steps=1),
             dict(kind="sample", model="tiny", crop=32, batch=2, dtype="float32", method="dtdm_ddim",
                  num_steps=2)]
    r = subprocess.run([sys.executable, "-c", BARE, json.dumps(cases)], cwd=REPO, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    results = [json.loads(l.split(" ", 1)[1]) for l in r.stdout.splitlines() if l.startswith("BENCH_RESULT")]
    assert len(results) == 3 and all("error" not in x for x in results), results
    assert results[0]["params"] == 49_787 and results[2]["compiled_once"]
    # Every blocked import raised, so the cases ran on jax/flax/optax/numpy alone, with the
    # benchmark's stand-in for ml_collections.ConfigDict.
    assert "ML_COLLECTIONS SimpleNamespace" in r.stdout


def test_loop_bench_times_the_loop_and_the_bare_step(tmp_path):
    out = tmp_path / "loop"
    r = subprocess.run([sys.executable, "-m", "benchmarks.loop_bench", "--config", "configs/test.py",
                        "--steps", "20", "--repeats", "1", "--out", str(out)], cwd=REPO, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "loop.json").read_text())
    assert res["model"] == "tiny" and res["batch"] == 8 and res["crop"] == 32
    assert res["bare_steps_per_s"] > 0 and res["loop_steps_per_s"] > 0
    assert res["ratio"] == pytest.approx(res["loop_steps_per_s"] / res["bare_steps_per_s"])
    assert f"ratio {res['ratio']:.3f}" in r.stdout and "Ratio" in (tmp_path / "loop.md").read_text()
    bad = subprocess.run([sys.executable, "-m", "benchmarks.loop_bench", "--steps", "5"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--steps must be >= 20" in bad.stderr

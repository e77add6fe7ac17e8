"""benchmarks/run.py end to end with the tiny U-Net: every case runs and the report is consistent.

No timing is asserted (speed goals live in the benchmark's own report); the test checks
that each case produced its numbers, that they agree with each other (XLA's FLOP count
of a train step is 2.5-4x that of a forward pass; the PyTorch reference has the JAX
parameter count; the sampler compiled once) and that JSON and Markdown are written.
"""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_run_quick_tiny(tmp_path):
    r = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--model", "tiny", "--crop", "32", "--batch", "4",
                        "--out", str(tmp_path), "--tag", "t"], cwd=REPO, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((tmp_path / "t.json").read_text())
    res = {(x["kind"], x.get("method")): x for x in report["results"]}
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
    torch_row = res[("torch", None)]
    assert torch_row.get("skipped") is None, torch_row
    assert torch_row["params"] == train["params"] and torch_row["train_ms"] > 0
    ratios = report["summary"]["jax_vs_torch"]
    assert {q["what"] for q in ratios} == {"train", "forward"}
    conv = res[("conv", None)]
    assert conv["torch"] and len(conv["rows"]) == 2
    for q in conv["rows"]:
        assert q["gflop"] == 2 * q["batch"] * q["size"] ** 2 * q["cin"] * q["cout"] * 9 / 1e9
        assert min(q["jax_forward_ms"], q["jax_fwd_bwd_ms"], q["torch_forward_ms"], q["torch_fwd_bwd_ms"]) > 0
    assert set(torch_row["layouts"]) == {"contiguous", "channels_last"}
    inp = res[("input", None)]
    assert inp["d2"] and inp["grain"] and all(row["images_per_s"] > 0 for row in inp["grain"])
    goals = {g["goal"] for g in report["summary"]["goals"]}
    assert "sampler compiles once" in goals and any("Grain" in g for g in goals)
    md = (tmp_path / "t.md").read_text()
    for heading in ("## Train step", "## Sampling", "## PyTorch reference", "## JAX / PyTorch",
                    "## One conv3x3 layer", "## Input pipeline", "## Goals"):
        assert heading in md, heading


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

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
    r = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--model", "tiny",
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
    inp = res[("input", None)]
    assert inp["d2"] and inp["grain"] and all(row["images_per_s"] > 0 for row in inp["grain"])
    goals = {g["goal"] for g in report["summary"]["goals"]}
    assert "sampler compiles once" in goals and any("Grain" in g for g in goals)
    md = (tmp_path / "t.md").read_text()
    for heading in ("## Train step", "## Sampling", "## PyTorch reference", "## JAX / PyTorch",
                    "## Input pipeline", "## Goals"):
        assert heading in md, heading


def test_peak_flops_table():
    from benchmarks.run import peak_flops

    assert peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.4e12
    assert peak_flops("NVIDIA H100 PCIe", "bfloat16") == 756e12
    assert peak_flops("NVIDIA H200", "float32") == 494.7e12
    assert peak_flops("TPU v5 lite", "bfloat16") == 197e12
    assert peak_flops("cpu", "float32") is None

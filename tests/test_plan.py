"""benchmarks/plan.py on the tiny config: the numbers it reports are consistent with each other.

Two plan runs (in parallel, each compiling in its own subprocesses on 2 virtual CPU
devices, tiny U-Net, 16 px crops, batch 4, D2 off): 2 devices with fsdp 2 and remat
none / full plus the sampler step, written to JSON and Markdown; and 2 devices with
fsdp 1, remat none. Checked: total = arguments + outputs - aliased + temporaries, FSDP
halves the per-device state (the parameter-shaped leaves are sharded over "fsdp"),
remat changes neither the arguments nor the outputs and cuts the saved residuals, the
estimate is the floor plus the largest block's own working set, the sampler's FLOPs are
a fraction of a train step's. Also: the abstract train state the
plan compiles against has exactly the shardings, shapes and dtypes of a real
``train.create_train_state``.
"""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = ["--config=configs/test.py", "--devices", "2", "--crop", "16", "--batch", "4",
          "--config.degradation.enabled=False"]
TINY_PARAMS = 49_787


def _plan(*args):
    return subprocess.Popen([sys.executable, "-m", "benchmarks.plan", *COMMON, *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    out = tmp_path_factory.mktemp("plan")
    a = _plan("--fsdp", "2", "--remat", "none,full", "--out", str(out), "--name", "a")
    b = _plan("--fsdp", "1", "--remat", "none", "--no-sample", "--out", str(out), "--name", "b")
    for p in (a, b):
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stdout[-2000:] + stderr[-3000:]
    reports = {k: json.loads((out / f"{k}.json").read_text()) for k in "ab"}
    rows = {(r["what"], r["fsdp"], r["remat"]): r for rep in reports.values() for r in rep["rows"]}
    return reports, rows, (out / "a.md").read_text()


def test_plan_rows_are_consistent(plans):
    _, rows, _ = plans
    assert set(rows) == {("train", 2, "none"), ("train", 2, "full"), ("sample", 2, "none"),
                         ("train", 1, "none")}
    for r in rows.values():
        assert "error" not in r, r
        assert r["devices"] == 2 and r["data"] == 2 // r["fsdp"] and r["params"] == TINY_PARAMS
        assert r["backend"] == "cpu"
        for k in ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes"):
            assert r[k] >= 0, (k, r)
        assert r["total_bytes"] == r["argument_bytes"] + r["output_bytes"] - r["alias_bytes"] + r["temp_bytes"]
        assert r["flops"] > 0
        assert set(r["fits"]) == {"TPU v5e", "TPU v4", "TPU v6e", "A100 40GB", "A100 80GB", "H100 80GB",
                                  "TPU v5p", "H200 141GB"} and all(r["fits"].values())  # a tiny model
    state = 16 * TINY_PARAMS  # params, EMA, Adam's two moments: float32
    for key in (("train", 1, "none"), ("train", 2, "none"), ("train", 2, "full")):
        r = rows[key]
        # the donated state is reused for the new state: aliased ~ outputs ~ the state
        assert r["alias_bytes"] > 0.9 * r["output_bytes"] and r["alias_bytes"] <= r["argument_bytes"]
        assert r["floor_bytes"] == (r["argument_bytes"] + r["output_bytes"] - r["alias_bytes"]
                                    + r["residual_bytes"])
        assert 0 < r["block_bytes"] < r["temp_bytes"] and r["largest_block"].split()[0] in ("ResBlock",
                                                                                              "AttentionBlock")
        assert r["estimate_bytes"] == r["floor_bytes"] + r["block_bytes"] and all(r["fits_estimate"].values())
    # fsdp 1: every device holds the whole state (+ its share of the batch, a key, a step)
    full = rows[("train", 1, "none")]["argument_bytes"]
    assert state <= full <= state + 64 * 1024
    # fsdp 2: the parameter-shaped leaves are halved (1-D ones and the 3-channel output conv stay whole)
    ratio = rows[("train", 2, "none")]["argument_bytes"] / full
    assert 0.5 <= ratio <= 0.6, ratio
    # remat: the same state in and out, fewer residuals, more FLOPs (the recomputed forward)
    none, remat = rows[("train", 2, "none")], rows[("train", 2, "full")]
    assert remat["argument_bytes"] == none["argument_bytes"] and remat["output_bytes"] == none["output_bytes"]
    assert remat["residual_bytes"] < 0.5 * none["residual_bytes"]
    assert remat["flops"] > none["flops"]
    # the sampler step: one forward of 2 images per device, no optimiser state
    sample = rows[("sample", 2, "none")]
    assert sample["flops"] < 0.5 * none["flops"] and sample["alias_bytes"] == 0
    assert sample["argument_bytes"] < none["argument_bytes"]
    assert sample["sampler"] == "dtdm" and sample["sampler_steps"] == 1


def test_plan_report_files(plans):
    reports, _, md = plans
    meta = reports["a"]["meta"]
    assert meta["command"].startswith("python -m benchmarks.plan --config=configs/test.py")
    assert meta["model"] == "tiny" and meta["batch"] == 4 and meta["crop"] == 16 and meta["sample_batch"] == 4
    assert meta["date"] and meta["machine"] and meta["jax"]
    assert "only approximates an accelerator's" in md and "XLA:CPU" in md
    assert md.count("| train |") == 2 and md.count("| sample |") == 1
    assert "python -m benchmarks.plan --config=configs/test.py" in md


ABSTRACT_VS_REAL = r"""
import jax
from benchmarks import plan
from configs import test
from diffraw_jax import parallel
from diffraw_jax.training import train
from diffraw_jax.models import factory

config = test.get_config()
mesh = parallel.create_mesh(2)
model, tx = factory.create_model(config), train.create_optimizer(config)
real = train.create_train_state(config, model, tx, mesh, jax.random.key(config.seed))
abstract = plan.abstract_train_state(config, model, tx, mesh)
leaves = lambda t: jax.tree_util.tree_flatten_with_path(t)[0]
assert jax.tree.structure(real) == jax.tree.structure(abstract)
n = 0
for (path, x), (_, s) in zip(leaves(real), leaves(abstract)):
    assert (x.shape, x.dtype) == (s.shape, s.dtype), path
    assert x.sharding.is_equivalent_to(s.sharding, x.ndim), (jax.tree_util.keystr(path), x.sharding, s.sharding)
    n += x.sharding.spec != jax.sharding.PartitionSpec() and "fsdp" in str(x.sharding.spec)
assert n > 20, n  # parameters, EMA and moments really are sharded
print("ok", n)
"""


def test_abstract_state_is_the_trainers():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    r = subprocess.run([sys.executable, "-c", ABSTRACT_VS_REAL], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout[-2000:] + r.stderr[-3000:]

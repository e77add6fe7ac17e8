"""Checkpoints move between topologies: train on 8 devices with FSDP over 4, resume
on 2 (data parallel), evaluate and infer on 1 — identical parameters at every hop.

Each hop is a subprocess with its own virtual CPU device count
(``--xla_force_host_platform_device_count``); the trees are compared through .npz
dumps written by the subprocesses themselves.
"""
import os

import numpy as np


COMMON = """
import jax, numpy as np
from configs import test as tc
from diffraw_jax.training import train
from tests.helpers import tiny_source

def config(steps, fsdp):
    cfg = tc.get_config(); cfg.degradation.enabled = False; cfg.mesh.fsdp = fsdp
    cfg.train.num_train_steps = steps; cfg.train.checkpoint_every_steps = 3
    return cfg

def dump(state, path):
    flat = {{}}
    for name in ("params", "ema_params", "opt_state"):
        for p, v in jax.tree_util.tree_flatten_with_path(getattr(state, name))[0]:
            flat[name + jax.tree_util.keystr(p)] = np.asarray(v)
    flat["step"] = np.asarray(state.step)
    np.savez(path, **flat)

sources = (tiny_source(), tiny_source(4, seed=1))
"""

TRAIN_ON_8 = COMMON + """
assert jax.device_count() == 8
state = train.train_and_evaluate(config(3, 4), "{wd}", data_sources=sources)
leaf = max(jax.tree.leaves(state.ema_params), key=lambda a: a.size)
assert leaf.sharding.mesh.shape["fsdp"] == 4 and "fsdp" in leaf.sharding.spec, leaf.sharding  # sharded when saved
dump(state, "{wd}/after3_on8.npz")
print("OK")
"""

RESUME_ON_2 = COMMON + """
assert jax.device_count() == 2
restored = train.train_and_evaluate(config(3, 1), "{wd}", data_sources=sources)  # nothing left to do
leaf = max(jax.tree.leaves(restored.params), key=lambda a: a.size)
assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 2, leaf.sharding
dump(restored, "{wd}/restored_on2.npz")
state = train.train_and_evaluate(config(5, 1), "{wd}", data_sources=sources)
assert int(state.step) == 5
dump(state, "{wd}/after5_on2.npz")
print("OK")
"""

EVAL_AND_INFER_ON_1 = COMMON + """
assert jax.device_count() == 1
from diffraw_jax.evaluation import evaluate
from diffraw_jax.checkpoints import weights
from diffraw_jax.inference.pipeline import DiffRAWPipeline
cfg = config(5, 1); cfg.eval.num_images = 2; cfg.eval.ddim_steps = 2; cfg.eval.crop_size = 32
summary = evaluate.evaluate(cfg, "{wd}", data_source=sources[1])
assert summary["checkpoint_step"] == 5, summary
loaded = weights.load_inference("{wd}", color_net=False)
pipe = DiffRAWPipeline.from_checkpoint("{wd}", color="classic")
np.savez("{wd}/loaded_on1.npz", **{{"ema_params" + jax.tree_util.keystr(p): np.asarray(v)
                                    for p, v in jax.tree_util.tree_flatten_with_path(loaded.params)[0]}})
for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(pipe.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
print("OK")
"""


def _load(path):
    with np.load(path) as f:
        return dict(f)


def _assert_same(a, b, keys=None):
    keys = sorted(keys if keys is not None else a)
    assert keys and set(keys) <= set(a) and set(keys) <= set(b)
    for k in keys:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_train_on_8_fsdp4_resume_on_2_evaluate_and_infer_on_1(tmp_path, run_py):
    wd = str(tmp_path / "run")

    def hop(code, devices):
        out = run_py(code.format(wd=wd), {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"})
        assert "OK" in out

    hop(TRAIN_ON_8, 8)
    hop(RESUME_ON_2, 2)
    saved, restored = _load(f"{wd}/after3_on8.npz"), _load(f"{wd}/restored_on2.npz")
    assert saved.keys() == restored.keys() and int(restored["step"]) == 3
    _assert_same(saved, restored)  # params, EMA and the Adam moments, bit for bit
    after5 = _load(f"{wd}/after5_on2.npz")
    assert int(after5["step"]) == 5
    assert any(not np.array_equal(after5[k], saved[k]) for k in saved if k.startswith("params"))

    hop(EVAL_AND_INFER_ON_1, 1)
    loaded = _load(f"{wd}/loaded_on1.npz")
    _assert_same(after5, loaded, [k for k in after5 if k.startswith("ema_params")])
    assert os.path.isfile(os.path.join(wd, "eval", "test", "summary.md"))

"""The one read-only loader and portable weights (diffraw_jax/checkpoints/weights.py).

The run's tiny trained DiffRAW model (6 steps, checkpoints at 3 and 6; conftest.py), copied
once with a G workdir beside it; tests copy the workdir again before they change anything.
"""
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import types

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import test as test_config
from diffraw_jax.checkpoints import checkpointing, weights
from diffraw_jax.models import factory
from tests.helpers import REPO


def snapshot(root):
    """{relative path: sha256 or 'dir'} of everything under ``root``, plus mtimes of files."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = (hashlib.sha256(fh.read()).hexdigest(), os.stat(p).st_mtime_ns)
    return out


def flat(tree):
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assert_trees_equal(a, b):
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    """A copy of the run's tiny trained model (conftest.py) whose config names a G workdir
    beside it (training does not use G: the model is the one trained with it)."""
    root = tmp_path_factory.mktemp("weights")
    gdir = root / "g"
    gcfg = test_config.get_config()
    gcfg.task = "color_net"
    gcfg.optim.ema_decay = 0.0
    g_model = factory.create_model(gcfg)
    g_params = nn.unbox(factory.init_variables(g_model, jax.random.key(1)))["params"]
    manager = checkpointing.create_manager(str(gdir))
    checkpointing.save(manager, 5, {"step": np.int32(5), "params": g_params, "ema_params": g_params}, force=True)
    manager.wait_until_finished()
    manager.close()
    (gdir / "config.json").write_text(gcfg.to_json_best_effort())

    wd = root / "f"
    shutil.copytree(tiny_model.workdir, wd)
    cfg = json.loads((wd / "config.json").read_text())
    cfg["color_net"]["workdir"] = str(gdir)
    (wd / "config.json").write_text(json.dumps(cfg))
    assert sorted(os.listdir(checkpointing.checkpoint_dir(str(wd)))) == ["3", "6"]
    state = types.SimpleNamespace(params=tiny_model.params, ema_params=tiny_model.ema_params)
    return {"wd": str(wd), "g": str(gdir), "state": state, "g_params": g_params}


def damage_step(wd, step):
    """Overwrites every array data file of a checkpoint step with garbage of the same size."""
    root = os.path.join(checkpointing.checkpoint_dir(wd), str(step), "state")
    n = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if "d" == os.path.basename(dirpath) or f.startswith(("ocdbt", "manifest")):
                size = os.path.getsize(p)
                with open(p, "wb") as fh:
                    fh.write(b"\x5a" * max(size, 16))
                n += 1
    assert n > 0


def test_load_returns_ema_params_of_f_and_g(trained):
    m = weights.load_inference(trained["wd"])
    assert m.kind == "workdir" and m.step == 6 and m.config.task == "diffraw"
    assert_trees_equal(m.params, trained["state"].ema_params)
    raw = weights.load_inference(trained["wd"], use_ema=False, color_net=False)
    assert_trees_equal(raw.params, trained["state"].params)
    assert raw.color_net is None
    assert m.color_net is not None and m.color_net.config.task == "color_net"
    assert_trees_equal(m.color_net.params, trained["g_params"])
    assert m.schedule.num_timesteps == 200 and m.num_params == 49_787
    assert weights.load_inference(trained["wd"], step=3).step == 3
    leaf = jax.tree.leaves(m.params)[0]
    assert leaf.devices() == {jax.local_devices()[0]}


def test_read_only_load_of_a_damaged_checkpoint_changes_nothing(trained, tmp_path):
    wd = str(tmp_path / "f")
    shutil.copytree(trained["wd"], wd)
    damage_step(wd, 6)
    before = snapshot(wd)
    with pytest.raises(RuntimeError, match=r"step 6 .* unreadable.*nothing was changed.*step=3"):
        weights.load_inference(wd)
    assert snapshot(wd) == before
    # The older step still loads when asked for, and the damaged one is still there.
    assert weights.load_inference(wd, step=3, color_net=False).step == 3
    assert snapshot(wd) == before
    # The CLI: one error line naming the step, exit 2, the workdir untouched.
    from diffraw_jax.inference import cli

    png = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(np.full((32, 32), 400, np.uint16)).save(png)
    # Nothing else on stderr: orbax's reads that finish after the failed restore used
    # to print "Event loop is closed" tracebacks over the line, in most runs.
    for _ in range(3):
        r = subprocess.run([sys.executable, "-m", "diffraw_jax.inference.cli", "--checkpoint", wd, "--input",
                            str(png), "--output", str(tmp_path / "o"), "--color", "classic"],
                           capture_output=True, text=True, cwd=REPO, timeout=300,
                           env={**os.environ, "PYTHONPATH": REPO})
        assert r.returncode == 2, r.stderr
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and "step 6" in lines[0], r.stderr
    assert snapshot(wd) == before
    assert cli.main(["--checkpoint", wd, "--step", "3", "--input", str(png), "--output",
                     str(tmp_path / "o"), "--color", "classic", "--method", "dtdm_ddim", "--steps", "2"]) == 0
    assert snapshot(wd) == before


def test_only_closed_loop_callbacks_are_silenced(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    checkpointing.ignore_reads_finishing_after_a_failed_restore()
    checkpointing.ignore_reads_finishing_after_a_failed_restore()  # installs once
    hook = sys.unraisablehook
    assert hook is not seen.append and hook.drops_closed_loop_callbacks

    def unraisable(exc):
        return types.SimpleNamespace(exc_type=type(exc), exc_value=exc, exc_traceback=None, err_msg=None, object=None)

    hook(unraisable(RuntimeError("Event loop is closed")))
    assert seen == []
    for exc in (RuntimeError("something else"), ValueError("Event loop is closed")):
        hook(unraisable(exc))
    assert [u.exc_value.args[0] for u in seen] == ["something else", "Event loop is closed"]
    # asyncio's reports of the abandoned reads, and only those, are filtered.
    asyncio_log = logging.getLogger("asyncio")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    asyncio_log.addHandler(handler)
    try:
        # asyncio says "Task ..." for tasks and "Future ..." for bare futures (both seen in CI).
        for what in ("Task", "Future"):
            for exc in (ValueError('DATA_LOSS: Error reading "a/.zarray" [tensorstore_spec=\'{}\']'),
                        ValueError(f"a {what.lower()} of the user's")):
                try:
                    raise exc
                except ValueError:
                    asyncio_log.error(f"{what} exception was never retrieved\n{what.lower()}: <{what}>",
                                      exc_info=True)
    finally:
        asyncio_log.removeHandler(handler)
    assert [str(r.exc_info[1]) for r in records] == ["a task of the user's", "a future of the user's"]


def test_trainer_resume_is_the_only_one_that_sets_aside(trained, tmp_path):
    """restore_latest refuses a read-only manager (it may move folders)."""
    manager = checkpointing.create_manager(trained["wd"], read_only=True)
    with pytest.raises(ValueError, match="load_inference"):
        checkpointing.restore_latest(manager, None)


def test_export_and_load_weights_round_trip(trained, tmp_path):
    out = tmp_path / "release"
    manifest = weights.export_weights(trained["wd"], str(out))
    assert sorted(os.listdir(out)) == ["color_net", "config.json", "manifest.json", "params.npz"]
    assert manifest["step"] == 6 and manifest["num_params"] == 49_787
    assert manifest["sampler"] == {"method": "dtdm", "num_steps": None, "s": 20, "label": "DTDM-20",
                                   "start": "s", "start_noise_factor": 1.0, "start_switch": 0}
    assert manifest["color_net"]["step"] == 5
    with open(out / "params.npz", "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == manifest["sha256"]["params.npz"]
    m = weights.load_inference(str(out))
    assert m.kind == "weights" and m.step == 6
    assert_trees_equal(m.params, trained["state"].ema_params)
    assert_trees_equal(m.color_net.params, trained["g_params"])
    assert m.config.color_net.workdir == "color_net"
    # Nothing is overwritten, and a damaged array file is named.
    with pytest.raises(FileExistsError):
        weights.export_weights(trained["wd"], str(out))
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    data = bytearray((bad / "params.npz").read_bytes())
    data[-100] ^= 0xFF
    (bad / "params.npz").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="params.npz is damaged"):
        weights.load_inference(str(bad))
    # The sampler a release asks for is stored and used.
    fast = tmp_path / "fast"
    weights.export_weights(trained["wd"], str(fast), sample_method="dtdm_ddim", sample_num_steps=4)
    st = weights.load_inference(str(fast)).sampler_settings()
    assert (st.method, st.num_steps, st.label) == ("dtdm_ddim", 4, "DTDM-DDIM-4")


def test_export_weights_cli_and_outputs_match_the_workdir(trained, tmp_path):
    from PIL import Image

    from diffraw_jax.inference import cli

    out = tmp_path / "release"
    assert cli.main(["export-weights", "--checkpoint", trained["wd"], "--out", str(out)]) == 0
    assert cli.main(["export-weights", "--checkpoint", trained["wd"], "--out", str(out)]) == 2
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(63, 1020, (48, 64)).astype(np.uint16)).save(tmp_path / "a.png")
    common = ["--input", str(tmp_path / "a.png"), "--method", "dtdm_ddim", "--steps", "3", "--color", "g"]
    assert cli.main(["--checkpoint", trained["wd"], "--output", str(tmp_path / "o1")] + common) == 0
    assert cli.main(["--checkpoint", str(out), "--output", str(tmp_path / "o2")] + common) == 0
    a = np.asarray(Image.open(tmp_path / "o1" / "a.png"))
    b = np.asarray(Image.open(tmp_path / "o2" / "a.png"))
    assert a.shape == (48, 64, 3)
    np.testing.assert_array_equal(a, b)


def test_config_mismatch_is_named(trained, tmp_path):
    wd = tmp_path / "f"
    shutil.copytree(trained["wd"], wd)
    cfg = json.loads((wd / "config.json").read_text())
    cfg["model"]["name"] = "demo"
    (wd / "config.json").write_text(json.dumps(cfg))
    before = snapshot(str(wd))
    with pytest.raises(ValueError, match="does not match"):
        weights.load_inference(str(wd))
    assert snapshot(str(wd)) == before


def test_sampler_settings_honour_the_config(trained, tmp_path):
    cfg = test_config.get_config()
    assert factory.sampler_settings(cfg).label == "DTDM-20"
    cfg.sample.num_steps = 15
    assert factory.sampler_settings(cfg) == ("dtdm", 15, 20, "DTDM-15 (s=20)", None)
    cfg.sample.method = "dtdm_ddim"
    assert factory.sampler_settings(cfg).label == "DTDM-DDIM-15"
    assert factory.sampler_settings(cfg, "dtdm", 20).num_steps is None
    with pytest.raises(ValueError, match="num_steps must be in"):
        factory.sampler_settings(cfg, "dtdm", 21)
    cfg = test_config.get_config()
    cfg.diffusion.objective = "ddpm"
    assert factory.sampler_settings(cfg).method == "ddpm"
    with pytest.raises(ValueError, match="objective='ddpm'"):
        factory.sampler_settings(cfg, "dtdm")
    # A workdir trained on the epsilon target samples with DDPM without being told.
    from diffraw_jax.inference import DiffRAWPipeline

    wd = tmp_path / "ddpm"
    shutil.copytree(trained["wd"], wd)
    c = json.loads((wd / "config.json").read_text())
    c["diffusion"]["objective"] = "ddpm"
    (wd / "config.json").write_text(json.dumps(c))
    pipe = DiffRAWPipeline.from_checkpoint(str(wd), color="classic")
    assert (pipe.method, pipe.num_steps, pipe.label) == ("ddpm", None, "DDPM-20")


def test_inference_imports_no_training_code(trained, tmp_path, run_py):
    out = tmp_path / "release"
    weights.export_weights(trained["wd"], str(out))
    code = f"""
import sys
import diffraw_jax.inference.cli, diffraw_jax.inference, diffraw_jax.inference.export, diffraw_jax.checkpoints.weights
from diffraw_jax.inference import DiffRAWPipeline
p = DiffRAWPipeline.from_checkpoint({str(out)!r}, method="dtdm_ddim", num_steps=2, tile=None)
training = ("diffraw_jax.training.train", "diffraw_jax.evaluation.evaluate", "diffraw_jax.data.input_pipeline",
            "grain", "tensorflow_datasets", "tensorflow", "clu", "optax")
forbidden = training + ("diffraw_jax.checkpoints.checkpointing",)
bad = [m for m in forbidden if m in sys.modules]
assert not bad, bad
assert "orbax" not in sys.modules  # a weights folder needs no orbax
p = DiffRAWPipeline.from_checkpoint({trained["wd"]!r}, method="dtdm_ddim", num_steps=2, tile=None)
# A workdir is read by checkpointing.restore_params (all orbax handling is in that module),
# which brings none of the trainer with it.
bad = [m for m in training if m in sys.modules]
assert not bad, bad
print("OK")
"""
    assert "OK" in run_py(code)


def test_loaded_model_carries_what_its_config_fixes():
    """One load gives everything a caller runs the model with (``factory.model_spec``): the
    shipped calibrated student, the paper-path model and its G, each as its config says."""
    weights_lib, factory_lib = weights, factory
    root = os.path.join(REPO, "pretrained")
    student = weights_lib.load_inference(os.path.join(root, "distill-1"), color_net=False)
    assert (student.condition, student.distilled) == ("calibrated", False)  # specialised, not distilled (#28)
    assert student.config.model.condition == "calibrated" and not student.config.distill.teacher
    assert student.schedule.betas.shape == (student.config.diffusion.num_timesteps,)
    paper = weights_lib.load_inference(os.path.join(root, "paper-demo"))
    assert (paper.condition, paper.distilled) == ("paper", False)
    assert paper.color_net is not None and paper.color_net.schedule is None
    assert paper.color_net.num_params == factory_lib.count_params(
        factory_lib.abstract_params(factory_lib.create_model(paper.color_net.config)))

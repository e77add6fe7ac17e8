"""The config schema (diffraw_jax.runtime.configuration): one set of defaults, one upgrade of a
saved config.json, and the shipped weights' configs through it."""
import copy
import json
import os

import pytest

from diffraw_jax.runtime import configuration
from diffraw_jax.checkpoints import weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = ["pretrained/demo", "pretrained/demo/color_net", "pretrained/paper-demo", "pretrained/paper-demo/color_net",
           "pretrained/distill-1", "pretrained/synthetic", "pretrained/synthetic/color_net",
           "pretrained/distill-1/color_net"]


def overlay(base: dict, saved: dict) -> dict:
    """``base`` with ``saved``'s values written over it, section by section."""
    out = copy.deepcopy(base)
    for k, v in saved.items():
        out[k] = overlay(out[k], v) if isinstance(v, dict) else v
    return out


def test_configs_default_is_the_schema():
    from configs import default

    assert default.get_config().to_dict() == configuration.default_config().to_dict()


@pytest.mark.parametrize("folder", SHIPPED)
def test_shipped_configs_load_as_the_defaults_overlaid_by_the_file(folder):
    path = os.path.join(REPO, folder)
    with open(os.path.join(path, weights.CONFIG_FILE)) as f:
        saved = json.load(f)
    config = weights.load_config(path)
    if "isp" not in saved:  # written after the rename (the calibrated models of #21)
        assert config.to_dict() == overlay(configuration.default_config().to_dict(), saved)
        return
    assert "ssim_weight" not in saved["color_net"]  # written before the rename
    g = saved.pop("isp")
    saved["color_net"].update(g)
    assert config.to_dict() == overlay(configuration.default_config().to_dict(), saved)
    assert (config.color_net.ssim_weight, config.color_net.align) == (g["ssim_weight"], g["align"])
    assert "isp" not in config


def test_an_old_config_gets_the_fields_it_lacks():
    path = os.path.join(REPO, "pretrained/paper-demo")
    with open(os.path.join(path, weights.CONFIG_FILE)) as f:
        saved = json.load(f)
    # pretrained/paper-demo predates these fields: they come from the defaults.
    assert "distill" not in saved and "attention_impl" not in saved["model"]
    assert "prefetch_to_device" not in saved["data"] and "eval_every_steps" not in saved["train"]
    config = configuration.upgrade(saved)
    d = configuration.default_config()
    assert config.distill.to_dict() == d.distill.to_dict()
    assert config.model.attention_impl == d.model.attention_impl == "auto"
    assert config.model.remat_policy == "none" and config.model.remat is False
    assert config.data.prefetch_to_device == d.data.prefetch_to_device
    assert config.train.eval_every_steps == 0 and config.eval.model == ""
    assert "distill" not in saved  # the input is not modified
    # The older boolean model.remat still means "full" through the factory.
    from diffraw_jax.models import factory

    saved["model"]["remat"] = True
    assert factory.remat_policy(configuration.upgrade(saved)) == "full"


def test_renamed_fields_move_and_the_new_name_wins():
    config = configuration.upgrade({"isp": {"ssim_weight": 0.3, "align": False}})
    assert (config.color_net.ssim_weight, config.color_net.align) == (0.3, False)
    config = configuration.upgrade({"isp": {"ssim_weight": 0.3}, "color_net": {"ssim_weight": 0.5}})
    assert config.color_net.ssim_weight == 0.5 and config.color_net.align is True
    assert configuration.upgrade({}).to_dict() == configuration.default_config().to_dict()


def test_unknown_fields_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"does not know: model\.colour, extra$"):
        configuration.upgrade({"model": {"colour": 1, "name": "tiny"}, "extra": {}})
    with pytest.raises(ValueError, match=r"does not know: isp\.gamma"):
        configuration.upgrade({"isp": {"ssim_weight": 0.3, "gamma": 2}})
    with pytest.raises(ValueError, match=r"model must be a section"):
        configuration.upgrade({"model": "tiny"})
    with pytest.raises(ValueError, match=r"config field train\.num_train_steps"):
        configuration.upgrade({"train": {"num_train_steps": "many"}})
    # Through the loader: the file is named.
    (tmp_path / weights.CONFIG_FILE).write_text(json.dumps({"task": "diffraw", "typo": 1}))
    with pytest.raises(ValueError, match=r"config\.json: .*does not know: typo"):
        weights.load_config(str(tmp_path))


def test_configs_is_not_an_installed_package():
    """setup.py installs diffraw_jax and tfds_zrr; configs/ stays in the repository."""
    import ast
    import setuptools

    with open(os.path.join(REPO, "setup.py")) as f:
        tree = ast.parse(f.read())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and getattr(n.func, "attr", None) == "find_packages"]
    assert len(calls) == 1
    include = ast.literal_eval(next(k.value for k in calls[0].keywords if k.arg == "include"))
    found = setuptools.find_packages(REPO, include=include)
    assert "diffraw_jax" in found and "tfds_zrr" in found
    assert not [p for p in found if p.split(".")[0] == "configs"], found


def test_loading_a_saved_config_needs_no_configs_folder(tmp_path):
    """The installed `diffraw` has no configs/: the schema it upgrades with is in the package."""
    import subprocess
    import sys

    code = """
import importlib.abc, sys

class NoConfigs(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "configs":
            raise ImportError("configs/ is not installed")

sys.meta_path.insert(0, NoConfigs())
from diffraw_jax.checkpoints import weights
c = weights.load_config(sys.argv[1])
assert (c.color_net.ssim_weight, c.model.attention_impl) == (0.15, "auto")
print("OK")
"""
    r = subprocess.run([sys.executable, "-c", code, os.path.join(REPO, "pretrained/paper-demo")], cwd=tmp_path,
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO})
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr

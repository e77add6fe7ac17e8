"""Evaluation end to end on a tiny trained model: files, table rows, numbers."""
import csv
import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from configs import test as test_config
from diffraw_jax.evaluation import evaluate, metrics
from diffraw_jax.data import input_pipeline
from tests.helpers import tiny_source


def test_psnr_matches_the_formula():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 16, 16, 3)) / 255.0
    b = np.clip(a + rng.integers(-3, 4, a.shape) / 255.0, 0, 1)
    def psnr_ssim(x, y):  # the one scorer (metrics.compute_metrics)
        r = metrics.compute_metrics(x, y, metrics=("psnr", "ssim"))
        return r["psnr"], r["ssim"]

    p, s = psnr_ssim(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    want = 10 * np.log10(1 / ((a - b) ** 2).mean(axis=(1, 2, 3)))
    np.testing.assert_allclose(p, want, rtol=1e-5)
    p2, s2 = psnr_ssim(jnp.asarray(a, jnp.float32), jnp.asarray(a, jnp.float32))
    assert np.all(np.asarray(s2) > 0.9999) and np.all(np.asarray(s) < 1) and np.all(np.asarray(p2) > 100)


def test_train_then_evaluate_writes_tables_and_grid(tmp_path, tiny_model):
    """The run's tiny trained model (conftest.py), copied: evaluation writes into the workdir."""
    cfg = test_config.get_config()
    cfg.degradation.enabled = False
    shutil.copytree(tiny_model.workdir, tmp_path, dirs_exist_ok=True)
    summary = evaluate.evaluate(cfg, str(tmp_path), data_source=tiny_source(5, seed=1))
    out = tmp_path / "eval" / "test"
    for f in ("metrics.csv", "summary.md", "summary.json", "samples.png"):
        assert (out / f).exists(), f
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    methods = {r["method"] for r in rows}
    assert methods == {"Classical ISP", "DiffRAW DTDM-20", "DiffRAW DTDM-DDIM-4"}
    assert len(rows) == 4 * 3 * 2  # 4 images, once per method and protocol
    assert {r["protocol"] for r in rows} == {"original", "aligned"}
    for r in rows:
        assert np.isfinite(float(r["psnr"])) and 0 < float(r["ssim"]) <= 1 and 0 <= float(r["lpips"]) < 1.5
        assert r["musiq"] == r["clipiqa"] == "needs weights"  # never a silent number
    # The CSV rows average to the summary.
    js = json.load(open(out / "summary.json"))
    isp = [float(r["psnr"]) for r in rows if r["method"] == "Classical ISP" and r["protocol"] == "original"]
    assert js["methods"]["Classical ISP"]["original"]["psnr"] == pytest.approx(np.mean(isp))
    assert js["methods"]["Classical ISP"]["original"]["fid"] == "needs weights"
    assert js["methods"]["G (color_net)"] == {"note": "G: needs a trained colour network (color_net.workdir)"}
    assert "n/a" in js["methods"]["DSLR (reference)"]["original"]["niqe"]  # 32 px crops: too small
    md = open(out / "summary.md").read()
    assert "## Full-reference (Table 2)" in md and "## No-reference (Table 1)" in md
    assert "needs weights" in md and "DiffRAW DTDM-20" in md
    from PIL import Image
    grid = Image.open(out / "samples.png")
    assert grid.size[0] > 4 * 32 and grid.size[1] > 2 * 32


def test_evaluate_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a diffraw-jax training workdir nor a weights"):
        evaluate.evaluate(test_config.get_config(), str(tmp_path), data_source=tiny_source(2))
    assert os.listdir(tmp_path) == []  # nothing written before the model loaded


def test_first_images_are_the_centre_crops_of_the_first_records():
    """input_pipeline.first_images against the records themselves: the RGGB mosaic packed by hand
    (R, Gr, Gb, B) and normalised with ZRR's levels, the DSLR image / 255, the same even-offset
    centre crop (16 px into a 64 px record for a 32 px crop)."""
    src = tiny_source(5, size=64, seed=3)
    cfg = test_config.get_config()  # data.black_level 63, white_level 1020 (ZRR's)
    w, y01, n = input_pipeline.first_images(cfg, 3, 32, src)
    assert n == 3 and w.shape == (3, 16, 16, 4) and y01.shape == (3, 32, 32, 3)
    for i in range(3):
        mos = src[i]["raw"].astype(np.float64)
        planes = np.stack([mos[0::2, 0::2], mos[0::2, 1::2], mos[1::2, 0::2], mos[1::2, 1::2]], -1)
        want_w = np.clip((planes - 63) / (1020 - 63), 0, 1)[8:24, 8:24]
        np.testing.assert_allclose(np.asarray(w[i]), want_w, atol=1e-6)
        np.testing.assert_allclose(y01[i], src[i]["dslr"][16:48, 16:48] / 255.0, atol=1e-6)
    assert input_pipeline.first_images(cfg, 99, 0, src)[2] == 5  # capped at the source's length; crop 0 = whole

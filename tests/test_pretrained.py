"""The shipped models (pretrained/demo, pretrained/distill-1, the base pretrained/synthetic) load,
check out and run through ``diffraw``."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(REPO, "pretrained", "demo")


def test_shipped_weights_load_with_their_manifest():
    from diffraw_jax.checkpoints import weights

    m = weights.load_inference(MODEL)  # checks sha256 and every shape
    manifest = json.load(open(os.path.join(MODEL, "manifest.json")))
    assert m.kind == "weights" and m.step == manifest["step"] > 0
    assert m.config.model.name == "demo" and m.num_params == manifest["num_params"] == 2_756_723
    assert m.config.model.condition == "calibrated"  # colour from each file's own calibration (#21)
    assert m.color_net is not None and m.color_net.num_params == 378_659
    # The file-dependent sampler (#28): one step from the file's noise-matched start; DTDM-DDIM-4
    # from s on request. Trained with half its examples at their own late start.
    assert m.sampler_settings().label == "DTDM-DDIM-4"
    assert manifest["sampler"]["start"] == "auto" and manifest["sampler"]["start_switch"] == 0
    assert manifest["sampler"]["start_noise_factor"] == m.config.sample.start_noise_factor > 0
    assert m.config.train.own_start_share == 0.5 and m.config.train.init_from == "pretrained/synthetic"
    assert weights.folder_bytes(MODEL) < 15 * 2**20  # small enough for git
    assert os.path.isfile(os.path.join(MODEL, "TRAINING.md"))
    base = weights.load_inference(os.path.join(REPO, "pretrained", "synthetic"), color_net=False)
    assert base.config.model.condition == "calibrated" and base.sampler_settings().label == "DTDM-100"


def test_diffraw_runs_the_shipped_model_on_a_dng(tmp_path):
    pytest.importorskip("pidng")
    from PIL import Image

    env = {**os.environ, "PYTHONPATH": REPO}
    r = subprocess.run([sys.executable, "-m", "diffraw_jax.data.dng_writer", "--out", str(tmp_path / "raw"), "--num", "1",
                        "--height", "64", "--width", "96", "--orientation", "6"],
                       capture_output=True, text=True, cwd=REPO, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    path = str(tmp_path / "raw" / "synthetic_0.dng")
    assert r.stdout.strip() == f"wrote {path}"
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "diffraw_jax.inference.cli", "--checkpoint", MODEL,
                        "--input", path, "--output", str(out), "--method", "dtdm_ddim", "--steps", "2",
                        "--quiet"], capture_output=True, text=True, cwd=REPO, timeout=600,
                       env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "processed 1, failed 0" in r.stdout
    # The calibrated path by default, naming the colour source: the DNG's own tags.
    assert "synthetic_0.dng: colour from DNG ColorMatrix" in r.stdout + r.stderr
    img = np.asarray(Image.open(out / "synthetic_0.png"))
    assert img.shape == (96, 64, 3) and img.std() > 10  # rotated as the DNG says, not flat
    ref = np.asarray(Image.open(tmp_path / "raw" / "synthetic_0_dslr.jpg")).astype(float)
    # A trained model: closer to the DSLR reference than a flat grey image is.
    assert np.abs(img - ref).mean() < np.abs(128 - ref).mean()


STUDENT = os.path.join(REPO, "pretrained", "distill-1")


def test_shipped_student_samples_in_one_step_through_diffraw(tmp_path):
    """pretrained/distill-1: checks out, says one DTDM-DDIM step from the file's noise-matched
    start in its manifest, and diffraw runs it on a DNG with no sampler options, logging that
    sampler and the start it chose."""
    pytest.importorskip("pidng")
    from diffraw_jax.checkpoints import weights

    m = weights.load_inference(STUDENT)  # checks sha256 and every shape
    manifest = json.load(open(os.path.join(STUDENT, "manifest.json")))
    teacher = json.load(open(os.path.join(MODEL, "manifest.json")))["sampler"]
    assert manifest["sampler"] == {"method": "dtdm_ddim", "num_steps": 1, "s": 100, "label": "DTDM-DDIM-1",
                                   "start": "auto", "start_noise_factor": 1.0, "start_switch": 0}
    assert teacher["start_noise_factor"] == 2.0 and teacher["start"] == "auto"
    assert m.config.train.own_start_share == 1.0  # specialised on the late starts (configs/student.py)
    assert m.sampler_settings().label == "DTDM-DDIM-1" and m.num_params == 2_756_723
    assert m.color_net is not None and weights.folder_bytes(STUDENT) < 15 * 2**20
    assert os.path.isfile(os.path.join(STUDENT, "TRAINING.md"))

    env = {**os.environ, "PYTHONPATH": REPO}
    r = subprocess.run([sys.executable, "-m", "diffraw_jax.data.dng_writer", "--out", str(tmp_path / "raw"), "--num", "1",
                        "--height", "64", "--width", "96"], capture_output=True, text=True, cwd=REPO,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-m", "diffraw_jax.inference.cli", "--checkpoint", STUDENT,
                        "--input", str(tmp_path / "raw" / "synthetic_0.dng"), "--output", str(tmp_path / "out")],
                       capture_output=True, text=True, cwd=REPO, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "processed 1, failed 0" in r.stdout
    log = r.stdout + r.stderr
    # A 64x96 frame is too small to measure its noise: the auto start falls back to s, and says so.
    assert "synthetic_0.dng: condition noise nan at mid-grey -> sampler DTDM-DDIM-1" in log, log[-2000:]
    from PIL import Image

    img = np.asarray(Image.open(tmp_path / "out" / "synthetic_0.png"))
    ref = np.asarray(Image.open(tmp_path / "raw" / "synthetic_0_dslr.jpg")).astype(float)
    assert img.shape == ref.shape and np.abs(img - ref).mean() < np.abs(128 - ref).mean()

"""Calibrated colour (diffraw_jax/calibration.py): the file's own calibration inverts the camera,
the trainer builds x = c from it, and the pipeline refuses conditions a model was not trained with."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from diffraw_jax import calibration, color, raw
from diffraw_jax.data import synthetic_zrr
from diffraw_jax.training import train
from diffraw_jax.inference import camera, pipeline
from diffraw_jax.models import factory


def _smooth_scene(size, seed=0):
    """A smooth, colourful sRGB scene [size, size, 3] in [0.05, 0.9] (no detail the
    demosaic could alias: the test isolates the colour calibration)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0.05, 0.9, (4, 4, 3))
    yy = np.linspace(0, 3, size)
    i0 = np.clip(np.floor(yy).astype(int), 0, 2)
    t = (yy - i0)[:, None]
    rows = coarse[i0] * (1 - t[..., None]) + coarse[i0 + 1] * t[..., None]  # [size, 4, 3]
    cols = rows[:, i0] * (1 - t.T[..., None]) + rows[:, i0 + 1] * t.T[..., None]
    return np.clip(cols, 0.0, 1.0)


@pytest.mark.parametrize("exposure", [0.75, 0.12])
def test_the_true_calibration_inverts_the_camera(exposure):
    """unprocess (inverse sRGB, inverse colour matrix, inverse white balance, exposure) and
    then balanced planes + calibrated condition with that camera's calibration give the scene back."""
    scene = _smooth_scene(64)
    ccm = np.array([[1.9, -0.7, -0.2], [-0.3, 1.6, -0.3], [0.1, -0.6, 1.5]])
    gains = np.array([2.3, 1.0, 1.4])
    mosaic, info = synthetic_zrr.unprocess(scene, np.random.default_rng(0), ccm=ccm, gains=gains,
                                           blur_sigma=0, exposure=exposure, shot=0, read=0, warp=False)
    planes = raw.normalize(raw.pack(mosaic), synthetic_zrr.BLACK_LEVEL, synthetic_zrr.WHITE_LEVEL)
    cal = calibration.Calibration(gains.astype(np.float32), ccm.astype(np.float32), -np.log2(exposure))
    w, c = calibration.network_inputs(jnp.asarray(planes), cal.wb_gains, cal.ccm, cal.baseline_exposure)
    c = np.asarray(c)
    assert w.shape == (32, 32, 4) and c.shape == (64, 64, 3)
    inner = (slice(4, -4), slice(4, -4))
    err = np.abs(c[inner] - scene[inner])
    assert err.mean() < 0.01, err.mean()
    # Balanced planes: the scene's linear sRGB through the inverse colour matrix (white-balanced
    # camera RGB, white -> 1), computed here from the scene, plane by plane.
    cam = np.clip(color.srgb_to_linear(scene) @ np.linalg.inv(ccm).T, 0, 1)
    want = np.stack([cam[0::2, 0::2, 0], cam[0::2, 1::2, 1], cam[1::2, 0::2, 1], cam[1::2, 1::2, 2]], -1)
    step = 1.0 / ((synthetic_zrr.WHITE_LEVEL - synthetic_zrr.BLACK_LEVEL) * exposure)  # one code, balanced
    np.testing.assert_allclose(np.asarray(w)[2:-2, 2:-2], want[2:-2, 2:-2], atol=0.003 + 1.5 * step)
    flat = np.asarray(calibration.balanced_planes(jnp.full((2, 2, 4), 0.1), gains, 1.0))
    assert np.allclose(flat[0, 0], [0.1 * 2.3 * 2, 0.2, 0.2, 0.1 * 1.4 * 2], atol=1e-6)
    assert float(np.asarray(calibration.balanced_planes(jnp.full((1, 1, 4), 0.9), gains, 2.0)).max()) == 1.0


def test_a_wrong_calibration_shows_as_a_colour_error():
    """The check above can fail: the same RAW rendered with another camera's matrix and gains
    is off by several Delta E (so colour really comes from the calibration)."""
    scene = _smooth_scene(64, seed=1)
    ccm = np.array([[1.9, -0.7, -0.2], [-0.3, 1.6, -0.3], [0.1, -0.6, 1.5]])
    mosaic, _ = synthetic_zrr.unprocess(scene, np.random.default_rng(0), ccm=ccm, gains=(2.3, 1, 1.4),
                                        blur_sigma=0, exposure=0.75, shot=0, read=0, warp=False)
    planes = jnp.asarray(raw.normalize(raw.pack(mosaic), 63, 1020))
    ev = -np.log2(0.75)
    right = np.asarray(calibration.network_inputs(planes, np.array([2.3, 1, 1.4]), ccm, ev)[1])
    wrong = np.asarray(calibration.network_inputs(planes, np.array([1.8, 1, 1.9]), synthetic_zrr.BASE_CCM, ev)[1])
    de = lambda a: float(np.mean(color.delta_e76(color.srgb_to_lab(a[8:-8, 8:-8]),  # noqa: E731
                                                 color.srgb_to_lab(scene[8:-8, 8:-8]))))
    assert de(right) < 1.0 < 5.0 < de(wrong)


def test_calibration_from_dict_checks_values():
    cal = calibration.Calibration.from_dict({"wb_gains": [2, 1, 1.5], "ccm": np.eye(3).tolist(),
                                             "baseline_exposure": 0.5})
    assert cal.to_dict()["baseline_exposure"] == 0.5 and cal.wb_gains.dtype == np.float32
    with pytest.raises(ValueError, match="wb_gains"):
        calibration.Calibration.from_dict({"ccm": np.eye(3).tolist()})
    with pytest.raises(ValueError, match="non-positive"):
        calibration.Calibration.from_dict({"wb_gains": [0, 1, 1], "ccm": np.eye(3).tolist()})


def _tiny_config(condition):
    from configs import test as test_config

    c = test_config.get_config()
    c.model.condition = condition
    return c


def test_the_trainer_builds_x_from_the_pairs_calibration():
    """A calibrated model's training inputs are the batch's balanced planes and its calibrated
    classical ISP (what inference computes), not D2(y); a paper model's ignore the calibration."""
    rng = np.random.default_rng(0)
    b = 2
    planes = rng.uniform(0, 0.5, (b, 8, 8, 4)).astype(np.float32)
    wb = np.array([[2.0, 1.0, 1.5], [1.4, 1.0, 2.2]], np.float32)
    ccm = np.stack([np.eye(3), synthetic_zrr.BASE_CCM]).astype(np.float32)
    ev = np.array([0.0, 1.0], np.float32)
    batch = {"raw": jnp.asarray(planes), "dslr": jnp.asarray(rng.uniform(-1, 1, (b, 16, 16, 3)), jnp.float32),
             "wb_gains": jnp.asarray(wb), "ccm": jnp.asarray(ccm), "baseline_exposure": jnp.asarray(ev)}
    keys = jax.random.split(jax.random.key(0), b)
    w, x = train.diffraw_inputs(_tiny_config("calibrated"), batch, keys)
    for i in range(b):  # image by image, through the calibration's own function (no roll-off)
        w_i, c_i = calibration.network_inputs(jnp.asarray(planes[i]), wb[i], ccm[i], ev[i])
        np.testing.assert_allclose(np.asarray(w[i]), np.asarray(w_i), atol=1e-6)
        np.testing.assert_allclose(np.asarray(x[i]), np.asarray(c_i) * 2 - 1, atol=1e-5)
    w_p, x_p = train.diffraw_inputs(_tiny_config("paper"), batch, keys)
    no_cal = {k: batch[k] for k in ("raw", "dslr")}
    w_q, x_q = train.diffraw_inputs(_tiny_config("paper"), no_cal, keys)
    assert np.array_equal(np.asarray(w_p), planes) and np.array_equal(np.asarray(x_p), np.asarray(x_q))
    assert not np.allclose(np.asarray(x_p), np.asarray(x))


def test_model_condition_is_validated():
    with pytest.raises(ValueError, match="model.condition must be one of"):
        factory.model_condition(_tiny_config("learned"))


def test_pipeline_colour_must_match_the_models_condition():
    assert pipeline.check_color(None, "calibrated") == "calibrated"
    assert pipeline.check_color(None, "paper") == "g"
    with pytest.raises(ValueError, match="each file's calibration"):
        pipeline.check_color("g", "calibrated")
    with pytest.raises(ValueError, match="each file's calibration"):
        pipeline.check_color("classic", "calibrated")
    with pytest.raises(ValueError, match="not with calibrated colour"):
        pipeline.check_color("calibrated", "paper")
    assert pipeline.check_color("image", "calibrated") == "image"


def test_calibrated_inputs_of_a_frame_without_metadata_use_gray_world():
    """No white balance in the frame: gray-world gains (the planes' channel means become equal),
    and a warning that the colour was guessed."""
    cfg = _tiny_config("calibrated")
    model = factory.create_model(cfg)
    params = factory.init_variables(model, jax.random.key(0))["params"]
    pipe = pipeline.DiffRAWPipeline(model, params, factory.create_schedule(cfg), factory.sampler_settings(cfg),
                                    color="calibrated", condition="calibrated", tile=None)
    rng = np.random.default_rng(0)
    mosaic = np.zeros((32, 48), np.uint16)
    level = np.array([[400, 300], [300, 150]])  # a cast: R high, B low
    mosaic[:] = np.tile(level, (16, 24)) + rng.integers(0, 5, (32, 48))
    frame = camera.BayerFrame(mosaic=mosaic)
    prepared = camera.prepare_frame(frame)
    with pytest.warns(UserWarning, match="colour guessed: no colour metadata"):
        planes, cond = pipe.inputs(prepared, frame)
    m = planes.reshape(-1, 4).mean(0)
    assert np.allclose(m[0], m[3], rtol=0.02) and np.allclose(m[0], 0.5 * (m[1] + m[2]), rtol=0.02)
    assert cond.shape == (32, 48, 3) and np.ptp(cond.reshape(-1, 3).mean(0)) < 0.02


def _calibrated_source(n, seed):
    from tests.helpers import tiny_source

    rng = np.random.default_rng(seed)
    out = []
    for ex in tiny_source(n, seed=seed):
        ex = dict(ex)
        ex["wb_gains"] = np.array([rng.uniform(1.3, 2.8), 1.0, rng.uniform(1.2, 2.8)], np.float32)
        ex["ccm"] = synthetic_zrr.BASE_CCM.astype(np.float32)
        ex["baseline_exposure"] = np.float32(rng.uniform(0, 1))
        out.append(ex)
    return out


def test_a_calibrated_model_trains_evaluates_and_renders(tmp_path):
    """End to end on a calibrated source: training (with evaluation during training), the
    evaluation tables (a "Calibrated ISP (c)" row), and inference from the workdir, which
    uses the calibrated colour by default; an uncalibrated source is refused in one line."""
    from diffraw_jax.evaluation import evaluate

    cfg = _tiny_config("calibrated")
    cfg.data.crop_size = 32
    cfg.train.num_train_steps = 4
    cfg.train.checkpoint_every_steps = 4
    cfg.train.eval_every_steps = 4
    cfg.train.eval_num_images = 2
    src = (_calibrated_source(8, 0), _calibrated_source(3, 1))
    train.train_and_evaluate(cfg, str(tmp_path / "wd"), data_sources=src)
    summary = evaluate.evaluate(cfg, str(tmp_path / "wd"), data_source=src[1])
    assert "Calibrated ISP (c)" in summary["methods"]
    psnr = summary["methods"]["Calibrated ISP (c)"]["original"]["psnr"]
    assert np.isfinite(psnr)
    pipe = pipeline.DiffRAWPipeline.from_checkpoint(str(tmp_path / "wd"), tile=None)
    assert pipe.color == "calibrated" and pipe.calibrated_model
    out = pipe(src[1][0]["raw"], wb_gains=src[1][0]["wb_gains"], ccm=src[1][0]["ccm"], baseline_exposure=0.5)
    assert out.shape == (64, 64, 3) and np.isfinite(out).all()
    with pytest.raises(ValueError, match="needs each pair's calibration"):
        from tests.helpers import tiny_source

        train.train_and_evaluate(cfg, str(tmp_path / "wd2"), data_sources=(tiny_source(4), tiny_source(2)))
    assert not (tmp_path / "wd2" / "config.json").exists()  # refused before anything was written

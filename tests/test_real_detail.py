"""Issue 28's noise measurement and the start step from it: raw.noise_profile against noise of
known shot/read drawn here, calibration.condition_noise against the first-order formula computed
here, dtdm.start_for_noise against the schedule, and start="auto" through the pipeline."""
import numpy as np
import pytest

from diffraw_jax import calibration, dtdm, raw


def flat_steps(h=256, w=384, seed=0):
    """Planes [h, w, 4] of flat patches (32 x 32 plane px) at log-spaced levels 0.003..0.8."""
    rng = np.random.default_rng(seed)
    levels = np.geomspace(0.003, 0.8, (h // 32) * (w // 32))
    rng.shuffle(levels)
    sig = np.kron(levels.reshape(h // 32, w // 32), np.ones((32, 32)))
    return sig[..., None] * np.array([0.6, 1.0, 1.0, 0.8]), rng


@pytest.mark.parametrize("shot10, read10", [(0.03, 0.15), (1.0, 3.0)])
def test_noise_profile_recovers_known_shot_and_read(shot10, read10):
    """Gaussian noise of variance shot * x + read**2 (given in 10-bit codes, /957 normalised) on
    flat patches: both come back within 15%."""
    sig, rng = flat_steps()
    shot, read = shot10 / 957, read10 / 957
    noisy = sig + np.sqrt(shot * sig + read ** 2) * rng.standard_normal(sig.shape)
    r = raw.noise_profile(noisy)
    assert r["shot"] == pytest.approx(shot, rel=0.15) and r["read"] == pytest.approx(read, rel=0.15)
    assert np.isnan(raw.noise_profile(np.zeros((8, 8, 4)))["shot"])  # nothing to measure


def test_condition_noise_is_the_mid_grey_std_through_the_srgb_curve():
    """shot 1.0, read 3.0 codes at +1 EV: mid-grey 0.18 comes from x = 0.09; linear std
    2 * sqrt(shot x + read^2); sRGB slope at 0.18 from a finite difference of the sRGB curve."""
    sig, rng = flat_steps(seed=1)
    shot, read = 1.0 / 957, 3.0 / 957
    noisy = sig + np.sqrt(shot * sig + read ** 2) * rng.standard_normal(sig.shape)
    srgb = lambda v: 1.055 * v ** (1 / 2.4) - 0.055  # noqa: E731
    slope = (srgb(0.18 + 1e-6) - srgb(0.18 - 1e-6)) / 2e-6
    want = 2.0 * np.sqrt(shot * 0.09 + read ** 2) * slope
    assert calibration.condition_noise(noisy, 1.0) == pytest.approx(want, rel=0.1)


def test_start_for_noise_matches_the_schedule():
    """The smallest t whose start noise 0.5 sqrt((1 - ab_t) / ab_t) covers sigma (ab from the
    paper's linear betas in float64 here); s for noise beyond s's, or unmeasurable."""
    sched = dtdm.make_schedule()
    ab = np.cumprod(1.0 - np.linspace(1e-6, 1e-2, 2000))
    added = 0.5 * np.sqrt((1 - ab) / ab)
    for sigma in (0.002, 0.0035, 0.02):
        t = dtdm.start_for_noise(sched, 100, sigma)
        assert added[t - 1] >= sigma * (1 - 1e-5) and (t == 1 or added[t - 2] < sigma * (1 + 1e-5))
    assert dtdm.start_for_noise(sched, 100, 0.5) == 100
    assert dtdm.start_for_noise(sched, 100, float("nan")) == 100


def test_auto_start_through_the_pipeline(tmp_path):
    """The shipped student with start="auto" on a clean and a noisy frame: the clean one starts
    lower (<= 10), the noisy one later; both render."""
    from diffraw_jax.inference import DiffRAWPipeline, camera

    pipe = DiffRAWPipeline.from_checkpoint("pretrained/distill-1", start="auto")
    sig, rng = flat_steps(64, 64, seed=2)
    starts = []
    for shot10, read10 in ((0.02, 0.1), (2.5, 4.0)):
        codes = (sig + np.sqrt(sig * shot10 / 957 + (read10 / 957) ** 2) * rng.standard_normal(sig.shape))
        mosaic = np.round(np.clip(raw.unpack(codes), 0, 1) * 957 + 63).astype(np.uint16)
        frame = camera.BayerFrame(mosaic=mosaic, cfa="RGGB", black_level=63.0, white_level=1020.0,
                                  wb_gains=np.ones(3, np.float32), ccm=np.eye(3, dtype=np.float32), flip=0,
                                  baseline_exposure=0.0)
        out = pipe.process(frame)
        assert out.shape == (128, 128, 3) and np.isfinite(out).all()
        starts.append(pipe.settings.start or pipe.settings.s)
        assert "auto start" in pipe.label or starts[-1] == 100
    assert starts[0] < starts[1] and starts[0] <= 10
    with pytest.raises(ValueError, match="step or 'auto'"):
        DiffRAWPipeline.from_checkpoint("pretrained/distill-1", start="sometimes")


def test_cli_start_option():
    """diffraw --start: a positive step or 'auto'; anything else is an argparse error (one line)."""
    import argparse

    from diffraw_jax.inference import cli

    assert cli._start("auto") == "auto" and cli._start("12") == 12
    for bad in ("0", "-3", "later"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli._start(bad)


def test_own_start_example_is_the_late_start_taught_exactly():
    """dtdm.own_start_example: m_t = sqrt(ab_t) x + sqrt(1-ab_t) eps whatever y is (the state a
    sampler started at t is in, Monte Carlo), one DTDM-DDIM step t -> 0 with its target lands
    on y exactly, and its weight is SNR_s / SNR_t from the schedule (an independent float64
    computation)."""
    import jax
    import jax.numpy as jnp

    sched = dtdm.make_schedule(2000, 1e-6, 1e-2, "linear")
    rng = np.random.default_rng(0)
    y = jnp.asarray(rng.uniform(-1, 1, (512, 4, 4, 3)), jnp.float32)
    x = jnp.asarray(np.clip(np.asarray(y) + 0.2 * rng.standard_normal(y.shape), -1, 1), jnp.float32)
    keys = jax.random.split(jax.random.key(1), y.shape[0])
    m, t, target, weight = jax.vmap(lambda a, b, k: dtdm.own_start_example(sched, a, b, k, 100))(y, x, keys)
    t = np.asarray(t)
    assert t.min() >= 1 and t.max() <= 100 and len(np.unique(t)) > 80
    ab = np.cumprod(1 - np.linspace(1e-6, 1e-2, 2000, dtype=np.float64))
    ab_t = ab[t - 1].reshape(-1, 1, 1, 1)
    z = (np.asarray(m, np.float64) - np.sqrt(ab_t) * np.asarray(x)) / np.sqrt(1 - ab_t)
    assert abs(z.mean()) < 0.02 and abs(z.var() - 1) < 0.03
    assert abs(np.corrcoef(z.ravel(), np.asarray(y).ravel())[0, 1]) < 0.02
    landed = dtdm.ddim_step(sched, m, target, x, jnp.asarray(t), jnp.zeros_like(jnp.asarray(t)), 100)
    np.testing.assert_allclose(np.asarray(landed), np.asarray(y), atol=2e-3)
    snr = lambda a: a / (1 - a)  # noqa: E731
    np.testing.assert_allclose(np.asarray(weight), snr(ab[99]) / snr(ab[t - 1]), rtol=1e-3)


def test_auto_start_settings_come_from_the_config_and_are_checked_once():
    """factory.auto_start: the shipped models' own (2 and 1, switch 0), an override wins, and a bad
    factor, a switch outside [0, s] or the auto start on a paper-condition model is a ValueError --
    through the pipeline too, naming the model."""
    from diffraw_jax.checkpoints import weights
    from diffraw_jax.inference import DiffRAWPipeline
    from diffraw_jax.models import factory

    teacher = weights.load_config("pretrained/demo")
    assert factory.auto_start(teacher) == (2.0, 0)
    assert factory.auto_start(weights.load_config("pretrained/distill-1")) == (1.0, 0)
    assert factory.auto_start(teacher, 3, 40) == (3.0, 40)
    for factor, switch, message in ((0, None, "start_noise_factor must be > 0"), (None, 101, "start_switch must be in"),
                                    (None, -1, "start_switch must be in")):
        with pytest.raises(ValueError, match=message):
            factory.auto_start(teacher, factor, switch)
    paper = weights.load_config("pretrained/paper-demo")
    assert factory.auto_start(paper, used=False) == (1.0, 0)
    with pytest.raises(ValueError, match="not a calibrated model"):
        factory.auto_start(paper)
    with pytest.raises(ValueError, match="pretrained/paper-demo: start 'auto'"):
        DiffRAWPipeline.from_checkpoint("pretrained/paper-demo", start="auto")
    with pytest.raises(ValueError, match="pretrained/demo: start_noise_factor must be > 0"):
        DiffRAWPipeline.from_checkpoint("pretrained/demo", start_noise_factor=-1)
    pipe = DiffRAWPipeline.from_checkpoint("pretrained/demo", start_noise_factor=3, start_switch=40)
    assert (pipe.auto_start, pipe.start_noise_factor, pipe.start_switch) == (True, 3.0, 40)

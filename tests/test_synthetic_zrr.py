"""diffraw_jax.data.synthetic_zrr (issue #21): the true calibration stored with each pair, checked by an
independent rendering; the scenes' natural power spectrum; the sensor model's ranges; determinism."""
import json

import numpy as np
import pytest

from diffraw_jax import isp_classic
from diffraw_jax.data import synthetic_zrr

CLEAN = dict(blur_sigma=0, shot=0, read=0, shading=0, warp=False)  # noise-free, blur-free, unshaded


def _planes(raw):
    """RGGB codes [H, W] -> normalised planes [H/2, W/2, 4] (R, Gr, Gb, B), black 63 / white 1020."""
    x = (raw.astype(np.float64) - 63.0) / (1020.0 - 63.0)
    return np.stack([x[0::2, 0::2], x[0::2, 1::2], x[1::2, 0::2], x[1::2, 1::2]], -1)


def _render(raw, wb_gains, ccm, ev):
    return np.asarray(isp_classic.process(_planes(raw) * 2.0**ev, wb_gains=np.asarray(wb_gains),
                                          ccm=np.asarray(ccm)), np.float64)


def _lowpass_psnr(a, b, k=16):
    """PSNR (dB, [0, 1] images) of k x k block means: colour and exposure, not demosaicking detail."""
    h, w = a.shape[0] // k * k, a.shape[1] // k * k
    a, b = (x[:h, :w].reshape(h // k, k, w // k, k, 3).mean((1, 3)) for x in (a, b))
    return -10 * np.log10(np.mean((a - b) ** 2))


def test_calibration_files_are_written_and_equal_to_the_truth(tmp_path):
    synthetic_zrr.generate(str(tmp_path), 3, 2, size=32, seed=5, workers=1, progress=False)
    for split, n in (("train", 3), ("test", 2)):
        for i in range(n):
            with open(tmp_path / split / "calibration" / f"{i}.json") as f:
                cal = json.load(f)
            assert sorted(cal) == ["baseline_exposure", "ccm", "wb_gains"]
            raw, dslr, truth = synthetic_zrr.make_example(5, split, i, 32)
            assert cal == truth
            # and the truth is what unprocess drew: replay make_example's draws
            rng = np.random.default_rng([5, synthetic_zrr.SPLIT_IDS[split], i])
            scene = synthetic_zrr.render_scene(rng, 32 + 16)
            raw2, info = synthetic_zrr.unprocess(scene, rng, margin=8)
            np.testing.assert_array_equal(raw2, raw)
            np.testing.assert_allclose(cal["wb_gains"], info["gains"], rtol=0, atol=0)
            np.testing.assert_allclose(cal["ccm"], info["ccm"], rtol=0, atol=0)
            assert cal["baseline_exposure"] == pytest.approx(-np.log2(info["exposure"]), abs=1e-12)
            np.testing.assert_allclose(np.sum(cal["ccm"], axis=1), 1.0, atol=1e-9)
            assert cal["wb_gains"][1] == 1.0


def test_classical_rendering_with_the_stored_calibration_matches_the_dslr():
    """An independent check that the calibration is true: the classical ISP with the stored
    white balance, matrix and 2**baseline_exposure renders the clean RAW as the DSLR image
    (low-passed: demosaicking the leaves' fine texture is not what is checked); a wrong
    calibration does not."""
    right, wrong_colour, wrong_ev = [], [], []
    for i in range(6):
        raw, dslr, cal = synthetic_zrr.make_example(3, "test", i, 192, **CLEAN)
        d = dslr / 255.0
        right.append(_lowpass_psnr(_render(raw, cal["wb_gains"], cal["ccm"], cal["baseline_exposure"]), d))
        wrong_colour.append(_lowpass_psnr(_render(raw, [2.0, 1.0, 1.7], synthetic_zrr.BASE_CCM,
                                                  cal["baseline_exposure"]), d))
        wrong_ev.append(_lowpass_psnr(_render(raw, cal["wb_gains"], cal["ccm"], cal["baseline_exposure"] + 0.3), d))
    right, wrong_colour, wrong_ev = map(np.array, (right, wrong_colour, wrong_ev))
    assert np.all(right > 33.0), right
    assert np.all(wrong_ev < right - 4.0), (right, wrong_ev)  # 0.3 EV off
    assert wrong_colour.mean() < right.mean() - 8.0, (right, wrong_colour)  # another camera's colour


def _spectrum_slope(y):
    """Slope of the log-log radially averaged power spectrum of y [N, N] (Hann-windowed),
    over frequencies 4/N .. 1/4 cycles per pixel."""
    n = y.shape[0]
    w = np.hanning(n)
    p = np.abs(np.fft.fft2((y - y.mean()) * w[:, None] * w[None, :])) ** 2
    f = np.hypot(np.fft.fftfreq(n)[:, None], np.fft.fftfreq(n)[None, :])
    bins = np.geomspace(4.0 / n, 0.25, 16)
    idx = np.digitize(f, bins)
    fm = [f[idx == k].mean() for k in range(1, len(bins))]
    pm = [p[idx == k].mean() for k in range(1, len(bins))]
    return np.polyfit(np.log(fm), np.log(pm), 1)[0]


def test_spectrum_slope_statistic():
    rng = np.random.default_rng(0)
    assert abs(_spectrum_slope(rng.standard_normal((128, 128)))) < 0.3  # white noise: flat
    assert _spectrum_slope(synthetic_zrr.fractal_noise(rng, 128, 2.0)) == pytest.approx(-2.0, abs=0.3)


def test_scenes_have_a_natural_power_spectrum():
    """Luma of the DSLR images: radially averaged power spectrum ~ 1/f^2..1/f^3 like natural
    images (median slope over 24 scenes between -3 and -1.8, most scenes between -3.5 and -1.5;
    shallow depth of field makes a few steeper, as in photographs)."""
    slopes = []
    for i in range(24):
        _, dslr = synthetic_zrr.make_pair(11, "train", i, 256)
        slopes.append(_spectrum_slope((dslr / 255.0) @ np.array([0.299, 0.587, 0.114])))
    slopes = np.array(slopes)
    assert np.mean((slopes > -3.5) & (slopes < -1.5)) >= 0.75, slopes
    assert -3.0 < np.median(slopes) < -1.8, slopes


def test_make_example_is_deterministic_and_make_pair_agrees():
    a = synthetic_zrr.make_example(2, "train", 4, 64)
    b = synthetic_zrr.make_example(2, "train", 4, 64)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]
    raw, dslr = synthetic_zrr.make_pair(2, "train", 4, 64)
    np.testing.assert_array_equal(raw, a[0])
    np.testing.assert_array_equal(dslr, a[1])
    for other in ((3, "train", 4), (2, "test", 4), (2, "train", 5)):
        assert not np.array_equal(synthetic_zrr.make_example(*other, 64)[0], a[0])
    # fixing sensor parameters keeps the scene (the DSLR image) and drops what is fixed
    clean = synthetic_zrr.make_example(2, "train", 4, 64, **CLEAN)
    np.testing.assert_array_equal(clean[1], a[1])
    with pytest.raises(ValueError, match="split"):
        synthetic_zrr.make_example(0, "val", 0, 64)
    with pytest.raises(ValueError, match="even"):
        synthetic_zrr.make_example(0, "train", 0, 63)


def test_sensor_model_spans_cameras_exposures_and_highlights():
    """Over many draws: gains from daylight to tungsten, dark and bright exposures, clipped
    highlights in some RAWs (and white in their DSLR images), real-camera-like matrices."""
    rng = np.random.default_rng(0)
    img = np.full((8, 8, 3), 0.5)
    infos = [synthetic_zrr.unprocess(img, rng, warp=False)[1] for _ in range(400)]
    r = np.array([x["gains"][0] for x in infos])
    b = np.array([x["gains"][2] for x in infos])
    ev = np.array([x["exposure"] for x in infos])
    assert r.min() < 1.4 and r.max() > 2.7 and b.min() < 1.3 and b.max() > 2.7
    dark = ev < synthetic_zrr.DARK_EXPOSURE[1]
    assert 0.05 < np.mean(dark) < 0.15 and np.mean(ev > 0.85) > 0.1
    assert ev.min() >= synthetic_zrr.DARK_EXPOSURE[0]
    share = np.mean([x["shading"] == 0 for x in infos])
    assert abs(share - synthetic_zrr.SHADING_NONE) < 0.08
    ccms = np.array([x["ccm"] for x in infos])
    np.testing.assert_allclose(ccms.sum(axis=2), 1.0, atol=1e-9)
    nearest = np.argmin(np.abs(ccms[:, None] - synthetic_zrr.CAMERA_CCMS[None]).max(axis=(2, 3)), axis=1)
    assert len(set(nearest.tolist())) == len(synthetic_zrr.CAMERA_CCMS)  # every base camera is drawn
    clipped = [np.mean(synthetic_zrr.make_pair(0, "train", i, 128)[0] >= 1020) for i in range(12)]
    assert sum(c > 0 for c in clipped) >= 2, clipped


def test_lens_shading_darkens_the_corners_of_the_raw_only():
    img = np.full((64, 64, 3), 0.6)
    kw = dict(ccm=np.eye(3), gains=[1.0, 1.0, 1.0], blur_sigma=0, exposure=0.8, shot=0, read=0, warp=False)
    flat, _ = synthetic_zrr.unprocess(img, np.random.default_rng(0), shading=0, **kw)
    shaded, info = synthetic_zrr.unprocess(img, np.random.default_rng(0), shading=0.3, **kw)
    assert info["shading"] == 0.3
    lin_flat, lin_shaded = flat.astype(float) - 63, shaded.astype(float) - 63
    assert np.ptp(lin_flat) <= 1  # a flat field stays flat without shading
    assert lin_shaded[31:33, 31:33].mean() == pytest.approx(lin_flat[31:33, 31:33].mean(), rel=0.01)
    assert lin_shaded[0, 0] / lin_flat[0, 0] == pytest.approx(0.7, abs=0.01)  # 30% corner fall-off


def test_aligned_generation_writes_unwarped_pairs(tmp_path):
    """``--aligned`` (calibrated models' training data): each RAW is make_example's with the
    misalignment warp off, so it is pixel-aligned with its DSLR image."""
    from PIL import Image

    synthetic_zrr.generate(str(tmp_path), 2, 1, size=64, seed=3, workers=1, progress=False, aligned=True)
    for split, i in (("train", 0), ("train", 1), ("test", 0)):
        raw, dslr, cal = synthetic_zrr.make_example(3, split, i, 64, warp=False)
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / split / "huawei_raw" / f"{i}.png")), raw)
        warped, _, _ = synthetic_zrr.make_example(3, split, i, 64)
        assert not np.array_equal(raw, warped)


def test_clean_sensor_noise_on_a_black_edge_gives_no_nan_codes():
    """The optics blur (FFT, the Gaussian cut at Nyquist: at sigma 0.6 px a sinc-like kernel) rings
    a few % below zero beside a bright edge; with a clean sensor
    (read noise 0.05 codes) shot * signal + read**2 went negative there, its sqrt NaN, and the
    uint16 cast wrote garbage codes."""
    import warnings

    scene = np.zeros((64, 64, 3))
    scene[:, 32:] = 1.0  # a white half beside a black half
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        raw, _ = synthetic_zrr.unprocess(scene, np.random.default_rng(0), ccm=np.eye(3), gains=(1.0, 1.0, 1.0),
                                         blur_sigma=0.6, exposure=0.9, shot=0.02, read=0.05, warp=False,
                                         shading=0.0)
    far = raw[:, 8:20]  # beyond the ringing (of the edge, and of its periodic wrap at the border)
    assert far.min() >= synthetic_zrr.BLACK_LEVEL - 1 and far.max() <= synthetic_zrr.BLACK_LEVEL + 1
    assert raw.min() >= synthetic_zrr.BLACK_LEVEL - 10  # the ringing itself: a few % of white, no garbage

"""The real-camera statistics of issue 21 (diffraw_jax.evaluation.metrics.real_camera): low-pass CIEDE2000
against scikit-image's independent Lab and CIEDE2000; the lattice statistic on 1/f noise with and
without a faint periodic grid."""
import numpy as np
import pytest

from diffraw_jax.evaluation.metrics import real_camera


def one_over_f_image(h=512, w=768, seed=0):
    """An sRGB [h, w, 3] image of 1/f (amplitude) noise, natural images' spectrum, in [0.05, 0.95]."""
    rng = np.random.default_rng(seed)
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    amp = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / max(h, w))
    chans = []
    for _ in range(3):
        spec = amp * np.exp(2j * np.pi * rng.uniform(size=(h, w)))
        x = np.real(np.fft.ifft2(spec))
        chans.append(x)
    x = np.stack(chans, -1)
    x = 0.6 * x + 0.4 * x.mean(-1, keepdims=True)  # correlated channels, like a photograph
    x = (x - x.min()) / (x.max() - x.min())
    return 0.05 + 0.9 * x


def grid(h, w, period, amplitude=1 / 255):
    """A faint lattice [h, w, 1]: cosines of ``period`` px along x and along y, each of ``amplitude``."""
    yy, xx = np.mgrid[0:h, 0:w]
    return amplitude * (np.cos(2 * np.pi * xx / period) + np.cos(2 * np.pi * yy / period))[..., None]


def test_lattice_statistic_sees_a_faint_16px_grid_and_only_that_period():
    img = one_over_f_image()
    base = real_camera.lattice_statistic(img)
    with16 = real_camera.lattice_statistic(img + grid(*img.shape[:2], 16))
    with12 = img + grid(*img.shape[:2], 12)
    assert base < 5, base
    assert with16 > 50, with16
    assert real_camera.lattice_statistic(with12) < 5  # a 12-px grid is not the 16-px statistic
    assert real_camera.lattice_statistic(with12, period=12) > 50
    # only vertical lines: the column profile carries it, the row profile does not
    yy, xx = np.mgrid[0:512, 0:768]
    vert = img + (1 / 255) * np.cos(2 * np.pi * xx / 16)[..., None]
    r = real_camera.lattice_ratios(vert)
    assert r["columns"] > 50 and r["rows"] < 5
    # a grey image works too, and a too-short profile is refused
    assert real_camera.lattice_statistic(img.mean(-1) + grid(512, 768, 16)[..., 0]) > 50
    with pytest.raises(ValueError, match="too short"):
        real_camera.lattice_statistic(img[:40, :40])


def test_periodic_peak_ratio_of_a_sinusoid_over_flat_noise():
    n = 768
    rng = np.random.default_rng(3)
    noise = rng.normal(size=n)
    t = np.arange(n)
    # expected power at bin 48 of a 0.5-amplitude sinusoid: (0.5 * n / 2)**2, over noise of power ~n per bin
    r = real_camera.periodic_peak_ratio(noise + 0.5 * np.sin(2 * np.pi * t / 16), 16)
    assert 10 < r < 200
    assert real_camera.periodic_peak_ratio(noise, 16) < 6
    assert real_camera.periodic_peak_ratio(np.ones(n), 16) == 0.0


def test_low_pass_color_difference_against_skimage():
    color_sk = pytest.importorskip("skimage.color")
    from scipy.ndimage import gaussian_filter

    img = one_over_f_image(96, 128, seed=1) * 0.8
    lin = np.where(img <= 0.04045, img / 12.92, ((img + 0.055) / 1.055) ** 2.4)
    # a cast (linear gains) and an exposure change of 0.5
    cast_lin = 0.5 * lin * np.array([0.8, 1.0, 1.3])
    cast = np.where(cast_lin <= 0.0031308, 12.92 * cast_lin, 1.055 * cast_lin ** (1 / 2.4) - 0.055)
    got = real_camera.low_pass_color_difference(cast, img, sigma=4)
    # independent: scipy blur, closed-form gain, scikit-image Lab and CIEDE2000
    lo = gaussian_filter(cast_lin, (4, 4, 0), mode="reflect", truncate=4.0)
    lr = gaussian_filter(lin, (4, 4, 0), mode="reflect", truncate=4.0)
    g = np.sum(lo * lr) / np.sum(lo * lo)
    assert got["gain"] == pytest.approx(g, rel=1e-9)
    from skimage.color.colorconv import xyz_from_rgb  # IEC 61966-2-1, D65

    to_lab = lambda lin_rgb: color_sk.xyz2lab(lin_rgb @ xyz_from_rgb.T)  # noqa: E731
    de = color_sk.deltaE_ciede2000(to_lab(g * lo), to_lab(lr))
    assert got["mean"] == pytest.approx(de.mean(), abs=1e-3)
    assert got["median"] == pytest.approx(np.median(de), abs=1e-3)
    assert got["p95"] == pytest.approx(np.percentile(de, 95), abs=1e-3)
    assert 3 < got["mean"] < 30  # a visible cast
    # exposure alone is taken out by the gain; identical images give 0
    dark = np.where(0.5 * lin <= 0.0031308, 12.92 * 0.5 * lin, 1.055 * (0.5 * lin) ** (1 / 2.4) - 0.055)
    d = real_camera.low_pass_color_difference(dark, img)
    assert d["mean"] < 1e-6 and d["gain"] == pytest.approx(2.0, rel=1e-9)
    assert real_camera.low_pass_color_difference(dark, img, match_exposure=False)["mean"] > 10
    assert real_camera.low_pass_color_difference(img, img)["p95"] == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        real_camera.low_pass_color_difference(img, img[1:])
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        real_camera.low_pass_color_difference(img[..., 0], img[..., 0])


# --------------------------------------------------------------------------- scripts/real_camera.py

def _load_script():
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "real_camera.py")
    spec = importlib.util.spec_from_file_location("real_camera_script", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_crop_box_keeps_the_cfa_phase_and_parse_crop_rejects_odd_sizes():
    rc_script = _load_script()
    assert rc_script.crop_box(2176, 4128, (768, 512)) == (832, 1680, 512, 768)
    top, left, h, w = rc_script.crop_box(203, 305, (160, 98))
    assert top % 2 == 0 and left % 2 == 0 and (h, w) == (98, 160) and top + h <= 203 and left + w <= 305
    assert rc_script.parse_crop("768x512") == (768, 512)
    for bad in ("768x511", "x", "-2x4"):
        with pytest.raises(ValueError):
            rc_script.parse_crop(bad)
    with pytest.raises(ValueError, match="larger than the mosaic"):
        rc_script.crop_box(100, 100, (102, 50))


def test_real_camera_script_on_a_crop_of_a_written_dng(tmp_path, capsys):
    """End to end on a pidng DNG with the shipped distill-1 (a 224x160 crop: seconds): the files,
    the crop's place, and LibRaw's numbers recomputed here from rawpy directly."""
    import json

    import rawpy
    from PIL import Image

    from diffraw_jax.data import synthetic_zrr
    from helpers import write_dng

    mosaic, _ = synthetic_zrr.make_pair(0, "test", 3, 256)
    dng = write_dng(tmp_path / "cam.dng", mosaic[:196, :256])
    rc_script = _load_script()
    out = tmp_path / "out"
    assert rc_script.main(["--input", str(dng), "--checkpoint", "pretrained/distill-1", "--crop", "224x160",
                           "--out", str(out), "--jpeg_width", "300", "--references"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["region"] == "centre crop 224x160 of the mosaic (row 18, column 16)"
    with rawpy.imread(str(dng)) as r:
        ref = r.postprocess(use_camera_wb=True, output_bps=16, no_auto_bright=True, gamma=(2.4, 12.92))[18:178, 16:240] / 65535.0
    sc = s["scores"]
    assert sc["lattice_libraw"] == pytest.approx(real_camera.lattice_statistic(ref), rel=1e-6)
    assert sc["lattice_ratio"] == pytest.approx(sc["lattice_diffraw"] / sc["lattice_libraw"])
    de = sc["color_delta_e2000"]
    assert 0 <= de["median"] <= de["p95"] and de["mean"] > 0 and de["gain"] > 0
    # the 100%-view rows: diffraw, c and LibRaw's DHT, the last recomputed here from rawpy
    assert set(sc["detail"]) == {"diffraw", "condition", "libraw_dht"}
    with rawpy.imread(str(dng)) as r:
        dht = r.postprocess(use_camera_wb=True, output_bps=16, no_auto_bright=True, gamma=(2.4, 12.92),
                            demosaic_algorithm=rawpy.DemosaicAlgorithm.DHT)[18:178, 16:240] / 65535.0
    want = real_camera.detail_statistics(dht, ref)
    for k in ("chroma_noise", "luma_noise", "detail_energy", "detail_correlation"):
        assert sc["detail"]["libraw_dht"][k] == pytest.approx(want[k], rel=1e-4), k
    assert s["wall_s"] > 0 and s["machine"]["cpu_count"] >= 1
    assert s["baseline_exposure"] == 0.0 and s["exposure_used"] == 0.0 and s["exp_shift"] == 1.0
    assert "from_checkpoint" in s["diffraw_command"] and "no_auto_bright=True" in s["libraw_command"]
    md = (out / "summary.md").read_text()
    assert f"{de['mean']:.2f} / {de['median']:.2f} / {de['p95']:.2f}" in md
    d = sc["detail"]["diffraw"]
    assert (f"| diffraw | {d['chroma_noise']:.2f} | {d['luma_noise']:.2f} | {d['detail_energy']:.2f} "
            f"| {d['detail_correlation']:.3f} |") in md and "| LibRaw DHT demosaic |" in md
    with Image.open(out / "side_by_side.jpg") as im:
        assert im.width <= 300 and im.width > 2 * im.height  # two 224x160 panels side by side, downscaled
    assert "colour dE2000 mean" in capsys.readouterr().out
    # a crop too small for the 16-px statistic ends in one line, exit 2, before any rendering
    assert rc_script.main(["--input", str(dng), "--checkpoint", "pretrained/distill-1", "--crop", "96x64",
                           "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "too short" in err[0]


def test_real_camera_script_whole_frame_of_a_dng_with_a_default_crop(tmp_path):
    """The whole-frame path with --references on a DNG whose DefaultCrop (origin (12, 8), 224x160
    of a 256x176 mosaic) diffraw applies: every rendering (diffraw, LibRaw AHD, c, LibRaw DHT)
    covers the crop, and the DHT row equals the statistics recomputed here from rawpy's DHT
    rendering cut to that crop."""
    import json

    import rawpy
    from pidng.core import Tag

    from diffraw_jax.data import synthetic_zrr
    from test_camera_files import _write

    mosaic, _ = synthetic_zrr.make_pair(0, "test", 3, 256)
    codes = (64 + mosaic[:176, :256].astype(np.float64) / 1023.0 * 3900).astype(np.uint16)
    dng = _write(tmp_path / "crop.dng", codes, neutral=(0.55, 1, 0.7),
                 extra=[(Tag.DefaultCropOrigin[0], Tag.DefaultCropOrigin[1], [12, 8]),
                        (Tag.DefaultCropSize[0], Tag.DefaultCropSize[1], [224, 160])])
    rc_script = _load_script()
    out = tmp_path / "out"
    assert rc_script.main(["--input", str(dng), "--checkpoint", "pretrained/distill-1", "--out", str(out),
                           "--jpeg_width", "300", "--references"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["region"] == "whole frame 224x160"
    with rawpy.imread(str(dng)) as r:
        kw = dict(use_camera_wb=True, output_bps=16, no_auto_bright=True, gamma=(2.4, 12.92), exp_shift=1.0,
                  exp_preserve_highlights=1.0)
        ref = r.postprocess(**kw)[8:168, 12:236] / 65535.0
        dht = r.postprocess(demosaic_algorithm=rawpy.DemosaicAlgorithm.DHT, **kw)[8:168, 12:236] / 65535.0
    want = real_camera.detail_statistics(dht, ref)
    got = s["scores"]["detail"]["libraw_dht"]
    for k in ("chroma_noise", "luma_noise", "detail_energy", "detail_correlation"):
        assert got[k] == pytest.approx(want[k], rel=1e-4), k


# ---- the 100%-view statistics of issue 28 (detail_statistics) ----------------------------------

def _flat_and_textured(seed=0, size=160, noise=0.004):
    """sRGB [size, size, 3]: a constant grey left half (the flat set lies there) and a fine
    coloured texture on the right half, plus white noise of std ``noise`` on every channel."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    base = np.full((size, size, 3), 0.5)
    tex = gaussian_filter(rng.standard_normal((size, size)), 1.0) * 0.8
    base[:, size // 2:] += tex[:, size // 2:, None] * np.array([1.0, 0.8, 0.6])
    base = np.clip(base, 0.05, 0.95)
    return base + noise * rng.standard_normal(base.shape), rng


def test_detail_statistics_of_identical_images_are_one():
    ref, _ = _flat_and_textured()
    d = real_camera.detail_statistics(ref, ref)
    assert (d["chroma_noise"], d["luma_noise"], d["detail_energy"]) == (1.0, 1.0, 1.0)
    assert d["detail_correlation"] == pytest.approx(1.0, abs=1e-12)
    assert d["shift"] == pytest.approx([0.0, 0.0], abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_added_noise_raises_the_noise_ratios_as_computed(seed):
    """Independent white noise of std 2 sigma0 on a reference carrying sigma0: every linear
    high-pass of it (L*, a*, b* are linear in small noise) has variance sigma0**2 + (2 sigma0)**2
    times the reference's, so both ratios are sqrt(1 + 4) = 2.236; detail stays (energy ~1 + the
    noise's small share in the band, correlation ~1)."""
    s0 = 0.004
    ref, rng = _flat_and_textured(seed, noise=s0)
    img = ref + 2 * s0 * rng.standard_normal(ref.shape)
    d = real_camera.detail_statistics(img, ref)
    assert d["luma_noise"] == pytest.approx(np.sqrt(5.0), rel=0.05)
    assert d["chroma_noise"] == pytest.approx(np.sqrt(5.0), rel=0.05)
    assert d["detail_energy"] == pytest.approx(1.0, abs=0.02) and d["detail_correlation"] > 0.99


def test_a_blur_lowers_detail_energy_and_keeps_correlation_and_noise_drops():
    """A Gaussian blur of sigma 1 px multiplies the band-pass (DoG 0.7/2.5 px) of a sigma-1
    texture by well under 1: energy < 0.7; the band-pass keeps its shape: correlation > 0.9; the
    noise high-pass falls too."""
    from scipy.ndimage import gaussian_filter

    ref, _ = _flat_and_textured()
    d = real_camera.detail_statistics(gaussian_filter(ref, (1.0, 1.0, 0)), ref)
    assert d["detail_energy"] < 0.7 and d["detail_correlation"] > 0.9
    assert d["luma_noise"] < 0.5 and d["chroma_noise"] < 0.5


def test_a_shifted_copy_is_registered():
    """np.roll by (3, -2) px: the shift is found (to 0.01 px) and the statistics are those of the
    identical image; without registration they are not (the detail decorrelates)."""
    ref, _ = _flat_and_textured()
    moved = np.roll(ref, (3, -2), axis=(0, 1))
    assert real_camera.estimate_shift(moved, ref) == pytest.approx((3.0, -2.0), abs=0.01)
    d = real_camera.detail_statistics(moved, ref)
    for k in ("chroma_noise", "luma_noise", "detail_energy", "detail_correlation"):
        assert d[k] == pytest.approx(1.0, abs=0.002), k
    assert real_camera.detail_statistics(moved, ref, register_images=False)["detail_correlation"] < 0.3


def test_tone_curves_take_out_exposure_and_gamma_but_not_noise():
    """A rendering that is the reference through 0.7 x**1.5 (darker, steeper) is matched back: the
    noise ratios come back to ~1 and the detail energy from ~0.55 (unmatched) to > 0.8 (the curve
    is fitted on sigma-4 blurs, which bend a little over this strong 1-px texture). The fitted curve
    is monotone and, on identical images, the identity (also beyond its end knots)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(2)
    ramp = np.linspace(0.15, 0.85, 160)[:, None, None] * np.ones((160, 160, 3))
    ramp[:, 80:] += gaussian_filter(rng.standard_normal((160, 160)), 1.0)[:, 80:, None] * 0.5
    ref = np.clip(ramp, 0.02, 0.98) + 0.004 * rng.standard_normal(ramp.shape)
    img = 0.7 * ref ** 1.5
    d = real_camera.detail_statistics(img, ref)
    assert d["luma_noise"] == pytest.approx(1.0, abs=0.08) and d["chroma_noise"] == pytest.approx(1.0, abs=0.08)
    assert d["detail_energy"] > 0.8 and d["detail_correlation"] > 0.98
    assert real_camera.detail_statistics(img, ref, match_tone=False)["detail_energy"] < 0.6
    curves = real_camera.fit_tone_curves(img, ref)
    assert all(np.all(np.diff(ky) >= 0) and np.all(np.diff(kx) > 0) for kx, ky in curves)
    x = np.linspace(-0.1, 1.1, 7)[:, None, None] * np.ones((1, 1, 3))
    same = real_camera.fit_tone_curves(ref, ref)
    np.testing.assert_allclose(real_camera.apply_tone_curves(x, same), x, atol=1e-12)
    with pytest.raises(ValueError, match="differ"):
        real_camera.detail_statistics(ref, ref[:100])

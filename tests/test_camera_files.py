"""Camera files as the DNG specification (1.7.1) and LibRaw read them (issue #30, reading half).

Phone-like DNGs are written here with pidng (``_write``: every tag pidng knows, plus the ones
it does not, e.g. IlluminantData, as extra IFD entries), and the expected pictures come from
elsewhere than the code under test: an independent port of the specification's chapter 6
colour maths written in this file (``_spec_ccm``: McCamy's CCT, the spec's interpolation and
Bradford, no code of ``diffraw_jax.color``), literals computed by hand from the spec's
formulas, and LibRaw (rawpy) where it implements the same rule (its exposure roll-off,
its white-balance normalisation, its DefaultCrop reading).
"""
import struct
import warnings

import numpy as np
import pytest

from diffraw_jax import calibration, color
from diffraw_jax.inference import camera, dng_tags

rawpy = pytest.importorskip("rawpy")
pytest.importorskip("pidng")

# A real camera profile (the Blackmagic Pocket 4K's, rounded): ColorMatrix1 under Standard light
# A, ColorMatrix2 under D65 (XYZ -> camera), and its ForwardMatrix2 (white-balanced camera -> D50).
CM_A = np.array([[0.9495, -0.4550, 0.0283], [-0.3570, 1.3227, 0.1950], [-0.0463, 0.1549, 0.7350]])
CM_D65 = np.array([[0.6880, -0.2475, -0.0487], [-0.3926, 1.2011, 0.1579], [-0.0892, 0.2006, 0.5815]])
FM_D65 = np.array([[0.6144, 0.3486, 0.0011], [0.2037, 0.9522, -0.1559], [0.0196, -0.2208, 1.0266]])
XY_A = (0.44757, 0.40745)
XY_D50 = (0.3457, 0.3585)
SRGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169],
                        [0.019334, 0.119193, 0.950227]])
BRADFORD = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]])
CFA = {"RGGB": [0, 1, 1, 2]}


# --------------------------------------------------------------------------- writing DNGs

def _rat(values):
    from fractions import Fraction

    return [[f.numerator, f.denominator] for f in (Fraction(float(v)).limit_denominator(10**6)
                                                   for v in np.ravel(values))]


def _write(path, mosaic, *, black=64, white=4000, neutral=None, cm1=CM_D65, ill1=21, cm2=None, ill2=None,
           fm1=None, fm2=None, cc1=None, cc2=None, analog=None, white_xy=None, exposure=None,
           exposure_offset=None, extra=()):
    """A DNG 1.4 of the RGGB mosaic uint16 [H, W] with the given calibration tags, written by
    pidng; ``extra``: (tag id, pidng Type, values) entries it has no name for."""
    from pidng.core import RAW2DNG, DNGTags, Tag
    from pidng.defs import DNGVersion, PhotometricInterpretation
    from pidng.dng import Type

    mosaic = np.ascontiguousarray(mosaic, np.uint16)
    h, w = mosaic.shape
    t = DNGTags()
    for tag, v in ((Tag.ImageWidth, w), (Tag.ImageLength, h), (Tag.TileWidth, w), (Tag.TileLength, h),
                   (Tag.Orientation, 1), (Tag.BitsPerSample, 16), (Tag.BlackLevelRepeatDim, [2, 2]),
                   (Tag.BlackLevel, [black] * 4), (Tag.WhiteLevel, white), (Tag.Make, "test"),
                   (Tag.Model, "phone"), (Tag.DNGVersion, DNGVersion.V1_4),
                   (Tag.DNGBackwardVersion, DNGVersion.V1_2),
                   (Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array),
                   (Tag.SamplesPerPixel, 1), (Tag.CFARepeatPatternDim, [2, 2]), (Tag.CFAPattern, CFA["RGGB"]),
                   (Tag.CalibrationIlluminant1, ill1), (Tag.ColorMatrix1, _rat(cm1))):
        t.set(tag, v)
    for tag, v in ((Tag.AsShotNeutral, neutral), (Tag.ColorMatrix2, cm2), (Tag.ForwardMatrix1, fm1),
                   (Tag.ForwardMatrix2, fm2), (Tag.CameraCalibration1, cc1), (Tag.CameraCalibration2, cc2),
                   (Tag.AnalogBalance, analog), (Tag.BaselineExposure, exposure),
                   (Tag.BaselineExposureOffset, exposure_offset)):
        if v is not None:
            t.set(tag, _rat(v))
    if ill2 is not None:
        t.set(Tag.CalibrationIlluminant2, ill2)
    if white_xy is not None:
        t.set((50729, Type.Rational), _rat(white_xy))
    for tag_id, typ, v in extra:
        t.set((tag_id, typ), v)
    conv = RAW2DNG()
    conv.options(t, path=str(path.parent), compress=False)
    conv.convert(mosaic, filename=path.stem)
    return str(path)


def _mosaic(cam, black=64, white=4000):
    """Camera RGB [H, W, 3] in [0, 1] (before white balance) -> RGGB codes uint16 [H, W]."""
    m = np.empty(cam.shape[:2])
    m[0::2, 0::2], m[0::2, 1::2] = cam[0::2, 0::2, 0], cam[0::2, 1::2, 1]
    m[1::2, 0::2], m[1::2, 1::2] = cam[1::2, 0::2, 1], cam[1::2, 1::2, 2]
    return np.round(black + np.clip(m, 0, 1) * (white - black)).astype(np.uint16)


def _flat(value, h=32, w=48):
    return np.broadcast_to(np.asarray(value, np.float64), (h, w, 3)).copy()


# --------------------------------------------------------------------------- the spec's colour (independent port)

def _xyz(xy):
    x, y = xy
    return np.array([x / y, 1.0, (1 - x - y) / y])


def _xy(xyz):
    return xyz[:2] / xyz.sum()


def _mccamy(xy):
    """McCamy's (1992) CCT of a CIE xy: n = (x - 0.3320) / (0.1858 - y)."""
    n = (xy[0] - 0.3320) / (0.1858 - xy[1])
    return 449 * n ** 3 + 3525 * n ** 2 + 6823.3 * n + 5520.33


def _bradford(src_xy, dst_xy):
    a, b = BRADFORD @ _xyz(src_xy), BRADFORD @ _xyz(dst_xy)
    return np.linalg.inv(BRADFORD) @ np.diag(b / a) @ BRADFORD


def _spec_ccm(neutral, cm1, t1, cm2=None, t2=None, fm1=None, fm2=None, cc1=None, cc2=None, ab=None):
    """The spec's camera -> linear sRGB (D65) of white-balanced camera RGB, rows summed to 1, and
    the scene white's xy (DNG 1.7.1 chapter 6, written from the text): each ColorMatrix scaled
    so D50's largest camera value is 1; XYZtoCamera = AB CC CM per calibration, interpolated in
    1/CCT (McCamy here); the white found by iterating from D50; camera -> XYZ(D50) through the
    ForwardMatrix (whichever exists, interpolated when both do) or Bradford(white -> D50) and
    the inverse matrix; then Bradford(D50 -> D65) and XYZ -> sRGB."""
    eye = np.eye(3)
    ab = eye if ab is None else np.diag(ab)
    norm = lambda m: m / (m @ _xyz(XY_D50)).max()  # noqa: E731
    m1 = ab @ (eye if cc1 is None else cc1) @ norm(cm1)
    m2 = None if cm2 is None else ab @ (eye if cc2 is None else cc2) @ norm(cm2)

    def g_of(xy):
        if m2 is None:
            return 1.0
        t = _mccamy(xy)
        return float(np.clip((1 / t - 1 / t2) / (1 / t1 - 1 / t2), 0, 1))

    w = np.array(XY_D50)
    for _ in range(100):
        g = g_of(w)
        m = m1 if m2 is None else g * m1 + (1 - g) * m2
        w = _xy(np.linalg.solve(m, neutral))
    g = g_of(w)
    m = m1 if m2 is None else g * m1 + (1 - g) * m2
    fnorm = [None if f is None else np.diag(_xyz(XY_D50) / f.sum(1)) @ f for f in (fm1, fm2)]
    if fnorm[0] is not None or fnorm[1] is not None:
        if fnorm[0] is not None and fnorm[1] is not None:
            fm = g * fnorm[0] + (1 - g) * fnorm[1]
        else:
            fm = fnorm[0] if fnorm[0] is not None else fnorm[1]
        c1, c2 = (eye if cc1 is None else cc1), (eye if cc2 is None else cc2)
        cc = c1 if m2 is None else g * c1 + (1 - g) * c2
        abcc_inv = np.linalg.inv(ab @ cc)
        to_pcs = fm @ np.diag(1 / (abcc_inv @ neutral)) @ abcc_inv
    else:
        to_pcs = _bradford(w, XY_D50) @ np.linalg.inv(m)
    out = np.linalg.inv(SRGB_TO_XYZ) @ _bradford(XY_D50, _xy(SRGB_TO_XYZ.sum(1))) @ to_pcs @ np.diag(neutral)
    return out / out.sum(1, keepdims=True), w


def _neutral_of(xy, cm1, t1, cm2=None, t2=None):
    """The camera's response (G = 1) to the white xy under the spec's interpolated matrix."""
    norm = lambda m: m / (m @ _xyz(XY_D50)).max()  # noqa: E731
    m = norm(cm1)
    if cm2 is not None:
        t = _mccamy(xy)
        g = float(np.clip((1 / t - 1 / t2) / (1 / t1 - 1 / t2), 0, 1))
        m = g * norm(cm1) + (1 - g) * norm(cm2)
    n = m @ _xyz(xy)
    return n / n[1]


def _chart():
    """24 camera-space colours (white-balanced, in [0.05, 0.8]), float64 [24, 3]."""
    return np.random.default_rng(7).uniform(0.05, 0.8, (24, 3))


def _de(ccm_a, ccm_b):
    """Mean CIEDE2000 of the chart through two camera -> linear sRGB matrices."""
    lab = [color.xyz_to_lab(np.clip(_chart() @ np.asarray(m, np.float64).T, 0, None) @ SRGB_TO_XYZ.T)
           for m in (ccm_a, ccm_b)]
    return float(np.mean(color.delta_e_2000(lab[0], lab[1])))


# --------------------------------------------------------------------------- colour by the spec

def test_forward_matrix2_without_forward_matrix1_is_used(tmp_path):
    """Both ForwardMatrix tags are optional: a two-calibration profile with ForwardMatrix2 only
    maps camera to D50 through it (the spec; the SDK's FindXYZtoCamera). At a 2900 K white."""
    xy = (0.4440, 0.4060)  # ~2900 K, near the Planckian locus
    n = _neutral_of(xy, CM_A, 2850, CM_D65, 6500)
    path = _write(tmp_path / "fm2.dng", _mosaic(_flat(0.2 * n)), neutral=n, cm1=CM_A, ill1=17, cm2=CM_D65,
                  ill2=21, fm2=FM_D65)
    frame = camera.read_camera_raw(path)
    want, w = _spec_ccm(n, CM_A, 2850, CM_D65, 6500, fm2=FM_D65)
    assert abs(_mccamy(w) - 2900) < 60
    assert _de(frame.ccm, want) <= 1.0, _de(frame.ccm, want)
    no_fm, _ = _spec_ccm(n, CM_A, 2850, CM_D65, 6500)  # what ignoring it gives: a visible error
    assert _de(no_fm, want) > 1.5
    assert "ForwardMatrix2" in frame.color_source


def test_illuminant_255_takes_its_temperature_from_illuminant_data(tmp_path):
    """CalibrationIlluminant1 = 255 ("other") with IlluminantData1 (DNG 1.6: type 0, x and y as
    RATIONALs) of a 3500 K light; the expected colour interpolates with that temperature."""
    from pidng.dng import Type

    light = (0.4053, 0.3907)  # 3500 K on the Planckian locus
    t_light = _mccamy(light)
    assert 3450 < t_light < 3550
    data = list(struct.pack("<HIIII", 0, 405300, 1000000, 390700, 1000000))
    xy = (0.3457, 0.3585)  # ~5000 K scene (D50)
    n = _neutral_of(xy, CM_A, t_light, CM_D65, 6500)
    path = _write(tmp_path / "i255.dng", _mosaic(_flat(0.2 * n)), neutral=n, cm1=CM_A, ill1=255, cm2=CM_D65,
                  ill2=21, extra=[(52533, Type.Undefined, data)])
    tags = dng_tags.read_dng_color_tags(path)
    np.testing.assert_allclose(tags.illuminant_xy1, light, atol=1e-9)
    frame = camera.read_camera_raw(path)
    want, _ = _spec_ccm(n, CM_A, t_light, CM_D65, 6500)
    assert _de(frame.ccm, want) <= 1.0
    unknown, _ = _spec_ccm(n, CM_A, 2850)  # 255 read as unknown: the first calibration alone
    assert _de(unknown, want) > 1.0


def test_analog_balance_camera_calibration_and_as_shot_white_xy(tmp_path):
    """AnalogBalance and CameraCalibration1/2 enter XYZtoCamera = AB CC CM; the scene white given
    as AsShotWhiteXY (no AsShotNeutral) at 3200 K. Expected: the port above."""
    ab = np.array([1.1, 1.0, 0.9])
    cc1, cc2 = np.diag([1.05, 1.0, 0.97]), np.diag([0.96, 1.0, 1.04])
    xy = (0.4234, 0.3990)  # ~3200 K
    norm = lambda m: m / (m @ _xyz(XY_D50)).max()  # noqa: E731
    t = _mccamy(xy)
    g = (1 / t - 1 / 6500) / (1 / 2850 - 1 / 6500)
    m = g * np.diag(ab) @ cc1 @ norm(CM_A) + (1 - g) * np.diag(ab) @ cc2 @ norm(CM_D65)
    n = m @ _xyz(xy)
    n = n / n[1]
    path = _write(tmp_path / "abcc.dng", _mosaic(_flat(0.2 * n)), cm1=CM_A, ill1=17, cm2=CM_D65, ill2=21,
                  cc1=cc1, cc2=cc2, analog=ab, white_xy=xy)
    frame = camera.read_camera_raw(path)
    want, w = _spec_ccm(n, CM_A, 2850, CM_D65, 6500, cc1=cc1, cc2=cc2, ab=ab)
    np.testing.assert_allclose(w, xy, atol=2e-4)
    assert _de(frame.ccm, want) <= 1.0
    np.testing.assert_allclose(frame.wb_gains, n.max() / n, rtol=2e-3)
    assert "AsShotWhiteXY" in frame.color_source


def test_white_balance_is_normalised_on_the_largest_channel(tmp_path):
    """A blown lamp under magenta light (AsShotNeutral 1.15 / 1 / 1.10): the gains are
    max(neutral) / neutral (the SDK's camera white normalised on its largest entry, LibRaw's
    multipliers on their smallest), so the lamp, clipped in every channel, stays neutral;
    LibRaw renders the same file's lamp neutral too."""
    n = np.array([1.15, 1.0, 1.10])
    cam = _flat(0.25 * n, 32, 48)
    cam[8:24, 16:32] = 1.0  # the lamp: every channel at the white level
    path = _write(tmp_path / "lamp.dng", _mosaic(cam), neutral=n, cm1=CM_D65, ill1=21, exposure=0.0)
    frame = camera.read_camera_raw(path)
    np.testing.assert_allclose(frame.wb_gains, [1.0, 1.15, 1.15 / 1.10], rtol=1e-4)
    planes = camera.prepare_frame(frame).planes

    def lamp(gains):  # the lamp's balanced planes (R, mean G, B) through the colour matrix, sRGB
        bal = np.asarray(calibration.balanced_planes(planes, gains, 0.0, rolloff=True))[6:10, 10:14]
        cam = np.array([bal[..., 0].mean(), bal[..., 1:3].mean(), bal[..., 3].mean()])
        return color.linear_to_srgb(np.clip(frame.ccm.astype(np.float64) @ cam, 0, 1))

    chroma = lambda rgb: float(np.hypot(*color.srgb_to_lab(rgb)[1:]))  # noqa: E731
    assert chroma(lamp(frame.wb_gains)) < 1.0
    assert chroma(lamp(1.0 / n)) > 5.0  # the old rule, normalised on green: tinted
    with rawpy.imread(path) as r:
        ref = r.postprocess(use_camera_wb=True, no_auto_bright=True, highlight_mode=rawpy.HighlightMode.Clip,
                            gamma=(1, 1), output_bps=16, user_flip=0).astype(np.float64) / 65535
    assert chroma(color.linear_to_srgb(ref[12:20, 20:28].reshape(-1, 3).mean(0))) < 1.0


# --------------------------------------------------------------------------- exposure

def _libraw_rolloff(x, ev):
    """LibRaw's exp_bef(shift = 2**ev, smooth = 1) in units of the white level (written from
    LibRaw's formula): linear below x1 = 1 / shift**2, then A x**(1/3) + B x + C reaching 1 at 1."""
    s = 2.0 ** ev
    x1, y1 = 1 / s ** 2, 1 / s
    sq3x = (x1 * x1) ** (1 / 3)
    b = (1 - y1 + s * (3 * x1 - 3 * sq3x)) / (1 + 2 * x1 - 3 * sq3x)
    a = (s - b) * 3 * (x1 * x1) ** (1 / 3)
    c = 1 - a - b
    x = np.asarray(x, np.float64)
    return np.where(x < x1, x * s, a * np.cbrt(x) + b * x + c)


@pytest.mark.parametrize("ev", [1.0, 2.65])
def test_highlight_rolloff_is_libraws_exposure_with_highlights_preserved(tmp_path, ev):
    """Our roll-off against LibRaw itself: a grey ramp DNG (WB 1, raw colour, linear 16-bit)
    through rawpy's postprocess with exp_shift = 2**EV and exp_preserve_highlights = 1."""
    levels = np.linspace(0.02, 1.0, 12)
    cam = np.repeat(np.repeat(levels[None, :, None], 8, axis=1), 3, axis=2)
    cam = np.repeat(cam, 32, axis=0)  # [32, 96, 3]: 12 flat patches 8 px wide (LibRaw wants >= 22 rows)
    path = _write(tmp_path / "ramp.dng", _mosaic(cam), neutral=(1, 1, 1), cm1=np.eye(3), ill1=21)
    with rawpy.imread(path) as r:
        ref = r.postprocess(use_camera_wb=True, no_auto_bright=True, exp_shift=2.0 ** ev,
                            exp_preserve_highlights=1.0, output_color=rawpy.ColorSpace.raw, gamma=(1, 1),
                            output_bps=16, user_flip=0, highlight_mode=rawpy.HighlightMode.Clip)
    libraw = ref[8:24].reshape(16, 12, 8, 3)[:, :, 2:6].mean(axis=(0, 2, 3)) / 65535
    ours = np.asarray(calibration.highlight_rolloff(levels, ev))
    np.testing.assert_allclose(ours, _libraw_rolloff(levels, ev), atol=2e-4)
    np.testing.assert_allclose(ours, libraw, atol=0.01)
    low = levels < 2.0 ** (-2 * ev)  # below the knee: exactly the spec's 2**EV
    np.testing.assert_allclose(ours[low], levels[low] * 2.0 ** ev, rtol=1e-5)
    assert ours[-1] == pytest.approx(1.0, abs=1e-5) and np.all(np.diff(ours) > 0)


def test_rolloff_follows_libraws_formula_from_small_to_large_exposures():
    """float32 on device against LibRaw's formula in float64, from just above the linear range
    (``ROLLOFF_MIN_EV``) to +5 EV; below it and for EV <= 0 a plain clipped gain."""
    x = np.linspace(0.0, 1.0, 1001)
    for ev in (calibration.ROLLOFF_MIN_EV, 0.3, 5.0):
        np.testing.assert_allclose(np.asarray(calibration.highlight_rolloff(x, ev)), _libraw_rolloff(x, ev), atol=2e-5)
    for ev in (-1.0, 0.0, 0.03):
        np.testing.assert_allclose(np.asarray(calibration.highlight_rolloff(x, ev)), np.clip(x * 2 ** ev, 0, 1), atol=1e-6)


def test_saturated_pixels_do_not_veto_baseline_exposure(tmp_path):
    """A file asking +1 EV (BaselineExposure 0.75 + BaselineExposureOffset 0.25) renders its
    greys at 2x the 0 EV file's (within 5%), with or without 5% of the frame blown."""
    n = np.array([0.5, 1.0, 0.6])
    grey = _flat(0.1 * n, 64, 64)
    blown = grey.copy()
    blown[:8, :26] = 1.0  # 208 / 4096 = 5% of the pixels clipped in every channel
    means = {}
    for name, cam, kw in (("plain0", grey, dict(exposure=0.0)), ("plain1", grey, dict(exposure=0.75, exposure_offset=0.25)),
                          ("blown1", blown, dict(exposure=0.75, exposure_offset=0.25))):
        frame = camera.read_camera_raw(_write(tmp_path / f"{name}.dng", _mosaic(cam), neutral=n, **kw))
        bal = np.asarray(calibration.balanced_planes(camera.prepare_frame(frame).planes, frame.wb_gains,
                                                     frame.baseline_exposure, rolloff=True))
        means[name] = bal[16:, :].mean(axis=(0, 1))
        assert frame.baseline_exposure == (0.0 if name == "plain0" else 1.0)
    np.testing.assert_allclose(means["plain1"], 2 * means["plain0"], rtol=0.05)
    np.testing.assert_allclose(means["blown1"], 2 * means["plain0"], rtol=0.05)
    np.testing.assert_allclose(means["plain0"], 0.1, rtol=0.02)  # 0.1 n, white-balanced: 0.1


# --------------------------------------------------------------------------- opcodes, crop

def _gain_map_bytes(top, left, bottom, right, pitch, gains, spacing, origin=(0.0, 0.0)):
    pv, ph = gains.shape
    head = struct.pack(">10I", top, left, bottom, right, 0, 1, pitch, pitch, pv, ph)
    head += struct.pack(">4d", spacing[0], spacing[1], origin[0], origin[1]) + struct.pack(">I", 1)
    body = head + gains.astype(">f4").tobytes()
    return struct.pack(">IIII", 9, 0x01030000, 0, len(body)) + body


def _vignette(h, w, strength):
    """A radial fall-off 1 - strength r**2 (r = 1 at the corners) at pixel centres [h, w]."""
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    r2 = ((yy / h - 0.5) ** 2 + (xx / w - 0.5) ** 2) / 0.5
    return 1 - strength * r2


def test_gain_map_flattens_a_shaded_flat_field(tmp_path):
    """OpcodeList2 with one GainMap per Bayer site (pitch 2), 9x13 samples of 1 / fall-off:
    the normalised planes of a shaded flat field come out flat within 10% (corners 0.51 / 0.60 /
    0.67 of the centre before); an unknown opcode in OpcodeList1 is named in one warning."""
    from pidng.dng import Type

    h, w = 64, 96
    strength = {0: 0.49, 1: 0.40, 2: 0.40, 3: 0.33}  # R, Gr, Gb, B
    level = np.array([0.6, 0.5, 0.5, 0.45])
    mosaic = np.empty((h, w))
    ops = b""
    pv, ph = 9, 13
    for k, (i, j) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        fall = _vignette(h, w, strength[k])
        mosaic[i::2, j::2] = level[k] * fall[i::2, j::2]
        sv, sh = np.linspace(0, 1, pv), np.linspace(0, 1, ph)
        r2 = ((sv[:, None] - 0.5) ** 2 + (sh[None, :] - 0.5) ** 2) / 0.5
        ops += _gain_map_bytes(i, j, h, w, 2, 1 / (1 - strength[k] * r2), (1 / (pv - 1), 1 / (ph - 1)))
    list2 = list(struct.pack(">I", 4) + ops)
    list1 = list(struct.pack(">I", 1) + struct.pack(">IIII", 4, 0x01030000, 1, 8) + struct.pack(">II", 0, 0))
    codes = np.round(64 + mosaic * (4000 - 64)).astype(np.uint16)
    path = _write(tmp_path / "gm.dng", codes, neutral=(0.6, 1, 0.7),
                  extra=[(51009, Type.Undefined, list2), (51008, Type.Undefined, list1)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = camera.read_camera_raw(path)
    said = [str(x.message) for x in caught]
    assert len(said) == 1 and "FixBadPixelsConstant (OpcodeList1)" in said[0], said
    planes = camera.prepare_frame(frame).planes
    raw_planes = camera.prepare_frame(camera.BayerFrame(mosaic=codes, black_level=64, white_level=4000)).planes
    corner = raw_planes[:3, :3].mean((0, 1)) / raw_planes[14:18, 22:26].mean((0, 1))
    np.testing.assert_allclose(corner, [0.55, 0.63, 0.63, 0.69], atol=0.04)  # before: shaded
    ratio = planes / level
    assert np.all(np.abs(ratio - 1) < 0.10), (ratio.min(), ratio.max())
    np.testing.assert_allclose(planes.mean((0, 1)), level, rtol=0.02)


def test_gain_map_interpolates_bilinearly_between_samples():
    """A 2x2 map over a 4x4 image, by hand (DNG spec: relative positions (row + 0.5) / H, map
    index (pos - origin) / spacing, bilinear, edge samples beyond): gains 1, 2 / 3, 4."""
    gm = dng_tags.GainMap(0, 0, 4, 4, 0, 1, 1, 1, 1.0, 1.0, 0.0, 0.0,
                          np.array([[[1.0], [2.0]], [[3.0], [4.0]]], np.float32))
    out = dng_tags.apply_gain_map(np.ones((4, 4)), gm)
    pos = (np.arange(4) + 0.5) / 4  # 0.125, 0.375, 0.625, 0.875
    want = (1 + pos[None, :]) * (1 - pos[:, None]) + (3 + pos[None, :]) * pos[:, None]
    np.testing.assert_allclose(out, want, atol=1e-6)
    assert out[0, 0] == pytest.approx(1 + 0.125 + 2 * 0.125)


def test_default_crop_sets_the_output_size_as_libraw_reads_it(tmp_path):
    """DefaultCropOrigin (12, 8) and DefaultCropSize 360x240 of a 384x256 mosaic: the output is
    360x240, the mosaic's pixels from row 8, column 12 (where LibRaw's sizes put the crop too);
    the networks still see the whole frame."""
    from pidng.core import Tag

    rng = np.random.default_rng(0)
    codes = rng.integers(100, 3000, (256, 384)).astype(np.uint16)
    path = _write(tmp_path / "crop.dng", codes, neutral=(0.5, 1, 0.6),
                  extra=[(Tag.DefaultCropOrigin[0], Tag.DefaultCropOrigin[1], [12, 8]),
                         (Tag.DefaultCropSize[0], Tag.DefaultCropSize[1], [360, 240])])
    frame = camera.read_camera_raw(path)
    assert frame.crop == (8, 12, 240, 360)
    with rawpy.imread(path) as r:
        s = r.sizes
        assert (s.crop_top_margin, s.crop_left_margin, s.crop_height, s.crop_width) == frame.crop
    prepared = camera.prepare_frame(frame)
    assert prepared.planes.shape == (128, 192, 4)
    out = camera.finish(np.arange(256 * 384, dtype=np.float32).reshape(256, 384, 1), prepared)
    assert out.shape == (240, 360, 1) and out[0, 0, 0] == 8 * 384 + 12


# --------------------------------------------------------------------------- robustness

def test_a_malformed_private_tag_is_skipped_alone(tmp_path):
    """A private tag whose count runs past the end of the file: only it is skipped; the colour
    and BaselineExposure are the same as the plain file's."""
    from pidng.dng import Type

    n = np.array([0.5, 1.0, 0.6])
    plain = _write(tmp_path / "plain.dng", _mosaic(_flat(0.2 * n)), neutral=n, exposure=0.5)
    odd = _write(tmp_path / "odd.dng", _mosaic(_flat(0.2 * n)), neutral=n, exposure=0.5,
                 extra=[(50000, Type.Undefined, list(b"private data"))])
    data = bytearray(open(odd, "rb").read())
    (first,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, first)
    for i in range(count):
        pos = first + 2 + 12 * i
        if struct.unpack_from("<H", data, pos)[0] == 50000:
            struct.pack_into("<I", data, pos + 4, 0x7FFFFFF0)  # its count: far past the end
            break
    else:
        raise AssertionError("the private tag was not written")
    open(odd, "wb").write(bytes(data))
    a, b = camera.read_camera_raw(plain), camera.read_camera_raw(odd)
    np.testing.assert_array_equal(a.ccm, b.ccm)
    np.testing.assert_array_equal(a.wb_gains, b.wb_gains)
    assert b.baseline_exposure == 0.5 and b.color_source == a.color_source


def test_a_malformed_opcode_list_is_named_not_fatal(tmp_path):
    from pidng.dng import Type

    n = np.array([0.5, 1.0, 0.6])
    bad = list(struct.pack(">I", 1) + struct.pack(">IIII", 9, 0, 0, 12) + b"\0" * 12)  # a GainMap cut short
    path = _write(tmp_path / "badop.dng", _mosaic(_flat(0.2 * n)), neutral=n,
                  extra=[(51009, Type.Undefined, bad)])
    with pytest.warns(UserWarning, match=r"GainMap \(OpcodeList2\)"):
        frame = camera.read_camera_raw(path)
    assert frame.color_source.startswith("DNG ColorMatrix1")


# --------------------------------------------------------------------------- LibRaw's rules (non-DNG)

class _FakeRaw:
    """The rawpy attributes ``camera_color`` reads, for LibRaw cases no DNG can produce."""

    color_desc = b"RGBG"

    def __init__(self, cam_mul, day_mul, cmatrix, cam_xyz):
        self.camera_whitebalance = cam_mul
        self.daylight_whitebalance = day_mul
        self.color_matrix = np.asarray(cmatrix, np.float64)
        self.rgb_xyz_matrix = np.asarray(cam_xyz, np.float64)


CANON_CAM_XYZ = np.vstack([np.array([[6722, -635, -963], [-4287, 12460, 2028], [-908, 2162, 5668]]) / 1e4,
                           np.zeros((1, 3))])


def test_libraw_rules_for_other_raws():
    # Multipliers divided by the smallest (scale_colors): (2.0, 1.0, 1.5, 1.0) -> (2, 1, 1.5).
    cm = np.array([[1.6, -0.4, -0.1, -0.3], [-0.2, 0.7, -0.3, 0.7], [0.0, -0.3, 1.1, -0.2]])
    wb, ccm = camera.camera_color(_FakeRaw([2.0, 1.0, 1.5, 1.0], [2.1, 1, 1.4, 0], cm, CANON_CAM_XYZ))
    np.testing.assert_allclose(wb, [2.0, 1.0, 1.5])
    # cmatrix taken (first entry 1.6 > 0.125), both greens folded into G, rows renormalised to 1:
    # row 0: (1.6, -0.4 - 0.3, -0.1) / 0.8
    np.testing.assert_allclose(ccm[0], [2.0, -0.875, -0.125], atol=1e-6)
    np.testing.assert_allclose(ccm.sum(1), 1.0, atol=1e-6)
    # A magenta-lit as-shot: G's multiplier the largest -> gains normalised on the smallest (R).
    wb, _ = camera.camera_color(_FakeRaw([0.8, 1.0, 0.9, 1.0], [2, 1, 1.5, 0], cm, CANON_CAM_XYZ))
    np.testing.assert_allclose(wb, [1.0, 1.25, 1.125])
    # cmatrix refused (first entry <= 0.125): dcraw's matrix from LibRaw's table (rgb_xyz_matrix).
    weak = cm.copy()
    weak[0, 0] = 0.1
    _, ccm = camera.camera_color(_FakeRaw([2, 1, 1.5, 1], [2, 1, 1.5, 0], weak, CANON_CAM_XYZ))
    cam_rgb = CANON_CAM_XYZ[:3] @ SRGB_TO_XYZ
    np.testing.assert_allclose(ccm, np.linalg.inv(cam_rgb / cam_rgb.sum(1, keepdims=True)), atol=1e-5)


def test_libraw_guesses_are_marked_and_warned(tmp_path):
    """No usable as-shot multipliers (one is 0): LibRaw's daylight ones, a guess -> FALLBACK; no
    matrix at all: identity (LibRaw's raw colour) -> FALLBACK; the pipeline warns for both."""
    frame = camera.BayerFrame(mosaic=np.full((8, 8), 500, np.uint16))
    raw = _FakeRaw([0.0, 1.0, 1.5, 1.0], [2.1, 1.0, 1.4, 0.0], np.zeros((3, 4)), np.zeros((4, 3)))
    wb, ccm = camera.camera_color(raw)
    np.testing.assert_allclose(wb, [2.1, 1.0, 1.4])
    assert ccm is None
    source = camera._libraw_color_source(raw, wb, ccm)
    _, m, line = camera._fallback_color(frame, wb, ccm, source)
    assert line.startswith(camera.FALLBACK) and "daylight" in line and "identity" in line
    np.testing.assert_array_equal(m, np.eye(3))
    cm = np.array([[1.6, -0.4, -0.1, -0.3], [-0.2, 0.7, -0.3, 0.7], [0.0, -0.3, 1.1, -0.2]])
    raw2 = _FakeRaw([0.0, 1.0, 1.5, 1.0], [2.1, 1.0, 1.4, 0.0], cm, CANON_CAM_XYZ)
    assert camera._libraw_color_source(raw2, *camera.camera_color(raw2)).startswith(camera.FALLBACK)


def test_libraw_white_level_follows_adjust_maximum():
    """LibRaw's adjust_maximum (threshold 0.75), by hand: the data's maximum above each site's
    black, against 0.75 of the white level above black (4095 - 100 = 3995)."""
    black = np.array([100.0, 100, 100, 40])  # B's black lower: its codes count from 40
    m = np.full((4, 4), 1000, np.uint16)
    m[1, 1] = 3600  # a B site of RGGB: 3560 above its black, > 0.75 * 3995
    np.testing.assert_array_equal(camera.libraw_white_level(m, black, 4095, "RGGB"), black + 3560)
    m[1, 1] = 2100  # 2060 < 0.75 * 3995: the white level stays
    np.testing.assert_array_equal(camera.libraw_white_level(m, black, 4095, "RGGB"), [4095] * 4)
    m[1, 1] = 1000
    m[0, 0] = 3600  # an R site: 3500 above black
    np.testing.assert_array_equal(camera.libraw_white_level(m, black, 4095, "RGGB"), black + 3500)


# --------------------------------------------------------------------------- one picture from every entry point

MODEL = "pretrained/distill-1"


@pytest.fixture(scope="module")
def pipe():
    import os

    from diffraw_jax.inference import DiffRAWPipeline

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return DiffRAWPipeline.from_checkpoint(os.path.join(root, MODEL), tile=None)


def test_every_entry_point_gives_the_same_picture_and_guessed_colour_warns(tmp_path, pipe, capsys):
    """from_file, from_rawpy given the path, and the CLI: the same pixels (the CLI's within its
    16-bit rounding) for a DNG with BaselineExposure, a DefaultCrop and a GainMap; from_rawpy
    without the path warns that the file's own tags could not be read. A Bayer PNG has no
    calibration (gray world, identity): the API warns (UserWarning), the CLI prints one stderr
    line with "warning"; a frame given its white balance and matrix does not warn."""
    import os

    import cv2
    from PIL import Image
    from pidng.core import Tag
    from pidng.dng import Type

    from diffraw_jax.inference import cli

    n = np.array([0.5, 1.0, 0.6])
    rng = np.random.default_rng(1)
    cam = np.clip(_flat(0.3 * n, 48, 64) * rng.uniform(0.6, 1.4, (48, 64, 1)), 0, 1)
    gm = _gain_map_bytes(0, 0, 48, 64, 1, np.array([[1.2, 1.0], [1.0, 1.3]]), (1.0, 1.0))
    path = _write(tmp_path / "phone.dng", _mosaic(cam), neutral=n, exposure=0.5,
                  extra=[(Tag.DefaultCropOrigin[0], Tag.DefaultCropOrigin[1], [4, 2]),
                         (Tag.DefaultCropSize[0], Tag.DefaultCropSize[1], [56, 44]),
                         (51009, Type.Undefined, list(struct.pack(">I", 1) + gm))])
    a = pipe.from_file(path)
    with rawpy.imread(path) as r:
        b = pipe.from_rawpy(r, path)
        with pytest.warns(UserWarning, match="own DNG tags"):
            c = pipe.from_rawpy(r)
    assert a.shape == (44, 56, 3)
    np.testing.assert_array_equal(a, b)
    assert c.shape == (48, 64, 3)  # LibRaw's reading: no crop (and no GainMap, no exposure)

    mosaic = (63 + rng.uniform(0.1, 0.5, (48, 64)) * 957).astype(np.uint16)
    with pytest.warns(UserWarning, match="colour guessed"):
        pipe(mosaic)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe(mosaic, wb_gains=[2.0, 1.0, 1.5], ccm=np.eye(3))
    Image.fromarray(mosaic).save(tmp_path / "bayer.png")

    capsys.readouterr()
    out = tmp_path / "out"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert cli.main(["--checkpoint", os.path.join(root, MODEL), "--input", path, str(tmp_path / "bayer.png"),
                     "--output", str(out), "--bits16", "--quiet", "--tile", "0"]) == 0
    png = cv2.imread(str(out / "phone.png"), cv2.IMREAD_UNCHANGED)[..., ::-1]
    np.testing.assert_array_equal(png, np.round(np.clip(a.astype(np.float64), 0, 1) * 65535).astype(np.uint16))
    err = capsys.readouterr().err
    said = [ln for ln in err.splitlines() if "warning" in ln.lower()]
    assert len(said) == 1 and "colour guessed" in said[0] and "bayer.png" in said[0], err

"""A camera's colour and exposure from its DNG tags (issue #21 items 1 and 2), on DNGs written
by pidng (``dng_writer.write_dng``) and read back by our tag reader and by LibRaw (rawpy).

The DNG SDK's colour maths (``color.dng_camera_to_srgb``) are checked against LibRaw's
``rgb_cam`` where the two agree by construction (a scene white equal to the D65 calibration's
white), and against derivations written here (McCamy's CCT, Bradford) where LibRaw does not
interpolate (it takes the D65 ColorMatrix).
"""
import struct

import numpy as np
import pytest

from diffraw_jax import color
from diffraw_jax.data import dng_writer, synthetic_zrr
from diffraw_jax.inference import camera, dng_tags

rawpy = pytest.importorskip("rawpy")
pytest.importorskip("pidng")

# ColorMatrix1 (Standard light A) and ColorMatrix2 (D65) of a real camera (a Blackmagic Pocket
# 4K DNG, rounded): XYZ -> camera RGB.
CM_A = np.array([[0.9495, -0.4550, 0.0283], [-0.3570, 1.3227, 0.1950], [-0.0463, 0.1549, 0.7350]])
CM_D65 = np.array([[0.6880, -0.2475, -0.0487], [-0.3926, 1.2011, 0.1579], [-0.0892, 0.2006, 0.5815]])
XY_A = (0.44757, 0.40745)      # CIE illuminant A
XY_D50 = (0.34567, 0.35850)
XY_SRGB_D65 = color.XYZ_FROM_SRGB.sum(1)[:2] / color.XYZ_FROM_SRGB.sum()
BRADFORD = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]])


def _xyz(xy):
    x, y = xy
    return np.array([x / y, 1.0, (1 - x - y) / y])


def _normalised(cm):
    """The DNG SDK's scale of a ColorMatrix: D50's largest camera value is 1."""
    return cm / (cm @ _xyz((0.3457, 0.3585))).max()


def _neutral(cm, xy):
    """The camera's response (G = 1) to a white of chromaticity xy under the XYZ -> camera cm."""
    n = cm @ _xyz(xy)
    return n / n[1]


def _rownorm(m):
    return m / m.sum(axis=1, keepdims=True)


def _mosaic(cam, black=64, white=4000):
    """Camera RGB [H, W, 3] in [0, 1] (before white balance) -> RGGB codes uint16 [H, W]."""
    m = np.empty(cam.shape[:2])
    m[0::2, 0::2], m[0::2, 1::2] = cam[0::2, 0::2, 0], cam[0::2, 1::2, 1]
    m[1::2, 0::2], m[1::2, 1::2] = cam[1::2, 0::2, 1], cam[1::2, 1::2, 2]
    return np.round(black + m * (white - black)).astype(np.uint16)


def _scene(neutral, h=64, w=96, level=0.2, seed=0):
    """A smooth colourful camera-RGB scene [h, w, 3] whose average is near the white ``neutral``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([0.6 + 0.4 * np.sin(5 * xx + k) * np.cos(4 * yy - k) for k in range(3)], -1)
    return np.clip(level * base * np.asarray(neutral) + rng.normal(0, 0.002, (h, w, 3)), 0, 1)


def _write(path, neutral, **kw):
    return dng_writer.write_dng(str(path), _mosaic(_scene(neutral)), black=64, white=4000,
                                neutral=neutral, **kw)


def _libraw_ccm(path):
    with rawpy.imread(str(path)) as r:
        return camera.camera_color(r)


# --------------------------------------------------------------------------- white balance

def test_as_shot_neutral_gives_libraws_camera_white_balance(tmp_path):
    neutral = (0.4533, 1.0, 0.53)
    path = _write(tmp_path / "wb.dng", neutral, color_matrix1=CM_D65)
    frame = camera.read_camera_raw(path)
    with rawpy.imread(path) as r:
        mul = np.asarray(r.camera_whitebalance)
        desc = r.color_desc.decode()
    want = [mul[desc.index(c)] / mul[desc.index("G")] for c in "RGB"]
    np.testing.assert_allclose(frame.wb_gains, want, rtol=1e-5)
    np.testing.assert_allclose(frame.wb_gains, [1 / 0.4533, 1.0, 1 / 0.53], rtol=1e-5)
    assert frame.color_source.startswith("DNG ColorMatrix1 + AsShotNeutral")


# --------------------------------------------------------------------------- colour matrix

@pytest.mark.parametrize("second", [False, True], ids=["ColorMatrix1", "ColorMatrix1==2"])
def test_one_color_matrix_gives_libraws_rgb_cam(tmp_path, second):
    # A scene white equal to the camera's D65 white: the DNG SDK's matrix (no chromatic
    # adaptation needed) is dcraw's/LibRaw's inv(rownorm(CM @ XYZ_FROM_SRGB)) for the white-
    # balanced camera; both greens' columns of LibRaw's [3, 4] matrix fold into G.
    neutral = _neutral(CM_D65, XY_SRGB_D65)
    kw = dict(color_matrix1=CM_D65, illuminant1=21)
    if second:
        kw.update(color_matrix2=CM_D65, illuminant2=17)
    path = _write(tmp_path / "cm.dng", neutral, **kw)
    frame = camera.read_camera_raw(path)
    wb, ccm_libraw = _libraw_ccm(path)
    np.testing.assert_allclose(frame.ccm, ccm_libraw, atol=1e-3)
    np.testing.assert_allclose(frame.wb_gains, wb, rtol=1e-4)
    np.testing.assert_allclose(frame.ccm.sum(1), 1.0, atol=1e-5)
    tags = dng_tags.read_dng_color_tags(path)
    np.testing.assert_allclose(tags.color_matrix1, CM_D65, atol=1e-6)
    assert tags.calibration_illuminant1 == 21 and (tags.calibration_illuminant2 == 17) == second


def test_two_color_matrices_interpolate_by_inverse_colour_temperature(tmp_path):
    cm_a, cm_d65 = _normalised(CM_A), _normalised(CM_D65)
    kw = dict(color_matrix1=CM_A, illuminant1=17, color_matrix2=CM_D65, illuminant2=21)

    def read(name, neutral):
        path = _write(tmp_path / name, neutral, **kw)
        tags = dng_tags.read_dng_color_tags(path)
        c = color.dng_camera_to_srgb(tags.color_matrix1, tags.as_shot_neutral, color_matrix2=tags.color_matrix2,
                                     illuminant1=tags.calibration_illuminant1,
                                     illuminant2=tags.calibration_illuminant2)
        frame = camera.read_camera_raw(path)
        return path, frame, c

    # A D65 white (CCT 6502 K >= 6500 K): all weight on ColorMatrix2, no adaptation; LibRaw,
    # which always takes the D65 matrix, agrees.
    n = _neutral(cm_d65, XY_SRGB_D65)
    path, frame, c = read("d65.dng", n)
    assert c.weight1 == 0.0 and abs(c.cct - 6502) < 3
    np.testing.assert_allclose(c.white_xy, XY_SRGB_D65, atol=1e-6)
    want = _rownorm(np.linalg.inv(color.XYZ_FROM_SRGB) @ np.linalg.inv(cm_d65) @ np.diag(n))
    np.testing.assert_allclose(frame.ccm, want, atol=1e-5)
    np.testing.assert_allclose(frame.ccm, _libraw_ccm(path)[1], atol=1e-3)
    assert "ColorMatrix1/2" in frame.color_source and "0.00 of the first" in frame.color_source

    # An illuminant-A white (CCT 2856 K, just above A's 2850 K): (1/2856 - 1/6500) /
    # (1/2850 - 1/6500) = 0.996 of the weight on ColorMatrix1.
    _, _, c = read("a.dng", _neutral(cm_a, XY_A))
    assert 0.99 < c.weight1 < 1.0 and abs(c.cct - 2856) < 5
    np.testing.assert_allclose(c.white_xy, XY_A, atol=2e-4)

    # A D50 white, in between: by hand, McCamy's CCT of D50 and the inverse-CCT weight g; the
    # camera's neutral for D50 under g CM_A + (1 - g) CM_D65; then the matrix is
    # XYZ->sRGB . Bradford(D50 -> D65) . inverse(CM) . diag(neutral), rows normalised.
    nx = (XY_D50[0] - 0.3320) / (0.1858 - XY_D50[1])
    t = 449 * nx ** 3 + 3525 * nx ** 2 + 6823.3 * nx + 5520.33
    g = (1 / t - 1 / 6500) / (1 / 2850 - 1 / 6500)
    assert 4990 < t < 5010 and 0.23 < g < 0.24
    cm = g * cm_a + (1 - g) * cm_d65
    n = _neutral(cm, XY_D50)
    _, frame, c = read("d50.dng", n)
    assert abs(c.weight1 - g) < 1e-3 and abs(c.cct - t) < 5
    np.testing.assert_allclose(c.white_xy, XY_D50, atol=2e-5)
    lms50, lms65 = BRADFORD @ _xyz(XY_D50), BRADFORD @ color.XYZ_FROM_SRGB.sum(1)
    adapt = np.linalg.inv(BRADFORD) @ np.diag(lms65 / lms50) @ BRADFORD
    want = _rownorm(np.linalg.inv(color.XYZ_FROM_SRGB) @ adapt @ np.linalg.inv(cm) @ np.diag(n))
    np.testing.assert_allclose(frame.ccm, want, atol=1e-3)
    # Not LibRaw's (D65 matrix, white balance in camera space): the difference is real.
    assert np.abs(frame.ccm - _libraw_ccm(_write(tmp_path / "x.dng", n, **kw))[1]).max() > 0.01


def test_forward_matrix_maps_white_balanced_camera_to_d50(tmp_path):
    # With ForwardMatrix1 (white-balanced camera -> XYZ D50) the matrix is XYZ->sRGB .
    # Bradford(D50 -> D65) . FM', whatever the scene white, where FM' is the file's matrix with
    # its rows scaled so that camera white maps to D50 exactly (the spec's normalisation; the
    # file's own matrix is written unnormalised, so the scaling shows). A 3200 K white.
    fm = np.array([[0.6144, 0.3486, 0.0011], [0.2037, 0.9522, -0.1559], [0.0196, -0.2208, 1.0266]]) * 1.1
    fm[2] *= 0.9
    n = _neutral(_normalised(CM_D65), (0.4234, 0.3990))
    path = _write(tmp_path / "fm.dng", n, color_matrix1=CM_D65, forward_matrix1=fm)
    frame = camera.read_camera_raw(path)
    lms50, lms65 = BRADFORD @ _xyz((0.3457, 0.3585)), BRADFORD @ color.XYZ_FROM_SRGB.sum(1)
    adapt = np.linalg.inv(BRADFORD) @ np.diag(lms65 / lms50) @ BRADFORD
    fm_d50 = np.diag(_xyz((0.3457, 0.3585)) / fm.sum(1)) @ fm
    want = _rownorm(np.linalg.inv(color.XYZ_FROM_SRGB) @ adapt @ fm_d50)
    np.testing.assert_allclose(frame.ccm, want, atol=1e-4)
    unnormalised = _rownorm(np.linalg.inv(color.XYZ_FROM_SRGB) @ adapt @ fm)
    assert np.abs(unnormalised - want).max() > 0.02  # the normalisation matters here
    assert "ForwardMatrix1" in frame.color_source


# --------------------------------------------------------------------------- exposure

@pytest.mark.parametrize("ev", [1.0, -0.75, 2.65412, 0.0])
def test_baseline_exposure_is_read_back_exactly(tmp_path, ev):
    path = _write(tmp_path / "be.dng", (0.5, 1.0, 0.6), baseline_exposure=ev)
    assert dng_tags.read_dng_color_tags(path).baseline_exposure == ev
    assert camera.read_camera_raw(path).baseline_exposure == ev
    none = _write(tmp_path / "none.dng", (0.5, 1.0, 0.6))
    assert dng_tags.read_dng_color_tags(none).baseline_exposure is None
    assert camera.read_camera_raw(none).baseline_exposure == 0.0


@pytest.mark.parametrize("ev", [0.0, 1.0])
def test_exposure_matches_libraw_with_baseline_exposure_applied(tmp_path, ev):
    # The converter default we match: LibRaw with the camera's white balance, no auto-brightening
    # and the DNG's BaselineExposure applied as its linear exposure shift 2**EV (what the DNG spec
    # asks; LibRaw itself ignores the tag), linear 16-bit output. Our normalised planes, white-
    # balanced, through the colour matrix and times 2**baseline_exposure, have its mean.
    neutral = _neutral(CM_D65, XY_SRGB_D65)
    path = _write(tmp_path / "exp.dng", neutral, color_matrix1=CM_D65, baseline_exposure=ev)
    frame = camera.read_camera_raw(path)
    planes = camera.prepare_frame(frame).planes.astype(np.float64)
    cam = np.stack([planes[..., 0], planes[..., 1:3].mean(-1), planes[..., 3]], -1)
    ours = (cam * frame.wb_gains) @ frame.ccm.T * 2.0 ** frame.baseline_exposure
    with rawpy.imread(path) as r:
        ref = r.postprocess(use_camera_wb=True, no_auto_bright=True, exp_shift=2.0 ** ev, gamma=(1, 1),
                            output_bps=16, user_flip=0).astype(np.float64) / 65535
    assert ref.max() < 0.999  # nothing clipped: means compare
    np.testing.assert_allclose(ours.mean((0, 1)), ref.mean((0, 1)), rtol=0.03)
    assert 0.1 < ref.mean() * 2.0 ** -ev < 0.3


# --------------------------------------------------------------------------- round trip

def test_synthetic_pair_written_with_its_calibration_reads_it_back(tmp_path):
    rng = np.random.default_rng(3)
    scene = rng.uniform(0.05, 0.95, (32, 48, 3))
    ccm, gains, exposure = synthetic_zrr.random_ccm(rng), np.array([2.1, 1.0, 1.7]), 0.62
    raw, info = synthetic_zrr.unprocess(scene, rng, ccm=ccm, gains=gains, exposure=exposure, warp=False)
    path = dng_writer.write_dng(str(tmp_path / "pair.dng"), raw,
                                **dng_writer.calibration_tags(info["ccm"], info["gains"], info["exposure"]))
    frame = camera.read_camera_raw(path)
    np.testing.assert_allclose(frame.wb_gains, gains, rtol=1e-5)
    np.testing.assert_allclose(frame.ccm, ccm, atol=1e-3)
    assert abs(frame.baseline_exposure - -np.log2(exposure)) < 1e-6
    assert "ForwardMatrix1" in frame.color_source
    # ColorMatrix alone (the ForwardMatrix left out) gives the same calibration.
    tags = dng_tags.read_dng_color_tags(path)
    c = color.dng_camera_to_srgb(tags.color_matrix1, tags.as_shot_neutral, illuminant1=21)
    np.testing.assert_allclose(c.ccm, ccm, atol=1e-3)
    np.testing.assert_allclose(c.white_xy, XY_SRGB_D65, atol=1e-5)


def test_dng_writer_command_writes_the_true_calibration(tmp_path):
    assert dng_writer.main(["--out", str(tmp_path), "--height", "32", "--width", "48", "--seed", "4"]) == 0
    _, _, info = dng_writer._pair_with_info(4, 1000, 48)
    frame = camera.read_camera_raw(str(tmp_path / "synthetic_0.dng"))
    np.testing.assert_allclose(frame.wb_gains, info["gains"], rtol=1e-5)
    np.testing.assert_allclose(frame.ccm, info["ccm"], atol=1e-3)
    assert abs(frame.baseline_exposure + np.log2(info["exposure"])) < 1e-6


# --------------------------------------------------------------------------- bad input

def test_dng_without_colour_metadata_falls_back_and_says_so(tmp_path):
    neutral = (0.5, 1.0, 0.25)
    path = _write(tmp_path / "bare.dng", neutral, no_color=True)
    tags = dng_tags.read_dng_color_tags(path)
    assert tags.is_dng and not tags.has_color and tags.color_matrix1 is None and tags.as_shot_neutral is None
    frame = camera.read_camera_raw(path)
    assert frame.color_source == ("fallback: the DNG has no ColorMatrix and no AsShotNeutral: gray-world "
                                  "white balance and an identity colour matrix (camera RGB as sRGB)")
    np.testing.assert_array_equal(frame.ccm, np.eye(3))
    m = (_mosaic(_scene(neutral)).astype(np.float64) - 64) / (4000 - 64)
    r, g, b = m[0::2, 0::2].mean(), (m[0::2, 1::2].mean() + m[1::2, 0::2].mean()) / 2, m[1::2, 1::2].mean()
    np.testing.assert_allclose(frame.wb_gains, [g / r, 1.0, g / b], rtol=1e-4)
    np.testing.assert_allclose(frame.wb_gains, [2.0, 1.0, 4.0], rtol=0.1)  # the scene averages the neutral


def test_non_bayer_dngs_end_in_one_clear_line(tmp_path):
    xtrans = [1, 1, 0, 1, 1, 2, 1, 1, 2, 1, 1, 0, 2, 0, 1, 0, 2, 1,
              1, 1, 2, 1, 1, 0, 1, 1, 0, 1, 1, 2, 0, 2, 1, 2, 0, 1]
    files = {"X-Trans": dict(data=np.full((36, 48), 500, np.uint16), cfa_dim=(6, 6), cfa_codes=xtrans),
             "stacked": dict(data=np.full((32, 48, 3), 500, np.uint16), linear=True),
             "monochrome": dict(data=np.full((32, 48), 500, np.uint16), monochrome=True)}
    for word, kw in files.items():
        path = dng_writer.write_dng(str(tmp_path / f"{word}.dng"), kw.pop("data"), **kw)
        with pytest.raises(ValueError) as e:
            camera.read_camera_raw(path)
        msg = str(e.value)
        assert word in msg and "\n" not in msg, msg


# --------------------------------------------------------------------------- the tag reader

def _tiff(endian, ifd0, sub):
    """A minimal classic TIFF written by hand: IFD0 with the given (tag, type, values) entries
    and a SubIFDs entry pointing at a second IFD with ``sub``'s entries."""
    e = "<" if endian == "II" else ">"
    codes = {3: "H", 4: "I", 5: "II", 10: "ii", 1: "B"}
    blobs, out = [], bytearray(endian.encode() + struct.pack(e + "H", 42) + struct.pack(e + "I", 8))

    def ifd_size(entries):
        return 2 + 12 * len(entries) + 4

    ifd0 = list(ifd0) + [(330, 4, [0])]  # patched below
    sub_at = 8 + ifd_size(ifd0)
    data_at = sub_at + ifd_size(sub)
    ifd0[-1] = (330, 4, [sub_at])

    def write_ifd(entries):
        nonlocal data_at
        b = bytearray(struct.pack(e + "H", len(entries)))
        for tag, typ, vals in sorted(entries):
            flat = [x for v in vals for x in (v if isinstance(v, tuple) else (v,))]
            payload = struct.pack(e + codes[typ][0] * len(flat), *flat)
            count = len(vals)
            if len(payload) <= 4:
                b += struct.pack(e + "HHI", tag, typ, count) + payload.ljust(4, b"\0")
            else:
                b += struct.pack(e + "HHII", tag, typ, count, data_at)
                blobs.append(payload)
                data_at += len(payload)
        return b + struct.pack(e + "I", 0)

    out += write_ifd(ifd0) + write_ifd(sub)
    return bytes(out + b"".join(blobs))


@pytest.mark.parametrize("endian", ["II", "MM"])
def test_tag_reader_reads_both_byte_orders_and_sub_ifds(tmp_path, endian):
    cm = [(9495, 10000), (-4550, 10000), (283, 10000), (-3570, 10000), (13227, 10000), (1950, 10000),
          (-463, 10000), (1549, 10000), (7350, 10000)]
    ifd0 = [(50706, 1, [1, 4, 0, 0]), (50721, 10, cm), (50778, 3, [17]),
            (50728, 5, [(4533, 10000), (1, 1), (53, 100)])]
    sub = [(50730, 10, [(-3, 4)]), (50721, 10, [(1, 1)] * 9)]  # IFD0's ColorMatrix1 wins
    path = tmp_path / f"{endian}.dng"
    path.write_bytes(_tiff(endian, ifd0, sub))
    t = dng_tags.read_dng_color_tags(str(path))
    assert t.dng_version == (1, 4, 0, 0) and t.calibration_illuminant1 == 17
    np.testing.assert_array_equal(t.color_matrix1, CM_A)
    np.testing.assert_array_equal(t.as_shot_neutral, [0.4533, 1.0, 0.53])
    assert t.baseline_exposure == -0.75 and t.color_matrix2 is None and t.forward_matrix1 is None
    with pytest.raises(ValueError, match="not a TIFF"):
        (tmp_path / "x.dng").write_bytes(b"not a raw file" * 10)
        dng_tags.read_dng_color_tags(str(tmp_path / "x.dng"))
    # Cut inside IFD0's values: the entries still in the file are read, the others skipped.
    (tmp_path / "t.dng").write_bytes(path.read_bytes()[:80])
    cut = dng_tags.read_dng_color_tags(str(tmp_path / "t.dng"))
    assert cut.dng_version == (1, 4, 0, 0) and cut.calibration_illuminant1 == 17 and cut.color_matrix1 is None
    with pytest.raises(ValueError, match="beyond the end"):  # no IFD0 at all
        (tmp_path / "t2.dng").write_bytes(path.read_bytes()[:9])
        dng_tags.read_dng_color_tags(str(tmp_path / "t2.dng"))

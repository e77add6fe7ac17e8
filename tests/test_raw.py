"""Tests for diffraw_jax.raw: CFA packing, crops, orders, normalisation, DNG I/O."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from diffraw_jax import raw as R

PATTERNS = ["RGGB", "BGGR", "GRBG", "GBRG"]
# Expected (top, left) crop per pattern, written out independently of the module.
OFFSETS = {"RGGB": (0, 0), "GRBG": (0, 1), "GBRG": (1, 0), "BGGR": (1, 1)}
CHAN = {"R": 0, "G": 1, "B": 2}


def _mosaic_np(scene, pattern, r0, c0, H, W):
    """Sample scene[r0:r0+H, c0:c0+W] with the given CFA pattern (plain numpy)."""
    out = np.empty((H, W), scene.dtype)
    for y in range(H):
        for x in range(W):
            colour = pattern[(y % 2) * 2 + (x % 2)]
            out[y, x] = scene[r0 + y, c0 + x, CHAN[colour]]
    return out


# ----------------------------------------------------------------------------- packing


@pytest.mark.parametrize("pattern", PATTERNS)
def test_pack_roundtrip_uint16(pattern):
    rng = np.random.default_rng(0)
    H, W = 12, 16
    raw = rng.integers(0, 2 ** 16, size=(2, 3, H, W), dtype=np.uint16)
    top, left = OFFSETS[pattern]
    box = R.crop_box(pattern, H, W)
    assert box == (top, left, H - top, W - left)

    planes = R.pack(raw, pattern)
    assert planes.dtype == np.uint16
    assert planes.shape == (2, 3, (H - 2 * top) // 2, (W - 2 * left) // 2, 4)
    # Plane pixel (i, j, k) is raw[top + 2i + k//2, left + 2j + k%2].
    i, j, k = 1, 2, 3
    assert planes[0, 1, i, j, k] == raw[0, 1, top + 2 * i + k // 2, left + 2 * j + k % 2]

    # unpack gives back the cropped (RGGB) region exactly
    np.testing.assert_array_equal(R.unpack(planes), raw[..., top:H - top, left:W - left])
    # unpack_frame restores the original layout, fill outside the crop
    frame = R.unpack_frame(planes, pattern, H, W, fill_value=7)
    assert frame.dtype == np.uint16 and frame.shape == raw.shape
    mask = np.zeros((H, W), bool)
    mask[top:H - top, left:W - left] = True
    np.testing.assert_array_equal(frame[..., mask], raw[..., mask])
    assert np.all(frame[..., ~mask] == 7)
    if pattern == "RGGB":
        np.testing.assert_array_equal(frame, raw)

    # the same through jax (and under jit), still exact uint16
    jplanes = jax.jit(lambda r: R.pack(r, pattern))(jnp.asarray(raw))
    assert jplanes.dtype == jnp.uint16
    np.testing.assert_array_equal(np.asarray(jplanes), planes)
    jframe = jax.jit(lambda p: R.unpack_frame(p, pattern, H, W, fill_value=7))(jplanes)
    np.testing.assert_array_equal(np.asarray(jframe), frame)


def test_same_scene_in_all_patterns_gives_same_planes():
    rng = np.random.default_rng(1)
    H, W = 10, 14
    scene = rng.integers(0, 1024, size=(H + 2, W + 2, 3), dtype=np.uint16)
    # Canonical planes of the scene region starting at (1, 1), built directly.
    reg = scene[1:1 + H, 1:1 + W]
    ref = np.stack([reg[0::2, 0::2, 0], reg[0::2, 1::2, 1],
                    reg[1::2, 0::2, 1], reg[1::2, 1::2, 2]], axis=-1)
    for pattern in PATTERNS:
        top, left = OFFSETS[pattern]
        # A sensor whose frame starts at scene (1 - top, 1 - left): after the
        # documented crop every pattern covers scene pixels from (1, 1).
        mosaic = _mosaic_np(scene, pattern, 1 - top, 1 - left, H, W)
        planes = R.pack(mosaic, pattern)
        h, w = planes.shape[:2]
        assert (h, w) == ((H - 2 * top) // 2, (W - 2 * left) // 2)
        np.testing.assert_array_equal(planes, ref[:h, :w], err_msg=pattern)
        # the planes really are R, G, G, B of the scene
        np.testing.assert_array_equal(planes[..., 0], scene[1:1 + 2 * h:2, 1:1 + 2 * w:2, 0])
        np.testing.assert_array_equal(planes[..., 3], scene[2:2 + 2 * h:2, 2:2 + 2 * w:2, 2])


def test_rggb_planes_are_raster_order_and_depth_to_space_inverts():
    raw = np.arange(8 * 12, dtype=np.uint16).reshape(8, 12)
    planes = R.pack(raw, "RGGB")
    np.testing.assert_array_equal(planes[..., 0], raw[0::2, 0::2])
    np.testing.assert_array_equal(planes[..., 1], raw[0::2, 1::2])
    np.testing.assert_array_equal(planes[..., 2], raw[1::2, 0::2])
    np.testing.assert_array_equal(planes[..., 3], raw[1::2, 1::2])
    assert R.CANONICAL_ORDER == ("R", "Gr", "Gb", "B")
    np.testing.assert_array_equal(R.depth_to_space(planes, 2)[..., 0], raw)
    np.testing.assert_array_equal(R.space_to_depth(raw[..., None], 2), planes)


def test_space_depth_multichannel_convention():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 6, 8, 3)).astype(np.float32)
    s = R.space_to_depth(x, 2)
    assert s.shape == (2, 3, 4, 12)
    # TF convention: channel (dy*b + dx)*C + c
    for dy in range(2):
        for dx in range(2):
            for c in range(3):
                np.testing.assert_array_equal(s[..., (dy * 2 + dx) * 3 + c], x[:, dy::2, dx::2, c])
    np.testing.assert_array_equal(R.depth_to_space(s, 2), x)
    np.testing.assert_array_equal(np.asarray(R.depth_to_space(jnp.asarray(s), 2)), x)
    x3 = rng.normal(size=(9, 6, 2)).astype(np.float32)
    np.testing.assert_array_equal(R.depth_to_space(R.space_to_depth(x3, 3), 3), x3)


def test_rgb_to_planes():
    rng = np.random.default_rng(3)
    rgb = rng.random((2, 6, 8, 3)).astype(np.float32)
    planes = R.rgb_to_planes(rgb)
    mosaic = np.stack([_mosaic_np(rgb[b], "RGGB", 0, 0, 6, 8) for b in range(2)])
    np.testing.assert_array_equal(planes, R.pack(mosaic))


# ----------------------------------------------------------------------------- PyNET order


def test_pynet_order():
    rng = np.random.default_rng(4)
    raw = rng.integers(0, 1024, size=(8, 8), dtype=np.uint16)
    # What PyNET / LiteISPNet / MW-ISPNet do, written out.
    ch_R = raw[0::2, 0::2]
    ch_Gb = raw[0::2, 1::2]
    ch_Gr = raw[1::2, 0::2]
    ch_B = raw[1::2, 1::2]
    theirs = np.stack((ch_B, ch_Gb, ch_R, ch_Gr), axis=-1)

    ours = R.pack(raw, "RGGB")
    np.testing.assert_array_equal(R.to_pynet_order(ours), theirs)
    np.testing.assert_array_equal(R.from_pynet_order(theirs), ours)
    # their "Gb" is our Gr (green on red rows), their "Gr" is our Gb
    np.testing.assert_array_equal(theirs[..., 1], ours[..., 1])
    np.testing.assert_array_equal(theirs[..., 3], ours[..., 2])
    # inverses both ways, also in jax
    x = rng.random((2, 3, 4, 4))
    np.testing.assert_array_equal(R.from_pynet_order(R.to_pynet_order(x)), x)
    np.testing.assert_array_equal(R.to_pynet_order(R.from_pynet_order(x)), x)
    jx = jnp.asarray(x, jnp.float32)
    np.testing.assert_array_equal(
        np.asarray(jax.jit(lambda a: R.from_pynet_order(R.to_pynet_order(a)))(jx)), np.asarray(jx))
    # named planes: constant planes R=0, Gr=1, Gb=2, B=3
    named = np.broadcast_to(np.arange(4), (2, 2, 4))
    assert R.to_pynet_order(named)[0, 0].tolist() == [3, 1, 0, 2]
    assert R.from_pynet_order(named)[0, 0].tolist() == [2, 1, 3, 0]


# ----------------------------------------------------------------------------- normalisation


def test_normalize_scalar_levels():
    codes = np.array([0, 62, 63, 64, 541.5, 1020, 1023], np.float64)
    planes = np.repeat(codes[:, None, None], 4, axis=-1)  # [7, 1, 4]
    out = R.normalize(planes, 63, 1020)
    assert out.dtype == np.float32
    expect = np.clip((codes - 63) / 957.0, 0, 1)
    np.testing.assert_allclose(out[:, 0, 0], expect, atol=1e-7)
    assert out[3, 0, 0] == pytest.approx(1 / 957)
    assert out[4, 0, 0] == pytest.approx(0.5)
    assert out.min() == 0.0 and out.max() == 1.0
    # defaults are ZRR's, and they equal LiteISPNet's formula
    assert (R.ZRR_PATTERN, R.ZRR_BLACK_LEVEL, R.ZRR_WHITE_LEVEL) == ("RGGB", 63, 1020)
    u16 = np.array([[[63, 100, 1020, 1023]]], np.uint16)
    np.testing.assert_allclose(R.normalize(u16),
                               np.minimum(np.maximum(u16 - 63.0, 0) / (1020 - 63), 1), atol=1e-7)
    # jax, traced levels
    j = jax.jit(R.normalize)(jnp.asarray(planes), jnp.float32(63), jnp.float32(1020))
    assert j.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(j), out, atol=1e-7)


def test_normalize_per_channel_black():
    black = [60, 61, 62, 64]
    planes = np.array([[[100, 100, 100, 100], [60, 60, 60, 60], [2000, 0, 1000, 532]]],
                      np.uint16)  # [1, 3, 4]
    out = R.normalize(planes, black, 1000)
    expect = np.array([[[40 / 940, 39 / 939, 38 / 938, 36 / 936],
                        [0, 0, 0, 0],
                        [1, 0, 1, 468 / 936]]])
    np.testing.assert_allclose(out, expect, atol=1e-7)
    # per-channel white too, and denormalize inverts inside the range
    white = [1000, 1001, 1002, 1003]
    x = R.normalize(planes, black, white)
    back = R.denormalize(x, black, white)
    np.testing.assert_allclose(back[0, 0], [100, 100, 100, 100], atol=1e-4)


def test_normalize_errors():
    planes = np.zeros((2, 2, 4))
    with pytest.raises(ValueError, match="black_level"):
        R.normalize(planes, [1, 2, 3], 1020)
    with pytest.raises(ValueError, match="exceed"):
        R.normalize(planes, 63, 63)
    with pytest.raises(ValueError, match="planes"):
        R.normalize(np.zeros((2, 2, 3)), 63, 1020)


# ----------------------------------------------------------------------------- rawpy metadata


# raw_pattern values as rawpy reports them for DNGs (checked in test_dng_roundtrip).
RAWPY_PATTERNS = {
    "RGGB": [[0, 1], [3, 2]],
    "BGGR": [[2, 3], [1, 0]],
    "GRBG": [[1, 0], [2, 3]],
    "GBRG": [[3, 2], [0, 1]],
}


def test_pattern_from_rawpy():
    for name, rp in RAWPY_PATTERNS.items():
        assert R.pattern_from_rawpy(np.array(rp), b"RGBG") == name
        assert R.pattern_from_rawpy(rp, "RGBG") == name
    # both greens sharing one index (3-colour description) is still Bayer
    assert R.pattern_from_rawpy([[0, 1], [1, 2]], b"RGBG") == "RGGB"


def test_pattern_from_rawpy_rejects_non_bayer():
    xtrans = np.array([[1, 1, 0, 1, 1, 2],
                       [1, 1, 2, 1, 1, 0],
                       [2, 0, 1, 0, 2, 1],
                       [1, 1, 2, 1, 1, 0],
                       [1, 1, 0, 1, 1, 2],
                       [0, 2, 1, 2, 0, 1]])
    with pytest.raises(ValueError, match="X-Trans"):
        R.pattern_from_rawpy(xtrans, b"RGBG")
    with pytest.raises(ValueError, match="non-Bayer"):
        R.pattern_from_rawpy([[0, 1], [2, 3]], b"CMYG")
    with pytest.raises(ValueError, match="non-Bayer"):
        R.pattern_from_rawpy([[0, 1], [3, 2]], b"RGBE")
    with pytest.raises(ValueError, match="non-Bayer"):  # a cell missing blue
        R.pattern_from_rawpy([[0, 1], [1, 0]], b"RGBG")
    with pytest.raises(ValueError, match="None"):  # linear / Foveon: no CFA
        R.pattern_from_rawpy(None, b"RGBG")
    with pytest.raises(ValueError):
        R.pattern_from_rawpy([[0, 1], [5, 2]], b"RGBG")


def test_canonical_channel_values():
    # per colour index R, G, B, G2 in rawpy order
    vals = [10, 20, 30, 40]
    # RGGB [[0,1],[3,2]]: R=10, Gr=20, Gb=40, B=30
    np.testing.assert_array_equal(
        R.canonical_channel_values(vals, RAWPY_PATTERNS["RGGB"], b"RGBG"), [10, 20, 40, 30])
    # BGGR [[2,3],[1,0]] crop (1,1): R at (1,1)->0, Gr at (1,0)->1, Gb at (0,1)->3, B at (0,0)->2
    np.testing.assert_array_equal(
        R.canonical_channel_values(vals, RAWPY_PATTERNS["BGGR"], b"RGBG"), [10, 20, 40, 30])
    # GRBG [[1,0],[2,3]] crop (0,1): R (0,1)->0, Gr (0,0)->1, Gb (1,1)->3, B (1,0)->2
    np.testing.assert_array_equal(
        R.canonical_channel_values(vals, RAWPY_PATTERNS["GRBG"], b"RGBG"), [10, 20, 40, 30])


# ----------------------------------------------------------------------------- errors


def test_errors():
    with pytest.raises(ValueError, match="unknown CFA pattern"):
        R.pack(np.zeros((4, 4)), "RGBG")
    with pytest.raises(ValueError, match="unknown CFA pattern"):
        R.crop_box("XTRANS", 4, 4)
    with pytest.raises(ValueError, match="even"):
        R.pack(np.zeros((7, 8)), "RGGB")
    with pytest.raises(ValueError, match="even"):
        R.pack(np.zeros((8, 9)), "GBRG")
    with pytest.raises(ValueError, match="rank"):
        R.pack(np.zeros(8), "RGGB")
    with pytest.raises(ValueError, match="too small"):
        R.pack(np.zeros((2, 2)), "BGGR")
    with pytest.raises(ValueError, match="planes"):
        R.unpack(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="planes"):
        R.unpack(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="do not match"):
        R.unpack_frame(np.zeros((4, 4, 4)), "BGGR", 8, 8)
    with pytest.raises(ValueError):
        R.depth_to_space(np.zeros((2, 2, 6)), 2)
    with pytest.raises(ValueError):
        R.space_to_depth(np.zeros((3, 4, 1)), 2)
    assert R.check_pattern("rggb") == "RGGB" and R.check_pattern(b"BGGR") == "BGGR"


# ----------------------------------------------------------------------------- real DNG


def _write_dng(path, data, pattern, black):
    from pidng.core import RAW2DNG, DNGTags, Tag
    from pidng.defs import (CFAPattern, CalibrationIlluminant, DNGVersion, Orientation,
                            PhotometricInterpretation)
    H, W = data.shape
    t = DNGTags()
    t.set(Tag.ImageWidth, W)
    t.set(Tag.ImageLength, H)
    t.set(Tag.TileWidth, W)
    t.set(Tag.TileLength, H)
    t.set(Tag.Orientation, Orientation.Horizontal)
    t.set(Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array)
    t.set(Tag.SamplesPerPixel, 1)
    t.set(Tag.BitsPerSample, 16)
    t.set(Tag.CFARepeatPatternDim, [2, 2])
    t.set(Tag.CFAPattern, getattr(CFAPattern, pattern))
    t.set(Tag.BlackLevelRepeatDim, [2, 2])
    t.set(Tag.BlackLevel, list(black))
    t.set(Tag.WhiteLevel, 1020)
    t.set(Tag.ColorMatrix1, [[1, 1], [0, 1], [0, 1], [0, 1], [1, 1], [0, 1], [0, 1], [0, 1], [1, 1]])
    t.set(Tag.CalibrationIlluminant1, CalibrationIlluminant.D65)
    t.set(Tag.AsShotNeutral, [[1, 1], [1, 1], [1, 1]])
    t.set(Tag.Make, "diffraw-jax")
    t.set(Tag.Model, "synthetic")
    t.set(Tag.DNGVersion, DNGVersion.V1_4)
    t.set(Tag.DNGBackwardVersion, DNGVersion.V1_2)
    conv = RAW2DNG()
    conv.options(t, path=str(path.parent), compress=False)
    return conv.convert(data, filename=path.name)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_dng_roundtrip(tmp_path, pattern):
    pytest.importorskip("pidng")
    rawpy = pytest.importorskip("rawpy")
    rng = np.random.default_rng(5)
    H, W = 24, 36
    top, left = OFFSETS[pattern]
    planes = rng.integers(64, 1020, size=((H - 2 * top) // 2, (W - 2 * left) // 2, 4),
                          dtype=np.uint16)
    data = R.unpack_frame(planes, pattern, H, W)
    border = data == 0
    data[border] = rng.integers(64, 1020, size=int(border.sum()), dtype=np.uint16)
    black_file = [60, 61, 62, 64]  # raster order of the file's 2x2 cell
    path = _write_dng(tmp_path / f"{pattern}.dng", data, pattern, black_file)

    with rawpy.imread(str(path)) as rp:
        visible = rp.raw_image_visible.copy()
        got_pattern = R.pattern_from_rawpy(rp.raw_pattern, rp.color_desc)
        assert rp.raw_pattern.tolist() == RAWPY_PATTERNS[pattern]
        blacks = R.canonical_channel_values(rp.black_level_per_channel, rp.raw_pattern,
                                            rp.color_desc)
        assert rp.white_level == 1020
    assert got_pattern == pattern
    assert visible.dtype == np.uint16
    np.testing.assert_array_equal(visible, data)
    packed = R.pack(visible, got_pattern)
    assert packed.dtype == np.uint16
    np.testing.assert_array_equal(packed, planes)
    # black level of canonical plane k is the file's value at (top + k//2, left + k%2) mod 2
    expect = [black_file[((top + k // 2) % 2) * 2 + (left + k % 2) % 2] for k in range(4)]
    np.testing.assert_array_equal(blacks, expect)

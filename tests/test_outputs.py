"""``diffraw --format png|tiff|jpeg`` (#30 item 5): the same pixels in every format, the sRGB ICC
profile, the camera's EXIF with Orientation 1, and where the colour came from.

Each file is read back by libraries other than the writer's: Pillow and tifffile (TIFF; JPEG's
EXIF block, a TIFF structure), OpenCV (libpng) for the 16-bit PNG, and a JPEG marker walk in this
file for the JPEG's ICC segments. The ICC profile is compared with one LittleCMS makes here; the
EXIF values are the literals written into the DNG with pidng.
"""
import io
import os
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image, ImageCms

import diffraw_jax
from diffraw_jax.inference import camera, cli, outputs
from tests.helpers import write_dng

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDENT = os.path.join(REPO, "pretrained", "distill-1")  # one network evaluation per tile
H, W = 64, 96
# What the DNG carries (TIFF/EP tags in IFD0, as phones write them; pidng cannot write an EXIF IFD).
EXIF = {"DateTimeOriginal": "2024:05:17 14:03:21", "ExposureTime": (1, 250), "FNumber": (28, 10),
        "PhotographicSensitivity": 400, "FocalLength": (235, 10)}


def _mosaic(black=63, white=1020):
    """A smooth RGGB mosaic [H, W] of 10-bit codes (ramps and a colour cast)."""
    yy, xx = np.mgrid[0:H, 0:W]
    lin = 0.15 + 0.55 * (xx / W) * (0.5 + 0.5 * yy / H)
    gain = np.tile(np.array([[1.25, 1.0], [1.0, 0.75]]), (H // 2, W // 2))
    return np.round(black + np.clip(lin * gain, 0, 1) * (white - black)).astype(np.uint16)


def _camera_dng(path, monkeypatch, orientation=6):
    """A pidng DNG (Make "diffraw-jax", Model "synthetic phone", ``EXIF``), rotated by ``orientation``."""
    import pidng.core
    from pidng.dng import DNGTags, Tag

    class WithExif(DNGTags):  # write_dng builds its tags from pidng.core.DNGTags
        def __init__(self):
            super().__init__()
            for name, value in EXIF.items():
                self.set(getattr(Tag, name), [value] if isinstance(value, tuple) else value)

    with monkeypatch.context() as m:
        m.setattr(pidng.core, "DNGTags", WithExif)
        return write_dng(path, _mosaic(), orientation=orientation)


def _render(src, out, fmt, *extra):
    return cli.main(["--checkpoint", STUDENT, "--input", *map(str, src), "--output", str(out), "--quiet",
                     "--tile", "0", "--format", fmt, *extra])


def _description(icc: bytes) -> str:
    return ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc))).strip()


def _jpeg_segments(data: bytes, marker: int):
    """The payloads of a JPEG's ``marker`` segments (APPn: 0xE0 + n), in order, up to the image data."""
    assert data[:2] == b"\xff\xd8"
    pos, found = 2, []
    while data[pos] == 0xFF and data[pos + 1] != 0xDA:  # SOS: the entropy-coded data follows
        size = int.from_bytes(data[pos + 2:pos + 4], "big")
        if data[pos + 1] == marker:
            found.append(data[pos + 4:pos + 2 + size])
        pos += 2 + size
    return found


def _tiff_tags(source):
    import tifffile

    with tifffile.TiffFile(source) as tif:
        page = tif.pages[0]
        tags = {tag.name: tag.value for tag in page.tags.values()}
        pixels = page.asarray() if "StripOffsets" in tags else None
    return tags, pixels


@pytest.fixture(scope="module")
def srgb():
    """(description, bytes) of an sRGB profile made here by LittleCMS."""
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return _description(icc), icc


def test_tiff_and_jpeg_carry_the_pngs_pixels_the_srgb_profile_and_the_camera_exif(tmp_path, monkeypatch,
                                                                                  capsys, srgb):
    cv2 = pytest.importorskip("cv2")
    src = tmp_path / "in"
    src.mkdir()
    dng = _camera_dng(src / "cam.dng", monkeypatch)
    Image.fromarray(_mosaic()).save(src / "zrr.png")  # a Bayer PNG: no EXIF
    out = tmp_path / "out"
    for fmt, extra in (("png", ["--bits16"]), ("tiff", []), ("jpeg", [])):
        assert _render([src], out, fmt, *extra) == 0
    assert sorted(os.listdir(out)) == ["cam.jpg", "cam.png", "cam.tif", "zrr.jpg", "zrr.png", "zrr.tif"]
    source = {"cam": camera.read_camera_raw(str(dng)).color_source,  # the frames the CLI read
              "zrr": camera.read_bayer_image(str(src / "zrr.png"), 63.0, 1020.0, "RGGB").color_source}
    assert source["zrr"].startswith("fallback: ") and not source["cam"].startswith("fallback")
    for stem in ("cam", "zrr"):
        png16 = cv2.imread(str(out / f"{stem}.png"), cv2.IMREAD_UNCHANGED)[..., ::-1]  # libpng, BGR
        assert png16.dtype == np.uint16 and png16.shape == ((W, H, 3) if stem == "cam" else (H, W, 3))
        assert png16.std() > 1000  # a picture, not a flat field

        # TIFF: tifffile and Pillow read the 16-bit PNG's values, the profile, the EXIF, Orientation 1.
        tags, tif = _tiff_tags(out / f"{stem}.tif")
        assert tif.dtype == np.uint16 and np.array_equal(tif, png16)
        assert tags["Orientation"] == 1 and tags["Software"] == f"diffraw-jax {diffraw_jax.__version__}"
        assert tags["ImageDescription"] == f"colour: {source[stem]}"
        assert _description(tags["InterColorProfile"]) == srgb[0]
        with Image.open(out / f"{stem}.tif") as im:
            assert _description(im.info["icc_profile"]) == srgb[0]
            tiff_exif = im.getexif()
            assert np.abs(np.asarray(im).astype(int) - png16 / 257.0).max() <= 1  # Pillow reads 8 bits
        assert tiff_exif[274] == 1

        # JPEG: Pillow reads the profile, the EXIF and the 8-bit PNG's values within the compression;
        # tifffile reads its EXIF block; its ICC segments hold the same profile.
        data = (out / f"{stem}.jpg").read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            assert _description(im.info["icc_profile"]) == srgb[0]
            jpeg_exif = im.getexif()
            jpg = np.asarray(im).astype(np.float64)
        png8 = np.round(png16 / 257.0)
        assert jpg.shape == png8.shape
        psnr = 10 * np.log10(255.0**2 / np.mean((jpg - png8) ** 2))
        assert psnr >= 35.0, psnr
        icc = b"".join(s[14:] for s in _jpeg_segments(data, 0xE2) if s.startswith(b"ICC_PROFILE\0"))
        assert _description(icc) == srgb[0]
        (app1,) = [s for s in _jpeg_segments(data, 0xE1) if s.startswith(b"Exif\0\0")]
        jpeg_tags, _ = _tiff_tags(io.BytesIO(app1[6:]))
        assert jpeg_tags["Orientation"] == 1 and jpeg_exif[274] == 1
        assert jpeg_tags["ImageDescription"] == jpeg_exif[270] == f"colour: {source[stem]}"

        if stem == "zrr":  # no camera file: no camera EXIF
            for exif in (tags, jpeg_tags):
                assert "Make" not in exif and "ExposureTime" not in exif
                assert "ExposureTime" not in exif.get("ExifTag", {})
            continue
        for tifffile_tags, pillow_exif in ((tags, tiff_exif), (jpeg_tags, jpeg_exif)):
            assert tifffile_tags["Make"] == pillow_exif[271] == "diffraw-jax"
            assert tifffile_tags["Model"] == pillow_exif[272] == "synthetic phone"
        # The exposure fields: in the TIFF's IFD0 (as TIFF/EP), in the JPEG's EXIF IFD.
        sub = jpeg_tags["ExifTag"]
        pil_sub = jpeg_exif.get_ifd(0x8769)
        for tiff_value, jpeg_value, pil_tiff, pil_jpeg, want in (
                (tags["DateTimeOriginal"], sub["DateTimeOriginal"], tiff_exif[36867], pil_sub[36867],
                 EXIF["DateTimeOriginal"]),
                (tags["ISOSpeedRatings"], sub["ISOSpeedRatings"], tiff_exif[34855], pil_sub[34855], 400)):
            assert tiff_value == jpeg_value == pil_tiff == pil_jpeg == want
        for name, code in (("ExposureTime", 33434), ("FNumber", 33437), ("FocalLength", 37386)):
            want = Fraction(*EXIF[name])
            assert Fraction(*tags[name]) == Fraction(*sub[name]) == want
            assert Fraction(float(tiff_exif[code])).limit_denominator(1000) == want
            assert Fraction(float(pil_sub[code])).limit_denominator(1000) == want

    # The PNG carries the profile, the colour source and the EXIF too.
    with Image.open(out / "cam.png") as im:
        assert _description(im.info["icc_profile"]) == srgb[0]
        assert im.info["Description"] == f"colour: {source['cam']}"
        assert im.getexif()[271] == "diffraw-jax" and im.getexif()[274] == 1

    # An existing output is kept without --overwrite, in every format (another seed would differ).
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    capsys.readouterr()
    for fmt in ("png", "tiff", "jpeg"):
        assert _render([src], out, fmt, "--seed", "5") == 0
        assert "processed 0, failed 0, skipped 2" in capsys.readouterr().out
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before


@pytest.mark.parametrize("extra, reason", [
    (["--format", "gif"], "argument --format: invalid choice: 'gif'"),
    (["--format", "jpeg", "--quality", "0"], "argument --quality: must be an integer from 1 to 100, got '0'"),
    (["--format", "jpeg", "--quality", "101"], "must be an integer from 1 to 100, got '101'"),
    (["--format", "jpeg", "--quality", "high"], "must be an integer from 1 to 100, got 'high'"),
    (["--quality", "90"], "--quality is for --format jpeg only"),
    (["--format", "jpeg", "--bits16"], "--bits16 is for PNG: JPEG is 8-bit"),
])
def test_bad_format_or_quality_ends_in_one_line(tmp_path, capsys, extra, reason):
    src = tmp_path / "a.png"
    Image.fromarray(_mosaic()).save(src)
    assert cli.main(["--checkpoint", STUDENT, "--input", str(src), "--output", str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error" in line]
    assert errors == [err[-1]] and err[-1].startswith("diffraw: error: ") and reason in err[-1], err
    assert not (tmp_path / "out").exists()


def test_camera_exif_from_the_exif_ifd_past_a_malformed_tag_and_from_libraw(tmp_path, monkeypatch, capfd):
    from PIL.TiffImagePlugin import IFDRational

    # A TIFF-based camera file with an EXIF IFD (as NEF, CR2 and Adobe's DNGs have): its values win
    # over IFD0's.
    exif = Image.Exif()
    exif.update({271: "Nikon", 272: "D850", 33434: IFDRational(1, 30)})
    exif.get_ifd(0x8769).update({33434: IFDRational(1, 8000), 36867: "2023:01:02 03:04:05", 34855: 6400,
                                 33437: IFDRational(56, 10), 37386: IFDRational(85, 1)})
    exif[0x8769] = 0  # Pillow writes the IFD above in its place
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "cam.tif", exif=exif)
    assert outputs.read_camera_exif(str(tmp_path / "cam.tif")) == outputs.CameraExif(
        "Nikon", "D850", "2023:01:02 03:04:05", (1, 8000), (28, 5), 6400, (85, 1))

    # A Make tag whose values run past the end of the file: skipped alone, silently.
    dng = _camera_dng(tmp_path / "odd.dng", monkeypatch)
    data = bytearray(open(dng, "rb").read())
    offset = int.from_bytes(data[4:8], "little")
    for i in range(int.from_bytes(data[offset:offset + 2], "little")):
        entry = offset + 2 + 12 * i
        if int.from_bytes(data[entry:entry + 2], "little") == 271:
            data[entry + 4:entry + 8] = (10**6).to_bytes(4, "little")
    (tmp_path / "odd.dng").write_bytes(bytes(data))
    capfd.readouterr()
    got = outputs.read_camera_exif(str(tmp_path / "odd.dng"))
    assert got == outputs.CameraExif(None, "synthetic phone", EXIF["DateTimeOriginal"], (1, 250), (28, 10), 400,
                                     (235, 10))
    assert capfd.readouterr() == ("", "")

    # What LibRaw reads (files that are not TIFF-based): float32 values back to their fractions.
    libraw = outputs._libraw_exif(str(dng))
    assert (libraw.exposure_time, libraw.f_number, libraw.focal_length) == ((1, 250), (14, 5), (47, 2))
    assert libraw.make is None and libraw.model is None

    # Unreadable: no EXIF and one warning line.
    (tmp_path / "x.raf").write_bytes(b"FUJIFILMCCD-RAW " + bytes(100))
    assert outputs.read_camera_exif(str(tmp_path / "x.raf")) == outputs.CameraExif()
    assert "no EXIF copied" in capfd.readouterr().err


def test_the_profile_is_lcms_srgb_with_a_fixed_date_and_quality_sets_the_size(srgb):
    icc = outputs.srgb_profile()
    ours, theirs = bytearray(icc), bytearray(srgb[1])
    assert ours[24:36] == bytes.fromhex("07d0 0001 0001 0000 0000 0000")  # 2000-01-01 00:00:00
    ours[24:36] = theirs[24:36] = bytes(12)  # the creation date: the time of the call
    ours[84:100] = theirs[84:100] = bytes(16)  # the profile ID, which covers it
    assert ours == theirs
    yy, xx = np.mgrid[0:48, 0:64] / 64.0
    img = np.stack([xx, yy, 0.5 + 0.4 * np.sin(9 * xx * yy)], axis=-1)
    sizes = [len(outputs.encode(img, "jpeg", quality=q)) for q in (30, 95)]
    assert sizes[0] < 0.7 * sizes[1], sizes
    with pytest.raises(ValueError, match="format must be one of png, tiff, jpeg"):
        outputs.encode(img, "gif")

"""Output files: a rendered sRGB image and its metadata -> PNG, TIFF or JPEG bytes.

``encode(img01, fmt, metadata, bits16=, quality=)`` turns an sRGB float image [H, W, 3] in
[0, 1] (already upright) into the bytes of one file:

* ``png``: 8-bit RGB, or 16-bit with ``bits16`` (``encode_png``; zlib level ``PNG_ZLIB_LEVEL``);
* ``tiff``: 16-bit RGB, Adobe Deflate (zlib level ``PNG_ZLIB_LEVEL``) with the horizontal
  predictor, written by tifffile; its values are those of the 16-bit PNG, round(x * 65535);
* ``jpeg``: 8-bit RGB, baseline, 4:4:4 (no chroma subsampling), ``quality`` 1-100, written by
  Pillow; it decodes to the 8-bit PNG's values within its compression.

Every file carries (``Metadata``): the sRGB ICC profile (``srgb_profile``), Orientation 1 (the
pixels are upright), Software (``SOFTWARE``), a one-line description (where the colour came
from, ``describe_colour``) and the camera's EXIF (``CameraExif``: Make, Model,
DateTimeOriginal, ExposureTime, FNumber, ISO, FocalLength, where the camera file has them,
``read_camera_exif``). Where each goes:

========================  =====================  ======================  ======================
                          PNG                    TIFF                    JPEG
========================  =====================  ======================  ======================
ICC profile               iCCP chunk             InterColorProfile       APP2 ICC_PROFILE
description               tEXt "Description"     ImageDescription        EXIF ImageDescription
Software                  tEXt "Software"        Software                EXIF Software
Make, Model, Orientation  eXIf chunk, IFD0       IFD0                    EXIF (APP1), IFD0
DateTimeOriginal, ...     eXIf chunk, EXIF IFD   IFD0 (as TIFF/EP, DNG)  EXIF (APP1), EXIF IFD
========================  =====================  ======================  ======================

TIFF: tifffile writes no EXIF sub-IFD, so the EXIF tags sit in IFD0 under their EXIF tag
numbers, where TIFF/EP (ISO 12234-2) and DNG put them. Text is written as 7-bit ASCII
(other characters as ``\\x..`` escapes). Nothing depends on the time of the run: two runs
write the same bytes. numpy, Pillow and tifffile (imported when first used); rawpy for the
EXIF of camera files that are not TIFF-based.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import logging
import struct
import zlib
from fractions import Fraction
from typing import Iterator, List, Optional, Tuple

import numpy as np

import diffraw_jax
from diffraw_jax.inference import dng_tags

log = logging.getLogger(__name__)

FORMATS = ("png", "tiff", "jpeg")
EXTENSIONS = {"png": ".png", "tiff": ".tif", "jpeg": ".jpg"}  # the output file's extension per format
DEFAULT_QUALITY = 95  # JPEG quality (Pillow's scale, 1-100)
SOFTWARE = f"diffraw-jax {diffraw_jax.__version__}"

# zlib level of the PNGs: 1 encodes a 9 MP frame ~4x faster than the usual 6 for files
# ~10-25% larger (benchmarks/cli_profile.py); the pixels are the same.
PNG_ZLIB_LEVEL = 1

#: The ICC profile's creation date (header bytes 24-35), fixed so that outputs do not depend on
#: the time of the run (LittleCMS stamps the current time).
ICC_DATE = (2000, 1, 1, 0, 0, 0)

Rational = Tuple[int, int]


@dataclasses.dataclass(frozen=True)
class CameraExif:
    """The camera's EXIF copied into an output (None: not in the camera file).

    Attributes:
      make, model: Make (271) and Model (272), ASCII strings.
      date_time_original: DateTimeOriginal (36867), "YYYY:MM:DD HH:MM:SS" as the camera wrote it.
      exposure_time: ExposureTime (33434), seconds as (numerator, denominator).
      f_number: FNumber (33437), (numerator, denominator).
      iso: ISOSpeedRatings / PhotographicSensitivity (34855), 1-65535.
      focal_length: FocalLength (37386), millimetres as (numerator, denominator).
    """

    make: Optional[str] = None
    model: Optional[str] = None
    date_time_original: Optional[str] = None
    exposure_time: Optional[Rational] = None
    f_number: Optional[Rational] = None
    iso: Optional[int] = None
    focal_length: Optional[Rational] = None


#: (CameraExif field, EXIF tag, TIFF type, in the EXIF IFD): read and written from this one table.
EXIF_FIELDS = (("make", 271, "ascii", False), ("model", 272, "ascii", False),
               ("date_time_original", 36867, "ascii", True), ("exposure_time", 33434, "rational", True),
               ("f_number", 33437, "rational", True), ("iso", 34855, "short", True),
               ("focal_length", 37386, "rational", True))
TAG_DESCRIPTION, TAG_SOFTWARE, TAG_ORIENTATION = 270, 305, 274
TAG_EXIF_IFD, TAG_EXIF_VERSION = 0x8769, 0x9000


@dataclasses.dataclass(frozen=True)
class Metadata:
    """What an output file says besides its pixels (``describe_colour``, ``read_camera_exif``).

    Attributes:
      description: one line: where the colour came from ("" writes none).
      exif: the camera's EXIF (all None for a file without it, e.g. a Bayer PNG).
      software: the Software tag.
    """

    description: str = ""
    exif: CameraExif = CameraExif()
    software: str = SOFTWARE


def _ascii(text) -> str:
    """One line of 7-bit ASCII: whitespace runs become one space, other characters \\x.. escapes."""
    return " ".join(str(text).split()).encode("ascii", "backslashreplace").decode("ascii")


def describe_colour(mode: str, color_source: str, image: Optional[str] = None,
                    calibrated_model: bool = False) -> str:
    """The description line of an output: where its colour came from.

    ``mode``: the pipeline's colour ("calibrated", "classic", "g" or "image");
    ``color_source``: the frame's ``BayerFrame.color_source`` (its calibration, "fallback: ..."
    when guessed); ``image``: the colour image's name (mode "image"); ``calibrated_model``: the
    planes were balanced and exposed by the frame's calibration (then named with an image too).
    """
    if mode == "g":
        return "colour: the trained colour network G"
    if mode == "image":
        text = f"colour: the colour image {image}"
        return text + (f"; white balance and exposure: {color_source}" if calibrated_model else "")
    if mode == "classic":
        return f"colour: the classical ISP with {color_source}"
    return f"colour: {color_source}"


# ---------------------------------------------------------------------------
# The camera's EXIF.


@contextlib.contextmanager
def _tifffile_messages() -> Iterator[List[logging.LogRecord]]:
    """Collects tifffile's log records meanwhile (a malformed tag it skips) instead of printing them."""
    logger = logging.getLogger("tifffile")
    records: List[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _value(value, kind: str):
    """A tag's value as ``CameraExif`` holds it (None when absent or unusable)."""
    if value is None:
        return None
    if kind == "ascii":
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        text = _ascii(str(value).replace("\0", " "))
        return text or None
    values = np.asarray(value).ravel()
    if values.size == 0 or not np.issubdtype(values.dtype, np.integer):
        return None
    if kind == "short":
        return int(values[0]) if 0 < values[0] <= 0xFFFF else None
    if values.size < 2 or values[1] <= 0 or values[0] < 0 or max(values[0], values[1]) > 0xFFFFFFFF:
        return None
    return int(values[0]), int(values[1])


def _tiff_exif(path: str) -> CameraExif:
    """The EXIF fields of a TIFF-based camera file (DNG, NEF, CR2, ARW, ...): IFD0's Make and
    Model; the others from the EXIF IFD (tag 34665), else from IFD0 (TIFF/EP and phone DNGs put
    them there). tifffile skips a malformed tag by itself; those are logged at debug."""
    import tifffile

    exif_names = tifffile.TIFF.EXIF_TAGS
    with _tifffile_messages() as messages:
        try:
            with tifffile.TiffFile(path) as tif:
                tags = tif.pages[0].tags
                ifd0 = {tag.code: tag.value for tag in tags.values()}
        finally:
            for record in messages:
                log.debug("%s: tifffile: %s", path, record.getMessage())
    sub = ifd0.get(TAG_EXIF_IFD)
    sub = sub if isinstance(sub, dict) else {}
    found = {}
    for field, tag, kind, in_exif in EXIF_FIELDS:
        value = None
        if in_exif:
            value = _value(sub.get(exif_names.get(tag, tag), sub.get(tag)), kind)
        if value is None:
            value = _value(ifd0.get(tag), kind)
        found[field] = value
    return CameraExif(**found)


def _libraw_exif(path: str) -> CameraExif:
    """What LibRaw (rawpy's ``other``) reads of a camera file's EXIF: exposure time, f-number,
    ISO, focal length and time (no Make or Model: rawpy does not expose them). Floats become
    the nearest fraction with a denominator up to 10000 (1/250 s from 0.004000000189989805)."""
    import rawpy

    def rational(x) -> Optional[Rational]:
        if not x or not np.isfinite(x) or x <= 0:
            return None
        f = Fraction(float(x)).limit_denominator(10000)
        return (f.numerator, f.denominator) if f > 0 else None

    with rawpy.imread(path) as r:
        other = r.other
    iso = int(round(other.iso_speed)) if 0 < other.iso_speed <= 0xFFFF else None
    stamp = other.timestamp
    when = stamp.strftime("%Y:%m:%d %H:%M:%S") if stamp is not None and stamp.year > 1970 else None
    return CameraExif(date_time_original=when, exposure_time=rational(other.shutter_speed),
                      f_number=rational(other.aperture), iso=iso, focal_length=rational(other.focal_length))


def read_camera_exif(path: str) -> CameraExif:
    """The EXIF fields (``CameraExif``) of a camera file, to copy into its outputs.

    A TIFF-based file (DNG, NEF, CR2, ARW, ...: ``dng_tags.is_tiff``): its tags, exact as
    written (``_tiff_exif``); any other (CR3, RAF, ...): what LibRaw reads (``_libraw_exif``;
    no Make/Model). A file whose EXIF cannot be read gets none and one warning line; the
    output is written all the same.
    """
    try:
        return _tiff_exif(path) if dng_tags.is_tiff(path) else _libraw_exif(path)
    except Exception as e:  # noqa: BLE001 -- metadata is optional: the picture is still written
        reason = e.args[0] if len(e.args) == 1 and isinstance(e.args[0], bytes) else e  # LibRaw's are bytes
        reason = reason.decode("latin-1") if isinstance(reason, bytes) else str(reason)
        log.warning("warning: %s: no EXIF copied into the output (%s)", path, _ascii(reason or type(e).__name__))
        return CameraExif()


# ---------------------------------------------------------------------------
# Encoding.


@functools.lru_cache(maxsize=1)
def srgb_profile() -> bytes:
    """The sRGB ICC profile (LittleCMS's built-in sRGB, ``ImageCms.createProfile("sRGB")``), with
    its creation date set to ``ICC_DATE`` and its optional profile ID cleared (it would cover
    the date), so that every run writes the same bytes."""
    from PIL import ImageCms

    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    struct.pack_into(">6H", icc, 24, *ICC_DATE)
    icc[84:100] = bytes(16)
    return bytes(icc)


def _quantise(img01: np.ndarray, bits: int) -> np.ndarray:
    """sRGB float [H, W, 3] -> uint8 (bits 8) or uint16 (bits 16): round(clip(x, 0, 1) * (2**bits - 1))."""
    x = np.clip(np.asarray(img01, np.float64), 0.0, 1.0)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {x.shape}")
    return np.round(x * float(2**bits - 1)).astype(np.uint8 if bits == 8 else np.uint16)


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def encode_png16(rgb: np.ndarray) -> bytes:
    """uint16 [H, W, 3] -> 16-bit RGB PNG bytes (filter 0, zlib level ``PNG_ZLIB_LEVEL``)."""
    h, w, _ = rgb.shape
    rows = np.ascontiguousarray(rgb.astype(">u2")).view(np.uint8).reshape(h, w * 6)
    scan = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(scan, PNG_ZLIB_LEVEL)) + _png_chunk(b"IEND", b""))


def encode_png(img01: np.ndarray, bits16: bool = False) -> bytes:
    """sRGB float [H, W, 3] in [0, 1] -> PNG bytes, 8-bit (or 16-bit), no metadata."""
    if bits16:
        return encode_png16(_quantise(img01, 16))
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_quantise(img01, 8), "RGB").save(buf, format="PNG", compress_level=PNG_ZLIB_LEVEL)
    return buf.getvalue()


def _exif(meta: Metadata):
    """``meta`` as a Pillow ``Image.Exif``: IFD0 (Orientation 1, Make, Model, ImageDescription,
    Software) and the EXIF IFD (ExifVersion 0232 and the camera's exposure fields)."""
    from PIL import Image
    from PIL.TiffImagePlugin import IFDRational

    exif = Image.Exif()
    exif[TAG_ORIENTATION] = 1
    if meta.description:
        exif[TAG_DESCRIPTION] = _ascii(meta.description)
    exif[TAG_SOFTWARE] = _ascii(meta.software)
    sub = exif.get_ifd(TAG_EXIF_IFD)
    sub[TAG_EXIF_VERSION] = b"0232"
    for field, tag, kind, in_exif in EXIF_FIELDS:
        value = getattr(meta.exif, field)
        if value is not None:
            (sub if in_exif else exif)[tag] = IFDRational(*value) if kind == "rational" else value
    return exif


def _png_metadata(png: bytes, meta: Metadata) -> bytes:
    """``png`` with iCCP (sRGB), eXIf (``_exif``) and tEXt (Software, Description) chunks after IHDR."""
    if png[12:16] != b"IHDR":
        raise ValueError("not a PNG that starts with IHDR")
    chunks = _png_chunk(b"iCCP", b"sRGB\0\0" + zlib.compress(srgb_profile()))
    chunks += _png_chunk(b"eXIf", _exif(meta).tobytes()[len(b"Exif\0\0"):])
    chunks += _png_chunk(b"tEXt", b"Software\0" + _ascii(meta.software).encode("ascii"))
    if meta.description:
        chunks += _png_chunk(b"tEXt", b"Description\0" + _ascii(meta.description).encode("ascii"))
    return png[:33] + chunks + png[33:]


def encode_tiff(img01: np.ndarray, meta: Metadata) -> bytes:
    """sRGB float [H, W, 3] in [0, 1] -> 16-bit RGB TIFF bytes (tifffile; Adobe Deflate with the
    horizontal predictor), values round(x * 65535) as in the 16-bit PNG; ``meta`` in IFD0."""
    import tifffile

    tags = [(TAG_ORIENTATION, "H", 1, 1, True)]
    for field, tag, kind, _ in EXIF_FIELDS:
        value = getattr(meta.exif, field)
        if value is not None:
            tags.append((tag, {"ascii": "s", "short": "H", "rational": "2I"}[kind],
                         0 if kind == "ascii" else 1, value, True))
    buf = io.BytesIO()
    tifffile.imwrite(buf, _quantise(img01, 16), photometric="rgb", compression="zlib",
                     compressionargs={"level": PNG_ZLIB_LEVEL}, predictor=True,
                     iccprofile=srgb_profile(), description=_ascii(meta.description) or None,
                     software=_ascii(meta.software), metadata=None, extratags=tags)
    return buf.getvalue()


def check_quality(quality: int) -> int:
    """``quality`` as an int in 1-100 (Pillow's JPEG scale); ValueError otherwise."""
    if isinstance(quality, bool) or int(quality) != quality or not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be an integer from 1 to 100, got {quality!r}")
    return int(quality)


def encode_jpeg(img01: np.ndarray, meta: Metadata, quality: int = DEFAULT_QUALITY) -> bytes:
    """sRGB float [H, W, 3] in [0, 1] -> 8-bit baseline JPEG bytes (Pillow, 4:4:4, ``quality``
    1-100) of the 8-bit PNG's values; ICC profile in APP2, ``meta`` as EXIF in APP1."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_quantise(img01, 8), "RGB").save(
        buf, format="JPEG", quality=check_quality(quality), subsampling=0, icc_profile=srgb_profile(),
        exif=_exif(meta).tobytes())
    return buf.getvalue()


def encode(img01: np.ndarray, fmt: str = "png", metadata: Optional[Metadata] = None, *,
           bits16: bool = False, quality: int = DEFAULT_QUALITY) -> bytes:
    """sRGB float [H, W, 3] in [0, 1], upright -> the bytes of a ``fmt`` file ("png", "tiff",
    "jpeg") carrying ``metadata`` (default ``Metadata()``: the ICC profile, Orientation 1 and
    Software only). ``bits16``: a 16-bit PNG (TIFF is always 16-bit, JPEG 8-bit);
    ``quality``: JPEG only."""
    meta = Metadata() if metadata is None else metadata
    if fmt == "png":
        return _png_metadata(encode_png(img01, bits16), meta)
    if fmt == "tiff":
        return encode_tiff(img01, meta)
    if fmt == "jpeg":
        return encode_jpeg(img01, meta, quality)
    raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")

"""The tags of a DNG that decide its picture, read with ``struct`` (no TIFF library).

``read_dng_color_tags(path)`` walks a TIFF file (little- "II" or big-endian "MM",
classic TIFF, not BigTIFF) through IFD0, the IFDs chained after it and their
SubIFDs (tag 330), and returns ``DngColorTags``: the camera-profile tags of the DNG
specification (Adobe, "Digital Negative Specification" 1.7.1.0, chapter 4 "Tags" and
chapter 6 "Mapping Camera Color Space to CIE XYZ Space", which
``color.dng_camera_to_srgb`` implements), the IlluminantData of DNG 1.6, and the raw
image's DefaultCrop / DefaultScale and OpcodeList1/2/3 (GainMap opcodes parsed,
``GainMap``). Each tag is None when the file does not hold it. A colour tag found in
several IFDs is taken from the first IFD that holds it, in the order IFD0, its
SubIFDs, the next IFDs (the colour tags live in IFD0 by the spec); the raw image's
own tags (crop, scale, opcode lists) from the first IFD whose NewSubfileType is 0.

Robustness: every IFD entry is read on its own; an entry of an unknown type, or
whose values run past the end of the file, or that does not parse, is skipped and
logged at DEBUG (logger ``diffraw_jax.inference.dng_tags``), and the rest of the
file is still read. Only a file that is not a classic TIFF, or whose first IFD
lies outside it, is a ValueError. numpy and the standard library only.
"""
from __future__ import annotations

import dataclasses
import logging
import struct
from typing import Dict, List, Optional, Tuple

import numpy as np

log = logging.getLogger(__name__)

#: TIFF field type -> (struct code, size in bytes). RATIONAL / SRATIONAL are pairs of (S)LONG.
_TYPES = {1: ("B", 1), 2: ("s", 1), 3: ("H", 2), 4: ("I", 4), 5: ("I", 8), 6: ("b", 1), 7: ("B", 1),
          8: ("h", 2), 9: ("i", 4), 10: ("i", 8), 11: ("f", 4), 12: ("d", 8), 13: ("I", 4)}

TAG_NEW_SUBFILE_TYPE = 254
TAG_SUBIFDS = 330
TAG_DNG_VERSION = 50706
TAG_DEFAULT_SCALE, TAG_DEFAULT_CROP_ORIGIN, TAG_DEFAULT_CROP_SIZE = 50718, 50719, 50720
TAG_COLOR_MATRIX1, TAG_COLOR_MATRIX2 = 50721, 50722
TAG_CAMERA_CALIBRATION1, TAG_CAMERA_CALIBRATION2 = 50723, 50724
TAG_ANALOG_BALANCE = 50727
TAG_AS_SHOT_NEUTRAL = 50728
TAG_AS_SHOT_WHITE_XY = 50729
TAG_BASELINE_EXPOSURE = 50730
TAG_CALIBRATION_ILLUMINANT1, TAG_CALIBRATION_ILLUMINANT2 = 50778, 50779
TAG_FORWARD_MATRIX1, TAG_FORWARD_MATRIX2 = 50964, 50965
TAG_OPCODE_LIST1, TAG_OPCODE_LIST2, TAG_OPCODE_LIST3 = 51008, 51009, 51022
TAG_BASELINE_EXPOSURE_OFFSET = 51109
TAG_ILLUMINANT_DATA1, TAG_ILLUMINANT_DATA2 = 52533, 52534  # DNG 1.6

#: Tags read from the first IFD that holds them (the camera profile).
_PROFILE = (TAG_DNG_VERSION, TAG_COLOR_MATRIX1, TAG_COLOR_MATRIX2, TAG_CAMERA_CALIBRATION1,
            TAG_CAMERA_CALIBRATION2, TAG_ANALOG_BALANCE, TAG_AS_SHOT_NEUTRAL, TAG_AS_SHOT_WHITE_XY,
            TAG_BASELINE_EXPOSURE, TAG_CALIBRATION_ILLUMINANT1, TAG_CALIBRATION_ILLUMINANT2,
            TAG_FORWARD_MATRIX1, TAG_FORWARD_MATRIX2, TAG_BASELINE_EXPOSURE_OFFSET,
            TAG_ILLUMINANT_DATA1, TAG_ILLUMINANT_DATA2)
#: Tags of the raw image itself, read from the first IFD with NewSubfileType 0.
_RAW_IFD = (TAG_DEFAULT_SCALE, TAG_DEFAULT_CROP_ORIGIN, TAG_DEFAULT_CROP_SIZE,
            TAG_OPCODE_LIST1, TAG_OPCODE_LIST2, TAG_OPCODE_LIST3)
_WANTED = frozenset(_PROFILE + _RAW_IFD + (TAG_SUBIFDS, TAG_NEW_SUBFILE_TYPE))

#: DNG opcode ids (DNG 1.7.1 chapter 7 "Opcode List Processing") -> names, for the warning
#: that names the opcodes this reader does not apply.
OPCODE_NAMES = {1: "WarpRectilinear", 2: "WarpFisheye", 3: "FixVignetteRadial", 4: "FixBadPixelsConstant",
                5: "FixBadPixelsList", 6: "TrimBounds", 7: "MapTable", 8: "MapPolynomial", 9: "GainMap",
                10: "DeltaPerRow", 11: "DeltaPerColumn", 12: "ScalePerRow", 13: "ScalePerColumn",
                14: "WarpRectilinear2"}
OPCODE_GAIN_MAP = 9


@dataclasses.dataclass(frozen=True)
class GainMap:
    """One GainMap opcode (DNG 1.7.1 section 7, opcode 9): a gain for each pixel of an area,
    bilinear between the map's samples (``apply_gain_map``).

    Attributes:
      top, left, bottom, right: the area (pixels of the stage's image, bottom/right exclusive).
      plane, planes: the first image plane it applies to and how many (1 plane for a mosaic).
      row_pitch, col_pitch: every row_pitch-th row / col_pitch-th column of the area from its
        top-left (2, 2 for one colour of a Bayer mosaic).
      spacing_v, spacing_h, origin_v, origin_h: the map's sample grid in coordinates relative
        to the image (0 at the top / left edge, 1 at the bottom / right edge).
      gains: float32 [points_v, points_h, map_planes].
      list_tag: the OpcodeList (1, 2 or 3) it came from: the processing stage.
    """

    top: int
    left: int
    bottom: int
    right: int
    plane: int
    planes: int
    row_pitch: int
    col_pitch: int
    spacing_v: float
    spacing_h: float
    origin_v: float
    origin_h: float
    gains: np.ndarray
    list_tag: int = 2


@dataclasses.dataclass(frozen=True)
class DngColorTags:
    """The colour, exposure and geometry tags of one DNG (None: absent). Matrices float64,
    row-major as stored.

    Attributes:
      dng_version: DNGVersion (4 bytes), None for a TIFF that is not a DNG.
      color_matrix1, color_matrix2: ColorMatrix1/2, XYZ -> reference camera space,
        [n, 3] (n colour planes, 3 for an RGB Bayer camera), SRATIONAL.
      camera_calibration1, camera_calibration2: CameraCalibration1/2 [n, n].
      forward_matrix1, forward_matrix2: ForwardMatrix1/2, white-balanced camera ->
        XYZ (D50) [3, n].
      calibration_illuminant1, calibration_illuminant2: EXIF LightSource codes
        (17 Standard light A, 21 D65, ..., 255 "other": see illuminant_xy1/2).
      illuminant_xy1, illuminant_xy2: the CIE xy [2] of IlluminantData1/2 (DNG 1.6, type 0
        "xy chromaticity"), None when absent or of another type.
      analog_balance: AnalogBalance [n].
      as_shot_neutral: AsShotNeutral [n], the camera's response to the scene white.
      as_shot_white_xy: AsShotWhiteXY [2] (CIE xy of the scene white), the
        alternative to AsShotNeutral.
      baseline_exposure: BaselineExposure (EV, SRATIONAL).
      baseline_exposure_offset: BaselineExposureOffset (EV, of the camera profile).
      default_crop_origin, default_crop_size: DefaultCropOrigin / DefaultCropSize (x, y)
        floats, in pixels of the raw image's active area (at DefaultScale).
      default_scale: DefaultScale (x, y).
      gain_maps: the GainMap opcodes of OpcodeList1/2/3, in list order.
      other_opcodes: (list number, opcode name) of every other opcode in the lists
        (not applied; the reader of the frame names them in one warning).
    """

    dng_version: Optional[Tuple[int, ...]] = None
    color_matrix1: Optional[np.ndarray] = None
    color_matrix2: Optional[np.ndarray] = None
    camera_calibration1: Optional[np.ndarray] = None
    camera_calibration2: Optional[np.ndarray] = None
    forward_matrix1: Optional[np.ndarray] = None
    forward_matrix2: Optional[np.ndarray] = None
    calibration_illuminant1: Optional[int] = None
    calibration_illuminant2: Optional[int] = None
    illuminant_xy1: Optional[np.ndarray] = None
    illuminant_xy2: Optional[np.ndarray] = None
    analog_balance: Optional[np.ndarray] = None
    as_shot_neutral: Optional[np.ndarray] = None
    as_shot_white_xy: Optional[np.ndarray] = None
    baseline_exposure: Optional[float] = None
    baseline_exposure_offset: Optional[float] = None
    default_crop_origin: Optional[Tuple[float, float]] = None
    default_crop_size: Optional[Tuple[float, float]] = None
    default_scale: Optional[Tuple[float, float]] = None
    gain_maps: Tuple[GainMap, ...] = ()
    other_opcodes: Tuple[Tuple[int, str], ...] = ()

    @property
    def is_dng(self) -> bool:
        return self.dng_version is not None

    @property
    def has_color(self) -> bool:
        """True when the file holds enough to compute its colour: a ColorMatrix and the
        scene white (AsShotNeutral or AsShotWhiteXY)."""
        return self.color_matrix1 is not None and (self.as_shot_neutral is not None
                                                   or self.as_shot_white_xy is not None)

    @property
    def exposure(self) -> float:
        """The EV the DNG asks for: BaselineExposure + BaselineExposureOffset (0 when absent)."""
        return float(self.baseline_exposure or 0.0) + float(self.baseline_exposure_offset or 0.0)


def is_tiff(path: str) -> bool:
    """True when the file starts with a classic TIFF header ("II*\\0" or "MM\\0*"); DNG, and
    several camera RAW formats (CR2, NEF, ARW, ...), are TIFF files."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head in (b"II*\x00", b"MM\x00*")


def _entry(data: bytes, pos: int, e: str):
    """(tag, (type, values)) of the 12-byte IFD entry at ``pos``, or (tag, None) for one that is
    not wanted. Values: a str for ASCII, bytes for BYTE / UNDEFINED, floats num / den (0 when
    den is 0) for (S)RATIONAL, else a tuple of numbers. ValueError for an entry that cannot be
    read (unknown type, values past the end of the file)."""
    tag, typ, n = struct.unpack_from(e + "HHI", data, pos)
    if tag not in _WANTED:
        return tag, None
    if typ not in _TYPES:
        raise ValueError(f"unknown TIFF type {typ}")
    code, size = _TYPES[typ]
    nbytes = size * n
    where = pos + 8 if nbytes <= 4 else struct.unpack_from(e + "I", data, pos + 8)[0]
    if where + nbytes > len(data):
        raise ValueError(f"{n} values at offset {where} run past the end of the file ({len(data)} bytes)")
    if typ == 2:
        return tag, (typ, data[where:where + n].split(b"\0")[0].decode("latin-1"))
    if typ in (1, 7):
        return tag, (typ, bytes(data[where:where + n]))
    if typ in (5, 10):
        raw = struct.unpack_from(e + code * (2 * n), data, where)
        return tag, (typ, tuple(a / b if b else 0.0 for a, b in zip(raw[0::2], raw[1::2])))
    return tag, (typ, struct.unpack_from(e + code * n, data, where))


def _read_ifd(data: bytes, offset: int, e: str) -> Tuple[Dict[int, tuple], int]:
    """One IFD at ``offset``: ({tag: (type, values)}, next IFD offset) of the wanted tags.
    An entry that cannot be read is skipped (logged at DEBUG); ValueError only when the IFD
    itself lies outside the file."""
    if offset + 2 > len(data):
        raise ValueError(f"IFD offset {offset} beyond the end of the file ({len(data)} bytes)")
    (count,) = struct.unpack_from(e + "H", data, offset)
    tags = {}
    for i in range(count):
        pos = offset + 2 + 12 * i
        if pos + 12 > len(data):
            log.debug("IFD at %d: entries %d.. beyond the end of the file (truncated TIFF)", offset, i)
            if i == 0:
                raise ValueError("IFD entry beyond the end of the file (truncated TIFF)")
            break
        try:
            tag, value = _entry(data, pos, e)
        except (ValueError, struct.error, UnicodeDecodeError) as err:
            log.debug("IFD at %d: tag %d skipped: %s", offset, struct.unpack_from(e + "H", data, pos)[0], err)
            continue
        if value is not None:
            tags[tag] = value
    end = offset + 2 + 12 * count
    (nxt,) = struct.unpack_from(e + "I", data, end) if end + 4 <= len(data) else (0,)
    return tags, nxt


def read_tiff_tags(path: str) -> Dict[int, object]:
    """The wanted tags of a TIFF file: {tag: values}. Profile tags (``_PROFILE``): first
    occurrence in IFD0, its SubIFDs, then the next IFDs (each with its SubIFDs); the raw
    image's tags (``_RAW_IFD``): from the first IFD whose NewSubfileType is 0 (absent = 0).
    ValueError when the file is not a classic TIFF or its first IFD lies outside it; any
    other damaged part is skipped (logged at DEBUG)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] == b"II*\x00":
        e = "<"
    elif data[:4] == b"MM\x00*":
        e = ">"
    else:
        raise ValueError("not a TIFF/DNG file (no II*\\0 or MM\\0* header)")
    found: Dict[int, object] = {}
    raw_ifd_seen = [False]
    seen = set()
    first = struct.unpack_from(e + "I", data, 4)[0]

    def walk(offset: int, follow_next: bool) -> None:
        while offset and offset not in seen and len(seen) < 64:  # guards against IFD loops
            seen.add(offset)
            try:
                tags, nxt = _read_ifd(data, offset, e)
            except ValueError as err:
                if offset == first:
                    raise
                log.debug("IFD at %d skipped: %s", offset, err)
                return
            for tag, (_, values) in tags.items():
                if tag in _PROFILE:
                    found.setdefault(tag, values)
            subfile = tags.get(TAG_NEW_SUBFILE_TYPE, (4, (0,)))[1]
            if not raw_ifd_seen[0] and isinstance(subfile, tuple) and subfile and int(subfile[0]) == 0:
                raw_ifd_seen[0] = True
                for tag in _RAW_IFD:
                    if tag in tags:
                        found[tag] = tags[tag][1]
            subs = tags.get(TAG_SUBIFDS, (4, ()))[1]
            for sub in (subs if isinstance(subs, tuple) else ()):
                walk(int(sub), False)
            offset = nxt if follow_next else 0

    walk(first, True)
    return found


def _matrix(values, cols: int = 3) -> Optional[np.ndarray]:
    if not isinstance(values, tuple) or len(values) == 0 or len(values) % cols:
        return None
    m = np.asarray(values, np.float64).reshape(-1, cols)
    return m if np.all(np.isfinite(m)) else None


def illuminant_xy(data, byteorder: str = "<") -> Optional[np.ndarray]:
    """CIE xy [2] of an IlluminantData tag's bytes (DNG 1.6: a 16-bit type, then for type 0 two
    unsigned RATIONALs x, y, in the file's byte order); None for the other types (spectra)
    or bytes that do not parse."""
    if not isinstance(data, bytes) or len(data) < 18:
        return None
    (kind,) = struct.unpack_from(byteorder + "H", data, 0)
    if kind != 0:
        return None
    xn, xd, yn, yd = struct.unpack_from(byteorder + "IIII", data, 2)
    if not xd or not yd or not yn:
        return None
    return np.array([xn / xd, yn / yd])


def parse_opcode_list(data: bytes, list_tag: int) -> Tuple[List[GainMap], List[Tuple[int, str]]]:
    """An OpcodeList tag's bytes (always big-endian, DNG 1.7.1 chapter 7) -> (GainMap opcodes,
    [(list number, name)] of the others). An opcode that does not parse is skipped (DEBUG)
    and named among the others."""
    maps: List[GainMap] = []
    others: List[Tuple[int, str]] = []
    if not isinstance(data, bytes) or len(data) < 4:
        return maps, others
    (count,) = struct.unpack_from(">I", data, 0)
    pos = 4
    for _ in range(min(count, 4096)):
        if pos + 16 > len(data):
            log.debug("OpcodeList%d: truncated after %d opcodes", list_tag, len(maps) + len(others))
            break
        op, _version, _flags, size = struct.unpack_from(">IIII", data, pos)
        params = data[pos + 16:pos + 16 + size]
        pos += 16 + size
        if op == OPCODE_GAIN_MAP:
            try:
                maps.append(_gain_map(params, list_tag))
                continue
            except (ValueError, struct.error) as err:
                log.debug("OpcodeList%d: GainMap skipped: %s", list_tag, err)
        others.append((list_tag, OPCODE_NAMES.get(op, f"opcode {op}")))
    return maps, others


def _gain_map(p: bytes, list_tag: int) -> GainMap:
    top, left, bottom, right, plane, planes, row_pitch, col_pitch, pv, ph = struct.unpack_from(">10I", p, 0)
    sv, sh, ov, oh = struct.unpack_from(">4d", p, 40)
    (map_planes,) = struct.unpack_from(">I", p, 72)
    if pv == 1:
        sv, ov = 1.0, 0.0
    if ph == 1:
        sh, oh = 1.0, 0.0
    if pv < 1 or ph < 1 or map_planes < 1 or sv <= 0 or sh <= 0 or row_pitch < 1 or col_pitch < 1:
        raise ValueError(f"GainMap with {pv}x{ph}x{map_planes} points, spacing {sv}, {sh}")
    n = pv * ph * map_planes
    if 76 + 4 * n > len(p):
        raise ValueError(f"GainMap of {n} gains in {len(p)} bytes")
    gains = np.frombuffer(p, ">f4", n, 76).astype(np.float32).reshape(pv, ph, map_planes)
    if bottom <= top or right <= left or not np.all(np.isfinite(gains)):
        raise ValueError("GainMap with an empty area or non-finite gains")
    return GainMap(top, left, bottom, right, plane, planes, row_pitch, col_pitch, sv, sh, ov, oh,
                   gains, list_tag)


def apply_gain_map(image: np.ndarray, gm: GainMap, clip: Optional[float] = None) -> np.ndarray:
    """``image`` [H, W] (one plane, a mosaic) or [H, W, C] with the GainMap applied (a new
    float32 array), as the DNG SDK's dng_opcode_GainMap: for each pixel of the area on the
    pitch grid, the map's gain at its centre's relative position ((row + 0.5) / H, (col + 0.5)
    / W), bilinear between the four nearest samples (the edge samples beyond the map), map
    plane min(plane, map_planes - 1); the result is limited to ``clip`` (1.0 at the
    normalised stage of OpcodeList2/3) when given."""
    out = np.array(image, np.float32, copy=True)
    planar = out.ndim == 3
    h, w = out.shape[:2]
    rows = np.arange(gm.top, min(gm.bottom, h), gm.row_pitch)
    cols = np.arange(gm.left, min(gm.right, w), gm.col_pitch)
    if rows.size == 0 or cols.size == 0:
        return out
    pv, ph, mp = gm.gains.shape

    def index(pos, size, origin, spacing, points):
        f = ((pos + 0.5) / size - origin) / spacing
        f = np.clip(f, 0.0, points - 1)
        i0 = np.minimum(np.floor(f).astype(int), points - 1)
        i1 = np.minimum(i0 + 1, points - 1)
        return i0, i1, (f - i0).astype(np.float32)

    r0, r1, rf = index(rows, h, gm.origin_v, gm.spacing_v, pv)
    c0, c1, cf = index(cols, w, gm.origin_h, gm.spacing_h, ph)
    n_planes = out.shape[2] if planar else 1
    for plane in range(gm.plane, min(gm.plane + gm.planes, n_planes)):
        g = gm.gains[..., min(plane, mp - 1)]
        top = g[r0][:, c0] * (1 - cf) + g[r0][:, c1] * cf
        bot = g[r1][:, c0] * (1 - cf) + g[r1][:, c1] * cf
        gain = top * (1 - rf)[:, None] + bot * rf[:, None]
        idx = np.ix_(rows, cols)
        region = out[..., plane][idx] if planar else out[idx]
        region = region * gain
        if clip is not None:
            region = np.minimum(region, clip)
        if planar:
            out[..., plane][idx] = region
        else:
            out[idx] = region
    return out


def read_dng_color_tags(path: str) -> DngColorTags:
    """``DngColorTags`` of a TIFF/DNG file (every field None for a TIFF without them).
    ForwardMatrix is [3, n]: reshaped with n = the number of ColorMatrix rows (3 without a
    ColorMatrix). A tag whose values do not have the spec's shape is left out (None, logged at
    DEBUG). ValueError only for a file that is not a classic TIFF or whose first IFD is
    outside it."""
    with open(path, "rb") as f:
        order = "<" if f.read(2) == b"II" else ">"
    t = read_tiff_tags(path)

    def nums(tag, size=None):
        v = t.get(tag)
        if not isinstance(v, tuple) or not v or (size is not None and len(v) < size):
            if v is not None:
                log.debug("tag %d skipped: %r is not %s numbers", tag, v, size or "some")
            return None
        a = np.asarray(v[:size] if size else v, np.float64)
        return a if np.all(np.isfinite(a)) else None

    def scalar(tag):
        v = nums(tag, 1)
        return None if v is None else float(v[0])

    def pair(tag):
        v = nums(tag, 2)
        return None if v is None else (float(v[0]), float(v[1]))

    cm1, cm2 = _matrix(t.get(TAG_COLOR_MATRIX1)), _matrix(t.get(TAG_COLOR_MATRIX2))
    n = cm1.shape[0] if cm1 is not None else 3
    ill1, ill2 = scalar(TAG_CALIBRATION_ILLUMINANT1), scalar(TAG_CALIBRATION_ILLUMINANT2)
    maps, others = [], []
    for tag, k in ((TAG_OPCODE_LIST1, 1), (TAG_OPCODE_LIST2, 2), (TAG_OPCODE_LIST3, 3)):
        m, o = parse_opcode_list(t.get(tag), k)
        maps += m
        others += o
    version = t.get(TAG_DNG_VERSION)
    return DngColorTags(
        dng_version=tuple(version) if isinstance(version, (bytes, tuple)) and version else None,
        color_matrix1=cm1, color_matrix2=cm2,
        camera_calibration1=_matrix(t.get(TAG_CAMERA_CALIBRATION1), n),
        camera_calibration2=_matrix(t.get(TAG_CAMERA_CALIBRATION2), n),
        forward_matrix1=_matrix(t.get(TAG_FORWARD_MATRIX1), n),
        forward_matrix2=_matrix(t.get(TAG_FORWARD_MATRIX2), n),
        calibration_illuminant1=None if ill1 is None else int(ill1),
        calibration_illuminant2=None if ill2 is None else int(ill2),
        illuminant_xy1=illuminant_xy(t.get(TAG_ILLUMINANT_DATA1), order),
        illuminant_xy2=illuminant_xy(t.get(TAG_ILLUMINANT_DATA2), order),
        analog_balance=nums(TAG_ANALOG_BALANCE), as_shot_neutral=nums(TAG_AS_SHOT_NEUTRAL),
        as_shot_white_xy=nums(TAG_AS_SHOT_WHITE_XY, 2), baseline_exposure=scalar(TAG_BASELINE_EXPOSURE),
        baseline_exposure_offset=scalar(TAG_BASELINE_EXPOSURE_OFFSET),
        default_crop_origin=pair(TAG_DEFAULT_CROP_ORIGIN), default_crop_size=pair(TAG_DEFAULT_CROP_SIZE),
        default_scale=pair(TAG_DEFAULT_SCALE), gain_maps=tuple(maps), other_opcodes=tuple(others))

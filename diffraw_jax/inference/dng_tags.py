"""The colour and exposure tags of a DNG file, read with ``struct`` (no TIFF library).

``read_dng_color_tags(path)`` walks a TIFF file (little- "II" or big-endian "MM",
classic TIFF, not BigTIFF) through IFD0, the IFDs chained after it and their
SubIFDs (tag 330), and returns ``DngColorTags``: the camera-profile tags of DNG
1.4 (Adobe, "Digital Negative Specification" 1.4.0.0, chapter 4 "Tags", and
chapter 6 "Mapping Camera Color Space to CIE XYZ Space", which
``color.dng_camera_to_srgb`` implements). Each tag is None when the file does not
hold it. A tag found in several IFDs is taken from the first IFD that holds it, in
the order IFD0, its SubIFDs, the next IFDs (the colour tags live in IFD0 by the
spec). numpy and the standard library only.
"""
from __future__ import annotations

import dataclasses
import struct
from typing import Dict, Optional, Tuple

import numpy as np

#: TIFF field type -> (struct code, size in bytes). RATIONAL / SRATIONAL are pairs of (S)LONG.
_TYPES = {1: ("B", 1), 2: ("s", 1), 3: ("H", 2), 4: ("I", 4), 5: ("I", 8), 6: ("b", 1), 7: ("B", 1),
          8: ("h", 2), 9: ("i", 4), 10: ("i", 8), 11: ("f", 4), 12: ("d", 8), 13: ("I", 4)}

TAG_SUBIFDS = 330
TAG_DNG_VERSION = 50706
TAG_COLOR_MATRIX1, TAG_COLOR_MATRIX2 = 50721, 50722
TAG_CAMERA_CALIBRATION1, TAG_CAMERA_CALIBRATION2 = 50723, 50724
TAG_ANALOG_BALANCE = 50727
TAG_AS_SHOT_NEUTRAL = 50728
TAG_AS_SHOT_WHITE_XY = 50729
TAG_BASELINE_EXPOSURE = 50730
TAG_CALIBRATION_ILLUMINANT1, TAG_CALIBRATION_ILLUMINANT2 = 50778, 50779
TAG_FORWARD_MATRIX1, TAG_FORWARD_MATRIX2 = 50964, 50965
TAG_BASELINE_EXPOSURE_OFFSET = 51109

_WANTED = (TAG_DNG_VERSION, TAG_COLOR_MATRIX1, TAG_COLOR_MATRIX2, TAG_CAMERA_CALIBRATION1,
           TAG_CAMERA_CALIBRATION2, TAG_ANALOG_BALANCE, TAG_AS_SHOT_NEUTRAL, TAG_AS_SHOT_WHITE_XY,
           TAG_BASELINE_EXPOSURE, TAG_CALIBRATION_ILLUMINANT1, TAG_CALIBRATION_ILLUMINANT2,
           TAG_FORWARD_MATRIX1, TAG_FORWARD_MATRIX2, TAG_BASELINE_EXPOSURE_OFFSET)


@dataclasses.dataclass(frozen=True)
class DngColorTags:
    """The colour tags of one DNG (None: absent). Matrices float64, row-major as stored.

    Attributes:
      dng_version: DNGVersion (4 bytes), None for a TIFF that is not a DNG.
      color_matrix1, color_matrix2: ColorMatrix1/2, XYZ -> reference camera space,
        [n, 3] (n colour planes, 3 for an RGB Bayer camera), SRATIONAL.
      camera_calibration1, camera_calibration2: CameraCalibration1/2 [n, n].
      forward_matrix1, forward_matrix2: ForwardMatrix1/2, white-balanced camera ->
        XYZ (D50) [3, n].
      calibration_illuminant1, calibration_illuminant2: EXIF LightSource codes
        (17 Standard light A, 21 D65, ...) of the two calibrations.
      analog_balance: AnalogBalance [n].
      as_shot_neutral: AsShotNeutral [n], the camera's response to the scene white.
      as_shot_white_xy: AsShotWhiteXY [2] (CIE xy of the scene white), the
        alternative to AsShotNeutral.
      baseline_exposure: BaselineExposure (EV, SRATIONAL).
      baseline_exposure_offset: BaselineExposureOffset (EV, of the camera profile).
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
    analog_balance: Optional[np.ndarray] = None
    as_shot_neutral: Optional[np.ndarray] = None
    as_shot_white_xy: Optional[np.ndarray] = None
    baseline_exposure: Optional[float] = None
    baseline_exposure_offset: Optional[float] = None

    @property
    def is_dng(self) -> bool:
        return self.dng_version is not None

    @property
    def has_color(self) -> bool:
        """True when the file holds enough to compute its colour: a ColorMatrix and the
        scene white (AsShotNeutral or AsShotWhiteXY)."""
        return self.color_matrix1 is not None and (self.as_shot_neutral is not None
                                                   or self.as_shot_white_xy is not None)


def is_tiff(path: str) -> bool:
    """True when the file starts with a classic TIFF header ("II*\\0" or "MM\\0*"); DNG, and
    several camera RAW formats (CR2, NEF, ARW, ...), are TIFF files."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head in (b"II*\x00", b"MM\x00*")


def _read_ifd(data: bytes, offset: int, e: str) -> Tuple[Dict[int, tuple], int]:
    """One IFD at ``offset``: ({tag: (type, values tuple)}, next IFD offset). Values of
    RATIONAL / SRATIONAL are floats num / den (0 when den is 0)."""
    if offset + 2 > len(data):
        raise ValueError(f"IFD offset {offset} beyond the end of the file ({len(data)} bytes)")
    (count,) = struct.unpack_from(e + "H", data, offset)
    tags = {}
    for i in range(count):
        pos = offset + 2 + 12 * i
        if pos + 12 > len(data):
            raise ValueError("IFD entry beyond the end of the file (truncated TIFF)")
        tag, typ, n = struct.unpack_from(e + "HHI", data, pos)
        if typ not in _TYPES:
            continue  # unknown type (BigTIFF's LONG8, ...): not one of ours
        code, size = _TYPES[typ]
        nbytes = size * n
        where = pos + 8 if nbytes <= 4 else struct.unpack_from(e + "I", data, pos + 8)[0]
        if where + nbytes > len(data):
            raise ValueError(f"tag {tag}'s values beyond the end of the file (truncated TIFF)")
        if tag not in _WANTED and tag != TAG_SUBIFDS:
            continue
        if typ == 2:
            tags[tag] = (typ, (data[where:where + n].split(b"\0")[0].decode("latin-1"),))
        elif typ in (5, 10):
            raw = struct.unpack_from(e + code * (2 * n), data, where)
            tags[tag] = (typ, tuple(a / b if b else 0.0 for a, b in zip(raw[0::2], raw[1::2])))
        else:
            tags[tag] = (typ, struct.unpack_from(e + code * n, data, where))
    (nxt,) = struct.unpack_from(e + "I", data, offset + 2 + 12 * count) if offset + 6 + 12 * count <= len(data) else (0,)
    return tags, nxt


def read_tiff_tags(path: str) -> Dict[int, tuple]:
    """The DNG colour tags (``_WANTED``) of a TIFF file: {tag: values tuple}, first occurrence
    in IFD0, its SubIFDs, then the next IFDs (each with its SubIFDs). ValueError when the file
    is not a classic TIFF or its IFDs point outside it."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] == b"II*\x00":
        e = "<"
    elif data[:4] == b"MM\x00*":
        e = ">"
    else:
        raise ValueError("not a TIFF/DNG file (no II*\\0 or MM\\0* header)")
    found: Dict[int, tuple] = {}
    seen = set()

    def walk(offset: int, follow_next: bool) -> None:
        while offset and offset not in seen and len(seen) < 64:  # guards against IFD loops
            seen.add(offset)
            tags, nxt = _read_ifd(data, offset, e)
            for tag, (_, values) in tags.items():
                if tag != TAG_SUBIFDS:
                    found.setdefault(tag, values)
            for sub in tags.get(TAG_SUBIFDS, (0, ()))[1]:
                walk(int(sub), False)
            offset = nxt if follow_next else 0

    walk(struct.unpack_from(e + "I", data, 4)[0], True)
    return found


def _matrix(values, cols: int = 3) -> Optional[np.ndarray]:
    if values is None or len(values) == 0 or len(values) % cols:
        return None
    return np.asarray(values, np.float64).reshape(-1, cols)


def read_dng_color_tags(path: str) -> DngColorTags:
    """``DngColorTags`` of a TIFF/DNG file (every field None for a TIFF without them).
    ForwardMatrix is [3, n]: reshaped with n = the number of ColorMatrix rows (3 without a
    ColorMatrix). ValueError for a file that is not a classic TIFF or is damaged."""
    t = read_tiff_tags(path)

    def vec(tag):
        v = t.get(tag)
        return None if v is None else np.asarray(v, np.float64)

    def scalar(tag):
        v = t.get(tag)
        return None if not v else float(v[0])

    cm1, cm2 = _matrix(t.get(TAG_COLOR_MATRIX1)), _matrix(t.get(TAG_COLOR_MATRIX2))
    n = cm1.shape[0] if cm1 is not None else 3
    ill1, ill2 = t.get(TAG_CALIBRATION_ILLUMINANT1), t.get(TAG_CALIBRATION_ILLUMINANT2)
    return DngColorTags(
        dng_version=None if TAG_DNG_VERSION not in t else tuple(int(v) for v in t[TAG_DNG_VERSION]),
        color_matrix1=cm1, color_matrix2=cm2,
        camera_calibration1=_matrix(t.get(TAG_CAMERA_CALIBRATION1), n),
        camera_calibration2=_matrix(t.get(TAG_CAMERA_CALIBRATION2), n),
        forward_matrix1=_matrix(t.get(TAG_FORWARD_MATRIX1), n),
        forward_matrix2=_matrix(t.get(TAG_FORWARD_MATRIX2), n),
        calibration_illuminant1=None if not ill1 else int(ill1[0]),
        calibration_illuminant2=None if not ill2 else int(ill2[0]),
        analog_balance=vec(TAG_ANALOG_BALANCE), as_shot_neutral=vec(TAG_AS_SHOT_NEUTRAL),
        as_shot_white_xy=vec(TAG_AS_SHOT_WHITE_XY), baseline_exposure=scalar(TAG_BASELINE_EXPOSURE),
        baseline_exposure_offset=scalar(TAG_BASELINE_EXPOSURE_OFFSET))

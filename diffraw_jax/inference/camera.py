"""Camera frames in: Bayer mosaics and camera RAWs to normalised planes, colour, orientation.

Frame geometry
--------------
A mosaic [H, W] in any 2x2 Bayer layout (RGGB, BGGR, GRBG, GBRG) is extended
by one reflected row/column on the sides where the layout does not start on an
R site, and on a side of odd length, so that it becomes an RGGB mosaic with
even sides; it is packed to planes [h, w, 4] in canonical order (R, Gr, Gb, B)
and normalised with the frame's levels (``prepare_frame``). The networks run
on that padded frame; ``finish`` crops their output back to exactly the input
mosaic's H x W and applies the camera's orientation (LibRaw ``sizes.flip``).

Colour
------
The classical ISP itself is ``sampling.make_color_condition()`` (white
balance, Malvar demosaic, colour matrix, sRGB curve). A file's colour
(``frame_from_rawpy``) fills ``wb_gains`` (r, 1, b), ``ccm`` (white-balanced
camera RGB -> linear sRGB, rows summing to 1), ``baseline_exposure`` (EV) and
``color_source`` (one line naming where they came from):

- a DNG: its own tags (``dng_tags.read_dng_color_tags``) through the DNG SDK's
  maths (``color.dng_camera_to_srgb``: AsShotNeutral, ColorMatrix1/2 and
  ForwardMatrix1/2 interpolated by the scene white's colour temperature), and
  BaselineExposure (+ BaselineExposureOffset) (``dng_color``);
- other RAWs (``camera_color``): white balance from rawpy's as-shot
  ``camera_whitebalance`` (fallback ``daylight_whitebalance``), gains (R/G, 1, B/G);
  colour matrix from rawpy's ``color_matrix`` (LibRaw's ``rgb_cam`` from its camera
  table; the second green's column is folded into G), or, when LibRaw leaves it
  empty, from ``rgb_xyz_matrix`` as dcraw does (``color.srgb_matrix_from_cam_xyz``);
  baseline exposure 0;
- what a file lacks falls back (``_fallback_color``): gray-world white balance,
  identity matrix, and ``color_source`` starts with "fallback: " and says which.

Files: ``read_bayer_image`` (single-channel PNG/TIFF mosaics, ZRR style) and
``read_camera_raw`` (anything LibRaw reads, through rawpy, imported only there).
Imports numpy, jax and the core modules.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from diffraw_jax import color, raw
from diffraw_jax.inference import dng_tags

COLOR_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")

Level = Union[float, Sequence[float], np.ndarray]


class InputError(Exception):
    """A problem with one input file (reported; a batch run goes on with the others)."""


@dataclasses.dataclass
class BayerFrame:
    """A Bayer mosaic and the metadata inference needs.

    Attributes:
      mosaic: [H, W] codes (any int or float dtype) in the ``cfa`` layout.
      cfa: "RGGB", "BGGR", "GRBG" or "GBRG".
      black_level, white_level: codes, a scalar or 4 values in canonical plane
        order (R, Gr, Gb, B).
      wb_gains: (r, g, b) gains for the classical ISP, or None (gray world).
      ccm: [3, 3] camera RGB -> linear sRGB for the classical ISP, or None (identity).
      flip: LibRaw's orientation code (``sizes.flip``): 0 none, 3 180 degrees,
        5 90 degrees counter-clockwise, 6 90 degrees clockwise (4, 7 and the
        mirrors 1, 2 too); applied to the output (``orient``).
      baseline_exposure: EV; the intended rendering's linear values are the
        normalised planes times 2**baseline_exposure (DNG BaselineExposure plus
        BaselineExposureOffset; 0.0 for other files).
      color_source: one human line naming where ``wb_gains``/``ccm`` came from
        (``read_camera_raw`` fills it; it starts with "fallback:" when the file had
        no colour metadata, as it does for a frame built from arrays without them).
    """

    mosaic: np.ndarray
    cfa: str = raw.ZRR_PATTERN
    black_level: Level = raw.ZRR_BLACK_LEVEL
    white_level: Level = raw.ZRR_WHITE_LEVEL
    wb_gains: Optional[np.ndarray] = None
    ccm: Optional[np.ndarray] = None
    flip: int = 0
    baseline_exposure: float = 0.0
    color_source: str = "fallback: no colour metadata (gray-world white balance, no colour matrix)"


class PreparedFrame(NamedTuple):
    """A mosaic made ready for the networks.

    planes: float32 [h, w, 4] (R, Gr, Gb, B) in [0, 1] of the padded canonical
    mosaic [2h, 2w]; the output covers the input mosaic exactly as
    ``out[top:top + height, left:left + width]`` (then ``orient``-ed by ``flip``).
    """

    planes: np.ndarray
    top: int
    left: int
    height: int
    width: int
    flip: int = 0


def prepare_frame(frame: BayerFrame) -> PreparedFrame:
    """Mosaic [H, W] in any 2x2 Bayer layout -> ``PreparedFrame`` covering all of it.

    The mosaic is extended by one reflected row/column where its layout does
    not start with an R site (GRBG, GBRG, BGGR) and where a side is odd;
    reflection keeps the colour of every added site (``np.pad`` "reflect":
    row -1 copies row 1, which has row -1's colour). The padded mosaic is RGGB
    with even sides; it is packed and normalised with the frame's levels, and
    ``finish`` crops the result back to exactly H x W, so no row or column of
    the frame is lost. ValueError for a mosaic that is not 2-D or smaller than
    2 x 2, a bad CFA, or no signal above the black level (an all-black frame
    would silently give a black output).
    """
    m = np.asarray(frame.mosaic)
    if m.ndim != 2:
        raise ValueError(f"expected a single-channel Bayer mosaic [H, W], got shape {m.shape}")
    height, width = m.shape
    if height < 2 or width < 2:
        raise ValueError(f"mosaic {height}x{width} is too small")
    top, left = raw.cfa_offset(frame.cfa)
    bottom, right = (top + height) % 2, (left + width) % 2
    if top or left or bottom or right:
        m = np.pad(m, ((top, bottom), (left, right)), mode="reflect")
    planes = raw.normalize(raw.pack(m, "RGGB"), frame.black_level, frame.white_level)
    if not np.any(planes > 0):
        raise ValueError("no signal above the black level (all-black RAW)")
    return PreparedFrame(np.asarray(planes, np.float32), top, left, height, width, int(frame.flip or 0))


def orient(img: np.ndarray, flip: int) -> np.ndarray:
    """Applies LibRaw's orientation code to an image [H, W, ...] (as LibRaw's own output does):
    bit 2 flips rows, bit 1 columns, then bit 4 swaps the axes (6: 90 degrees clockwise, 5:
    counter-clockwise, 3: 180 degrees)."""
    flip = int(flip or 0)
    if flip & 2:
        img = img[::-1]
    if flip & 1:
        img = img[:, ::-1]
    if flip & 4:
        img = np.swapaxes(img, 0, 1)
    return np.ascontiguousarray(img)


def unorient(img: np.ndarray, flip: int) -> np.ndarray:
    """The inverse of ``orient``: a displayed (oriented) image back to sensor layout."""
    flip = int(flip or 0)
    if flip & 4:
        img = np.swapaxes(img, 0, 1)
    if flip & 1:
        img = img[:, ::-1]
    if flip & 2:
        img = img[::-1]
    return np.ascontiguousarray(img)


def finish(img: np.ndarray, prepared: PreparedFrame) -> np.ndarray:
    """Output of the padded canonical frame [2h, 2w, C] -> the input frame's pixels, oriented."""
    p = prepared
    return orient(img[p.top:p.top + p.height, p.left:p.left + p.width], p.flip)


def _desc(raw_obj) -> str:
    d = raw_obj.color_desc
    return d.decode("ascii", "replace") if isinstance(d, bytes) else str(d)


def _bayer_cell(raw_obj) -> np.ndarray:
    """The 2x2 colour indices of the top-left of ``raw_image_visible``.

    ``raw_pattern`` is checked first (non-Bayer sensors are rejected there);
    the cell itself is read from ``raw_colors_visible`` when rawpy provides it,
    which is the ground truth for the visible array whatever the margins.
    """
    cell = np.asarray(raw_obj.raw_pattern) if raw_obj.raw_pattern is not None else None
    raw.pattern_from_rawpy(cell, raw_obj.color_desc)  # ValueError unless 2x2 Bayer
    try:
        vis = np.asarray(raw_obj.raw_colors_visible)
        if vis.ndim == 2 and vis.shape[0] >= 2 and vis.shape[1] >= 2:
            cell = vis[:2, :2]
    except Exception:  # noqa: BLE001 -- older rawpy / unusual files: keep raw_pattern
        pass
    return cell


def _letter_index(desc: str, letter: str) -> int:
    i = desc.upper().find(letter)
    if i < 0:
        raise ValueError(f"colour description {desc!r} has no {letter!r} channel")
    return i


def _gains(mults, desc: str) -> Optional[np.ndarray]:
    m = np.asarray(mults, np.float64).ravel()
    if m.size < 3 or not np.all(np.isfinite(m)):
        return None
    r, g, b = (m[_letter_index(desc, ch)] for ch in "RGB")
    if min(r, g, b) <= 0:
        return None
    return np.array([r / g, 1.0, b / g], np.float32)


def camera_color(raw_obj) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """(wb_gains [3] or None, ccm [3, 3] or None) of an open rawpy object.

    White balance: as-shot ``camera_whitebalance`` (by colour index, mapped
    through ``color_desc``) as (R/G, 1, B/G); else ``daylight_whitebalance``;
    else None (the classical ISP then uses gray world).
    Colour matrix (camera RGB -> linear sRGB): rawpy's ``color_matrix``
    (LibRaw's rgb_cam, [3, 4] by colour index; every green column is summed into
    G because the demosaic averages both greens); if that is all zero, dcraw's
    construction from ``rgb_xyz_matrix`` (XYZ -> camera):
    ``color.srgb_matrix_from_cam_xyz(cam_xyz[R, G, B])``; else None (identity).
    """
    desc = _desc(raw_obj)
    wb = _gains(raw_obj.camera_whitebalance, desc)
    if wb is None:
        wb = _gains(getattr(raw_obj, "daylight_whitebalance", []), desc)
    ccm = None
    cm = np.asarray(raw_obj.color_matrix, np.float64)
    if cm.shape[0] == 3 and cm.shape[1] >= 3 and np.all(np.isfinite(cm)) and np.any(cm != 0):
        cols = [_letter_index(desc, "R"), _letter_index(desc, "G"), _letter_index(desc, "B")]
        ccm = cm[:, cols].copy()
        for k, ch in enumerate(desc[: cm.shape[1]].upper()):
            if ch == "G" and k != cols[1]:
                ccm[:, 1] += cm[:, k]
    else:
        cam_xyz = np.asarray(raw_obj.rgb_xyz_matrix, np.float64)
        if cam_xyz.shape[0] >= 3 and np.any(cam_xyz != 0):
            rows = [_letter_index(desc, ch) for ch in "RGB"]
            ccm = color.srgb_matrix_from_cam_xyz(cam_xyz[rows, :3])
    return wb, (None if ccm is None else ccm.astype(np.float32))


def frame_from_rawpy(raw_obj, path: Optional[str] = None) -> BayerFrame:
    """BayerFrame from an open ``rawpy.RawPy`` (copies the pixels).

    Uses ``raw_image_visible``, the CFA from ``raw_pattern``/``color_desc``
    (``raw.pattern_from_rawpy``), per-channel black levels
    (``black_level_per_channel`` reordered with ``raw.canonical_channel_values``),
    ``white_level`` and the orientation ``sizes.flip``. Colour and exposure
    (``wb_gains``, ``ccm``, ``baseline_exposure``, ``color_source``): when ``path``
    (the file ``raw_obj`` was opened from) is a DNG, from its own tags
    (``dng_color``); else LibRaw's (``camera_color``); what is missing falls back
    (``_fallback_color``). ValueError for
    non-Bayer sensors (no / non-2x2 pattern: Foveon, X-Trans, linear DNG) or a
    3-channel ``raw_image``.
    """
    pattern = raw_obj.raw_pattern
    if int(getattr(raw_obj, "num_colors", 3) or 3) == 1 or (pattern is not None and np.asarray(pattern).size == 1):
        raise ValueError("a monochrome RAW (one channel, no colour filter array): DiffRAW needs a "
                         "Bayer mosaic")
    if getattr(getattr(raw_obj, "raw_type", None), "name", "") == "Stack":
        raise ValueError("non-Bayer RAW: the raw image is stacked (linear DNG / Foveon), "
                         "not a colour filter array mosaic")
    cell = _bayer_cell(raw_obj)
    desc = raw_obj.color_desc
    visible = np.asarray(raw_obj.raw_image_visible)
    if visible.ndim != 2:
        raise ValueError(f"non-Bayer RAW: raw_image has shape {visible.shape} (not one channel)")
    black = raw.canonical_channel_values(raw_obj.black_level_per_channel, cell, desc)
    flip = int(getattr(getattr(raw_obj, "sizes", None), "flip", 0) or 0)
    frame = BayerFrame(mosaic=visible.copy(), cfa=raw.pattern_from_rawpy(cell, desc),
                       black_level=black.astype(np.float32),
                       white_level=float(raw_obj.white_level), flip=flip)
    tags = None
    if path is not None and dng_tags.is_tiff(path):
        try:
            tags = dng_tags.read_dng_color_tags(path)
        except ValueError:  # LibRaw read it: take LibRaw's colour (and say so below)
            tags = None
    if tags is not None and tags.is_dng:
        wb, ccm, source = dng_color(tags, frame)
        exposure = (tags.baseline_exposure or 0.0) + (tags.baseline_exposure_offset or 0.0)
    else:
        wb, ccm = camera_color(raw_obj)
        source = _libraw_color_source(raw_obj, wb, ccm)
        if wb is None or ccm is None:
            wb, ccm, source = _fallback_color(frame, wb, ccm, source)
        exposure = 0.0
    return dataclasses.replace(frame, wb_gains=np.asarray(wb, np.float32), ccm=np.asarray(ccm, np.float32),
                               baseline_exposure=float(exposure), color_source=source)


# ---------------------------------------------------------------------------
# Colour calibration of a file: DNG tags, LibRaw's tables, fallback.

FALLBACK = "fallback: "  # the start of ``color_source`` when a file's colour was not in it


def _gray_world(frame: BayerFrame) -> np.ndarray:
    """Gray-world gains (r, 1, b) float64 [3] of the frame's normalised planes
    (``isp_classic.gray_world_gains``)."""
    from diffraw_jax import isp_classic

    return np.asarray(isp_classic.gray_world_gains(prepare_frame(frame).planes), np.float64)


def _fallback_color(frame: BayerFrame, wb, ccm, source: str):
    """Fills what the file's metadata lacked: gray-world white balance (the frame's plane
    means, ``isp_classic.gray_world_gains``) and/or the identity colour matrix (camera RGB
    taken as linear sRGB). Returns (wb [3], ccm [3, 3], color_source starting with
    ``FALLBACK``)."""
    what = []
    if wb is None:
        wb = _gray_world(frame)
        what.append("gray-world white balance")
    if ccm is None:
        ccm = np.eye(3)
        what.append("an identity colour matrix (camera RGB as sRGB)")
    return wb, ccm, f"{FALLBACK}{source}: {' and '.join(what)}"


def _libraw_color_source(raw_obj, wb, ccm) -> str:
    """The ``color_source`` line of ``camera_color``'s result (a ``FALLBACK`` line's start
    when a part is None)."""
    desc = _desc(raw_obj)
    if wb is None:
        wb_part = "no white balance in the file"
    elif _gains(raw_obj.camera_whitebalance, desc) is not None:
        wb_part = "as-shot white balance"
    else:
        wb_part = "daylight white balance (no as-shot one)"
    cm = np.asarray(raw_obj.color_matrix, np.float64)
    if ccm is None:
        cm_part = "no colour matrix"
    elif cm.shape[0] == 3 and np.any(cm != 0):
        cm_part = "colour matrix (rgb_cam)"
    else:
        cm_part = "colour matrix from rgb_xyz_matrix (dcraw)"
    return f"LibRaw's camera table: {wb_part}, {cm_part}"


def dng_color(tags: "dng_tags.DngColorTags", frame: BayerFrame):
    """(wb_gains [3], ccm [3, 3], color_source) of a DNG from its own tags.

    With a 3-colour ColorMatrix1 and the scene white (AsShotNeutral or AsShotWhiteXY):
    ``color.dng_camera_to_srgb`` (the DNG SDK's ColorMatrix1/2 + ForwardMatrix1/2
    interpolation by the white's colour temperature). With a ColorMatrix but no scene
    white: the same with the gray-world neutral (a fallback line). Without a ColorMatrix:
    AsShotNeutral's white balance (else gray world) and the identity matrix (a fallback
    line). A singular calibration (ValueError from the colour maths) falls back too.
    """
    cm1, cm2 = tags.color_matrix1, tags.color_matrix2
    names = "ColorMatrix1/2" if cm2 is not None else "ColorMatrix1"
    if tags.forward_matrix1 is not None:
        names += " + ForwardMatrix1/2" if tags.forward_matrix2 is not None else " + ForwardMatrix1"
    neutral = tags.as_shot_neutral
    three = cm1 is not None and cm1.shape == (3, 3) and (cm2 is None or cm2.shape == (3, 3))
    if neutral is not None and (neutral.size != 3 or not np.all(neutral > 0)):
        neutral = None
    if not three:
        wb = None if neutral is None else neutral[1] / neutral
        why = "no ColorMatrix" if cm1 is None else f"a {cm1.shape[0]}-colour ColorMatrix"
        return _fallback_color(frame, wb, None, f"the DNG has {why}" + (
            " (white balance from its AsShotNeutral)" if wb is not None else " and no AsShotNeutral"))
    fallback_white = neutral is None and tags.as_shot_white_xy is None
    if fallback_white:
        neutral = 1.0 / _gray_world(frame)
    kw = dict(color_matrix2=cm2, illuminant1=tags.calibration_illuminant1,
              illuminant2=tags.calibration_illuminant2, forward_matrix1=tags.forward_matrix1,
              forward_matrix2=tags.forward_matrix2, camera_calibration1=tags.camera_calibration1,
              camera_calibration2=tags.camera_calibration2, analog_balance=tags.analog_balance)
    try:
        c = color.dng_camera_to_srgb(cm1, neutral, white_xy=tags.as_shot_white_xy, **kw)
    except (ValueError, np.linalg.LinAlgError) as e:
        return _fallback_color(frame, None if fallback_white else neutral[1] / neutral, None,
                               f"the DNG's {names} is unusable ({e})")
    white = "AsShotNeutral" if tags.as_shot_neutral is not None else "AsShotWhiteXY"
    detail = f"scene white {c.cct:.0f} K" + (f", {c.weight1:.2f} of the first calibration"
                                               if cm2 is not None else "")
    if fallback_white:
        return c.wb_gains, c.ccm, f"{FALLBACK}DNG {names} with a gray-world white (no AsShotNeutral; {detail})"
    return c.wb_gains, c.ccm, f"DNG {names} + {white} ({detail})"



# ---------------------------------------------------------------------------
# Colour.


def pad_planes(planes: np.ndarray, multiple: int) -> np.ndarray:
    h, w = planes.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not ph and not pw:
        return planes
    mode = "reflect" if ph < h and pw < w else "symmetric"
    return np.pad(planes, ((0, ph), (0, pw), (0, 0)), mode=mode)


def image_to_unit(img) -> np.ndarray:
    """sRGB image (uint8 / uint16 / float in [0, 1]) [H, W, 3 or 4] -> float32 [H, W, 3]."""
    a = np.asarray(img)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise ValueError(f"colour image must be RGB [H, W, 3], got shape {a.shape}")
    a = a[..., :3]
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 65535.0
    return np.clip(a.astype(np.float32), 0.0, 1.0)


# ---------------------------------------------------------------------------
# Files.


def read_bayer_image(path: str, black: Level, white: Level, cfa: str) -> BayerFrame:
    """A single-channel Bayer PNG/TIFF -> BayerFrame (codes as stored)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        mode = im.mode
        arr = np.asarray(im)
    if arr.ndim != 2 or mode in ("P", "PA", "1"):
        raise InputError(f"not a single-channel Bayer mosaic (PIL mode {mode}, shape {arr.shape})")
    return BayerFrame(mosaic=arr, cfa=cfa, black_level=black, white_level=white)


@contextlib.contextmanager
def _libraw_stderr():
    """Collects what LibRaw prints on the process's stderr (fd 2) meanwhile, e.g. "Unexpected
    end of file" for a truncated file, into the yielded list (one string) instead of the terminal."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    text = []
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield text
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text.append(tmp.read().decode("utf-8", "replace"))


def read_camera_raw(path: str) -> BayerFrame:
    """A camera RAW (via rawpy / LibRaw) -> BayerFrame with its colour and exposure
    (``frame_from_rawpy(r, path)``: a DNG's own tags, else LibRaw's tables, else a fallback named
    in ``color_source``; this function logs nothing, the caller reports ``color_source``).
    InputError in one line for a file LibRaw cannot read (naming a truncated file as such),
    ValueError for a non-Bayer one."""
    import rawpy

    with _libraw_stderr() as printed:
        try:
            with rawpy.imread(path) as r:
                return frame_from_rawpy(r, path)
        except rawpy.LibRawError as e:
            error = e
    msg = error.args[0] if error.args else type(error).__name__
    if isinstance(msg, bytes):
        msg = msg.decode("utf-8", "replace")
    said = " ".join(ln.split(": ", 1)[-1].strip() for ln in "".join(printed).splitlines() if ln.strip())
    if "end of file" in said.lower() or (isinstance(error, rawpy.LibRawIOError) and os.path.getsize(path) > 0):
        raise InputError(f"cannot read as RAW: the file is truncated or damaged (LibRaw: {said or msg})") from error
    raise InputError(f"cannot read as RAW ({msg}{'; ' + said if said else ''})") from error


def read_color_image(spec: str, src: str, prepared: PreparedFrame) -> np.ndarray:
    """The user's colour condition for input ``src``, in the frame's sensor layout.

    ``spec`` is an sRGB image file (used for every input) or a folder holding
    ``<stem>.<ext>`` per input. The image is in the output's orientation (as
    displayed; as rawpy's ``postprocess`` and photo editors write it) and of
    the output's size. Returns float32 [H, W, 3] in [0, 1], unoriented.
    """
    from PIL import Image

    path = spec
    if os.path.isdir(spec):
        stem = os.path.splitext(os.path.basename(src))[0]
        cands = [os.path.join(spec, stem + e) for e in COLOR_IMAGE_EXTENSIONS]
        cands += [c[:-len(e)] + e.upper() for c, e in zip(cands, COLOR_IMAGE_EXTENSIONS)]
        path = next((c for c in cands if os.path.isfile(c)), None)
        if path is None:
            raise InputError(f"no colour image {stem}.* in {spec}")
    with Image.open(path) as im:
        img = image_to_unit(np.asarray(im.convert("RGB") if im.mode not in ("RGB", "RGBA") else im))
    want = orient(np.zeros((prepared.height, prepared.width, 1), np.uint8), prepared.flip).shape[:2]
    if img.shape[:2] != want:
        raise InputError(f"colour image {path} is {img.shape[1]}x{img.shape[0]}, "
                         f"expected the output size {want[1]}x{want[0]}")
    return unorient(img, prepared.flip)

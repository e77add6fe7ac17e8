"""Camera frames in: Bayer mosaics and camera RAWs to normalised planes, colour, orientation.

Frame geometry
--------------
A mosaic [H, W] in any 2x2 Bayer layout (RGGB, BGGR, GRBG, GBRG) is extended
by one reflected row/column on the sides where the layout does not start on an
R site, and on a side of odd length, so that it becomes an RGGB mosaic with
even sides; it is packed to planes [h, w, 4] in canonical order (R, Gr, Gb, B)
and normalised with the frame's levels (``prepare_frame``). The networks run
on that padded frame; ``finish`` crops their output back to exactly the input
mosaic's H x W (or to the frame's ``crop``, a DNG's DefaultCrop) and applies the
camera's orientation (LibRaw ``sizes.flip``).

Colour
------
The classical ISP itself is ``sampling.make_color_condition()`` (white
balance, Malvar demosaic, colour matrix, sRGB curve). A file's colour
(``frame_from_rawpy``) fills ``wb_gains`` [3], ``ccm`` (white-balanced
camera RGB -> linear sRGB, rows summing to 1), ``baseline_exposure`` (EV) and
``color_source`` (one line naming where they came from):

- a DNG: its own tags (``dng_tags.read_dng_color_tags``) through the DNG SDK's
  maths (``color.dng_camera_to_srgb``: AsShotNeutral or AsShotWhiteXY,
  ColorMatrix1/2, CameraCalibration1/2, AnalogBalance and ForwardMatrix1/2
  interpolated by the scene white's colour temperature, CalibrationIlluminant 255
  with IlluminantData), BaselineExposure + BaselineExposureOffset, its GainMap
  opcodes (applied to the mosaic, ``apply_opcodes``) and its DefaultCrop (``crop``,
  applied to the output) (``dng_frame``);
- other RAWs (``camera_color``), as LibRaw renders them: white balance from
  rawpy's as-shot ``camera_whitebalance`` (LibRaw's cam_mul, refused as LibRaw does
  when a multiplier is <= 0.001 or 100 times another), else ``daylight_whitebalance``
  (pre_mul, a guess: the line starts with "fallback: "), divided by the smallest
  (dcraw/LibRaw scale_colors); colour matrix from rawpy's ``color_matrix`` (LibRaw's
  cmatrix, the camera's own matrix) where LibRaw itself would take it (cmatrix[0][0] >
  0.125), its rows renormalised to sum 1 after folding the second green into G; else
  from ``rgb_xyz_matrix`` (LibRaw's table) as dcraw does
  (``color.srgb_matrix_from_cam_xyz``); else LibRaw's raw colour (identity, a
  guess); the white level lowered to the data's maximum as LibRaw's adjust_maximum
  (threshold ``ADJUST_MAXIMUM_THR``); baseline exposure 0;
- what a file lacks falls back (``_fallback_color``): gray-world white balance,
  identity matrix, and ``color_source`` starts with "fallback: " and says which.

Whenever ``color_source`` starts with "fallback: " the colour was guessed: the
pipeline says so with ``warnings.warn`` (the CLI prints it as a "warning:" line).

Files: ``read_bayer_image`` (single-channel PNG/TIFF mosaics, ZRR style) and
``read_camera_raw`` (anything LibRaw reads, through rawpy, imported only there).
Imports numpy, jax and the core modules.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import warnings
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
        (``read_camera_raw`` fills it; it starts with ``FALLBACK`` whenever any part
        was guessed: gray world, identity, a daylight default; as it does for a frame
        built from arrays without them).
      crop: (top, left, height, width) of the output to keep, in mosaic (sensor)
        coordinates, or None for the whole mosaic: a DNG's DefaultCropOrigin/Size,
        applied after rendering (``prepare_frame``, ``finish``).
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
    crop: Optional[Tuple[int, int, int, int]] = None


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
    the frame is lost. With ``frame.crop`` the output is that part of the mosaic
    (the networks still see the whole frame). ValueError for a mosaic that is not 2-D
    or smaller than 2 x 2, a bad CFA, a crop outside the mosaic, or no signal above the
    black level (an all-black frame would silently give a black output).
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
    if frame.crop is not None:
        ct, cl, ch, cw = (int(v) for v in frame.crop)
        if ct < 0 or cl < 0 or ch < 1 or cw < 1 or ct + ch > height or cl + cw > width:
            raise ValueError(f"crop {cw}x{ch} at ({cl}, {ct}) is outside the {width}x{height} mosaic")
        top, left, height, width = top + ct, left + cl, ch, cw
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
    """White-balance gains [3] (R, G, B) from LibRaw multipliers (by colour index, mapped
    through ``desc``): divided by the smallest, so every gain is >= 1 (dcraw/LibRaw
    scale_colors with highlight mode 0: a pixel clipped in every channel stays white). None
    when there are fewer than 3, a non-finite one, one <= 0.001 (LibRaw's identify refuses
    such cam_mul) or one more than 100 times another."""
    m = np.asarray(mults, np.float64).ravel()
    if m.size < 3 or not np.all(np.isfinite(m)):
        return None
    rgb = np.array([m[_letter_index(desc, ch)] for ch in "RGB"])
    if rgb.min() <= 0.001 or rgb.max() > 100.0 * rgb.min():
        return None
    return (rgb / rgb.min()).astype(np.float32)


#: LibRaw's default ``adjust_maximum_thr`` (LIBRAW_DEFAULT_ADJUST_MAXIMUM_THRESHOLD): when the
#: data's maximum (above black) is below the white level but above this share of it, LibRaw
#: takes it as the white level (``libraw_white_level``).
ADJUST_MAXIMUM_THR = 0.75

#: LibRaw takes the camera's own matrix (cmatrix, rawpy's ``color_matrix``) only when its first
#: entry exceeds this (identify: ``cmatrix[0][0] > 0.125``).
CMATRIX_MIN = 0.125


def libraw_white_level(visible: np.ndarray, black, white: float, cfa: str) -> np.ndarray:
    """The white levels LibRaw renders a non-DNG file with (its adjust_maximum with the default
    threshold ``ADJUST_MAXIMUM_THR``): the data's maximum above black, m = max(code - black of
    its site), replaces the range white - black when 0 < m < white - black and m > 0.75
    (white - black), black being the largest channel black. Returns float64 [4] in canonical
    order (R, Gr, Gb, B): black + m per channel, or ``white`` for each. ``visible``: the mosaic
    [H, W] in the ``cfa`` layout; ``black``: a scalar or [4] canonical."""
    black = np.broadcast_to(np.asarray(black, np.float64).ravel(), (4,))
    top = float(white) - float(np.max(black))
    m = max(float(np.max(visible[i::2, j::2])) - float(black[_site_plane(cfa, i, j)])
            for i in range(2) for j in range(2) if visible[i::2, j::2].size)
    if top > 0 and 0 < m < top and m > ADJUST_MAXIMUM_THR * top:
        return black + m
    return np.full(4, float(white))


def _site_plane(cfa: str, i: int, j: int) -> int:
    """The canonical plane (0 R, 1 Gr, 2 Gb, 3 B) of the mosaic sites (i::2, j::2) of a mosaic
    in the ``cfa`` layout (``raw.cfa_offset``: where the layout's R site sits)."""
    top, left = raw.cfa_offset(cfa)
    return 2 * ((i + top) % 2) + (j + left) % 2


def camera_color(raw_obj) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """(wb_gains [3] or None, ccm [3, 3] or None) of an open rawpy object, as LibRaw renders it.

    White balance: as-shot ``camera_whitebalance`` (by colour index, mapped through
    ``color_desc``), else ``daylight_whitebalance``, as gains divided by the smallest
    (``_gains``); None when neither is usable (the caller falls back to gray world).
    Colour matrix (white-balanced camera RGB -> linear sRGB): rawpy's ``color_matrix``
    (LibRaw's cmatrix, [3, 4] by colour index; every green column is summed into G because
    the demosaic averages both greens) when LibRaw would take it (first entry >
    ``CMATRIX_MIN``), its rows renormalised to sum 1 (white stays white); else dcraw's
    construction from ``rgb_xyz_matrix`` (LibRaw's table, XYZ -> camera):
    ``color.srgb_matrix_from_cam_xyz(cam_xyz[R, G, B])``; else None (LibRaw's raw colour,
    identity: a guess).
    """
    desc = _desc(raw_obj)
    wb = _gains(raw_obj.camera_whitebalance, desc)
    if wb is None:
        wb = _gains(getattr(raw_obj, "daylight_whitebalance", []), desc)
    return wb, _libraw_matrix(raw_obj, desc)[0]


def _libraw_matrix(raw_obj, desc: str):
    """(ccm [3, 3] float32 or None, how: "cmatrix" / "cam_xyz" / None) (``camera_color``)."""
    cm = np.asarray(raw_obj.color_matrix, np.float64)
    if cm.ndim == 2 and cm.shape[0] == 3 and cm.shape[1] >= 3 and np.all(np.isfinite(cm)) and cm[0, 0] > CMATRIX_MIN:
        cols = [_letter_index(desc, "R"), _letter_index(desc, "G"), _letter_index(desc, "B")]
        ccm = cm[:, cols].copy()
        for k, ch in enumerate(desc[: cm.shape[1]].upper()):
            if ch == "G" and k != cols[1]:
                ccm[:, 1] += cm[:, k]
        sums = ccm.sum(axis=1, keepdims=True)
        if np.all(np.abs(sums) > 1e-6):
            return (ccm / sums).astype(np.float32), "cmatrix"
    cam_xyz = np.asarray(raw_obj.rgb_xyz_matrix, np.float64)
    if cam_xyz.ndim == 2 and cam_xyz.shape[0] >= 3 and np.all(np.isfinite(cam_xyz)) and np.any(cam_xyz != 0):
        rows = [_letter_index(desc, ch) for ch in "RGB"]
        ccm = color.srgb_matrix_from_cam_xyz(cam_xyz[rows, :3])
        if ccm is not None and np.all(np.isfinite(ccm)):
            return ccm.astype(np.float32), "cam_xyz"
    return None, None


def frame_from_rawpy(raw_obj, path: Optional[str] = None) -> BayerFrame:
    """BayerFrame from an open ``rawpy.RawPy`` (copies the pixels).

    Uses ``raw_image_visible``, the CFA from ``raw_pattern``/``color_desc``
    (``raw.pattern_from_rawpy``), per-channel black levels
    (``black_level_per_channel`` reordered with ``raw.canonical_channel_values``),
    ``white_level`` and the orientation ``sizes.flip``. ``path``: the file ``raw_obj``
    was opened from. When it is a DNG, the picture is the DNG's own (``dng_frame``):
    colour and exposure from its tags, GainMap opcodes applied to the mosaic, DefaultCrop
    as ``crop``. Otherwise LibRaw's (``camera_color``, ``libraw_white_level``); what is
    missing falls back (``_fallback_color``). Without ``path`` the file's own tags cannot
    be read: LibRaw's reading is used and a warning says so (pass the path for the same
    picture as ``read_camera_raw`` and the CLI). ValueError for non-Bayer sensors (no /
    non-2x2 pattern: Foveon, X-Trans, linear DNG) or a 3-channel ``raw_image``.
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
    if path is None:
        warnings.warn("from_rawpy without the file's path: its own DNG tags (colour, BaselineExposure, "
                      "GainMap, DefaultCrop) could not be read; LibRaw's reading is used (pass path= "
                      "for the picture from_file and the CLI give)", UserWarning, stacklevel=3)
    elif dng_tags.is_tiff(path):
        try:
            tags = dng_tags.read_dng_color_tags(path)
        except ValueError as e:  # LibRaw read it: take LibRaw's colour (and say so below)
            log.debug("%s: DNG tags not read (%s)", path, e)
            tags = None
    if tags is not None and tags.is_dng:
        return dng_frame(tags, frame, raw_obj)
    wb, ccm = camera_color(raw_obj)
    source = _libraw_color_source(raw_obj, wb, ccm)
    if wb is None or ccm is None:
        wb, ccm, source = _fallback_color(frame, wb, ccm, source)
    white = libraw_white_level(visible, black, float(raw_obj.white_level), frame.cfa)
    white = float(white[0]) if np.all(white == white[0]) else white.astype(np.float32)  # one level: a scalar
    return dataclasses.replace(frame, white_level=white, wb_gains=np.asarray(wb, np.float32),
                               ccm=np.asarray(ccm, np.float32), baseline_exposure=0.0, color_source=source)


def dng_frame(tags: "dng_tags.DngColorTags", frame: BayerFrame, raw_obj=None) -> BayerFrame:
    """The frame as the DNG specification reads it: ``frame`` (LibRaw's mosaic of the active
    area and levels) with the DNG's colour (``dng_color``), exposure (``tags.exposure``), its
    GainMap opcodes applied (``apply_opcodes``; any other opcode named in one warning) and
    its DefaultCrop (``default_crop``)."""
    wb, ccm, source = dng_color(tags, frame)
    frame = dataclasses.replace(frame, wb_gains=np.asarray(wb, np.float32), ccm=np.asarray(ccm, np.float32),
                                baseline_exposure=tags.exposure, color_source=source)
    frame = apply_opcodes(frame, tags, raw_obj)
    return dataclasses.replace(frame, crop=default_crop(tags, frame.mosaic.shape))


def default_crop(tags: "dng_tags.DngColorTags", shape) -> Optional[Tuple[int, int, int, int]]:
    """(top, left, height, width) of a DNG's DefaultCropOrigin/Size in the active area of
    ``shape`` [H, W], rounded to whole pixels, or None (no crop tags; a DefaultScale other
    than 1, whose crop is in scaled units, logged; a crop that does not fit, logged)."""
    if tags.default_crop_size is None:
        return None
    if tags.default_scale is not None and any(abs(v - 1.0) > 1e-9 for v in tags.default_scale):
        log.info("DefaultScale %s is not 1: the DefaultCrop is not applied", tags.default_scale)
        return None
    x, y = tags.default_crop_origin or (0.0, 0.0)
    w, h = tags.default_crop_size
    top, left, height, width = (int(round(v)) for v in (y, x, h, w))
    if top < 0 or left < 0 or height < 1 or width < 1 or top + height > shape[0] or left + width > shape[1]:
        log.info("DefaultCrop %dx%d at (%d, %d) does not fit the %dx%d image: not applied",
                 width, height, left, top, shape[1], shape[0])
        return None
    if (top, left, height, width) == (0, 0, shape[0], shape[1]):
        return None
    return top, left, height, width


def _site_levels(level, cfa: str, shape) -> np.ndarray:
    """A per-channel level (scalar or 4 values in canonical order) at every site of a mosaic
    [H, W] in the ``cfa`` layout: float64 [H, W]."""
    v = np.broadcast_to(np.asarray(level, np.float64).ravel(), (4,)) if np.size(level) in (1, 4) else None
    if v is None:
        raise ValueError(f"a level is a scalar or 4 values, got {level!r}")
    out = np.empty(shape, np.float64)
    for i in range(2):
        for j in range(2):
            out[i::2, j::2] = v[_site_plane(cfa, i, j)]
    return out


def apply_opcodes(frame: BayerFrame, tags: "dng_tags.DngColorTags", raw_obj=None) -> BayerFrame:
    """``frame`` with the DNG's GainMap opcodes applied to its mosaic (float32 codes), each in
    the stage its list names (DNG 1.7.1 chapter 7): OpcodeList1 on the stored codes (the raw
    image with its margins when ``raw_obj`` gives them, limited to the white level); OpcodeList2
    on the linearised values (code - black) / (white - black), limited to 1; OpcodeList3
    (after demosaicing, per colour plane) on each site of the mosaic by its colour, limited to
    1, an exact equivalent for a gain that varies slowly against the 2-px Bayer cell. Every
    other opcode is named in one warning (not applied)."""
    if tags.other_opcodes:
        names = ", ".join(f"{name} (OpcodeList{k})" for k, name in tags.other_opcodes)
        warnings.warn(f"DNG opcodes not applied: {names}", UserWarning, stacklevel=4)
    if not tags.gain_maps:
        return frame
    m = np.asarray(frame.mosaic, np.float64)
    white = float(np.max(np.asarray(frame.white_level, np.float64)))
    list1 = [g for g in tags.gain_maps if g.list_tag == 1]
    if list1:
        full, (t, l) = m, (0, 0)
        if raw_obj is not None:
            try:
                full = np.asarray(raw_obj.raw_image, np.float64)
                sz = raw_obj.sizes
                t, l = int(sz.top_margin), int(sz.left_margin)
            except Exception:  # noqa: BLE001 -- no raw_image: the visible area is the image
                full, (t, l) = m, (0, 0)
        for g in list1:
            full = dng_tags.apply_gain_map(full, g, clip=white)
        m = np.asarray(full, np.float64)[t:t + m.shape[0], l:l + m.shape[1]]
    later = [g for g in tags.gain_maps if g.list_tag in (2, 3)]
    if later:
        blk = _site_levels(frame.black_level, frame.cfa, m.shape)
        rng = _site_levels(frame.white_level, frame.cfa, m.shape) - blk
        lin = (m - blk) / rng
        for g in later:
            if g.list_tag == 2:
                lin = dng_tags.apply_gain_map(lin, g, clip=1.0)
            else:
                lin = _apply_plane_gain_map(lin, g, frame.cfa)
        m = blk + lin * rng
    return dataclasses.replace(frame, mosaic=m.astype(np.float32))


def _apply_plane_gain_map(lin: np.ndarray, gm, cfa: str) -> np.ndarray:
    """An OpcodeList3 GainMap (planes of the demosaiced RGB image: 0 R, 1 G, 2 B) on a
    linearised mosaic: each site gets the gain of its colour's plane at its position."""
    colour = np.empty(lin.shape, np.int64)
    for i in range(2):
        for j in range(2):
            colour[i::2, j::2] = (0, 1, 1, 2)[_site_plane(cfa, i, j)]
    rgb = np.repeat(lin[..., None], 3, axis=-1)
    rgb = dng_tags.apply_gain_map(rgb, gm, clip=1.0)
    return np.take_along_axis(rgb, colour[..., None], axis=-1)[..., 0]


# ---------------------------------------------------------------------------
# Colour calibration of a file: DNG tags, LibRaw's tables, fallback.

FALLBACK = "fallback: "  # the start of ``color_source`` when any part of a file's colour was guessed

log = logging.getLogger(__name__)


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
    """The ``color_source`` line of ``camera_color``'s result; it starts with ``FALLBACK`` when
    the white balance is LibRaw's daylight default (a guess); a part that is None is named
    and ``_fallback_color`` adds the prefix."""
    desc = _desc(raw_obj)
    daylight = wb is not None and _gains(raw_obj.camera_whitebalance, desc) is None
    if wb is None:
        wb_part = "no white balance in the file"
    elif daylight:
        wb_part = "LibRaw's daylight white balance (no usable as-shot one)"
    else:
        wb_part = "as-shot white balance"
    how = _libraw_matrix(raw_obj, desc)[1]
    cm_part = {"cmatrix": "the camera's colour matrix (cmatrix, rows renormalised)",
               "cam_xyz": "colour matrix from LibRaw's rgb_xyz_matrix (dcraw)"}.get(how, "no colour matrix")
    line = f"LibRaw's camera table: {wb_part}, {cm_part}"
    return (FALLBACK + line) if daylight and ccm is not None else line


def dng_color(tags: "dng_tags.DngColorTags", frame: BayerFrame):
    """(wb_gains [3], ccm [3, 3], color_source) of a DNG from its own tags.

    With a 3-colour ColorMatrix1 and the scene white (AsShotNeutral or AsShotWhiteXY):
    ``color.dng_camera_to_srgb`` (the DNG SDK's ColorMatrix1/2, CameraCalibration1/2,
    AnalogBalance and ForwardMatrix1/2 interpolation by the white's colour temperature;
    CalibrationIlluminant 255 with its IlluminantData's xy). With a ColorMatrix but no
    scene white: the same with the gray-world neutral (a fallback line). Without a
    ColorMatrix: AsShotNeutral's white balance (else gray world) and the identity matrix (a
    fallback line). A singular calibration (ValueError from the colour maths) falls back too.
    """
    cm1, cm2 = tags.color_matrix1, tags.color_matrix2
    names = "ColorMatrix1/2" if cm2 is not None else "ColorMatrix1"
    fms = [k for k, m in (("1", tags.forward_matrix1), ("2", tags.forward_matrix2)) if m is not None]
    if fms:
        names += " + ForwardMatrix" + "/".join(fms)
    neutral = tags.as_shot_neutral
    three = cm1 is not None and cm1.shape == (3, 3) and (cm2 is None or cm2.shape == (3, 3))
    if neutral is not None and (neutral.size != 3 or not np.all(neutral > 0)):
        neutral = None
    if not three:
        wb = None if neutral is None else neutral.max() / neutral
        why = "no ColorMatrix" if cm1 is None else f"a {cm1.shape[0]}-colour ColorMatrix"
        return _fallback_color(frame, wb, None, f"the DNG has {why}" + (
            " (white balance from its AsShotNeutral)" if wb is not None else " and no AsShotNeutral"))
    fallback_white = neutral is None and tags.as_shot_white_xy is None
    if fallback_white:
        neutral = 1.0 / _gray_world(frame)
    three_or_none = lambda m: m if m is not None and m.shape == (3, 3) else None  # noqa: E731
    kw = dict(color_matrix2=cm2, illuminant1=tags.calibration_illuminant1,
              illuminant2=tags.calibration_illuminant2, forward_matrix1=three_or_none(tags.forward_matrix1),
              forward_matrix2=three_or_none(tags.forward_matrix2),
              camera_calibration1=three_or_none(tags.camera_calibration1),
              camera_calibration2=three_or_none(tags.camera_calibration2),
              analog_balance=tags.analog_balance if tags.analog_balance is not None
              and tags.analog_balance.size == 3 and np.all(tags.analog_balance > 0) else None,
              illuminant_xy1=tags.illuminant_xy1, illuminant_xy2=tags.illuminant_xy2)
    try:
        c = color.dng_camera_to_srgb(cm1, neutral, white_xy=tags.as_shot_white_xy, **kw)
    except (ValueError, np.linalg.LinAlgError) as e:
        return _fallback_color(frame, None if fallback_white else neutral.max() / neutral, None,
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

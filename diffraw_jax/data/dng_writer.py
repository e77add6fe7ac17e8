"""Phone-like camera RAW files (DNG) of synthetic scenes, for trying ``diffraw`` end to end.

    python -m diffraw_jax.data.dng_writer --out DIR [--num 1] [--height 256] [--width 384] [--seed 0]
        [--orientation 1]

Each file ``DIR/synthetic_<i>.dng`` holds the RGGB mosaic that
``diffraw_jax.data.synthetic_zrr.make_pair`` unprocesses from a scene (10-bit codes, black
level 63, white level 1020, the same camera model as the synthetic training
data), written with pidng and readable by LibRaw/rawpy like a camera's DNG, with the
true calibration of that RAW (``calibration_tags``: AsShotNeutral = 1 / the
generator's white-balance gains, ColorMatrix1 under D65 and ForwardMatrix1 from
its colour matrix, BaselineExposure = -log2 of its exposure);
``DIR/synthetic_<i>_dslr.jpg`` is the matching sharp "DSLR" image. Scenes come
from the test split of ``--seed`` (index 1000 + i, so they are not among the
synthetic test pairs). ``--orientation`` is the TIFF orientation tag (1: none,
6: rotate 90 degrees clockwise to display, 3: 180, 8: 90 counter-clockwise).
"""
from __future__ import annotations

import argparse
import os
import sys
from fractions import Fraction
from typing import Optional

import numpy as np

from diffraw_jax import color
from diffraw_jax.data import synthetic_zrr

#: DNG CFAPattern codes (0 R, 1 G, 2 B) of each 2x2 layout, row-major.
CFA_CODES = {"RGGB": [0, 1, 1, 2], "BGGR": [2, 1, 1, 0], "GRBG": [1, 0, 2, 1], "GBRG": [1, 2, 0, 1]}


def _rationals(values, count: int) -> list:
    """``count`` floats -> TIFF (S)RATIONAL pairs [[numerator, denominator], ...], each the
    closest fraction with a denominator up to 10**6 (values exact to ~1e-6 relative; fractions
    with small denominators, like 1/2 or 3/4, exactly)."""
    v = np.asarray(values, np.float64).ravel()
    if v.size != count or not np.all(np.isfinite(v)):
        raise ValueError(f"expected {count} finite values, got {np.asarray(values).tolist()}")
    if np.abs(v).max() >= 2000:
        raise ValueError(f"value out of the (S)RATIONAL range of this writer: {v.tolist()}")
    return [[f.numerator, f.denominator] for f in (Fraction(float(x)).limit_denominator(10**6) for x in v)]


def calibration_tags(ccm, wb_gains, exposure: float = 1.0) -> dict:
    """The DNG colour tags of a camera whose white-balanced RGB maps to linear sRGB by ``ccm``.

    ``ccm`` [3, 3] (white-balanced camera RGB -> linear sRGB D65, rows summing to 1: the
    synthetic generator's ``ccm``), ``wb_gains`` [3] (r, 1, b: raw camera RGB times these is
    white-balanced; the generator's ``gains``), ``exposure`` (the fraction of the white level a
    white reaches; the generator's ``exposure``). Returns ``write_dng`` keywords:

    - ``neutral`` = 1 / wb_gains (G = 1): the raw camera response to white (AsShotNeutral);
    - ``color_matrix1`` = s diag(neutral) inv(ccm) inv(XYZ_FROM_SRGB) under ``illuminant1`` = 21
      (D65): raw camera RGB of an XYZ colour (the sRGB scene's white is D65, so this is the D65
      calibration). s scales it, as the DNG SDK normalises a ColorMatrix, so that the D50
      white's largest camera value is 1 (the scale has no effect on the colour);
    - ``forward_matrix1`` = Bradford(D65 -> D50) XYZ_FROM_SRGB ccm: white-balanced camera RGB
      -> XYZ relative to D50 (camera white -> the D50 white, as the spec requires);
    - ``baseline_exposure`` = -log2(exposure) EV: a white at ``exposure`` of the white level
      renders at 1.0.

    The DNG SDK's colour of such a file (``color.dng_camera_to_srgb``) is this ``ccm`` and
    ``wb_gains`` again.
    """
    ccm = np.asarray(ccm, np.float64).reshape(3, 3)
    gains = np.asarray(wb_gains, np.float64).ravel()
    neutral = gains[1] / gains
    cm = np.diag(neutral) @ np.linalg.inv(ccm) @ np.linalg.inv(color.XYZ_FROM_SRGB)
    cm = cm / (cm @ color.WHITE_D50_XYZ).max()
    d65 = color.xyz_to_xy(color.WHITE_D65_XYZ)
    fm = color.bradford_adaptation(d65, color.WHITE_D50_XY) @ color.XYZ_FROM_SRGB @ ccm
    return {"neutral": tuple(neutral), "color_matrix1": cm, "illuminant1": 21, "forward_matrix1": fm,
            "baseline_exposure": float(-np.log2(exposure))}


def write_dng(path: str, mosaic: np.ndarray, *, cfa: str = "RGGB", black=synthetic_zrr.BLACK_LEVEL,
              white: int = synthetic_zrr.WHITE_LEVEL, neutral=(1.0, 1.0, 1.0), orientation: int = 1,
              cfa_dim=(2, 2), cfa_codes=None, linear: bool = False, monochrome: bool = False,
              color_matrix1=None, color_matrix2=None, illuminant1: int = 21, illuminant2: int = 17,
              forward_matrix1=None, forward_matrix2=None, baseline_exposure: Optional[float] = None,
              no_color: bool = False) -> str:
    """Writes the Bayer mosaic uint16 [H, W] (``cfa`` layout) as an uncompressed DNG.

    ``black``: one level or four, per position of the 2x2 cell (row-major);
    ``neutral``: the as-shot neutral (camera response to white, G = 1).
    Colour calibration (DNG 1.4 tags; ``calibration_tags`` builds them for a known camera):
    ``color_matrix1`` [3, 3] ColorMatrix1 (XYZ -> camera RGB, SRATIONAL) under the EXIF
    light source ``illuminant1`` (CalibrationIlluminant1: 21 D65, 17 Standard light A, ...;
    identity under D65 when None), ``color_matrix2`` [3, 3] and ``illuminant2`` the second
    calibration (written only with a matrix), ``forward_matrix1/2`` [3, 3] ForwardMatrix1/2
    (white-balanced camera -> XYZ D50), ``baseline_exposure`` BaselineExposure (EV, SRATIONAL;
    not written when None). ``no_color=True`` writes no colour metadata at all (no ColorMatrix,
    CalibrationIlluminant or AsShotNeutral): a file whose reader must fall back.
    ``cfa_dim``/``cfa_codes`` write another colour filter array (e.g. X-Trans's 6x6;
    tests use it for files the reader must reject); ``linear=True`` writes a
    3-channel linear DNG [H, W, 3] instead of a mosaic; ``monochrome=True`` a one-channel
    LinearRaw DNG [H, W] (a monochrome camera: no colour filter array).
    Returns the path written (pidng appends ``.dng`` when it is missing).
    """
    from pidng.core import RAW2DNG, DNGTags, Tag
    from pidng.defs import DNGVersion, PhotometricInterpretation

    mosaic = np.ascontiguousarray(np.asarray(mosaic, np.uint16))
    if mosaic.ndim != (3 if linear else 2):
        raise ValueError(f"expected {'an image [H, W, 3]' if linear else 'a Bayer mosaic [H, W]'}, "
                         f"got shape {mosaic.shape}")
    h, w = mosaic.shape[:2]
    blacks = [int(b) for b in np.broadcast_to(np.asarray(black), (4,))]
    t = DNGTags()
    for tag, v in ((Tag.ImageWidth, w), (Tag.ImageLength, h), (Tag.TileWidth, w), (Tag.TileLength, h),
                   (Tag.Orientation, int(orientation)), (Tag.BitsPerSample, 16),
                   (Tag.BlackLevelRepeatDim, [2, 2]),
                   (Tag.BlackLevel, blacks), (Tag.WhiteLevel, int(white)),
                   (Tag.Make, "diffraw-jax"), (Tag.Model, "synthetic phone"),
                   (Tag.DNGVersion, DNGVersion.V1_4), (Tag.DNGBackwardVersion, DNGVersion.V1_2)):
        t.set(tag, v)
    if not no_color:
        t.set(Tag.CalibrationIlluminant1, int(illuminant1))
        t.set(Tag.ColorMatrix1, _rationals(np.eye(3) if color_matrix1 is None else color_matrix1, 9))
        t.set(Tag.AsShotNeutral, _rationals(neutral, 3))
        if color_matrix2 is not None:
            t.set(Tag.CalibrationIlluminant2, int(illuminant2))
            t.set(Tag.ColorMatrix2, _rationals(color_matrix2, 9))
        for tag, m in ((Tag.ForwardMatrix1, forward_matrix1), (Tag.ForwardMatrix2, forward_matrix2)):
            if m is not None:
                t.set(tag, _rationals(m, 9))
    if baseline_exposure is not None:
        t.set(Tag.BaselineExposure, _rationals([baseline_exposure], 1))
    if linear or monochrome:
        t.set(Tag.PhotometricInterpretation, PhotometricInterpretation.Linear_Raw)
        t.set(Tag.SamplesPerPixel, 1 if monochrome else 3)
    else:
        t.set(Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array)
        t.set(Tag.SamplesPerPixel, 1)
        t.set(Tag.CFARepeatPatternDim, list(cfa_dim))
        t.set(Tag.CFAPattern, list(cfa_codes or CFA_CODES[cfa]))
    directory, name = os.path.split(os.path.abspath(path))
    conv = RAW2DNG()
    conv.options(t, path=directory, compress=False)
    conv.convert(mosaic, filename=name[:-4] if name.lower().endswith(".dng") else name)
    return os.path.join(directory, name if name.lower().endswith(".dng") else name + ".dng")


def _pair_with_info(seed: int, index: int, size: int):
    """``synthetic_zrr.make_pair(seed, "test", index, size)`` and the ``unprocess`` info of its RAW
    (ccm, gains, exposure, ...): (raw uint16 [size, size], dslr uint8 [size, size, 3], info)."""
    if size % 2:
        raise ValueError(f"size must be even (2x2 Bayer cells), got {size}")
    rng = np.random.default_rng([seed, synthetic_zrr.SPLIT_IDS["test"], index])
    margin = 8
    scene = synthetic_zrr.render_scene(rng, size + 2 * margin)
    dslr = np.round(scene[margin:margin + size, margin:margin + size] * 255).astype(np.uint8)
    raw, info = synthetic_zrr.unprocess(scene, rng, margin=margin)
    return raw, dslr, info


def synthetic_dng(out_dir: str, index: int, height: int, width: int, seed: int = 0,
                  orientation: int = 1) -> str:
    """Writes ``synthetic_<index>.dng`` (with the true calibration of its RAW: ``calibration_tags``
    of the generator's ccm, gains and exposure) and ``synthetic_<index>_dslr.jpg``; returns the
    DNG path."""
    from PIL import Image

    if height % 2 or width % 2 or min(height, width) < 16:
        raise ValueError(f"height and width must be even and >= 16, got {height}x{width}")
    size = max(height, width)
    raw, dslr, info = _pair_with_info(seed, 1000 + index, size)
    raw, dslr = raw[:height, :width], dslr[:height, :width]
    os.makedirs(out_dir, exist_ok=True)
    path = write_dng(os.path.join(out_dir, f"synthetic_{index}.dng"), raw, orientation=orientation,
                     **calibration_tags(info["ccm"], info["gains"], info["exposure"]))
    ref = dslr
    if orientation in (3, 6, 8):  # the DSLR reference as the DNG is displayed
        ref = np.rot90(dslr, {3: 2, 6: -1, 8: 1}[orientation])
    Image.fromarray(np.ascontiguousarray(ref)).save(os.path.join(out_dir, f"synthetic_{index}_dslr.jpg"),
                                                    quality=95)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m diffraw_jax.data.dng_writer", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--num", type=int, default=1)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--orientation", type=int, default=1, choices=[1, 3, 6, 8])
    a = p.parse_args(argv)
    try:
        for i in range(a.num):
            print(f"wrote {synthetic_dng(a.out, i, a.height, a.width, a.seed, a.orientation)}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

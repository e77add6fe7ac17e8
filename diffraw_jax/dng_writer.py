"""Phone-like camera RAW files (DNG) of synthetic scenes, for trying ``diffraw`` end to end.

    python -m diffraw_jax.dng_writer --out DIR [--num 1] [--height 256] [--width 384] [--seed 0]
        [--orientation 1]

Each file ``DIR/synthetic_<i>.dng`` holds the RGGB mosaic that
``diffraw_jax.synthetic_zrr.make_pair`` unprocesses from a scene (10-bit codes, black
level 63, white level 1020, the same camera model as the synthetic training
data), written with pidng and readable by LibRaw/rawpy like a camera's DNG;
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

import numpy as np

from diffraw_jax import synthetic_zrr

#: DNG CFAPattern codes (0 R, 1 G, 2 B) of each 2x2 layout, row-major.
CFA_CODES = {"RGGB": [0, 1, 1, 2], "BGGR": [2, 1, 1, 0], "GRBG": [1, 0, 2, 1], "GBRG": [1, 2, 0, 1]}


def write_dng(path: str, mosaic: np.ndarray, *, cfa: str = "RGGB", black=synthetic_zrr.BLACK_LEVEL,
              white: int = synthetic_zrr.WHITE_LEVEL, neutral=(1.0, 1.0, 1.0), orientation: int = 1,
              cfa_dim=(2, 2), cfa_codes=None, linear: bool = False, monochrome: bool = False) -> str:
    """Writes the Bayer mosaic uint16 [H, W] (``cfa`` layout) as an uncompressed DNG.

    ``black``: one level or four, per position of the 2x2 cell (row-major);
    ``neutral``: the as-shot neutral (camera response to white, G = 1).
    ``cfa_dim``/``cfa_codes`` write another colour filter array (e.g. X-Trans's 6x6;
    tests use it for files the reader must reject); ``linear=True`` writes a
    3-channel linear DNG [H, W, 3] instead of a mosaic; ``monochrome=True`` a one-channel
    LinearRaw DNG [H, W] (a monochrome camera: no colour filter array).
    Returns the path written (pidng appends ``.dng`` when it is missing).
    """
    from pidng.core import RAW2DNG, DNGTags, Tag
    from pidng.defs import CalibrationIlluminant, DNGVersion, PhotometricInterpretation

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
                   (Tag.CalibrationIlluminant1, CalibrationIlluminant.D65),
                   (Tag.ColorMatrix1, [[1, 1], [0, 1], [0, 1], [0, 1], [1, 1], [0, 1], [0, 1], [0, 1], [1, 1]]),
                   (Tag.AsShotNeutral, [[f.numerator, f.denominator] for f in
                                        (Fraction(float(n)).limit_denominator(1000) for n in neutral)]),
                   (Tag.Make, "diffraw-jax"), (Tag.Model, "synthetic phone"),
                   (Tag.DNGVersion, DNGVersion.V1_4), (Tag.DNGBackwardVersion, DNGVersion.V1_2)):
        t.set(tag, v)
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


def synthetic_dng(out_dir: str, index: int, height: int, width: int, seed: int = 0,
                  orientation: int = 1) -> str:
    """Writes ``synthetic_<index>.dng`` and ``synthetic_<index>_dslr.jpg``; returns the DNG path."""
    from PIL import Image

    if height % 2 or width % 2 or min(height, width) < 16:
        raise ValueError(f"height and width must be even and >= 16, got {height}x{width}")
    size = max(height, width)
    raw, dslr = synthetic_zrr.make_pair(seed, "test", 1000 + index, size)
    raw, dslr = raw[:height, :width], dslr[:height, :width]
    os.makedirs(out_dir, exist_ok=True)
    path = write_dng(os.path.join(out_dir, f"synthetic_{index}.dng"), raw, orientation=orientation)
    ref = dslr
    if orientation in (3, 6, 8):  # the DSLR reference as the DNG is displayed
        ref = np.rot90(dslr, {3: 2, 6: -1, 8: 1}[orientation])
    Image.fromarray(np.ascontiguousarray(ref)).save(os.path.join(out_dir, f"synthetic_{index}_dslr.jpg"),
                                                    quality=95)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m diffraw_jax.dng_writer", description=__doc__.split("\n\n")[0])
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

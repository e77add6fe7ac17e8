"""Inference: CFA handling on real DNGs, tiling and blending, export, and the CLI.

One tiny DiffRAW model is trained for 2 steps (module fixture); frames are
small (64x96) and sampling uses 4 DTDM-DDIM steps, so the file runs in about a
minute on 2 CPU cores with the persistent compile cache of conftest.py.
"""
import json
import os
import shutil
import subprocess
import sys
from fractions import Fraction

import jax
import numpy as np
import pytest

from configs import test as test_config
from diffraw_jax import infer, raw, sampling, train
from diffraw_jax import pipeline as pl
from tests.test_train import tiny_source

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 64, 96            # canonical frame of the synthetic scene
TILE, OVERLAP = 32, 8    # tiny U-Net: tiles must be multiples of 2
STEPS = 4
WHITE = 1020
# Black level of each canonical plane (R, Gr, Gb, B): distinct, so a wrong
# reordering of rawpy's per-channel levels changes the normalised data.
BLACK = np.array([60, 61, 62, 64])
NEUTRAL = (0.5, 1.0, 1.0 / 3.0)  # as-shot neutral: camera R = G/2, B = G/3 for gray
CFA_CODES = {"RGGB": [0, 1, 1, 2], "BGGR": [2, 1, 1, 0], "GRBG": [1, 0, 2, 1], "GBRG": [1, 2, 0, 1]}


# ----------------------------------------------------------------------------- helpers


def scene(h, w, seed=0):
    """A smooth-ish linear RGB scene [h, w, 3] in [0.05, 0.9]: gradients, waves, soft blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([0.3 + 0.3 * xx + 0.1 * np.sin(7 * yy), 0.4 + 0.2 * np.cos(5 * xx + 3 * yy),
                    0.2 + 0.4 * yy], -1)
    for _ in range(4):
        cy, cx, r = rng.uniform(0, 1, 3) * [h, w, 0.15 * max(h, w)] + [0, 0, 4]
        blob = np.exp(-(((np.mgrid[0:h, 0:w][0] - cy) ** 2 + (np.mgrid[0:h, 0:w][1] - cx) ** 2) / r**2))
        img = img + 0.2 * blob[..., None] * rng.uniform(-1, 1, 3)
    return np.clip(img, 0.05, 0.9)


def mosaic(img, pattern, black=BLACK, white=WHITE, neutral=(1, 1, 1)):
    """Codes uint16 [h, w] of ``img`` sampled in ``pattern``, with the camera's
    channel response ``neutral`` and the black level of each pixel's canonical plane."""
    h, w = img.shape[:2]
    top, left = raw.cfa_offset(pattern)
    rows, cols = np.mgrid[0:h, 0:w]
    colour = np.array(CFA_CODES[pattern]).reshape(2, 2)[rows % 2, cols % 2]
    plane = ((rows - top) % 2) * 2 + (cols - left) % 2
    v = np.take_along_axis(img, colour[..., None], -1)[..., 0] * np.asarray(neutral)[colour]
    b = np.asarray(black, np.float64)[plane]
    return np.round(b + v * (white - b)).astype(np.uint16)


def frame_for(pattern, img):
    """The DNG frame of ``pattern`` whose canonical crop is ``img[1:1+H, 1:1+W]`` of a
    [H+2, W+2] scene: RGGB takes it as is, other layouts one row/column more each side."""
    top, left = raw.cfa_offset(pattern)
    return img[1 - top:1 + H + top, 1 - left:1 + W + left]


def write_dng(path, data, pattern="RGGB", *, black=BLACK, white=WHITE, neutral=NEUTRAL,
              cfa_dim=(2, 2), cfa_codes=None, linear=False):
    """A DNG via pidng. ``black``: per canonical plane, written per position of the 2x2 cell."""
    from pidng.core import RAW2DNG, DNGTags, Tag
    from pidng.defs import CalibrationIlluminant, DNGVersion, Orientation, PhotometricInterpretation

    h, w = data.shape[:2]
    t = DNGTags()
    for tag, v in ((Tag.ImageWidth, w), (Tag.ImageLength, h), (Tag.TileWidth, w), (Tag.TileLength, h),
                   (Tag.Orientation, Orientation.Horizontal), (Tag.BitsPerSample, 16),
                   (Tag.WhiteLevel, white), (Tag.CalibrationIlluminant1, CalibrationIlluminant.D65),
                   (Tag.Make, "diffraw-jax"), (Tag.Model, "synthetic"),
                   (Tag.DNGVersion, DNGVersion.V1_4), (Tag.DNGBackwardVersion, DNGVersion.V1_2)):
        t.set(tag, v)
    if linear:
        t.set(Tag.PhotometricInterpretation, PhotometricInterpretation.Linear_Raw)
        t.set(Tag.SamplesPerPixel, 3)
    else:
        t.set(Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array)
        t.set(Tag.SamplesPerPixel, 1)
        t.set(Tag.CFARepeatPatternDim, list(cfa_dim))
        t.set(Tag.CFAPattern, cfa_codes or CFA_CODES[pattern])
    top, left = raw.cfa_offset(pattern)
    t.set(Tag.BlackLevelRepeatDim, [2, 2])
    t.set(Tag.BlackLevel, [int(black[((r - top) % 2) * 2 + (c - left) % 2]) for r in (0, 1) for c in (0, 1)])
    t.set(Tag.ColorMatrix1, [[1, 1], [0, 1], [0, 1], [0, 1], [1, 1], [0, 1], [0, 1], [0, 1], [1, 1]])
    fr = [Fraction(n).limit_denominator(1000) for n in neutral]
    t.set(Tag.AsShotNeutral, [[f.numerator, f.denominator] for f in fr])
    conv = RAW2DNG()
    conv.options(t, path=str(path.parent), compress=False)
    conv.convert(np.ascontiguousarray(data), filename=path.name)
    return path


def read_rawpy(path):
    import rawpy

    with rawpy.imread(str(path)) as r:
        return pl.frame_from_rawpy(r)


def gradient_ratio(img, starts, tile, axis):
    """Mean squared step across tile borders / elsewhere, along ``axis`` of img [H, W, 3]."""
    d = np.sum(np.diff(img, axis=axis) ** 2, axis=-1)  # d[k] = step between k and k+1
    d = d.mean(axis=1 - axis)
    n = img.shape[axis]
    borders = {int(s) for s in starts if s > 0} | {int(s) + tile for s in starts if s + tile < n}
    idx = np.array(sorted(b - 1 for b in borders))
    mask = np.zeros(n - 1, bool)
    mask[idx] = True
    return d[mask].mean() / d[~mask].mean()


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    cfg = test_config.get_config()
    cfg.degradation.enabled = False
    cfg.train.num_train_steps = 2
    wd = str(tmp_path_factory.mktemp("infer_model"))
    train.train_and_evaluate(cfg, wd, data_sources=(tiny_source(), tiny_source(4, seed=1)))
    return wd


@pytest.fixture(scope="module")
def pipe(workdir):
    return pl.DiffRAWPipeline.from_checkpoint(workdir, method="dtdm_ddim", num_steps=STEPS,
                                              color="classic", tile=TILE, overlap=OVERLAP, batch=4)


def variant(p, **kw):
    """The same model with other pipeline options."""
    opts = dict(method=p.method, num_steps=p.num_steps, color="classic", tile=p.tile,
                overlap=p.overlap, batch=p.batch)
    opts.update(kw)
    return pl.DiffRAWPipeline(p.model, p.params, p.schedule, p.s, **opts)


# ----------------------------------------------------------------------------- geometry


def test_tile_origins_and_windows():
    for length, tile, overlap in [(96, 32, 8), (64, 32, 8), (100, 32, 8), (448, 448, 64),
                                  (1000, 448, 64), (34, 32, 8), (4000, 448, 64)]:
        s = pl.tile_origins(length, tile, overlap)
        assert s[0] == 0 and s[-1] == length - tile
        assert np.all(s % 2 == 0), s  # Bayer phase
        if len(s) > 1:
            assert np.all(np.diff(s) > 0) and np.all(tile - np.diff(s) >= overlap), s
        # fewest tiles: with one less, neighbours would overlap by less than `overlap`
        n = len(s)
        assert n <= 2 or (length - tile) / (n - 2) > tile - overlap
        assert (n == 1) == (length == tile)
    with pytest.raises(ValueError, match="smaller than one tile"):
        pl.tile_origins(30, 32, 8)
    # The ramps of two neighbours are a partition of unity over their overlap.
    s = pl.tile_origins(100, 32, 8)
    total = np.zeros(100)
    for i, s0 in enumerate(s):
        lo, hi = pl._axis_overlaps(s, 32, i)
        total[s0:s0 + 32] += pl.ramp(32, lo, hi, floor=0.0)
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    assert pl.ramp(8, 0, 0).min() == 1.0 and pl.ramp(16, 4, 4, floor=0.2).min() == np.float32(0.2)
    r = pl.ramp(16, 4, 4)
    np.testing.assert_allclose(r, r[::-1])
    assert 0 < r[0] < r[1] < r[2] < r[3] < r[4] == 1.0


# ----------------------------------------------------------------------------- CFA


def test_four_cfa_dngs_give_the_same_output(tmp_path, pipe):
    img = scene(H + 2, W + 2)
    outs, frames = {}, {}
    for pattern in CFA_CODES:
        data = mosaic(frame_for(pattern, img), pattern, neutral=NEUTRAL)
        top, left = raw.cfa_offset(pattern)
        assert data.shape == (H + 2 * top, W + 2 * left)
        frame = read_rawpy(write_dng(tmp_path / f"{pattern}.dng", data, pattern))
        assert frame.cfa == pattern
        np.testing.assert_array_equal(frame.black_level, BLACK)  # reordered to R, Gr, Gb, B
        assert frame.white_level == WHITE
        np.testing.assert_allclose(frame.wb_gains, [2.0, 1.0, 3.0], rtol=1e-3)  # 1 / neutral
        np.testing.assert_allclose(frame.ccm.sum(axis=1), 1.0, atol=1e-4)  # white stays white
        frames[pattern] = frame
        outs[pattern] = pipe.process(frame, seed=7)
    ref = outs["RGGB"]
    assert ref.shape == (H, W, 3) and ref.dtype == np.float32
    assert 0.0 <= ref.min() and ref.max() <= 1.0 and ref.std() > 0.01
    for pattern, out in outs.items():
        assert out.shape == (H, W, 3), pattern
        np.testing.assert_allclose(out, ref, atol=1e-5, err_msg=pattern)
    # The same mosaic through the array API (levels in canonical order) agrees too.
    bggr = frames["BGGR"]
    api = pipe(bggr.mosaic, black_level=BLACK, white_level=WHITE, cfa="BGGR", seed=7,
               wb_gains=bggr.wb_gains, ccm=bggr.ccm)
    np.testing.assert_allclose(api, ref, atol=1e-5)
    # A different seed gives a different sample.
    assert np.abs(pipe.process(frames["RGGB"], seed=8) - ref).max() > 1e-3


def test_classic_colour_uses_as_shot_white_balance(tmp_path, pipe):
    # A neutral gray ramp seen by a camera with R = G/2, B = G/3, plus a large blue
    # patch (so gray world would not neutralise it): as-shot WB + the DNG's matrix
    # (rows summing to 1) must give gray where the scene is gray.
    yy, xx = np.mgrid[0:H, 0:W]
    g = 0.2 + 0.5 * xx / W
    img = np.repeat(g[..., None], 3, -1)
    img[: H // 2, : W // 2] = [0.1, 0.2, 0.8]
    frame = read_rawpy(write_dng(tmp_path / "wb.dng", mosaic(img, "RGGB", neutral=NEUTRAL)))
    c = pipe.condition(pl.prepare_planes(frame), wb_gains=frame.wb_gains, ccm=frame.ccm)
    gray = c[H // 2 + 4:-4, 4:-4]
    assert np.abs(gray[..., 0] - gray[..., 1]).max() < 0.02
    assert np.abs(gray[..., 2] - gray[..., 1]).max() < 0.02
    gw = pipe.condition(pl.prepare_planes(frame))  # gray world: the gray is tinted
    assert np.abs(gw[H // 2 + 4:-4, 4:-4, 2] - gw[H // 2 + 4:-4, 4:-4, 1]).mean() > 0.05


# ----------------------------------------------------------------------------- tiling


def test_tiled_output_is_full_size_without_seams(pipe):
    img = scene(H, W, seed=3)
    m = mosaic(img, "RGGB", black=[63] * 4)
    out = pipe(m, black_level=63, white_level=WHITE, seed=1)
    assert out.shape == (H, W, 3)  # 64 x 96 is not a multiple of the 32 tile + overlap grid
    _, tiles, ys, xs = pipe.frame_tiles(H, W)
    assert len(ys) == 3 and len(xs) == 4 and len(tiles) == 12
    rx, ry = gradient_ratio(out, xs, TILE, 1), gradient_ratio(out, ys, TILE, 0)
    assert rx < 1.3 and ry < 1.3, (rx, ry)

    # Control: a sampler whose tiles disagree by a constant (what differing context does).
    fake = variant(pipe)
    fake.sample_tiles = lambda p, w, c, x, kd: x + 0.6 * ((np.asarray(kd)[:, :1, None, None] % 1000) / 1000.0 - 0.5)
    blended = fake(m, black_level=63, white_level=WHITE, seed=1)
    assert gradient_ratio(blended, xs, TILE, 1) < 1.3
    hard = variant(pipe, overlap=0)
    hard.sample_tiles = fake.sample_tiles
    stitched = hard(m, black_level=63, white_level=WHITE, seed=1)
    _, _, _, xs0 = hard.frame_tiles(H, W)
    assert gradient_ratio(stitched, xs0, TILE, 1) > 3.0  # the metric does see seams


def test_one_tile_equals_untiled_and_batch_does_not_matter(pipe):
    img = scene(H, H, seed=4)
    m = mosaic(img, "RGGB", black=[63] * 4)
    one = variant(pipe, tile=H)(m, seed=5)
    untiled = variant(pipe, tile=None)(m, seed=5)
    np.testing.assert_array_equal(one, untiled)
    # ... and both are exactly dtdm.sample on the whole frame with fold_in(key(seed), 0).
    planes = pl.prepare_planes(pl.BayerFrame(m))
    c = pl.classic_condition(planes) * 2.0 - 1.0
    fn = sampling.make_sampler(pipe.model, pipe.schedule, pipe.s, method="dtdm_ddim", num_steps=STEPS)
    ref = fn(pipe.params, planes[None], c[None], c[None], jax.random.fold_in(jax.random.key(5), 0))
    np.testing.assert_allclose(one, np.asarray(sampling.to_unit_range(ref))[0], atol=1e-5)
    # Tiled: the batch size only groups the work.
    a = variant(pipe, batch=1)(m, seed=5)
    b = variant(pipe, batch=3)(m, seed=5)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_frame_smaller_than_a_tile_is_an_error(pipe):
    with pytest.raises(ValueError, match="smaller than one tile"):
        pipe(mosaic(scene(16, 48), "RGGB"), seed=0)
    with pytest.raises(ValueError, match="no signal above the black level"):
        pipe(np.full((H, W), 50, np.uint16), black_level=63, seed=0)
    with pytest.raises(ValueError, match="multiples of 2"):
        variant(pipe, tile=31)


# ----------------------------------------------------------------------------- export


def test_exported_sampler_reproduces_the_in_process_sampler(tmp_path, pipe):
    rng = np.random.default_rng(0)
    b = 2
    w = rng.uniform(0, 1, (b, TILE // 2, TILE // 2, 4)).astype(np.float32)
    c = rng.uniform(-1, 1, (b, TILE, TILE, 3)).astype(np.float32)
    kd = pl.tile_key_data(3, [pl.Tile(0, 0, 0, 0), pl.Tile(0, 1, 0, 24)])
    path = pl.export_sampler(pipe, TILE, str(tmp_path / "sampler.jaxexport"), batch=b)
    exported = pl.load_exported(path)
    assert exported.tile_shape == (TILE, TILE) and exported.batch == b
    got = np.asarray(exported(w, c, c, kd))
    want = np.asarray(pipe.sample_tiles(pipe.params, w, c, c, kd))
    assert got.shape == (b, TILE, TILE, 3)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # The artifact runs in a process that never imports the model code.
    code = ("import sys, numpy as np; from diffraw_jax.pipeline import load_exported; "
            "d = np.load(sys.argv[2]); s = load_exported(sys.argv[1]); "
            "np.save(sys.argv[3], np.asarray(s(d['w'], d['c'], d['c'], d['k']))); "
            "assert 'diffraw_jax.models.unet' not in sys.modules")
    np.savez(tmp_path / "in.npz", w=w, c=c, k=kd)
    subprocess.run([sys.executable, "-c", code, path, str(tmp_path / "in.npz"), str(tmp_path / "out.npy")],
                   check=True, cwd=REPO, env=_env(), timeout=120)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), want, atol=1e-5)


# ----------------------------------------------------------------------------- CLI


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _png(path, arr):
    from PIL import Image

    Image.fromarray(arr).save(path)
    return path


def _errors(text):
    return [line for line in text.splitlines() if line.startswith("error: ")]


def _read_png16(path):
    """Decodes the filter-0, 16-bit RGB PNGs that infer.encode_png16 writes."""
    import struct
    import zlib

    data = open(path, "rb").read()
    pos, idat, size = 8, b"", None
    while pos < len(data):
        n, tag = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if tag == b"IHDR":
            size = struct.unpack(">IIBB", body[:10])
        elif tag == b"IDAT":
            idat += body
        pos += 12 + n
    w, h, depth, ctype = size
    assert depth == 16 and ctype == 2
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * 6)
    assert np.all(rows[:, 0] == 0)
    return rows[:, 1:].copy().view(">u2").reshape(h, w, 3).astype(np.uint16)


def test_cli_end_to_end(tmp_path, workdir):
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    img = scene(H + 2, W + 2, seed=2)
    _png(src / "zrr.png", mosaic(img[1:1 + H, 1:1 + W], "RGGB", black=[63] * 4))
    write_dng(src / "cam.dng", mosaic(frame_for("GBRG", img), "GBRG", neutral=NEUTRAL), "GBRG")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "corrupt.dng").write_bytes(b"not a raw file" * 50)
    (bad / "truncated.png").write_bytes(open(src / "zrr.png", "rb").read()[:100])
    write_dng(bad / "xtrans.dng", np.full((36, 48), 500, np.uint16), cfa_dim=(6, 6),
              cfa_codes=[1, 1, 0, 1, 1, 2, 1, 1, 2, 1, 1, 0, 2, 0, 1, 0, 2, 1,
                         1, 1, 2, 1, 1, 0, 1, 1, 0, 1, 1, 2, 0, 2, 1, 2, 0, 1])
    write_dng(bad / "linear.dng", np.full((32, 48, 3), 500, np.uint16), linear=True)
    write_dng(bad / "rgrg.dng", np.full((64, 96), 500, np.uint16), cfa_codes=[0, 1, 1, 0])
    write_dng(bad / "black.dng", np.full((64, 96), 60, np.uint16))
    _png(bad / "small.png", mosaic(scene(16, 96), "RGGB"))
    _png(bad / "rgb.png", np.zeros((64, 96, 3), np.uint8))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "diffraw_jax.infer", "--checkpoint", workdir,
           "--input", str(src), str(bad), str(tmp_path / "missing.png"), "--output", str(out),
           "--method", "dtdm_ddim", "--steps", str(STEPS), "--color", "classic",
           "--tile", str(TILE), "--overlap", str(OVERLAP), "--seed", "3"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=_env(), timeout=300)
    errors = _errors(r.stderr)
    assert r.returncode == 1, r.stderr
    bad_names = ["corrupt.dng", "truncated.png", "xtrans.dng", "linear.dng", "rgrg.dng",
                 "black.dng", "small.png", "rgb.png", "missing.png"]
    assert len(errors) == len(bad_names), r.stderr
    for name in bad_names:
        assert sum(name in e for e in errors) == 1, (name, errors)
    reasons = "\n".join(errors)
    for what in ("X-Trans", "stacked", "no signal above the black level", "smaller than one tile",
                 "not a single-channel", "no such file", "cannot read as RAW"):
        assert what in reasons, (what, reasons)
    assert "processed 2, failed 9" in r.stdout
    assert sorted(os.listdir(out)) == ["cam.png", "zrr.png"]  # no temp files left
    png = np.asarray(Image.open(out / "zrr.png"))
    dng = np.asarray(Image.open(out / "cam.png"))
    assert png.shape == dng.shape == (H, W, 3) and png.dtype == np.uint8
    assert png.std() > 3 and dng.std() > 3

    # Existing outputs are kept without --overwrite (an error per file), replaced with it.
    before = (out / "zrr.png").read_bytes()
    args = cmd[3:]
    args[args.index("--input") + 1:args.index("--output")] = [str(src / "zrr.png")]
    args[args.index("--seed") + 1] = "4"
    assert infer.main(args) == 1
    assert (out / "zrr.png").read_bytes() == before
    assert infer.main(args + ["--overwrite"]) == 0
    assert (out / "zrr.png").read_bytes() != before
    # 16-bit output.
    assert infer.main(args + ["--overwrite", "--bits16", "--seed", "3"]) == 0
    p16 = _read_png16(out / "zrr.png")
    assert p16.shape == (H, W, 3) and p16.max() > 255
    assert np.abs(np.round(p16 / 257.0) - png).max() <= 1  # same image as the 8-bit run


def test_cli_checkpoint_and_usage_errors(tmp_path, workdir, capsys):
    src = tmp_path / "a.png"
    _png(src, mosaic(scene(H, W), "RGGB", black=[63] * 4))
    base = ["--input", str(src), "--output", str(tmp_path / "o"), "--tile", str(TILE),
            "--overlap", str(OVERLAP), "--steps", "2", "--method", "dtdm_ddim"]
    # A config whose model does not match the checkpoint's parameters.
    other = tmp_path / "other"
    shutil.copytree(workdir, other)
    cfg = json.load(open(other / "config.json"))
    cfg["model"]["name"] = "demo"
    json.dump(cfg, open(other / "config.json", "w"))
    assert infer.main(["--checkpoint", str(other), "--color", "classic"] + base) == 2
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1 and "does not match" in err[0]
    # --color g without a trained G.
    assert infer.main(["--checkpoint", workdir] + base) == 2
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1 and "colour network" in err[0]
    # No workdir / bad tile.
    assert infer.main(["--checkpoint", str(tmp_path / "nope"), "--color", "classic"] + base) == 2
    assert infer.main(["--checkpoint", workdir, "--color", "classic"] + base[:4] + ["--tile", "31"]) == 2
    assert "multiples of 2" in capsys.readouterr().err
    assert infer.main(["--checkpoint", workdir]) == 2  # argparse: --input missing
    assert not (tmp_path / "o" / "a.png").exists()


def test_cli_colour_image(tmp_path, workdir):
    # c given as an sRGB image of the output size.
    src = tmp_path / "a.png"
    _png(src, mosaic(scene(H, W), "RGGB", black=[63] * 4))
    c = (scene(H, W, seed=9) * 255).astype(np.uint8)
    _png(tmp_path / "c.png", c)
    args = ["--checkpoint", workdir, "--input", str(src), "--output", str(tmp_path / "o"),
            "--tile", str(TILE), "--overlap", str(OVERLAP), "--steps", str(STEPS),
            "--method", "dtdm_ddim", "--color", str(tmp_path / "c.png")]
    assert infer.main(args) == 0
    assert (tmp_path / "o" / "a.png").exists()
    _png(tmp_path / "c2.png", c[:32])
    args[-1] = str(tmp_path / "c2.png")
    assert infer.main(args + ["--overwrite"]) == 1


def test_colour_network_g_from_the_training_config(tmp_path, workdir, capsys):
    """--color g: G from config.color_net.workdir, run once on the whole (padded) frame."""
    import jax.numpy as jnp

    from diffraw_jax import checkpointing
    from diffraw_jax.models import isp

    gdir = tmp_path / "g"
    gcfg = test_config.get_config()
    gcfg.task = "color_net"
    g_model = isp.ColorNet(**isp.color_net_config("tiny"))
    g_params = isp.init_params(g_model, (1, 16, 16, 4), seed=1)
    manager = checkpointing.create_manager(str(gdir))
    checkpointing.save(manager, 1, {"params": g_params, "ema_params": g_params}, force=True)
    manager.wait_until_finished()
    manager.close()
    (gdir / "config.json").write_text(gcfg.to_json_best_effort())
    wd = tmp_path / "wd"
    shutil.copytree(workdir, wd)
    cfg = json.load(open(wd / "config.json"))
    cfg["color_net"]["workdir"] = str(gdir)
    json.dump(cfg, open(wd / "config.json", "w"))

    pipe = pl.DiffRAWPipeline.from_checkpoint(str(wd), method="dtdm_ddim", num_steps=2, color="g",
                                              tile=TILE, overlap=OVERLAP)
    planes = pl.prepare_planes(pl.BayerFrame(mosaic(scene(H, W), "RGGB", black=[63] * 4)))
    c = pipe.condition(planes)
    direct = g_model.apply({"params": jax.tree.map(jnp.asarray, g_params)}, jnp.asarray(planes)[None])
    np.testing.assert_allclose(c, np.clip(np.asarray(direct)[0], 0, 1), atol=1e-5)
    # A frame that is not a multiple of 16 (BGGR crop: 62 x 94) is padded for G and cropped back.
    c2 = pipe.condition(planes[:31, :47])
    assert c2.shape == (62, 94, 3) and np.all(np.isfinite(c2))
    np.testing.assert_allclose(c2[:40, :60], c[:40, :60], atol=0.05)  # same content away from the pad
    # And through the CLI.
    src = tmp_path / "a.png"
    _png(src, mosaic(scene(H, W), "RGGB", black=[63] * 4))
    assert infer.main(["--checkpoint", str(wd), "--input", str(src), "--output", str(tmp_path / "o"),
                       "--tile", str(TILE), "--overlap", str(OVERLAP), "--steps", "2",
                       "--method", "dtdm_ddim"]) == 0
    assert "processed 1, failed 0" in capsys.readouterr().out


def test_tiles_default_to_the_training_crop(workdir):
    """from_checkpoint: tile "train" = config.data.crop_size (32 in configs/test.py), overlap
    min(64, tile / 4) rounded down to even; explicit values and whole-frame mode still work."""
    p = pl.DiffRAWPipeline.from_checkpoint(workdir, color="classic")
    assert p.tile == (32, 32) and p.overlap == 8
    p = pl.DiffRAWPipeline.from_checkpoint(workdir, color="classic", tile=48)
    assert p.tile == (48, 48) and p.overlap == 12
    p = pl.DiffRAWPipeline.from_checkpoint(workdir, color="classic", tile=None)
    assert p.tile is None and p.overlap == 64
    with pytest.raises(ValueError, match="tile must be 'train'"):
        pl.DiffRAWPipeline.from_checkpoint(workdir, color="classic", tile="auto")

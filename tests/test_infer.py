"""Inference: CFA handling and orientation on real DNGs, tiling, export, and the CLI.

The run's tiny trained model (the ``tiny_model`` fixture of conftest.py); frames are
small (about 64x96) and sampling uses 4 DTDM-DDIM steps, so the file runs in a
minute or two on 2 CPU cores with the persistent compile cache of conftest.py.
"""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import test as test_config
from diffraw_jax import raw, sampling, tiling
from diffraw_jax.inference import camera, cli
from diffraw_jax.inference.export import export_sampler, load_exported
from diffraw_jax.inference.pipeline import DiffRAWPipeline
from diffraw_jax.data import dng_writer
from tests.helpers import BLACK, NEUTRAL, REPO, WHITE, write_dng

H, W = 64, 96            # canonical frame of the synthetic scene
TILE, OVERLAP = 32, 8    # tiny U-Net: tiles must be multiples of 2
STEPS = 4
CFA_CODES = dng_writer.CFA_CODES  # DNG CFAPattern codes (0 R, 1 G, 2 B) per layout
# TIFF Orientation -> (LibRaw sizes.flip, k of np.rot90 that turns the sensor image into the
# output, where the sensor's top-left corner ends up: 1 top-right, 2 bottom-left, 3 bottom-right).
ORIENTATIONS = {6: (6, -1, 1), 8: (5, 1, 2), 3: (3, 2, 3)}


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


def read_rawpy(path):
    import rawpy

    with rawpy.imread(str(path)) as r:
        return camera.frame_from_rawpy(r)


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


def blend_tiles(plan, values):
    """[H, W] of one constant per tile, blended with the plan's windows (as the tiled
    denoiser blends the network outputs)."""
    th, tw = plan.tile
    acc = np.zeros((plan.height, plan.width))
    for t, win, v in zip(plan.tiles, plan.windows(), values):
        acc[t.y0:t.y0 + th, t.x0:t.x0 + tw] += win * v
    return acc / plan.weight_sum()


def brightest_corner(img, size=8):
    """Index (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right) of the brightest corner."""
    g = np.asarray(img, np.float64).mean(-1)
    corners = [g[:size, :size], g[:size, -size:], g[-size:, :size], g[-size:, -size:]]
    return int(np.argmax([c.mean() for c in corners]))


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def workdir(tiny_model):
    """The run's tiny trained model (conftest.py): tests copy it before changing anything."""
    return tiny_model.workdir


@pytest.fixture(scope="module")
def pipe(workdir):
    return DiffRAWPipeline.from_checkpoint(workdir, method="dtdm_ddim", num_steps=STEPS,
                                           color="classic", tile=TILE, overlap=OVERLAP, batch=4)


def variant(p, **kw):
    """The same model with other pipeline options."""
    opts = dict(color="classic", tile=p.tile, overlap=p.overlap, batch=p.batch)
    opts.update(kw)
    return DiffRAWPipeline(p.model, p.params, p.schedule, p.settings, **opts)


# ----------------------------------------------------------------------------- geometry


def test_tile_origins_and_windows():
    for length, tile, overlap in [(96, 32, 8), (64, 32, 8), (100, 32, 8), (448, 448, 64),
                                  (1000, 448, 64), (34, 32, 8), (4000, 448, 64)]:
        s = tiling.tile_origins(length, tile, overlap)
        assert s[0] == 0 and s[-1] == length - tile
        assert np.all(s % 2 == 0), s  # Bayer phase
        if len(s) > 1:
            assert np.all(np.diff(s) > 0) and np.all(tile - np.diff(s) >= overlap), s
        # fewest tiles: with one less, neighbours would overlap by less than `overlap`
        n = len(s)
        assert n <= 2 or (length - tile) / (n - 2) > tile - overlap
        assert (n == 1) == (length == tile)
    with pytest.raises(ValueError, match="smaller than one tile"):
        tiling.tile_origins(30, 32, 8)
    # The ramps of two neighbours are a partition of unity over their overlap.
    s = tiling.tile_origins(100, 32, 8)
    total = np.zeros(100)
    for i, s0 in enumerate(s):
        lo, hi = tiling._axis_overlaps(s, 32, i)
        total[s0:s0 + 32] += tiling.ramp(32, lo, hi, floor=0.0)
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    assert tiling.ramp(8, 0, 0).min() == 1.0 and tiling.ramp(16, 4, 4, floor=0.2).min() == np.float32(0.2)
    r = tiling.ramp(16, 4, 4)
    np.testing.assert_allclose(r, r[::-1])
    assert 0 < r[0] < r[1] < r[2] < r[3] < r[4] == 1.0
    # The plan of the test frame: 3 x 4 tiles whose separable windows sum to 1 everywhere.
    plan = tiling.TilePlan.make(H, W, (TILE, TILE), OVERLAP, batch=4)
    assert plan.ys == (0, 16, 32) and plan.xs == (0, 22, 42, 64) and len(plan.tiles) == 12
    assert plan.windows().shape == (12, TILE, TILE)
    np.testing.assert_allclose(plan.weight_sum(), 1.0, atol=1e-5)
    assert tiling.TilePlan.make(H, W, None, OVERLAP).tiles == [tiling.Tile(0, 0, 0, 0)]


# ----------------------------------------------------------------------------- CFA


def test_four_cfa_dngs_give_the_same_output(tmp_path, pipe):
    img = scene(H + 2, W + 2)
    outs, frames = {}, {}
    for pattern in CFA_CODES:
        data = mosaic(frame_for(pattern, img), pattern, neutral=NEUTRAL)
        top, left = raw.cfa_offset(pattern)
        assert data.shape == (H + 2 * top, W + 2 * left)
        frame = read_rawpy(write_dng(tmp_path / f"{pattern}.dng", data, pattern))
        assert frame.cfa == pattern and frame.flip == 0
        np.testing.assert_array_equal(frame.black_level, BLACK)  # reordered to R, Gr, Gb, B
        assert frame.white_level == WHITE
        np.testing.assert_allclose(frame.wb_gains, [2.0, 1.0, 3.0], rtol=1e-3)  # 1 / neutral
        np.testing.assert_allclose(frame.ccm.sum(axis=1), 1.0, atol=1e-4)  # white stays white
        frames[pattern] = frame
        out = pipe.process(frame, seed=7)
        assert out.shape == data.shape + (3,) and out.dtype == np.float32, pattern  # the whole mosaic
        outs[pattern] = out
    ref = outs["RGGB"]
    assert ref.shape == (H, W, 3)
    assert 0.0 <= ref.min() and ref.max() <= 1.0 and ref.std() > 0.01
    # The colour condition of the canonical region is the same for every layout (away from
    # the 2-pixel border, where the demosaic sees the frames' different extra rows/columns).
    conds = {}
    for pattern, frame in frames.items():
        top, left = raw.cfa_offset(pattern)
        prepared = camera.prepare_frame(frame)  # reflect-padded to RGGB: one row/column each side
        assert prepared.planes.shape == ((H + 4 * top) // 2, (W + 4 * left) // 2, 4)
        assert tuple(prepared)[1:] == (top, left, H + 2 * top, W + 2 * left, 0)
        c = pipe.condition(prepared, wb_gains=frame.wb_gains, ccm=frame.ccm)
        conds[pattern] = camera.finish(c, prepared)[top:top + H, left:left + W]
        np.testing.assert_allclose(conds[pattern][2:-2, 2:-2], conds["RGGB"][2:-2, 2:-2], atol=1e-6,
                                   err_msg=pattern)
    # The outputs: frame sizes differ, hence tile plans and noise fields, so the canonical
    # region agrees as closely as two samples do (pixel noise of the 2-step model ~0.05),
    # and closely in 8x8 block means; a colour mix-up is far outside these tolerances.
    def blocks(a):
        return a.reshape(H // 8, 8, W // 8, 8, 3).mean((1, 3))

    for pattern, out in outs.items():
        top, left = raw.cfa_offset(pattern)
        crop = out[top:top + H, left:left + W]
        assert np.abs(crop - ref).mean() < 0.08, pattern
        assert np.abs(blocks(crop) - blocks(ref)).max() < 0.06, pattern
    assert np.abs(blocks(ref[..., ::-1]) - blocks(ref)).max() > 0.2  # R and B swapped
    # The same mosaic through the array API (levels in canonical order) is the same computation.
    bggr = frames["BGGR"]
    api = pipe(bggr.mosaic, black_level=BLACK, white_level=WHITE, cfa="BGGR", seed=7,
               wb_gains=bggr.wb_gains, ccm=bggr.ccm)
    np.testing.assert_allclose(api, outs["BGGR"], atol=1e-5)
    # A different seed gives a different sample.
    assert np.abs(pipe.process(frames["RGGB"], seed=8) - ref).max() > 1e-3


def test_odd_sized_mosaic_gives_an_output_of_its_size(pipe):
    # GRBG 63 x 95 cut from an RGGB 64 x 96 mosaic: it is padded back to the same
    # 64 x 96 canonical frame (one reflected column left, one row at the bottom), so
    # away from those the output is the RGGB frame's output.
    img = scene(H, W, seed=5)
    m = mosaic(img, "RGGB", black=[63] * 4)
    ref = pipe(m, black_level=63, white_level=WHITE, seed=2)
    out = pipe(m[:H - 1, 1:], black_level=63, white_level=WHITE, cfa="GRBG", seed=2)
    assert out.shape == (H - 1, W - 1, 3)
    d = np.abs(out - ref[:H - 1, 1:])
    assert d[:-8, 8:].max() < 5e-3 and d.mean() < 2e-3, (d[:-8, 8:].max(), d.mean())
    # Cropped back before it is oriented (LibRaw flip 6: 90 degrees clockwise).
    rot = pipe(m[:H - 1, 1:], black_level=63, white_level=WHITE, cfa="GRBG", seed=2, flip=6)
    np.testing.assert_array_equal(rot, np.rot90(out, -1))
    # RGGB, 63 x 95: padded on the bottom and the right.
    assert pipe(m[:H - 1, :W - 1], black_level=63, white_level=WHITE, seed=2).shape == (H - 1, W - 1, 3)


def test_classic_colour_uses_as_shot_white_balance(tmp_path, pipe):
    # A neutral gray ramp seen by a camera with R = G/2, B = G/3, plus a large blue
    # patch (so gray world would not neutralise it): as-shot WB + the DNG's matrix
    # (rows summing to 1) must give gray where the scene is gray.
    yy, xx = np.mgrid[0:H, 0:W]
    g = 0.2 + 0.5 * xx / W
    img = np.repeat(g[..., None], 3, -1)
    img[: H // 2, : W // 2] = [0.1, 0.2, 0.8]
    frame = read_rawpy(write_dng(tmp_path / "wb.dng", mosaic(img, "RGGB", neutral=NEUTRAL)))
    prepared = camera.prepare_frame(frame)
    c = pipe.condition(prepared, wb_gains=frame.wb_gains, ccm=frame.ccm)
    gray = c[H // 2 + 4:-4, 4:-4]
    assert np.abs(gray[..., 0] - gray[..., 1]).max() < 0.02
    assert np.abs(gray[..., 2] - gray[..., 1]).max() < 0.02
    gw = pipe.condition(prepared)  # gray world: the gray is tinted
    assert np.abs(gw[H // 2 + 4:-4, 4:-4, 2] - gw[H // 2 + 4:-4, 4:-4, 1]).mean() > 0.05


# ----------------------------------------------------------------------------- orientation


def test_orientation_follows_libraw(tmp_path, pipe):
    import rawpy

    img = 0.4 * scene(H, W, seed=6)
    img[:10, :10] = 0.9  # a bright marker in the sensor's top-left corner
    data = mosaic(img, "RGGB", neutral=NEUTRAL)
    frame = read_rawpy(write_dng(tmp_path / "o1.dng", data))
    assert frame.flip == 0
    base = pipe.process(frame, seed=3)
    assert brightest_corner(base) == 0
    for orientation, (flip, k, corner) in ORIENTATIONS.items():
        path = write_dng(tmp_path / f"o{orientation}.dng", data, orientation=orientation)
        frame = read_rawpy(path)
        assert frame.flip == flip, orientation
        out = pipe.process(frame, seed=3)
        want = np.rot90(base, k)
        assert out.shape == want.shape, orientation
        np.testing.assert_array_equal(out, want)
        with rawpy.imread(str(path)) as r:
            assert r.sizes.flip == flip
            rgb = r.postprocess(use_camera_wb=True, no_auto_bright=True, output_bps=8)
        # LibRaw's own rendering is oriented the same way: same size, marker in the same corner.
        assert rgb.shape == out.shape, orientation
        assert brightest_corner(rgb) == brightest_corner(out) == corner, orientation


# ----------------------------------------------------------------------------- tiling


def test_tiled_output_is_full_size_without_seams(pipe):
    img = scene(H, W, seed=3)
    m = mosaic(img, "RGGB", black=[63] * 4)
    out = pipe(m, black_level=63, white_level=WHITE, seed=1)
    assert out.shape == (H, W, 3)  # 64 x 96 is not a multiple of the 32 tile + overlap grid
    plan = pipe.plan(H, W)
    assert len(plan.ys) == 3 and len(plan.xs) == 4 and len(plan.tiles) == 12
    rx, ry = gradient_ratio(out, plan.xs, TILE, 1), gradient_ratio(out, plan.ys, TILE, 0)
    assert rx < 1.3 and ry < 1.3, (rx, ry)

    # Control: tiles that disagree by a constant (what independently sampled tiles do),
    # blended with the plan's windows, leave no seam ...
    offsets = np.random.default_rng(0).uniform(-0.3, 0.3, len(plan.tiles))
    blended = out + blend_tiles(plan, offsets)[..., None]
    assert gradient_ratio(blended, plan.xs, TILE, 1) < 1.3
    # ... but stitched without overlap they do, and the metric sees it.
    hard = variant(pipe, overlap=0).plan(H, W)
    assert all(b - a == TILE for a, b in zip(hard.xs, hard.xs[1:]))
    stitched = out + blend_tiles(hard, offsets)[..., None]
    assert gradient_ratio(stitched, hard.xs, TILE, 1) > 3.0


def test_one_tile_equals_untiled_and_batch_does_not_matter(pipe):
    img = scene(H, H, seed=4)
    m = mosaic(img, "RGGB", black=[63] * 4)
    one = variant(pipe, tile=H)(m, seed=5)
    untiled = variant(pipe, tile=None)(m, seed=5)
    np.testing.assert_array_equal(one, untiled)
    # ... and both are exactly dtdm.sample on the whole frame with key(seed).
    planes = camera.prepare_frame(camera.BayerFrame(m)).planes[None]
    c = sampling.make_color_condition()(planes)  # the classical ISP, in [-1, 1]
    fn = sampling.make_sampler(pipe.model, pipe.schedule, pipe.settings)  # DTDM-DDIM-STEPS
    ref = fn(pipe.params, planes, c, c, jax.random.key(5))
    np.testing.assert_allclose(one, np.asarray(sampling.to_unit_range(ref))[0], atol=1e-5)
    # Tiled (3 x 3 tiles): the batch size only groups the network calls.
    assert len(pipe.plan(H, H).tiles) == 9
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
    kd = np.asarray(jax.random.key_data(jax.random.key(3)))  # one key for the batch
    assert kd.shape == (2,) and kd.dtype == np.uint32
    path = export_sampler(pipe, TILE, str(tmp_path / "sampler.jaxexport"), batch=b)
    exported = load_exported(path)
    assert exported.tile_shape == (TILE, TILE) and exported.batch == b
    got = np.asarray(exported(w, c, c, kd))
    fn = sampling.make_sampler(pipe.model, pipe.schedule, pipe.settings)
    want = np.asarray(fn(pipe.params, w, c, c, jax.random.key(3)))
    assert got.shape == (b, TILE, TILE, 3)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # The artifact runs in another process.
    code = ("import sys, numpy as np; from diffraw_jax.inference.export import load_exported; "
            "d = np.load(sys.argv[2]); s = load_exported(sys.argv[1]); "
            "np.save(sys.argv[3], np.asarray(s(d['w'], d['c'], d['c'], d['k'])))")
    np.savez(tmp_path / "in.npz", w=w, c=c, k=kd)
    subprocess.run([sys.executable, "-c", code, path, str(tmp_path / "in.npz"), str(tmp_path / "out.npy")],
                   check=True, cwd=REPO, env=_env(), timeout=120)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), want, atol=1e-5)


def test_loading_an_exported_sampler_does_not_import_the_model_code():
    code = ("import sys; from diffraw_jax.inference.export import load_exported; "
            "assert 'diffraw_jax.models.unet' not in sys.modules, 'diffraw_jax.models.unet imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env=_env(), timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


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
    """Decodes the filter-0, 16-bit RGB PNGs that outputs.encode_png16 writes."""
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
    write_dng(src / "rot.dng", mosaic(img[1:1 + H, 1:1 + W], "RGGB", neutral=NEUTRAL), orientation=6)
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
    cmd = [sys.executable, "-m", "diffraw_jax.inference.cli", "--checkpoint", workdir,
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
    assert "processed 3, failed 9" in r.stdout
    assert sorted(os.listdir(out)) == ["cam.png", "rot.png", "zrr.png"]  # no temp files left
    png = np.asarray(Image.open(out / "zrr.png"))
    dng = np.asarray(Image.open(out / "cam.png"))
    rot = np.asarray(Image.open(out / "rot.png"))
    assert png.shape == (H, W, 3) and png.dtype == np.uint8
    assert dng.shape == (H + 2, W, 3)  # the whole GBRG mosaic
    assert rot.shape == (W, H, 3)  # displayed as LibRaw orients it (90 degrees clockwise)
    assert png.std() > 3 and dng.std() > 3 and rot.std() > 3

    # Existing outputs are kept without --overwrite (the input is skipped), replaced with it.
    before = (out / "zrr.png").read_bytes()
    args = cmd[3:]
    args[args.index("--input") + 1:args.index("--output")] = [str(src / "zrr.png")]
    args[args.index("--seed") + 1] = "4"
    assert cli.main(args) == 0
    assert (out / "zrr.png").read_bytes() == before
    assert cli.main(args + ["--overwrite"]) == 0
    assert (out / "zrr.png").read_bytes() != before
    # 16-bit output.
    assert cli.main(args + ["--overwrite", "--bits16", "--seed", "3"]) == 0
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
    assert cli.main(["--checkpoint", str(other), "--color", "classic"] + base) == 2
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1 and "does not match" in err[0], err
    # --color g without a trained G.
    assert cli.main(["--checkpoint", workdir] + base) == 2
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1 and "colour network" in err[0], err
    # No workdir / bad tile.
    assert cli.main(["--checkpoint", str(tmp_path / "nope"), "--color", "classic"] + base) == 2
    assert cli.main(["--checkpoint", workdir, "--color", "classic"] + base[:4] + ["--tile", "31"]) == 2
    assert "multiples of 2" in capsys.readouterr().err
    assert cli.main(["--checkpoint", workdir]) == 2  # argparse: --input missing
    assert not (tmp_path / "o" / "a.png").exists()


def test_cli_colour_image(tmp_path, workdir, capsys):
    # c given as an sRGB image of the output's size and orientation.
    from PIL import Image

    src = tmp_path / "a.png"
    _png(src, mosaic(scene(H, W), "RGGB", black=[63] * 4))
    rot = write_dng(tmp_path / "r.dng", mosaic(scene(H, W), "RGGB", neutral=NEUTRAL), orientation=6)
    c = (scene(H, W, seed=9) * 255).astype(np.uint8)
    _png(tmp_path / "c.png", c)
    cdir = tmp_path / "colours"
    cdir.mkdir()
    _png(cdir / "a.png", c)
    _png(cdir / "r.png", np.ascontiguousarray(np.rot90(c, -1)))  # as r.dng is displayed
    out = tmp_path / "o"
    args = ["--checkpoint", workdir, "--input", str(src), str(rot), "--output", str(out),
            "--tile", str(TILE), "--overlap", str(OVERLAP), "--steps", str(STEPS),
            "--method", "dtdm_ddim", "--color", str(cdir)]
    assert cli.main(args) == 0
    a = np.asarray(Image.open(out / "a.png")).astype(np.float64)
    r = np.asarray(Image.open(out / "r.png")).astype(np.float64)
    assert a.shape == (H, W, 3) and r.shape == (W, H, 3)
    # The output follows its colour condition, oriented as displayed.
    assert np.abs(a - c).mean() < 20
    assert np.abs(r - np.rot90(c, -1)).mean() < 0.6 * np.abs(r - np.rot90(c, 1)).mean()
    capsys.readouterr()
    # One image for every input: the right size for a.png, not for the rotated r.dng.
    args[-1] = str(tmp_path / "c.png")
    assert cli.main(args + ["--overwrite"]) == 1
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1 and "r.dng" in err[0] and "expected the output size 64x96" in err[0], err
    _png(tmp_path / "c2.png", c[:32])
    args[-1] = str(tmp_path / "c2.png")
    assert cli.main(args + ["--overwrite"]) == 1
    assert len(_errors(capsys.readouterr().err)) == 2


def test_colour_network_g_from_the_training_config(tmp_path, workdir, capsys):
    """--color g: G from config.color_net.workdir, run once on the whole (padded) frame."""
    import jax.numpy as jnp

    from diffraw_jax.checkpoints import checkpointing
    from diffraw_jax.models import color_net, factory

    gdir = tmp_path / "g"
    gcfg = test_config.get_config()
    gcfg.task = "color_net"
    g_model = color_net.ColorNet(**color_net.color_net_config("tiny"))
    g_params = factory.init_variables(g_model, jax.random.key(1), 32)["params"]
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

    pipe = DiffRAWPipeline.from_checkpoint(str(wd), method="dtdm_ddim", num_steps=STEPS, color="g",
                                           tile=TILE, overlap=OVERLAP)
    prepared = camera.prepare_frame(camera.BayerFrame(mosaic(scene(H, W), "RGGB", black=[63] * 4)))
    planes = prepared.planes
    c = pipe.condition(prepared)
    direct = g_model.apply({"params": jax.tree.map(jnp.asarray, g_params)}, jnp.asarray(planes)[None])
    np.testing.assert_allclose(c, np.clip(np.asarray(direct)[0], 0, 1), atol=1e-5)
    # A frame that is not a multiple of 16 (62 x 94) is padded for G and cropped back.
    small = camera.PreparedFrame(planes[:31, :47], 0, 0, 62, 94)
    c2 = pipe.condition(small)
    assert c2.shape == (62, 94, 3) and np.all(np.isfinite(c2))
    np.testing.assert_allclose(c2[:40, :60], c[:40, :60], atol=0.05)  # same content away from the pad
    # And through the CLI.
    src = tmp_path / "a.png"
    _png(src, mosaic(scene(H, W), "RGGB", black=[63] * 4))
    assert cli.main(["--checkpoint", str(wd), "--input", str(src), "--output", str(tmp_path / "o"),
                     "--tile", str(TILE), "--overlap", str(OVERLAP), "--steps", str(STEPS),
                     "--method", "dtdm_ddim"]) == 0
    assert "processed 1, failed 0" in capsys.readouterr().out


def test_tiles_and_sampler_default_to_the_training_config(workdir):
    """from_checkpoint: tile "train" = config.data.crop_size (32 in configs/test.py), overlap
    min(64, tile / 4) rounded down to even; the sampler is the config's (sample.method
    "dtdm", all s = 20 steps); explicit values and whole-frame mode still work."""
    p = DiffRAWPipeline.from_checkpoint(workdir, color="classic")
    assert p.tile == (32, 32) and p.overlap == 8
    assert p.method == "dtdm" and p.num_steps is None and p.s == 20 and p.label == "DTDM-20"
    p = DiffRAWPipeline.from_checkpoint(workdir, color="classic", tile=48)
    assert p.tile == (48, 48) and p.overlap == 12
    p = DiffRAWPipeline.from_checkpoint(workdir, color="classic", tile=None)
    assert p.tile is None and p.overlap == 64
    with pytest.raises(ValueError, match="tile must be 'train'"):
        DiffRAWPipeline.from_checkpoint(workdir, color="classic", tile="auto")

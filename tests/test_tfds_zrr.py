"""The ZRR TFDS builder on a fake ZRR folder written with real encoders, and the synthetic generator."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from diffraw_jax.data import synthetic_zrr

N = 448


def write_raw(path, arr, bits):
    if bits == 16:
        Image.fromarray(arr.astype(np.uint16)).save(path)
    else:
        Image.fromarray(arr.astype(np.uint8), mode="L").save(path)


def write_jpeg(path, arr):
    Image.fromarray(arr, mode="RGB").save(path, quality=92)


def truncate(path, keep=0.4):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: int(len(data) * keep)])


@pytest.fixture(scope="module")
def fake_zrr(tmp_path_factory):
    """train: 0 (16-bit), 1 (8-bit) good; 2 all black; 3 truncated PNG; 4 lacks its JPEG;
    5 lacks its PNG; 6 wrong size; 7 truncated JPEG. test: 0, 1 good."""
    root = tmp_path_factory.mktemp("zrr_root")
    rng = np.random.default_rng(0)
    written = {}
    for split in ("train", "test"):
        os.makedirs(root / split / "huawei_raw")
        os.makedirs(root / split / "canon")
    def pair(split, i, raw, bits=16, dslr=None, shape=(N, N, 3)):
        if raw is not None:
            write_raw(root / split / "huawei_raw" / f"{i}.png", raw, bits)
        if dslr is not False:
            d = rng.integers(0, 256, shape, dtype=np.uint8)
            write_jpeg(root / split / "canon" / f"{i}.jpg", d)
        written[(split, str(i))] = raw
    pair("train", 0, rng.integers(60, 1024, (N, N)))
    pair("train", 1, rng.integers(60, 256, (N, N)), bits=8)
    pair("train", 2, np.zeros((N, N)))
    pair("train", 3, rng.integers(60, 1024, (N, N)))
    truncate(root / "train" / "huawei_raw" / "3.png")
    pair("train", 4, rng.integers(60, 1024, (N, N)), dslr=False)
    pair("train", 5, None)
    pair("train", 6, rng.integers(60, 1024, (N - 8, N)))
    pair("train", 7, rng.integers(60, 1024, (N, N)))
    truncate(root / "train" / "canon" / "7.jpg", keep=0.3)
    pair("test", 0, rng.integers(60, 1024, (N, N)))
    pair("test", 1, rng.integers(60, 1024, (N, N)))
    return root, written


EXPECTED_SKIPS = {"2": "all black", "3": "unreadable RAW", "4": "missing DSLR partner",
                  "5": "missing RAW partner", "6": "expected (448, 448)", "7": "unreadable DSLR"}


def check_built(data_dir, written, root):
    import tensorflow_datasets as tfds
    import tfds_zrr  # noqa: F401

    b = tfds.builder("zrr", data_dir=str(data_dir), file_format="array_record")
    assert b.info.splits["train"].num_examples == 2
    assert b.info.splits["test"].num_examples == 2
    src = b.as_data_source()
    for split in ("train", "test"):
        for ex in src[split]:
            stem = ex["id"].decode() if isinstance(ex["id"], bytes) else str(ex["id"])
            assert ex["raw"].dtype == np.uint16 and ex["raw"].shape == (N, N)
            np.testing.assert_array_equal(ex["raw"], written[(split, stem)])  # bit-exact
            want = np.asarray(Image.open(root / split / "canon" / f"{stem}.jpg"))
            np.testing.assert_array_equal(ex["dslr"], want)
    skipped = b.info.metadata["skipped_pairs"]
    assert b.info.metadata["num_skipped_pairs"] == 6
    got = {s["id"]: s["reason"] for s in skipped}
    assert set(got) == set(EXPECTED_SKIPS)
    for stem, words in EXPECTED_SKIPS.items():
        assert words in got[stem], (stem, got[stem])
    on_disk = json.load(open(os.path.join(b.data_dir, "skipped_pairs.json")))
    assert on_disk["num_skipped"] == 6
    return b


def test_builder_python_api(fake_zrr, tmp_path, caplog):
    import tensorflow_datasets as tfds
    import tfds_zrr  # noqa: F401

    root, written = fake_zrr
    b = tfds.builder("zrr", data_dir=str(tmp_path), file_format="array_record")
    with caplog.at_level("WARNING", logger="tfds_zrr"):
        b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
    for stem in EXPECTED_SKIPS:  # each skipped file is named in a warning
        assert any(f"{os.sep}{stem}." in r.getMessage() or f"/{stem}:" in r.getMessage()
                   for r in caplog.records), stem
    check_built(tmp_path, written, root)
    # Reading needs no TensorFlow.
    code = ("import sys, tensorflow_datasets as tfds, tfds_zrr; "
            f"b = tfds.builder('zrr', data_dir={str(tmp_path)!r}, file_format='array_record'); "
            "ex = b.as_data_source()['train'][0]; assert ex['raw'].shape == (448, 448); "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tfds_build_cli(fake_zrr, tmp_path):
    root, written = fake_zrr
    tfds_bin = os.path.join(os.path.dirname(sys.executable), "tfds")
    r = subprocess.run([tfds_bin, "build", "zrr/patches", "--imports", "tfds_zrr", "--manual_dir", str(root),
                        "--data_dir", str(tmp_path), "--file_format", "array_record"],
                       capture_output=True, text=True, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    check_built(tmp_path, written, root)


def test_our_build_command_and_bad_manual_dir(fake_zrr, tmp_path):
    root, _ = fake_zrr
    cmd = [sys.executable, "-m", "tfds_zrr.build", "--data_dir", str(tmp_path / "d")]
    r = subprocess.run(cmd + ["--manual_dir", str(root)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "train: 2" in r.stdout and "test: 2" in r.stdout and "skipped 6" in r.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    for k, bad in enumerate((str(empty), str(tmp_path / "nope"))):
        cmd[-1] = str(tmp_path / f"fresh{k}")
        r = subprocess.run(cmd + ["--manual_dir", bad], capture_output=True, text=True)
        assert r.returncode == 2
        err = r.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ZRR manual_dir"), r.stderr


def test_check_layout_message(tmp_path):
    from tfds_zrr.zrr import DataLayoutError, check_layout

    (tmp_path / "train" / "huawei_raw").mkdir(parents=True)
    with pytest.raises(DataLayoutError, match=r"lacks .*train/canon.*test/huawei_raw") as e:
        check_layout(str(tmp_path))
    assert "huawei_raw/<N>.png" in str(e.value)  # the expected layout is spelled out


# ------------------------------------------------------------------ synthetic

def test_synthetic_layout_dtypes_ranges_and_determinism(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    synthetic_zrr.generate(str(a), 5, 2, size=64, seed=3, workers=1, progress=False)
    synthetic_zrr.generate(str(b), 5, 2, size=64, seed=3, workers=2, progress=False)
    synthetic_zrr.generate(str(c), 5, 2, size=64, seed=4, workers=1, progress=False)
    for split, n in (("train", 5), ("test", 2)):
        assert sorted(os.listdir(a / split / "huawei_raw")) == [f"{i}.png" for i in range(n)]
        assert sorted(os.listdir(a / split / "canon")) == [f"{i}.jpg" for i in range(n)]
        assert sorted(os.listdir(a / split / "calibration")) == [f"{i}.json" for i in range(n)]
        for i in range(n):
            pa, pb = a / split / "huawei_raw" / f"{i}.png", b / split / "huawei_raw" / f"{i}.png"
            assert pa.read_bytes() == pb.read_bytes()  # deterministic, whatever the worker count
            assert (a / split / "canon" / f"{i}.jpg").read_bytes() == (b / split / "canon" / f"{i}.jpg").read_bytes()
            im = Image.open(pa)
            assert im.mode in ("I;16", "L") and im.size == (64, 64)
            raw = np.asarray(im).astype(np.int64)
            assert raw.max() <= 1023 and raw.max() > 63
            read_max = synthetic_zrr.READ_RANGE[1]  # black level 63 (+ read noise up to read_max codes)
            assert raw.min() >= 63 - 6 * read_max and np.mean(raw >= 63 - 3 * read_max) > 0.99
            dslr = Image.open(a / split / "canon" / f"{i}.jpg")
            assert dslr.mode == "RGB" and dslr.size == (64, 64)
    assert (a / "train" / "huawei_raw" / "0.png").read_bytes() != (c / "train" / "huawei_raw" / "0.png").read_bytes()


def test_synthetic_pairs_carry_colour_instability_and_misalignment():
    """Per-pair WB gains differ (unstable colour mapping); RAW is RGGB with R and B
    attenuated by the inverse gains; the RAW content is shifted against the DSLR."""
    ratios, shifts = [], []
    for i in range(6):
        raw, dslr = synthetic_zrr.make_pair(7, "train", i, size=128)
        lin = raw.astype(np.float64) - synthetic_zrr.BLACK_LEVEL
        r, g1, g2, b = lin[0::2, 0::2], lin[0::2, 1::2], lin[1::2, 0::2], lin[1::2, 1::2]
        assert abs(g1.mean() / g2.mean() - 1) < 0.05  # both greens see the same colour
        ratios.append((r.mean() / g1.mean(), b.mean() / g1.mean()))
        # Cross-correlate the green plane with the DSLR's green (downsampled) for the offset.
        gr = (g1 + g2) / 2
        dg = dslr[..., 1].astype(np.float64).reshape(64, 2, 64, 2).mean(axis=(1, 3))
        gr, dg = gr - gr.mean(), dg - dg.mean()
        xc = np.real(np.fft.ifft2(np.fft.fft2(gr) * np.conj(np.fft.fft2(dg))))
        assert xc.max() > 0.3 * np.sqrt((gr**2).sum() * (dg**2).sum())  # same scene
        shifts.append(np.unravel_index(np.argmax(xc), xc.shape))
    ratios = np.array(ratios)
    assert ratios[:, 0].std() > 0.02 and ratios[:, 1].std() > 0.02
    assert all(min(s[0], 64 - s[0]) <= 2 and min(s[1], 64 - s[1]) <= 2 for s in shifts)


def test_synthetic_cli_errors(tmp_path):
    cmd = [sys.executable, "-m", "diffraw_jax.data.synthetic_zrr", "--num_train", "1", "--num_test", "1"]
    # A size the builder (zrr/patches, 448x448) would skip, every pair of it.
    r = subprocess.run(cmd + ["--out", str(tmp_path / "x"), "--size", "64"], capture_output=True, text=True)
    assert r.returncode == 2 and "--size must be 448, got 64" in r.stderr, r.stderr
    assert "would skip every 64x64" in r.stderr
    r = subprocess.run(cmd[:-1] + ["0", "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert r.returncode == 2 and "--num_train and --num_test must be >= 1" in r.stderr, r.stderr
    assert not (tmp_path / "x").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    r = subprocess.run(cmd + ["--out", str(tmp_path / "full")], capture_output=True, text=True)
    assert r.returncode == 2 and "not empty" in r.stderr
    r = subprocess.run(cmd + ["--out", str(tmp_path / "ok"), "--size", "448", "--workers", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "wrote 1 train + 1 test pairs (448x448)" in r.stdout, r.stderr


def test_build_with_every_pair_skipped_ends_in_one_error_line(tmp_path):
    """Pairs of the wrong size (here 64x64 from synthetic_zrr.generate) are all skipped: one clear
    error line naming the reasons and exit 2, not TFDS's 'No examples were yielded' traceback."""
    from tfds_zrr.zrr import DataLayoutError, NoUsablePairsError

    assert issubclass(NoUsablePairsError, DataLayoutError)  # python -m tfds_zrr.build: one line, exit 2
    root = tmp_path / "small"
    synthetic_zrr.generate(str(root), 3, 1, size=64, seed=0, workers=1, progress=False)
    cmd = [sys.executable, "-m", "tfds_zrr.build", "--data_dir", str(tmp_path / "d")]
    r = subprocess.run(cmd + ["--manual_dir", str(root)], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "AssertionError" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == (  # tqdm's \r-redrawn bars precede it on a terminal
        f"error: no usable pairs in {root / 'train'}: 3 skipped (wrong size 64x64: 3); "
        "zrr/patches stores 448x448 pairs")
    from tfds_zrr.build import build  # the Python API raises the same error, a DataLayoutError
    with pytest.raises(NoUsablePairsError, match=r"3 skipped \(wrong size 64x64: 3\)"):
        build(str(root), str(tmp_path / "d2"))

    # full_resolution: every frame odd-sized or all black.
    frames = tmp_path / "frames"
    (frames / "full_resolution").mkdir(parents=True)
    write_raw(frames / "full_resolution" / "a.png", np.full((6, 5), 500), 16)
    write_raw(frames / "full_resolution" / "c.png", np.zeros((8, 8)), 16)
    r = subprocess.run(cmd + ["--manual_dir", str(frames), "--config", "full_resolution"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: no usable pairs in {frames / 'full_resolution'}: 2 skipped (odd size 6x5: 1; all black: 1)"), r.stderr


def test_no_usable_pairs_message():
    from tfds_zrr.zrr import no_usable_pairs_message, summarize_skipped

    skipped = [dict(reason="...", kind="wrong size 64x64")] * 3 + [dict(reason="...", kind="all black"),
                                                                   dict(reason="missing RAW partner")]
    assert summarize_skipped(skipped) == "wrong size 64x64: 3; all black: 1; missing RAW partner: 1"
    assert no_usable_pairs_message("R/train", skipped, "zrr/patches stores 448x448 pairs") == (
        "no usable pairs in R/train: 5 skipped (wrong size 64x64: 3; all black: 1; missing RAW partner: 1); "
        "zrr/patches stores 448x448 pairs")
    assert no_usable_pairs_message("R/test", skipped[3:], "hint") == (
        "no usable pairs in R/test: 2 skipped (all black: 1; missing RAW partner: 1)")  # no size problem
    assert no_usable_pairs_message("R/test", []) == "no usable pairs in R/test: it holds no RAW/DSLR pair"


# ------------------------------------------------------------------ calibrated config

# zrr/patches' features as built before the calibrated config existed (TFDS feature JSON):
# (shape, dtype, encoding, description) per key. The calibrated config must not change them.
PATCHES_FEATURES = {
    "raw": ([448, 448], "uint16", "zlib", "RGGB Bayer mosaic, 10-bit codes exactly as stored"),
    "dslr": ([448, 448, 3], "uint8", "zlib", "Canon sRGB"),
    "id": ([], "string", "none", "file stem"),
}


def _feature_table(builder):
    out = {}
    for k, f in builder.info.features.to_json_content().features.items():
        t = f.tensor
        out[k] = ([int(d) for d in t.shape.dimensions], t.dtype, t.encoding, f.description)
    return out


def test_patches_features_unchanged_and_calibrated_adds_three_float32_tensors(tmp_path):
    import tensorflow_datasets as tfds
    import tfds_zrr  # noqa: F401

    assert _feature_table(tfds.builder("zrr/patches", data_dir=str(tmp_path))) == PATCHES_FEATURES
    cal = _feature_table(tfds.builder("zrr/calibrated", data_dir=str(tmp_path)))
    assert {k: cal[k] for k in PATCHES_FEATURES} == PATCHES_FEATURES
    assert {k: v[:3] for k, v in cal.items() if k not in PATCHES_FEATURES} == {
        "wb_gains": ([3], "float32", "none"), "ccm": ([3, 3], "float32", "none"),
        "baseline_exposure": ([], "float32", "none")}


def _calibration(i):
    """A distinct, valid calibration per index (ccm rows sum to 1)."""
    rng = np.random.default_rng(100 + i)
    ccm = synthetic_zrr.random_ccm(rng)
    return {"wb_gains": [float(rng.uniform(1.5, 2.5)), 1.0, float(rng.uniform(1.3, 2.1))],
            "ccm": ccm.tolist(), "baseline_exposure": float(rng.uniform(-1, 3))}


@pytest.fixture(scope="module")
def calibrated_zrr(tmp_path_factory):
    """Synthetic 448x448 pairs, train 0..3 and test 0..1, with calibration JSONs in a separate
    root (CAL/<split>/calibration/<stem>.json): train 2 has none, train 3 an invalid one."""
    root, cal_root = tmp_path_factory.mktemp("zrr_cal_root"), tmp_path_factory.mktemp("cal")
    cals = {}
    for split, n in (("train", 4), ("test", 2)):
        for d in ("huawei_raw", "canon"):
            os.makedirs(root / split / d)
        os.makedirs(cal_root / split / "calibration")
        for i in range(n):
            raw, dslr = synthetic_zrr.make_pair(5, split, i)
            synthetic_zrr.write_pair(str(root), split, i, raw, dslr)
            if (split, i) == ("train", 2):
                continue
            cal = _calibration(10 * (split == "test") + i)
            if (split, i) == ("train", 3):
                cal["ccm"] = [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]]  # a row sums to 2
            else:
                cals[(split, str(i))] = cal
            (cal_root / split / "calibration" / f"{i}.json").write_text(json.dumps(cal))
    return root, cal_root, cals


def test_calibration_round_trip_through_the_builder(calibrated_zrr, tmp_path):
    import tensorflow_datasets as tfds
    import tfds_zrr  # noqa: F401

    root, cal_root, cals = calibrated_zrr
    b = tfds.builder("zrr/calibrated", data_dir=str(tmp_path), file_format="array_record",
                     calibration_dir=str(cal_root))
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
    src = b.as_data_source()
    seen = set()
    for split in ("train", "test"):
        for ex in src[split]:
            stem = ex["id"].decode() if isinstance(ex["id"], bytes) else str(ex["id"])
            want = cals[(split, stem)]
            for k in ("wb_gains", "ccm"):
                assert ex[k].dtype == np.float32, k
                np.testing.assert_array_equal(ex[k], np.asarray(want[k], np.float32))  # float32-exact
            # A scalar comes back as a Python float: the stored float32, not the JSON's double.
            ev = ex["baseline_exposure"]
            assert float(ev) == float(np.float32(want["baseline_exposure"])) != want["baseline_exposure"]
            np.testing.assert_array_equal(  # the pair itself as zrr/patches stores it
                ex["raw"], np.asarray(Image.open(root / split / "huawei_raw" / f"{stem}.png")))
            seen.add((split, stem))
    assert seen == set(cals)
    kinds = {s["id"]: s["kind"] for s in b.info.metadata["skipped_pairs"]}
    assert kinds == {"2": "no calibration", "3": "bad calibration"}
    reason = {s["id"]: s["reason"] for s in b.info.metadata["skipped_pairs"]}["3"]
    assert "ccm rows sum to [1.0, 2.0, 1.0], not 1" in reason
    # Pickled builders (TFDS's beam/multiprocess paths) keep the calibration root.
    import pickle
    assert pickle.loads(pickle.dumps(b))._calibration_dir == str(cal_root)


def test_build_command_calibrated_config_and_missing_calibration(calibrated_zrr, tmp_path, capsys):
    from tfds_zrr.build import main

    root, cal_root, cals = calibrated_zrr
    # No calibration/ folder under the root: one line naming the command that estimates one.
    assert main(["--manual_dir", str(root), "--data_dir", str(tmp_path / "a"), "--config", "calibrated"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"error: zrr/calibrated: {root / 'train' / 'calibration'} does not exist; estimate the calibration "
        f"with `python -m tfds_zrr.calibrate --manual_dir {root} --out CAL_ROOT`"), err
    assert main(["--manual_dir", str(root), "--data_dir", str(tmp_path / "b"), "--config", "calibrated",
                 "--calibration_dir", str(cal_root)]) == 0
    out = capsys.readouterr().out
    assert "zrr/calibrated in " in out and ("train: 2, test: 2" in out or "test: 2, train: 2" in out), out
    assert "skipped train/2: no calibration file" in out
    with pytest.raises(SystemExit):  # --calibration_dir belongs to the calibrated config
        main(["--manual_dir", str(root), "--data_dir", str(tmp_path / "c"), "--calibration_dir", str(cal_root)])


def test_build_command_default_config_names_itself_when_calibration_exists(tmp_path, capsys):
    from tfds_zrr.build import main

    root = tmp_path / "root"
    for split in ("train", "test"):
        for d in ("huawei_raw", "canon", "calibration"):
            os.makedirs(root / split / d)
        raw, dslr = synthetic_zrr.make_pair(1, split, 0)
        synthetic_zrr.write_pair(str(root), split, 0, raw, dslr)
        (root / split / "calibration" / "0.json").write_text(json.dumps(_calibration(0)))
    assert main(["--manual_dir", str(root), "--data_dir", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "zrr/patches in " in out
    assert (f"built zrr/patches (the default) without the calibration files in {root / 'train' / 'calibration'}; "
            "--config calibrated builds zrr/calibrated with them") in out

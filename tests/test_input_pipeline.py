"""Tests for diffraw_jax.data.input_pipeline (Grain loaders, Bayer-safe crops, global batches)."""
from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

grain = pytest.importorskip("grain")

import jax  # noqa: E402

from diffraw_jax.data import input_pipeline as ip  # noqa: E402
from diffraw_jax import parallel  # noqa: E402
from diffraw_jax import raw as raw_lib  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S = 32  # synthetic image size for the in-memory sources


# ----------------------------------------------------------------- helpers

def coded_example(k: int, size: int = S):
    """Mosaic and DSLR that encode (example k, row y, col x) at every pixel.

    raw[y, x] = k*1024 + y*32 + x (uint16; decode with black 0 / white 65535),
    dslr[y, x] = (y, x, k). The Bayer colour of a site is (y % 2, x % 2).
    """
    y, x = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    raw = (k * 1024 + y * 32 + x).astype(np.uint16)
    dslr = np.stack([y, x, np.full_like(y, k)], axis=-1).astype(np.uint8)
    return {"raw": raw, "dslr": dslr, "id": f"ex{k}".encode()}


def coded_source(n: int, size: int = S):
    return [coded_example(k, size) for k in range(n)]


CODED = dict(black_level=0, white_level=65535)


def decode(raw_planes, dslr):
    """One example of a coded batch -> (k, Y, X) from the raw and from the DSLR."""
    codes = np.rint(raw_lib.unpack(raw_planes) * 65535.0).astype(np.int64)
    k, y, x = codes // 1024, (codes % 1024) // 32, codes % 32
    d = np.rint((np.asarray(dslr, np.float64) + 1.0) * 127.5).astype(np.int64)
    return (k, y, x), (d[..., 2], d[..., 0], d[..., 1])


def colour(y, x):
    """0 = R, 1 = G, 2 = B for Bayer parity arrays (RGGB)."""
    return np.where((y % 2 == 0) & (x % 2 == 0), 0, np.where((y % 2 == 1) & (x % 2 == 1), 2, 1))


def check_crop(raw_planes, dslr, crop):
    """Asserts Bayer phase + DSLR correspondence; returns (k, (vflip, hflip, transpose))."""
    (k, y, x), (dk, dy, dx) = decode(raw_planes, dslr)
    assert raw_planes.shape == (crop // 2, crop // 2, 4) and dslr.shape == (crop, crop, 3)
    # one example, and the DSLR shows exactly the same original pixels
    assert np.all(k == k[0, 0])
    np.testing.assert_array_equal(dk, k)
    np.testing.assert_array_equal(dy, y)
    np.testing.assert_array_equal(dx, x)
    # every output site holds a site of its own colour (R plane only R codes, ...)
    i, j = np.meshgrid(np.arange(crop), np.arange(crop), indexing="ij")
    np.testing.assert_array_equal(colour(y, x), colour(i, j))
    planes_y, planes_x = raw_lib.pack(y), raw_lib.pack(x)
    assert np.all(planes_y[..., 0] % 2 == 0) and np.all(planes_x[..., 0] % 2 == 0)  # R
    assert np.all(planes_y[..., 3] % 2 == 1) and np.all(planes_x[..., 3] % 2 == 1)  # B
    # the window is a dihedral image of a contiguous block
    transpose = bool(np.all(y == y[0:1, :]))  # original rows vary along output columns
    if transpose:
        y, x = y.T, x.T
    assert np.all(y == y[:, :1]) and np.all(x == x[:1, :])
    dy_, dx_ = np.diff(y[:, 0]), np.diff(x[0, :])
    assert np.all(np.abs(dy_) == 1) and len(set(dy_)) == 1
    assert np.all(np.abs(dx_) == 1) and len(set(dx_)) == 1
    vflip, hflip = bool(dy_[0] < 0), bool(dx_[0] < 0)
    # greens are consistent: Gr plane all from one original green parity
    gr_par = {(int(a) % 2, int(b) % 2) for a, b in zip(planes_y[..., 1].ravel(), planes_x[..., 1].ravel())}
    assert gr_par == ({(1, 0)} if transpose else {(0, 1)})
    # un-flipped axes start at an even offset (flipped ones at an odd one: see crop_box)
    assert y.min() % 2 == (1 if vflip else 0) and x.min() % 2 == (1 if hflip else 0)
    return int(k[0, 0]), (vflip, hflip, transpose)


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def one_process(i=0, n=1):
    return grain.sharding.ShardOptions(shard_index=i, shard_count=n, drop_remainder=True)


# ----------------------------------------------------------------- TFDS fixture

@pytest.fixture(scope="module")
def zrr_source(tmp_path_factory):
    tfds = pytest.importorskip("tensorflow_datasets")
    from diffraw_jax.data import synthetic_zrr
    import tfds_zrr  # noqa: F401  registers "zrr"

    root = str(tmp_path_factory.mktemp("zrr_manual"))
    data_dir = str(tmp_path_factory.mktemp("zrr_data"))
    synthetic_zrr.generate(root, num_train=4, num_test=3, size=448, workers=1, progress=False)
    b = tfds.builder("zrr", data_dir=data_dir, file_format="array_record")
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=root))
    return b.as_data_source()


# ----------------------------------------------------------------- imports

def test_package_import_does_not_load_grain():
    code = "import sys, diffraw_jax; assert 'grain' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# ----------------------------------------------------------------- crops / augmentation

def test_unaugmented_crops_keep_phase_and_even_offsets():
    loader = ip.create_train_loader(coded_source(8), global_batch_size=4, crop_size=16, seed=3,
                                    augment=False, **CODED)
    it = iter(loader)
    offsets = set()
    for batch in take(it, 8):
        for r, d in zip(batch["raw"], batch["dslr"]):
            _, ops = check_crop(r, d, 16)
            assert ops == (False, False, False)
            (_, y, x), _ = decode(r, d)
            assert y.min() % 2 == 0 and x.min() % 2 == 0
            offsets.add((int(y.min()), int(x.min())))
    assert len(offsets) > 5  # random positions
    assert all(0 <= t <= S - 16 and 0 <= l <= S - 16 for t, l in offsets)


def test_augmented_crops_keep_bayer_phase_and_dslr_alignment():
    loader = ip.create_train_loader(coded_source(16), global_batch_size=8, crop_size=16, seed=0,
                                    augment=True, **CODED)
    ops_seen = set()
    for batch in take(iter(loader), 16):
        for r, d in zip(batch["raw"], batch["dslr"]):
            _, ops = check_crop(r, d, 16)
            ops_seen.add(ops)
    # all 8 symmetries of the square occur
    assert len(ops_seen) == 8


def test_full_size_crop_augment_only_transposes():
    loader = ip.create_train_loader(coded_source(4), global_batch_size=4, crop_size=S, seed=1,
                                    augment=True, **CODED)
    ops_seen = set()
    for batch in take(iter(loader), 6):
        for r, d in zip(batch["raw"], batch["dslr"]):
            _, ops = check_crop(r, d, S)
            ops_seen.add(ops)
    assert ops_seen == {(False, False, False), (False, False, True)}


def test_transform_directly_on_flipped_window():
    """Spell out one hflip: window cols [x0, x0+c+2) -> kept cols x0+c .. x0+1."""
    class FixedRng:
        def __init__(self):
            self.calls = [np.array([0, 1, 0]), 2, 3]  # (vflip, hflip, transpose), top/2, left/2

        def integers(self, *a, **k):
            return self.calls.pop(0)

    ex = coded_example(5)
    out = ip.BayerRandomCrop(8, augment=True).random_map(ex, FixedRng())
    top, left = 4, 6
    np.testing.assert_array_equal(out["raw"], ex["raw"][top:top + 8, left + 8:left:-1])
    np.testing.assert_array_equal(out["dslr"], ex["dslr"][top:top + 8, left + 8:left:-1])
    assert out["raw"][0, 0] % 2 == 0 and (out["raw"][0, 0] // 32) % 2 == 0  # R site at (0, 0)


# ----------------------------------------------------------------- values / shapes

def test_normalisation_values_shapes_and_dtypes():
    mosaic = np.array([[0, 63, 542, 1020],
                       [1023, 100, 300, 700],
                       [63, 64, 1019, 2000],
                       [10, 551, 999, 62]], np.uint16)
    dslr = np.zeros((4, 4, 3), np.uint8)
    dslr[0, 0] = (0, 255, 51)
    dslr[1, 1] = (204, 127, 128)
    src = [{"raw": mosaic, "dslr": dslr, "id": b"a"}]
    batch = next(iter(ip.create_train_loader(src, global_batch_size=2, crop_size=4, seed=0,
                                             augment=False)))
    assert set(batch) == {"raw", "dslr"}
    assert batch["raw"].shape == (2, 2, 2, 4) and batch["raw"].dtype == np.float32
    assert batch["dslr"].shape == (2, 4, 4, 3) and batch["dslr"].dtype == np.float32
    r = batch["raw"][0]
    # canonical planes: R = raw[0::2, 0::2], Gr = raw[0::2, 1::2], Gb = raw[1::2, 0::2], B = raw[1::2, 1::2]
    expect = lambda v: np.clip((np.float64(v) - 63.0) / 957.0, 0.0, 1.0)  # noqa: E731
    np.testing.assert_allclose(r[..., 0], expect([[0, 542], [63, 1019]]), atol=1e-6)
    np.testing.assert_allclose(r[..., 1], expect([[63, 1020], [64, 2000]]), atol=1e-6)
    np.testing.assert_allclose(r[..., 2], expect([[1023, 300], [10, 999]]), atol=1e-6)
    np.testing.assert_allclose(r[..., 3], expect([[100, 700], [551, 62]]), atol=1e-6)
    assert r[0, 0, 0] == 0.0 and r[0, 0, 1] == 0.0 and r[0, 1, 1] == 1.0 and r[0, 0, 2] == 1.0
    assert abs(r[0, 1, 0] - 479.0 / 957.0) < 1e-6
    d = batch["dslr"][0]
    np.testing.assert_allclose(d[0, 0], [-1.0, 1.0, 51 / 127.5 - 1], atol=1e-6)
    np.testing.assert_allclose(d[1, 1], [0.6, 127 / 127.5 - 1, 128 / 127.5 - 1], atol=1e-6)
    assert d[2, 2].tolist() == [-1.0, -1.0, -1.0]
    # both examples of the batch are the (only) record
    np.testing.assert_array_equal(batch["raw"][0], batch["raw"][1])


def test_per_plane_levels():
    mosaic = np.tile(np.array([[100, 200], [300, 400]], np.uint16), (2, 2))
    src = [{"raw": mosaic, "dslr": np.zeros((4, 4, 3), np.uint8), "id": b"a"}]
    batch = next(iter(ip.create_train_loader(
        src, global_batch_size=1, crop_size=4, seed=0, augment=False,
        black_level=[0, 100, 200, 300], white_level=[200, 300, 400, 500])))
    np.testing.assert_allclose(batch["raw"][0], 0.5, atol=1e-6)


# ----------------------------------------------------------------- determinism

def test_same_seed_same_batches_different_seed_differs():
    src = coded_source(12)
    make = lambda seed: iter(ip.create_train_loader(  # noqa: E731
        src, global_batch_size=4, crop_size=16, seed=seed, **CODED))
    a, b, c = take(make(7), 4), take(make(7), 4), take(make(8), 4)
    assert_batches_equal(a, b)
    assert any(not np.array_equal(x["raw"], y["raw"]) for x, y in zip(a, c))


def test_epochs_shuffle_and_cover_every_example():
    n = 12
    loader = ip.create_train_loader(coded_source(n), global_batch_size=4, crop_size=16, seed=2,
                                    num_epochs=2, **CODED)
    ks = [check_crop(r, d, 16)[0] for batch in loader for r, d in zip(batch["raw"], batch["dslr"])]
    assert len(ks) == 2 * n
    assert sorted(ks[:n]) == list(range(n)) and sorted(ks[n:]) == list(range(n))
    assert ks[:n] != list(range(n)) and ks[:n] != ks[n:]  # shuffled, per epoch


# ----------------------------------------------------------------- sharding

def test_process_shards_are_disjoint_and_cover_the_set():
    n, shards = 8, 2
    src = coded_source(n)
    per_shard = []
    for i in range(shards):
        loader = ip.create_train_loader(src, global_batch_size=4, crop_size=S, seed=5,
                                        augment=False, num_epochs=1,
                                        shard_options=one_process(i, shards), **CODED)
        batches = list(loader)
        assert len(batches) == 2 and all(b["raw"].shape[0] == 2 for b in batches)
        per_shard.append([check_crop(r, d, S)[0] for b in batches
                          for r, d in zip(b["raw"], b["dslr"])])
    assert set(per_shard[0]).isdisjoint(per_shard[1])
    assert sorted(per_shard[0] + per_shard[1]) == list(range(n))


def test_default_sharding_is_by_jax_process():
    it = iter(ip.create_train_loader(coded_source(4), global_batch_size=2, crop_size=16, seed=0))
    next(it)
    state = it.get_state().decode()
    assert "ShardByJaxProcess(shard_index=0, shard_count=1, drop_remainder=True)" in state


# ----------------------------------------------------------------- iterator state

def test_iterator_state_round_trip():
    src = coded_source(10)
    kw = dict(global_batch_size=4, crop_size=16, seed=11, **CODED)
    it = iter(ip.create_train_loader(src, **kw))
    take(it, 3)
    state = it.get_state()
    expected = take(it, 4)  # crosses the epoch boundary (10 records, 4 per batch)
    it2 = iter(ip.create_train_loader(src, **kw))  # a "new run"
    it2.set_state(state)
    assert_batches_equal(take(it2, 4), expected)
    # a different seed's state is refused
    it3 = iter(ip.create_train_loader(src, **{**kw, "seed": 12}))
    with pytest.raises(ValueError, match="Sampler"):
        it3.set_state(state)


def test_iterator_state_with_orbax_checkpoint_manager(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    if not hasattr(grain.checkpoint, "CheckpointSave"):
        pytest.skip("grain.checkpoint.CheckpointSave needs orbax")
    src = coded_source(10)
    kw = dict(global_batch_size=4, crop_size=16, seed=4, **CODED)
    it = iter(ip.create_train_loader(src, **kw))
    take(it, 2)
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",)) as mngr:
        mngr.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    expected = take(it, 3)
    it2 = iter(ip.create_train_loader(src, **kw))
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",)) as mngr:
        assert mngr.latest_step() == 2
        mngr.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it2)))
    assert_batches_equal(take(it2, 3), expected)
    assert (tmp_path / "ckpt" / "2" / "data" / "process_0-of-1.json").exists()


# ----------------------------------------------------------------- eval loader

def test_eval_loader_full_size_ordered_padded_and_deterministic():
    n = 5
    src = coded_source(n)
    loader = ip.create_eval_loader(src, batch_size=2, **CODED)
    batches = list(loader)
    assert len(batches) == 3
    assert_batches_equal(batches, list(ip.create_eval_loader(src, batch_size=2, **CODED)))
    for b in batches:
        assert b["raw"].shape == (2, S // 2, S // 2, 4) and b["raw"].dtype == np.float32
        assert b["dslr"].shape == (2, S, S, 3) and b["mask"].dtype == np.bool_
    ids = np.concatenate([b["id"] for b in batches]).tolist()
    mask = np.concatenate([b["mask"] for b in batches]).tolist()
    assert ids == [b"ex0", b"ex1", b"ex2", b"ex3", b"ex4", b""]
    assert mask == [True] * 5 + [False]
    flat_raw = np.concatenate([b["raw"] for b in batches])
    flat_dslr = np.concatenate([b["dslr"] for b in batches])
    for k in range(n):  # exactly the full image, no augmentation
        np.testing.assert_array_equal(
            flat_raw[k], raw_lib.normalize(raw_lib.pack(src[k]["raw"]), 0, 65535))
        np.testing.assert_array_equal(flat_dslr[k], src[k]["dslr"] / np.float32(127.5) - 1)
    assert np.all(flat_raw[5] == 0) and np.all(flat_dslr[5] == -1)  # padding


def test_eval_loader_sharded_covers_each_example_once():
    n, shards = 7, 2
    src = coded_source(n)
    seen, counts = [], []
    for i in range(shards):
        batches = list(ip.create_eval_loader(src, batch_size=4, shard_options=one_process(i, shards),
                                             **CODED))
        counts.append(len(batches))
        for b in batches:
            assert b["raw"].shape[0] == 2
            seen += [x for x, m in zip(b["id"].tolist(), b["mask"]) if m]
    assert counts == [2, 2]  # same number of batches on every process
    assert sorted(seen) == sorted(f"ex{k}".encode() for k in range(n))


def test_loaders_on_tfds_zrr(zrr_source):
    train, test = zrr_source["train"], zrr_source["test"]
    assert len(train) == 4 and len(test) == 3
    # eval: full 448 images, every test example once, equal to pack + normalise
    batches = list(ip.create_eval_loader(test, batch_size=2))
    assert len(batches) == 2
    got = {}
    for b in batches:
        assert b["raw"].shape == (2, 224, 224, 4) and b["dslr"].shape == (2, 448, 448, 3)
        for r, d, ident, m in zip(b["raw"], b["dslr"], b["id"], b["mask"]):
            if m:
                got[ident] = (r, d)
    by_id = {test[i]["id"]: test[i] for i in range(len(test))}
    assert set(got) == set(by_id)
    for ident, (r, d) in got.items():
        np.testing.assert_array_equal(r, raw_lib.normalize(raw_lib.pack(by_id[ident]["raw"])))
        np.testing.assert_allclose(d, by_id[ident]["dslr"] / 127.5 - 1, atol=1e-6)
        assert 0.0 <= r.min() and r.max() <= 1.0 and -1.0 <= d.min() and d.max() <= 1.0
    # train, full-size crops with augmentation: identity or transpose of a real example
    full = {i: raw_lib.normalize(raw_lib.pack(train[i]["raw"])) for i in range(len(train))}
    batch = next(iter(ip.create_train_loader(train, global_batch_size=4, crop_size=448, seed=0)))
    assert batch["raw"].shape == (4, 224, 224, 4) and batch["dslr"].shape == (4, 448, 448, 3)
    for r in batch["raw"]:
        transposed = r.transpose(1, 0, 2)[..., [0, 2, 1, 3]]  # greens swap
        assert any(np.array_equal(r, f) or np.array_equal(transposed, f) for f in full.values())
    # train, crop 64: shapes, dtypes, ranges
    batch = next(iter(ip.create_train_loader(train, global_batch_size=2, crop_size=64, seed=1)))
    assert batch["raw"].shape == (2, 32, 32, 4) and batch["raw"].dtype == np.float32
    assert batch["dslr"].shape == (2, 64, 64, 3) and batch["dslr"].dtype == np.float32
    assert batch["raw"].min() >= 0 and batch["raw"].max() <= 1
    assert batch["dslr"].min() >= -1 and batch["dslr"].max() <= 1


def test_worker_processes_resume_deterministically(zrr_source):
    """worker_count=2 (spawned processes): a restored iterator repeats the batches."""
    kw = dict(global_batch_size=2, crop_size=64, seed=3, worker_count=2)
    it = iter(ip.create_train_loader(zrr_source["train"], **kw))
    take(it, 2)
    state = it.get_state()
    expected = take(it, 3)
    it2 = iter(ip.create_train_loader(zrr_source["train"], **kw))
    it2.set_state(state)
    got = take(it2, 3)
    del it, it2
    gc.collect()
    assert_batches_equal(got, expected)
    assert got[0]["raw"].shape == (2, 32, 32, 4) and got[0]["dslr"].shape == (2, 64, 64, 3)
    assert '"worker_count": 2' in state.decode()


# ----------------------------------------------------------------- global batches

def test_to_global_batch_single_device():
    sharding = parallel.batch_sharding(parallel.create_mesh(1))
    assert sharding.mesh.axis_names == ("data", "fsdp")
    batch = next(iter(ip.create_train_loader(coded_source(4), global_batch_size=4, crop_size=16,
                                             seed=0, **CODED)))
    g = ip.to_global_batch(batch, sharding)
    for key in ("raw", "dslr"):
        assert isinstance(g[key], jax.Array) and g[key].shape == batch[key].shape
        assert g[key].sharding == sharding
        np.testing.assert_array_equal(np.asarray(g[key]), batch[key])
    eval_batch = next(iter(ip.create_eval_loader(coded_source(3), batch_size=2, **CODED)))
    ge = ip.to_global_batch(eval_batch, sharding)
    assert isinstance(ge["mask"], jax.Array) and isinstance(ge["id"], np.ndarray)
    assert ge["id"].tolist() == [b"ex0", b"ex1"]


def test_to_global_batch_eight_devices_subprocess():
    script = textwrap.dedent("""
        import numpy as np, jax
        from diffraw_jax.data import input_pipeline as ip
        from diffraw_jax import parallel
        from diffraw_jax import raw as raw_lib
        assert jax.device_count() == 8, jax.devices()
        src = [{"raw": np.full((16, 16), 100 + k, np.uint16),
                "dslr": np.full((16, 16, 3), k, np.uint8), "id": str(k)} for k in range(16)]
        loader = ip.create_train_loader(src, global_batch_size=16, crop_size=8, seed=0,
                                        augment=False, num_epochs=1)
        batch = next(iter(loader))
        sharding = parallel.batch_sharding(parallel.create_mesh(1))
        g = ip.to_global_batch(batch, sharding)
        assert g["raw"].shape == (16, 4, 4, 4) and g["dslr"].shape == (16, 8, 8, 3), g["raw"].shape
        assert g["raw"].sharding == sharding and g["raw"].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
        shards = sorted(g["raw"].addressable_shards, key=lambda s: s.index[0].start)
        assert len(shards) == 8 and len({s.device for s in shards}) == 8
        for n, s in enumerate(shards):
            assert s.data.shape == (2, 4, 4, 4)
            np.testing.assert_array_equal(np.asarray(s.data), batch["raw"][2 * n:2 * n + 2])
        np.testing.assert_array_equal(np.asarray(g["dslr"]), batch["dslr"])
        ks = sorted(np.rint(np.asarray(g["dslr"])[:, 0, 0, 0] * 127.5 + 127.5).astype(int).tolist())
        assert ks == list(range(16)), ks
        total = jax.jit(lambda x: x.sum())(g["raw"])
        np.testing.assert_allclose(float(total), float(batch["raw"].astype(np.float64).sum()), rtol=1e-5)
        print("OK8")
    """)
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK8" in out.stdout


# ----------------------------------------------------------------- errors

@pytest.mark.parametrize("crop,match", [(15, "even"), (0, "positive even"), (-2, "positive even"),
                                        (34, "exceeds"), (16.5, "integer")])
def test_bad_crop_size(crop, match):
    with pytest.raises(ValueError, match=match):
        ip.create_train_loader(coded_source(2), global_batch_size=2, crop_size=crop, seed=0)


def test_batch_not_divisible_by_processes():
    with pytest.raises(ValueError, match="not divisible"):
        ip.create_train_loader(coded_source(6), global_batch_size=4, crop_size=16, seed=0,
                               shard_options=one_process(0, 3))
    with pytest.raises(ValueError, match="not divisible"):
        ip.create_eval_loader(coded_source(6), batch_size=5, shard_options=one_process(1, 2))
    with pytest.raises(ValueError, match="positive integer"):
        ip.create_train_loader(coded_source(6), global_batch_size=0, crop_size=16, seed=0)


def test_bad_examples_and_seed():
    with pytest.raises(ValueError, match="even"):
        ip.create_train_loader([{"raw": np.zeros((31, 32), np.uint16),
                                 "dslr": np.zeros((31, 32, 3), np.uint8)}],
                               global_batch_size=1, crop_size=16, seed=0)
    with pytest.raises(ValueError, match="resolution"):
        ip.create_train_loader([{"raw": np.zeros((32, 32), np.uint16),
                                 "dslr": np.zeros((16, 16, 3), np.uint8)}],
                               global_batch_size=1, crop_size=16, seed=0)
    with pytest.raises(ValueError, match="seed"):
        ip.create_train_loader(coded_source(2), global_batch_size=2, crop_size=16, seed=-1)


# ----------------------------------------------------------------- codes to the device, prefetch

def _loader(as_codes, **kw):
    return ip.create_train_loader(coded_source(12), global_batch_size=4, crop_size=16, seed=3,
                                  shard_options=one_process(), as_codes=as_codes, **kw)


def test_codes_normalised_in_jit_equal_host_normalisation():
    host = take(iter(_loader(False, black_level=63, white_level=1020)), 2)
    codes = take(iter(_loader(True, black_level=63, white_level=1020)), 2)
    for h, c in zip(host, codes):
        assert c["raw"].dtype == np.uint16 and c["dslr"].dtype == np.uint8
        assert c["raw"].nbytes * 2 == h["raw"].nbytes and c["dslr"].nbytes * 4 == h["dslr"].nbytes
        dev = jax.jit(lambda b: ip.normalize_batch(b, 63, 1020))(c)
        assert dev["raw"].dtype == dev["dslr"].dtype == np.float32
        np.testing.assert_allclose(np.asarray(dev["raw"]), h["raw"], rtol=0, atol=1e-7)
        np.testing.assert_allclose(np.asarray(dev["dslr"]), h["dslr"], rtol=0, atol=1e-7)
        # Independent formulas: clip((code - 63) / 957, 0, 1) and dslr / 127.5 - 1.
        codes64 = c["raw"].astype(np.float64)
        np.testing.assert_allclose(np.asarray(dev["raw"]), np.clip((codes64 - 63) / 957, 0, 1), atol=1e-6)
        np.testing.assert_allclose(np.asarray(dev["dslr"]), c["dslr"] / 127.5 - 1, atol=1e-6)
    float_batch = {"raw": np.full((1, 2, 2, 4), 0.5, np.float32), "dslr": np.zeros((1, 4, 4, 3), np.float32)}
    out = ip.normalize_batch(float_batch)
    assert out["raw"] is float_batch["raw"] and out["dslr"] is float_batch["dslr"]  # already normalised
    with pytest.raises(ValueError, match="uint8"):
        ip.ToModelInputs(as_codes=True).map({"raw": np.zeros((4, 4), np.uint16),
                                             "dslr": np.zeros((4, 4, 3), np.float32)})


def test_device_prefetch_checkpoints_the_position_of_consumed_batches():
    moved = []

    def to_device(batch):
        moved.append(batch)
        return jax.device_put(batch)

    reference = take(iter(_loader(True)), 6)
    it = ip.DevicePrefetch(iter(_loader(True)), to_device, size=2)
    first = take(it, 3)
    assert len(moved) == 5  # 3 consumed + 2 in flight
    assert_batches_equal([jax.device_get(b) for b in first], reference[:3])
    state = it.get_state()
    resumed = ip.DevicePrefetch(iter(_loader(True)), jax.device_put, size=2)
    resumed.set_state(state)
    assert_batches_equal([jax.device_get(b) for b in take(resumed, 3)], reference[3:6])
    assert_batches_equal([jax.device_get(b) for b in take(it, 3)], reference[3:6])
    with pytest.raises(ValueError, match="prefetch size"):
        ip.DevicePrefetch(iter([]), jax.device_put, size=0)


# ----------------------------------------------------------------- calibration keys

CAL_KEYS = {"wb_gains": (3,), "ccm": (3, 3), "baseline_exposure": ()}


def calibration_of(k):
    """A calibration that encodes the example index k (float64, as a JSON reader gives it)."""
    return {"wb_gains": np.array([1.5 + k, 1.0, 2.0 + k / 10]),
            "ccm": np.eye(3) + k / 100 * np.array([[1, -1, 0], [0, 1, -1], [-1, 0, 1]]),
            "baseline_exposure": 0.25 * k}


def test_calibration_keys_reach_train_and_eval_batches_unchanged():
    src = [{**coded_example(k), **calibration_of(k)} for k in range(6)]
    for as_codes in (False, True):
        loader = ip.create_train_loader(src, global_batch_size=3, crop_size=16, seed=0, augment=True,
                                        as_codes=as_codes, **CODED)
        for batch in take(iter(loader), 4):
            assert set(batch) == {"raw", "dslr"} | set(CAL_KEYS)
            for key, shape in CAL_KEYS.items():
                assert batch[key].shape == (3,) + shape and batch[key].dtype == np.float32, key
            for i in range(3):  # each example keeps its own calibration through crop/flip/batching
                d = np.asarray(batch["dslr"][i], np.float64)
                k = int(np.rint(d[0, 0, 2] if as_codes else (d[0, 0, 2] + 1) * 127.5))
                for key in CAL_KEYS:
                    np.testing.assert_array_equal(batch[key][i], np.float32(calibration_of(k)[key]))
    batches = list(ip.create_eval_loader(src[:5], batch_size=2, **CODED))
    assert len(batches) == 3
    for key, shape in CAL_KEYS.items():
        got = np.concatenate([b[key] for b in batches])
        assert got.shape == (6,) + shape and got.dtype == np.float32
        for k in range(5):
            np.testing.assert_array_equal(got[k], np.float32(calibration_of(k)[key]))
        assert np.all(got[5] == 0)  # padding: zeros, mask False
    # centre crop and first_batch keep them; a source without them gives batches without them
    import ml_collections
    cfg = ml_collections.ConfigDict({"data": {"black_level": 0, "white_level": 65535}})
    fb = ip.first_batch(cfg, 3, 8, src)
    assert fb["raw"].shape == (3, 4, 4, 4) and fb["wb_gains"].shape == (3, 3)
    np.testing.assert_array_equal(fb["ccm"][2], np.float32(calibration_of(2)["ccm"]))
    plain = next(iter(ip.create_train_loader(coded_source(4), global_batch_size=2, crop_size=16, seed=0, **CODED)))
    assert set(plain) == {"raw", "dslr"}
    assert set(next(iter(ip.create_eval_loader(coded_source(3), batch_size=2, **CODED)))) == {
        "raw", "dslr", "id", "mask"}
    with pytest.raises(ValueError, match=r"calibration keys \['wb_gains'\] but not all"):
        ip.ToModelInputs().map({"raw": np.zeros((4, 4), np.uint16), "wb_gains": np.ones(3)})
    with pytest.raises(ValueError, match=r"'ccm' must have shape \(3, 3\)"):
        ip.ToModelInputs().map({"raw": np.zeros((4, 4), np.uint16), **calibration_of(0), "ccm": np.eye(2)})


def test_loaders_on_tfds_zrr_calibrated(tmp_path):
    """zrr/calibrated built from synthetic pairs with calibration JSONs: the train loader (as the
    trainer calls it, as_codes) and the eval loader give the keys with the stored float32 values."""
    import json

    tfds = pytest.importorskip("tensorflow_datasets")
    from diffraw_jax.data import synthetic_zrr
    import tfds_zrr  # noqa: F401  registers "zrr"

    root = tmp_path / "root"
    want = {}
    for split, n in (("train", 3), ("test", 2)):
        for d in ("huawei_raw", "canon", "calibration"):
            os.makedirs(root / split / d)
        for i in range(n):
            raw, dslr = synthetic_zrr.make_pair(2, split, i)
            synthetic_zrr.write_pair(str(root), split, i, raw, dslr)
            cal = {k: np.asarray(v).tolist() for k, v in calibration_of(i + 10 * (split == "test")).items()}
            (root / split / "calibration" / f"{i}.json").write_text(json.dumps(cal))
            want[(split, str(i).encode())] = cal
    b = tfds.builder("zrr/calibrated", data_dir=str(tmp_path / "d"), file_format="array_record")
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
    src = b.as_data_source()
    batch = next(iter(ip.create_train_loader(src["train"], global_batch_size=3, crop_size=64, seed=0,
                                             as_codes=True)))
    assert batch["raw"].shape == (3, 32, 32, 4) and batch["raw"].dtype == np.uint16
    for key, shape in CAL_KEYS.items():
        assert batch[key].shape == (3,) + shape and batch[key].dtype == np.float32
    got = sorted(batch["baseline_exposure"].tolist())
    assert got == [float(np.float32(want[("train", str(i).encode())]["baseline_exposure"])) for i in range(3)]
    ev = list(ip.create_eval_loader(src["test"], batch_size=2))
    assert len(ev) == 1 and ev[0]["raw"].shape == (2, 224, 224, 4)
    for i, ident in enumerate(ev[0]["id"]):
        for key, shape in CAL_KEYS.items():
            assert ev[0][key].dtype == np.float32 and ev[0][key].shape == (2,) + shape
            np.testing.assert_array_equal(ev[0][key][i], np.float32(want[("test", ident)][key]))

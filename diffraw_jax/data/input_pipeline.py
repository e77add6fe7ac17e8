"""Grain input pipeline for DiffRAW training and evaluation on ZRR.

Only used for training/eval: it imports ``grain`` at module level, but
``import diffraw_jax`` does not import this module (nor grain).

Data source
-----------
Any random-access source (``__len__`` / ``__getitem__``) of dicts
``{"raw": uint16 [H, W] RGGB mosaic, "dslr": uint8 [H, W, 3], "id": bytes|str}``,
e.g. ``tfds.builder("zrr", ..., file_format="array_record").as_data_source()["train"]``
(no TensorFlow needed) or a plain Python list of such dicts. The DSLR image
has the mosaic's resolution, so a window of the mosaic and the same pixel
window of the DSLR cover the same scene.

A calibrated source (``zrr/calibrated``) also carries each example's camera
calibration, "wb_gains" [3], "ccm" [3, 3] and "baseline_exposure" []
(``batches.CALIBRATION_SHAPES``); every stage passes these keys on unchanged (as
float32; crops and flips do not change a calibration), so the train and eval
batches hold them, stacked: [b, 3], [b, 3, 3], [b]. A source without them gives
batches without them. Either all examples of a source carry them or none.

Training batches (``create_train_loader``)
-----------------------------------------
Per process, ``b = global_batch_size // process_count``::

    "raw":  float32 [b, crop/2, crop/2, 4]  packed planes (R, Gr, Gb, B; see raw.py),
            clip((code - black) / (white - black), 0, 1)
    "dslr": float32 [b, crop, crop, 3]      dslr / 127.5 - 1, in [-1, 1]

(no "id": a training batch is all numbers, ready for ``to_global_batch``). With
``as_codes=True`` (what the trainer uses) "raw" is the uint16 packed codes and
"dslr" the uint8 image instead, normalised inside the jitted step by
``normalize_batch`` (same formulas; 1/4 of the bytes to move to the device).

Shuffled globally with the seed, repeated forever (``num_epochs=None``),
sharded over JAX processes (``ShardByJaxProcess(drop_remainder=True)``: each
process reads a disjoint 1/process_count slice of the records), last partial
batch dropped. Given (data, seed, shard options, worker_count) the batches are
identical from run to run. The loader's seed is hashed (``SeedSequence``) to
the 32-bit seed grain wants, because grain seeds record ``i``'s augmentation
RNG with ``Philox(seed + i)``: nearby user seeds would otherwise share
augmentation streams shifted by one record. Changing ``worker_count``
changes which worker batches which records, hence the batches.

Crop and Bayer-consistent augmentation
--------------------------------------
A crop starts at an EVEN (row, col), so the cropped mosaic is still RGGB. The
DSLR gets exactly the same window (and every later window op).

With ``augment=True`` each example draws (vflip, hflip, transpose), i.e. one of
the 8 symmetries of the square:

* transpose is free: an RGGB cell transposed keeps R at (0,0) and B at (1,1);
  the two greens swap places (Gr <-> Gb), which is still RGGB. (The model sees
  the Gr/Gb planes exchanged on those examples: the usual green-imbalance
  caveat of Bayer augmentation.)
* a flip turns RGGB into another pattern (hflip -> GRBG, vflip -> GBRG, both ->
  BGGR). So along each flipped axis we take a window 2 pixels larger
  (crop+2, at an even offset, hence RGGB), flip it, and cut it back to RGGB
  with ``raw.crop_box(new_pattern, ...)``, which drops the first and last
  row/column of the flipped axis: exactly ``crop`` pixels remain, starting on
  an R site. E.g. an hflip of window columns [x0, x0+crop+2) keeps original
  columns x0+crop ... x0+1 (reversed). The DSLR window is flipped and cut
  identically, so DSLR pixel (i, j) and mosaic site (i, j) still come from the
  same scene point.
* a flip along an axis needs ``crop + 2 <= image size`` on that axis; for
  full-size crops (crop == 448 on ZRR patches) flips are skipped and only the
  transpose is applied.

Evaluation batches (``create_eval_loader``)
-------------------------------------------
Full images, dataset order, no shuffling, no augmentation, one epoch. The
last batch is PADDED rather than kept short, so every batch (on every process)
has the same shape and count -- what a jitted/sharded eval step needs::

    "raw":  float32 [b, H/2, W/2, 4]   "dslr": float32 [b, H, W, 3]  (if the source has it)
    "id":   bytes   [b]  (b"" for padding)
    "mask": bool    [b]  True for real examples, False for padding (zeros)

Every example appears exactly once with ``mask=True`` over all processes. Evaluation
(``evaluate``, PeriodicEval through ``first_images``) passes ``shard_options=EVERY_RECORD``
instead: every process reads every record (the whole global batch), and the devices of
all processes split it (``parallel.global_from_full``).

Prefetching
-----------
``worker_count > 0`` runs reading + transforms + batching in that many child
processes (spawned; the transforms here are picklable module-level classes),
each keeping ``worker_buffer_size`` batches ready. Grain then needs absl flags
to be parsed; outside ``absl.app.run`` the loaders mark them parsed (defaults).
Startup costs a few seconds (each worker imports jax/grain). Close a worker
iterator you no longer need (``del it``) before interpreter shutdown to avoid
shared-memory cleanup warnings. Independently, in every
process ``read_options`` (``grain.ReadOptions``) sets the threads reading
records and the read-ahead buffer; our default is ``ReadOptions(num_threads=4,
prefetch_buffer_size=64)`` instead of grain's 16/500, because a ZRR record
decodes to ~1 MB and 500 of them per process is a lot of host memory.

Global arrays
-------------
``to_global_batch(batch, sharding)`` turns a per-process numpy batch into
``jax.Array``s laid out over all processes with
``jax.make_array_from_process_local_data`` (the sharding is
``parallel.batch_sharding(mesh)``: the batch dimension split over every device
of the training mesh). String leaves (eval "id") stay process-local numpy
arrays.

Checkpointing the iterator
--------------------------
``it = iter(loader)``; ``state = it.get_state()`` (bytes, JSON) and, in a new
process, ``it = iter(create_train_loader(<same arguments>)); it.set_state(state)``
continues with exactly the batches the interrupted run would have produced
(grain checks that seed/sampler, source repr and worker_count match). With
orbax (grain 0.2.18 + orbax-checkpoint 0.12.x, tested)::

    mngr = ocp.CheckpointManager(dir, item_names=("state", "data"))
    mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(train_state),
        data=grain.checkpoint.CheckpointSave(it)))
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(it)))

(one ``process_<i>-of-<n>.json`` per process inside the "data" item).
"""
from __future__ import annotations

from typing import Any, Optional

import grain
import jax
import numpy as np

from diffraw_jax import raw as raw_lib
from diffraw_jax.batches import CALIBRATION_SHAPES, dslr_to_model_range, normalize_batch  # noqa: F401

__all__ = [
    "DEFAULT_READ_OPTIONS",
    "BayerRandomCrop",
    "ToModelInputs",
    "normalize_batch",
    "DevicePrefetch",
    "create_train_loader",
    "create_eval_loader",
    "to_global_batch",
]

DEFAULT_READ_OPTIONS = grain.ReadOptions(num_threads=4, prefetch_buffer_size=64)

# (vflip, hflip) -> CFA pattern of an RGGB window after the flips.
_FLIPPED_PATTERN = {(0, 0): "RGGB", (0, 1): "GRBG", (1, 0): "GBRG", (1, 1): "BGGR"}


# ----------------------------------------------------------------- checks

def _check_example(raw, dslr) -> None:
    if raw.ndim != 2:
        raise ValueError(f"expected a Bayer mosaic 'raw' [H, W], got shape {raw.shape}")
    h, w = raw.shape
    if h % 2 or w % 2:
        raise ValueError(f"Bayer mosaic height and width must be even, got {h}x{w}")
    if dslr is not None and dslr.shape != (h, w, 3):
        raise ValueError(
            f"'dslr' must be [H, W, 3] at the mosaic's resolution {h}x{w}, got {dslr.shape}")


def _check_crop_size(crop_size, height: int, width: int) -> int:
    if isinstance(crop_size, bool) or int(crop_size) != crop_size:
        raise ValueError(f"crop_size must be an integer, got {crop_size!r}")
    crop_size = int(crop_size)
    if crop_size <= 0 or crop_size % 2:
        raise ValueError(
            f"crop_size must be a positive even number (whole 2x2 Bayer cells), got {crop_size}")
    if crop_size > min(height, width):
        raise ValueError(
            f"crop_size {crop_size} exceeds the image size {height}x{width}")
    return crop_size


def _process_count(shard_options) -> int:
    return shard_options.shard_count if shard_options is not None else jax.process_count()


def _per_process_batch(batch_size: int, process_count: int, name: str) -> int:
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size <= 0:
        raise ValueError(f"{name} must be a positive integer, got {batch_size!r}")
    batch_size = int(batch_size)
    if batch_size % process_count:
        raise ValueError(
            f"{name} {batch_size} is not divisible by the number of processes "
            f"(data shards) {process_count}")
    return batch_size // process_count


def _grain_seed(seed) -> int:
    """Any non-negative int -> a well-mixed 32-bit seed for grain."""
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(np.random.SeedSequence(int(seed)).generate_state(1, np.uint32)[0])


def _prepare_workers(worker_count) -> None:
    """grain 0.2.18 reads an absl flag (--grain_enable_multiprocess_worker_profiling)
    when it starts worker processes, which raises UnparsedFlagAccessError unless
    absl flags were parsed (``absl.app.run``). Outside absl apps (scripts,
    pytest, notebooks) mark them parsed, i.e. use the defaults."""
    if worker_count:
        from absl import flags

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()


def _first_shapes(data_source):
    if len(data_source) == 0:
        raise ValueError("the data source is empty")
    ex = data_source[0]
    raw = np.asarray(ex["raw"])
    dslr = np.asarray(ex["dslr"]) if "dslr" in ex else None
    _check_example(raw, dslr)
    return raw, dslr


def _calibration(element) -> dict:
    """The calibration entries of an example (``CALIBRATION_SHAPES``) as float32 arrays, {} if none."""
    out = {}
    have = [k for k in CALIBRATION_SHAPES if k in element]
    if have and len(have) < len(CALIBRATION_SHAPES):
        raise ValueError(f"an example carries the calibration keys {have} but not all of "
                         f"{list(CALIBRATION_SHAPES)}")
    for k, shape in CALIBRATION_SHAPES.items():
        if k in element:
            v = np.asarray(element[k], np.float32)
            if v.shape != shape:
                raise ValueError(f"calibration {k!r} must have shape {shape}, got {v.shape}")
            out[k] = v
    return out


# ----------------------------------------------------------------- transforms

class BayerRandomCrop(grain.transforms.RandomMap):
    """Random even-offset crop (+ optional Bayer-consistent flips/transpose).

    In: {"raw": [H, W] RGGB, "dslr": [H, W, 3], ...}. Out: {"raw": [c, c]
    RGGB mosaic (dtype kept), "dslr": [c, c, 3] (dtype kept)} plus the calibration
    keys unchanged (float32) when present; other keys are dropped. See the module
    docstring for how flips are re-canonicalised.
    """

    def __init__(self, crop_size: int, augment: bool = True):
        self.crop_size = int(crop_size)
        self.augment = bool(augment)

    def random_map(self, element, rng: np.random.Generator):
        raw = np.asarray(element["raw"])
        dslr = np.asarray(element["dslr"])
        _check_example(raw, dslr)
        c = _check_crop_size(self.crop_size, *raw.shape)
        h, w = raw.shape
        if self.augment:
            vflip, hflip, transpose = (int(v) for v in rng.integers(0, 2, size=3))
            vflip &= int(c + 2 <= h)  # a flip needs one spare Bayer cell on its axis
            hflip &= int(c + 2 <= w)
        else:
            vflip = hflip = transpose = 0
        wh, ww = c + 2 * vflip, c + 2 * hflip
        top = 2 * int(rng.integers(0, (h - wh) // 2 + 1))
        left = 2 * int(rng.integers(0, (w - ww) // 2 + 1))
        raw = raw[top:top + wh, left:left + ww]
        dslr = dslr[top:top + wh, left:left + ww]
        if vflip:
            raw, dslr = raw[::-1], dslr[::-1]
        if hflip:
            raw, dslr = raw[:, ::-1], dslr[:, ::-1]
        t, l, b, r = raw_lib.crop_box(_FLIPPED_PATTERN[(vflip, hflip)], wh, ww)
        raw, dslr = raw[t:b, l:r], dslr[t:b, l:r]
        if transpose:  # RGGB -> RGGB with Gr/Gb exchanged
            raw, dslr = raw.T, dslr.transpose(1, 0, 2)
        return {"raw": np.ascontiguousarray(raw), "dslr": np.ascontiguousarray(dslr), **_calibration(element)}


class ToModelInputs(grain.transforms.Map):
    """RGGB mosaic -> normalised packed planes; uint8 DSLR -> [-1, 1] float32.

    With ``as_codes`` the normalisation is left to the device
    (``normalize_batch`` inside the jitted step): "raw" stays uint16 packed codes
    and "dslr" uint8, a quarter of float32's bytes on the host-to-device link.
    With ``keep_id`` the "id" is kept as bytes and "mask" passed through. The
    calibration keys pass through as float32 when present.
    """

    def __init__(self, black_level=raw_lib.ZRR_BLACK_LEVEL,
                 white_level=raw_lib.ZRR_WHITE_LEVEL, keep_id: bool = False, as_codes: bool = False):
        self.black_level = black_level
        self.white_level = white_level
        self.keep_id = bool(keep_id)
        self.as_codes = bool(as_codes)

    def map(self, element):
        raw = raw_lib.pack(np.asarray(element["raw"]))
        dslr = np.asarray(element["dslr"]) if "dslr" in element else None
        if self.as_codes:
            if dslr is not None and dslr.dtype != np.uint8:
                raise ValueError(f"as_codes needs uint8 DSLR images, got {dslr.dtype}")
            out = {"raw": raw} if dslr is None else {"raw": raw, "dslr": dslr}
        else:
            out = {"raw": raw_lib.normalize(raw, self.black_level, self.white_level)}
            if dslr is not None:
                out["dslr"] = dslr_to_model_range(dslr)
        out.update(_calibration(element))
        if self.keep_id:
            ident = element.get("id", b"")
            out["id"] = ident if isinstance(ident, bytes) else str(ident).encode()
            out["mask"] = bool(element.get("mask", True))
        return out


class _PaddedEvalSource:
    """The source plus padding records (zeros, id b"", mask False) up to ``length``.
    ``calibrated``: records carry the calibration keys (zeros in the padding)."""

    def __init__(self, source, length: int, raw_like, dslr_like, calibrated: bool = False):
        self._source = source
        self._length = int(length)
        self._calibrated = bool(calibrated)
        self._raw_shape, self._raw_dtype = raw_like.shape, raw_like.dtype
        self._dslr_shape = None if dslr_like is None else dslr_like.shape
        self._dslr_dtype = None if dslr_like is None else dslr_like.dtype

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int):
        index = int(index)
        if index < 0 or index >= self._length:
            raise IndexError(index)
        if index < len(self._source):
            ex = self._source[index]
            out = {"raw": ex["raw"], "id": ex.get("id", str(index)), "mask": True}
            if self._dslr_shape is not None:
                out["dslr"] = ex["dslr"]
            if self._calibrated:
                out.update({k: ex[k] for k in CALIBRATION_SHAPES})
            return out
        out = {"raw": np.zeros(self._raw_shape, self._raw_dtype), "id": b"", "mask": False}
        if self._dslr_shape is not None:
            out["dslr"] = np.zeros(self._dslr_shape, self._dslr_dtype)
        if self._calibrated:
            out.update({k: np.zeros(shape, np.float32) for k, shape in CALIBRATION_SHAPES.items()})
        return out

    def __repr__(self) -> str:  # grain checks it when restoring iterator state
        src = self._source
        src = str(type(src)) if isinstance(src, (list, tuple, np.ndarray)) else repr(src)
        return f"_PaddedEvalSource({src}, num_records={len(self._source)}, length={self._length})"


# ----------------------------------------------------------------- loaders

def create_train_loader(data_source, *, global_batch_size: int, crop_size: int, seed: int,
                        augment: bool = True, worker_count: int = 0,
                        shard_options: Optional[grain.sharding.ShardOptions] = None,
                        black_level=raw_lib.ZRR_BLACK_LEVEL,
                        white_level=raw_lib.ZRR_WHITE_LEVEL,
                        num_epochs: Optional[int] = None,
                        worker_buffer_size: int = 1,
                        read_options: Optional[grain.ReadOptions] = None,
                        as_codes: bool = False) -> grain.DataLoader:
    """Shuffled, cropped, (augmented) training batches; see the module docstring.

    Args:
      data_source: random-access source of {"raw", "dslr", ...} dicts.
      global_batch_size: batch over all processes; each process yields
        ``global_batch_size // shard_count`` examples per batch.
      crop_size: even, <= the image size; the mosaic crop (DSLR crop is the same).
      seed: non-negative int: shuffling and augmentation.
      augment: random flips/transpose keeping the RGGB phase.
      worker_count: child processes for reading/transforming (0: in process).
      shard_options: default ``ShardByJaxProcess(drop_remainder=True)``.
      black_level, white_level: RAW normalisation (scalars or 4 per-plane values).
      num_epochs: None repeats forever.
      worker_buffer_size: batches each worker keeps ready.
      read_options: per-process read threads/buffer; default DEFAULT_READ_OPTIONS.
      as_codes: yield uint16 packed codes and uint8 DSLR images (normalised on
        the device by ``normalize_batch``) instead of float32 model inputs.
    """
    if shard_options is None:
        shard_options = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    per_process = _per_process_batch(global_batch_size, _process_count(shard_options),
                                     "global_batch_size")
    raw0, dslr0 = _first_shapes(data_source)
    if dslr0 is None:
        raise ValueError("training examples need a 'dslr' target")
    crop_size = _check_crop_size(crop_size, *raw0.shape)
    sampler = grain.samplers.IndexSampler(
        num_records=len(data_source), shard_options=shard_options, shuffle=True,
        num_epochs=num_epochs, seed=_grain_seed(seed))
    operations = [
        BayerRandomCrop(crop_size, augment),
        ToModelInputs(black_level, white_level, as_codes=as_codes),
        grain.transforms.Batch(batch_size=per_process, drop_remainder=True),
    ]
    _prepare_workers(worker_count)
    return grain.DataLoader(
        data_source=data_source, sampler=sampler, operations=operations,
        worker_count=worker_count, worker_buffer_size=worker_buffer_size,
        shard_options=shard_options, read_options=read_options or DEFAULT_READ_OPTIONS)


# Evaluation reads every record on every process (each then holds the whole global batch,
# which is split over the devices by ``parallel.global_from_full``): not 1/N per process.
EVERY_RECORD = grain.sharding.NoSharding()


def create_eval_loader(data_source, *, batch_size: int, worker_count: int = 0,
                       shard_options: Optional[grain.sharding.ShardOptions] = None,
                       black_level=raw_lib.ZRR_BLACK_LEVEL,
                       white_level=raw_lib.ZRR_WHITE_LEVEL,
                       worker_buffer_size: int = 1,
                       read_options: Optional[grain.ReadOptions] = None) -> grain.DataLoader:
    """Full-size, un-augmented, dataset-order, single-epoch batches with "id" and "mask"
    (and the calibration keys when the source has them; zeros in the padding).

    ``batch_size`` is global, like ``global_batch_size`` of the train loader:
    each process yields ``batch_size // shard_count`` examples per batch. The
    data are padded to a multiple of ``batch_size`` (padding has mask False),
    so all batches on all processes have the same shape and number. Process
    ``i`` of ``n`` reads the i-th contiguous block of the padded sequence.
    All examples must have the same shape (they are batched).
    """
    if shard_options is None:
        shard_options = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    _per_process_batch(batch_size, _process_count(shard_options), "batch_size")
    per_process = int(batch_size) // shard_options.shard_count
    raw0, dslr0 = _first_shapes(data_source)
    n = len(data_source)
    padded = -(-n // int(batch_size)) * int(batch_size)
    source = _PaddedEvalSource(data_source, padded, raw0, dslr0,
                               calibrated=bool(_calibration(data_source[0])))
    sampler = grain.samplers.IndexSampler(
        num_records=padded, shard_options=shard_options, shuffle=False, num_epochs=1)
    operations = [
        ToModelInputs(black_level, white_level, keep_id=True),
        grain.transforms.Batch(batch_size=per_process, drop_remainder=False),
    ]
    _prepare_workers(worker_count)
    return grain.DataLoader(
        data_source=source, sampler=sampler, operations=operations,
        worker_count=worker_count, worker_buffer_size=worker_buffer_size,
        shard_options=shard_options, read_options=read_options or DEFAULT_READ_OPTIONS)


# ----------------------------------------------------------------- data sources

def load_data_sources(config):
    """(train, test) TFDS array_record data sources of ``config.data``; builds the dataset
    from ``data.manual_dir`` if it is not built yet (single-host, local ``data_dir`` only)."""
    import tensorflow_datasets as tfds
    import tfds_zrr  # noqa: F401  registers "zrr"

    if not config.data.data_dir:
        raise ValueError("config.data.data_dir is empty: set --config.data.data_dir=DIR")
    builder = tfds.builder(config.data.name, data_dir=config.data.data_dir, file_format="array_record")
    if not builder.is_prepared():
        if jax.process_count() > 1:
            raise FileNotFoundError(
                f"dataset {config.data.name} is not built in {config.data.data_dir}; on a multi-host run "
                "build it once beforehand (python -m tfds_zrr.build) on storage every host can read")
        if not config.data.manual_dir:
            raise FileNotFoundError(
                f"dataset {config.data.name} is not built in {config.data.data_dir}; set "
                "--config.data.manual_dir=ZRR_ROOT to build it, or run python -m tfds_zrr.build")
        if "://" in str(config.data.data_dir):
            raise ValueError(
                f"dataset {config.data.name} is not built in {config.data.data_dir}, and it cannot be "
                "built there (the array_record writer opens only local files): build it locally with "
                "python -m tfds_zrr.build and copy the folder to the bucket (gsutil -m cp -r)")
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=config.data.manual_dir))
    sources = builder.as_data_source()
    return sources["train"], sources["test"]


def source_fingerprint(data_source) -> str:
    """'<n> records, <12 hex digits>': the record count and a SHA-256 of the first and last
    records (every field's bytes, in key order). Two sources with the same split of the same
    dataset give the same string; a host reading another split or dataset almost surely not.
    Reads two records."""
    import hashlib

    n = len(data_source)
    digest = hashlib.sha256(str(n).encode())
    for i in sorted({0, n - 1}) if n else ():
        record = data_source[i]
        for k in sorted(record):
            v = record[k]
            digest.update(k.encode() + (v if isinstance(v, bytes) else np.ascontiguousarray(v).tobytes()))
    return f"{n} records, {digest.hexdigest()[:12]}"


def center_crop(batch, crop: int):
    """Even-offset centre crop of a model-input batch (``create_eval_loader``) to ``crop``
    mosaic pixels: "dslr" [B, crop, crop, 3], "raw" [B, crop/2, crop/2, 4] (the offset is
    even, so the mosaic stays RGGB); other keys unchanged. ``crop`` 0 or >= the height:
    the batch as it is."""
    h = batch["dslr"].shape[1]
    if not crop or crop >= h:
        return batch
    o = ((h - crop) // 2) & ~1
    out = dict(batch)
    out["dslr"] = batch["dslr"][:, o:o + crop, o:o + crop]
    out["raw"] = batch["raw"][:, o // 2:(o + crop) // 2, o // 2:(o + crop) // 2]
    return out


def first_batch(config, num_images: int, crop: int, data_source=None) -> dict:
    """The first ``min(num_images, len(data_source))`` records of ``data_source`` (default:
    the test split of ``load_data_sources(config)``) as one eval batch (numpy; see
    ``create_eval_loader``: "raw" float32 [n, crop/2, crop/2, 4] in [0, 1], "dslr" float32
    [n, crop, crop, 3] in [-1, 1], "id", "mask", and the calibration keys when the source
    has them), normalised with ``config.data`` levels and centre-cropped (``center_crop``)."""
    if data_source is None:
        data_source = load_data_sources(config)[1]
    n = min(int(num_images), len(data_source))
    if n < 1:
        raise ValueError(f"no images to take: num_images={num_images}, {len(data_source)} records")
    loader = create_eval_loader([data_source[i] for i in range(n)], batch_size=n, shard_options=EVERY_RECORD,
                                black_level=config.data.black_level, white_level=config.data.white_level)
    return center_crop(next(iter(loader)), crop)


def first_images(config, num_images: int, crop: int, data_source=None):
    """(w, y01, n): the first ``n = min(num_images, len(data_source))`` records of
    ``data_source`` (default: the test split of ``load_data_sources(config)``) as one
    batch, the same on every process (``EVERY_RECORD``), normalised with ``config.data.black_level``/``white_level`` and centre-cropped
    to ``crop`` px (``center_crop``; 0: whole images). w: packed RAW float32
    [n, crop/2, crop/2, 4] in [0, 1] (jax); y01: the DSLR image float32 [n, crop, crop, 3]
    in [0, 1] (numpy)."""
    import jax.numpy as jnp

    from diffraw_jax import sampling

    batch = first_batch(config, num_images, crop, data_source)
    n = len(batch["raw"])
    return jnp.asarray(batch["raw"]), np.asarray(sampling.to_unit_range(jnp.asarray(batch["dslr"]))), n


# ----------------------------------------------------------------- global arrays

def to_global_batch(batch: Any, sharding: jax.sharding.Sharding) -> Any:
    """Per-process numpy batch (pytree) -> global ``jax.Array``s.

    Each numeric leaf ``x`` [b_local, ...] becomes
    ``jax.make_array_from_process_local_data(sharding, x)`` of shape
    [b_local * process_count, ...] (for a sharding splitting the batch dim over
    the devices, e.g. ``parallel.batch_sharding(mesh)``; its spec must fit every
    leaf's rank -- a spec naming only dim 0 does). String/object leaves (eval "id") are
    returned unchanged as process-local numpy arrays: jax arrays cannot hold them.
    """
    def convert(x):
        x = np.asarray(x)
        if x.dtype.kind in "SUO":
            return x
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree_util.tree_map(convert, batch)


class DevicePrefetch:
    """Keeps ``size`` batches already on their way to the devices.

    Wraps a (grain) iterator: ``next`` tops the buffer up and returns
    ``to_device(batch)`` of the oldest batch, leaving ``size`` more already
    transferring (asynchronously in JAX) while the caller's step runs; the host
    reads the next batches while the device computes the previous steps.

    Checkpointing sees the position of the *consumed* batches: ``get_state``
    returns the wrapped iterator's state from before the oldest buffered batch
    was read, and ``set_state`` empties the buffer, so a resume continues
    with exactly the batch the interrupted run would have trained on next
    (``grain.checkpoint.CheckpointSave/Restore`` accept this object).
    """

    def save_args(self):
        """The orbax argument that checkpoints this iterator (``checkpointing.save``'s ``data``)."""
        import grain

        return grain.checkpoint.CheckpointSave(self)

    def restore_args(self):
        """The orbax argument that restores this iterator in place (``checkpointing.restore_latest``)."""
        import grain

        return grain.checkpoint.CheckpointRestore(self)

    def __init__(self, iterator, to_device, size: int = 2):
        if size < 1:
            raise ValueError(f"prefetch size must be >= 1, got {size}")
        self._it, self._to_device, self._size = iterator, to_device, int(size)
        self._buffer = []  # [(state before reading the batch, device batch)]

    def __iter__(self):
        return self

    def __next__(self):
        while len(self._buffer) < self._size + 1:
            state = self._it.get_state()
            self._buffer.append((state, self._to_device(next(self._it))))
        return self._buffer.pop(0)[1]

    def get_state(self):
        return self._buffer[0][0] if self._buffer else self._it.get_state()

    def set_state(self, state):
        self._buffer.clear()
        self._it.set_state(state)

    def start_prefetch(self):
        if hasattr(self._it, "start_prefetch"):
            self._it.start_prefetch()

"""Host input-pipeline throughput on a synthetic ZRR dataset.

    python -m benchmarks.input_pipeline_bench [--num_pairs 32] [--batches 40]
        [--data_dir DIR]  (reuse/keep a built dataset)

Writes ``num_pairs`` synthetic 448x448 training pairs (diffraw_jax.data.synthetic_zrr),
builds the TFDS "zrr" dataset (array_record) and times
``create_train_loader`` (global batch 8, augmentation on) at crop 64 and 448
with worker_count 0 and 2. Each row: time to the first batch (includes worker
start-up), then examples/s over ``--batches`` batches after 2 warm-up batches.
Also reports the raw read+decode rate of the data source alone.
"""
from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time


def build_dataset(data_dir: str, num_pairs: int):
    import tensorflow_datasets as tfds

    import tfds_zrr  # noqa: F401  registers "zrr"
    from diffraw_jax.data import synthetic_zrr

    manual = os.path.join(data_dir, "manual")
    if not os.path.isdir(os.path.join(manual, "train")):
        synthetic_zrr.generate(manual, num_train=num_pairs, num_test=1, size=448,
                               workers=min(2, os.cpu_count() or 1), progress=False)
    b = tfds.builder("zrr", data_dir=os.path.join(data_dir, "tfds"), file_format="array_record")
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
    return b.as_data_source()["train"]


def time_source(source, n: int) -> float:
    t = time.perf_counter()
    for i in range(n):
        source[i % len(source)]
    return n / (time.perf_counter() - t)


def time_loader(source, crop: int, workers: int, batch: int, batches: int, seed: int = 0):
    from diffraw_jax.data import input_pipeline as ip

    t0 = time.perf_counter()
    it = iter(ip.create_train_loader(source, global_batch_size=batch, crop_size=crop, seed=seed,
                                     worker_count=workers))
    next(it)
    first = time.perf_counter() - t0
    next(it)  # warm-up
    t = time.perf_counter()
    for _ in range(batches):
        out = next(it)
    dt = time.perf_counter() - t
    assert out["raw"].shape == (batch, crop // 2, crop // 2, 4)
    close = getattr(getattr(it, "_iterator", None), "close", None)
    if close is not None:  # stop worker processes / free shared memory now
        close()
    del it
    gc.collect()
    return first, batches * batch / dt


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num_pairs", type=int, default=32)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--batch", type=int, default=8, help="global batch size")
    p.add_argument("--crops", type=int, nargs="+", default=[64, 448])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--data_dir", default=None, help="keep/reuse the dataset here")
    a = p.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    tmp = None
    if a.data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="zrr_bench_")
        a.data_dir = tmp.name
    t = time.perf_counter()
    source = build_dataset(a.data_dir, a.num_pairs)
    print(f"dataset: {len(source)} train pairs 448x448 in {a.data_dir} "
          f"(ready in {time.perf_counter() - t:.1f} s); {os.cpu_count()} CPU(s)")
    print(f"data source alone (read + zlib decode): {time_source(source, 64):.1f} examples/s")
    print()
    print(f"{'crop':>5} {'workers':>7} {'batch':>5} {'first batch s':>13} {'examples/s':>11}")
    rows = []
    for crop in a.crops:
        for w in a.workers:
            first, eps = time_loader(source, crop, w, a.batch, a.batches)
            rows.append((crop, w, first, eps))
            print(f"{crop:>5} {w:>7} {a.batch:>5} {first:>13.2f} {eps:>11.1f}", flush=True)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

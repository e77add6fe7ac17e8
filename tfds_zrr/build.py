"""Build the ZRR TFDS dataset from a folder in the ZRR layout.

    python -m tfds_zrr.build --manual_dir ZRR_ROOT --data_dir DATA_DIR [--config patches|full_resolution]

Equivalent to
    tfds build zrr/patches --imports tfds_zrr --manual_dir ZRR_ROOT --data_dir DATA_DIR --file_format array_record
with a summary of skipped pairs, and a one-line error (exit 2) instead of a traceback
for a wrong folder or a split whose every pair is skipped, e.g.

    error: no usable pairs in ZRR_ROOT/train: 12 skipped (wrong size 64x64: 12); zrr/patches stores 448x448 pairs
"""
from __future__ import annotations

import argparse
import sys


def build(manual_dir: str, data_dir: str, config: str = "patches"):
    """Builds (or reuses) the dataset; returns the builder."""
    import tensorflow_datasets as tfds
    import tfds_zrr  # noqa: F401  registers "zrr"

    builder = tfds.builder(f"zrr/{config}", data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tfds_zrr.build", description=__doc__.split("\n\n")[0])
    p.add_argument("--manual_dir", required=True, help="folder holding train/ and test/ (ZRR layout)")
    p.add_argument("--data_dir", required=True, help="TFDS data_dir to write the array_record files to")
    p.add_argument("--config", default="patches", choices=["patches", "full_resolution"])
    a = p.parse_args(argv)
    from tfds_zrr.zrr import DataLayoutError

    try:
        builder = build(a.manual_dir, a.data_dir, a.config)
    except DataLayoutError as e:  # also NoUsablePairsError: every pair of a split skipped
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    splits = ", ".join(f"{k}: {v.num_examples}" for k, v in builder.info.splits.items())
    skipped = builder.info.metadata.get("skipped_pairs", [])
    print(f"zrr/{a.config} in {builder.data_dir}: {splits}; skipped {len(skipped)}")
    for s in skipped:
        print(f"  skipped {s['split']}/{s['id']}: {s['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Build the ZRR TFDS dataset from a folder in the ZRR layout.

    python -m tfds_zrr.build --manual_dir ZRR_ROOT --data_dir DATA_DIR [--config patches|full_resolution|calibrated]
                             [--calibration_dir CAL_ROOT]

Equivalent to
    tfds build zrr/patches --imports tfds_zrr --manual_dir ZRR_ROOT --data_dir DATA_DIR --file_format array_record
with a summary of skipped pairs, and a one-line error (exit 2) instead of a traceback
for a wrong folder or a split whose every pair is skipped, e.g.

    error: no usable pairs in ZRR_ROOT/train: 12 skipped (wrong size 64x64: 12); zrr/patches stores 448x448 pairs

``--config calibrated`` adds each pair's calibration from CAL_ROOT/<split>/calibration/<stem>.json
(``--calibration_dir``, default ZRR_ROOT; ``python -m tfds_zrr.calibrate`` writes one for
real ZRR, ``python -m diffraw_jax.data.synthetic_zrr`` writes the true one with its pairs).
The default stays ``patches`` even when ZRR_ROOT holds calibration files, so a command
builds the same dataset whatever the folder holds (the one the training config names,
``data.name``); the output then says which config it built and how to build the other.
"""
from __future__ import annotations

import argparse
import sys


def build(manual_dir: str, data_dir: str, config: str = "patches", calibration_dir: str | None = None):
    """Builds (or reuses) the dataset; returns the builder. ``calibration_dir``: the
    calibration root of ``config="calibrated"`` (default: ``manual_dir``)."""
    import tensorflow_datasets as tfds
    import tfds_zrr  # noqa: F401  registers "zrr"

    kwargs = {"calibration_dir": calibration_dir} if calibration_dir else {}
    builder = tfds.builder(f"zrr/{config}", data_dir=data_dir, file_format="array_record", **kwargs)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tfds_zrr.build", description=__doc__.split("\n\n")[0])
    p.add_argument("--manual_dir", required=True, help="folder holding train/ and test/ (ZRR layout)")
    p.add_argument("--data_dir", required=True, help="TFDS data_dir to write the array_record files to")
    p.add_argument("--config", default=None, choices=["patches", "full_resolution", "calibrated"],
                   help="default: patches")
    p.add_argument("--calibration_dir", default=None,
                   help="calibrated: the folder holding <split>/calibration/<stem>.json (default: --manual_dir)")
    a = p.parse_args(argv)
    import os

    from tfds_zrr.zrr import CALIBRATION_FOLDER, DataLayoutError

    config = a.config or "patches"
    if a.calibration_dir and config != "calibrated":
        p.error(f"--calibration_dir is for --config calibrated, not {config}")
    try:
        builder = build(a.manual_dir, a.data_dir, config, a.calibration_dir)
    except DataLayoutError as e:  # also NoUsablePairsError: every pair of a split skipped
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    splits = ", ".join(f"{k}: {v.num_examples}" for k, v in builder.info.splits.items())
    skipped = builder.info.metadata.get("skipped_pairs", [])
    print(f"zrr/{config} in {builder.data_dir}: {splits}; skipped {len(skipped)}")
    for s in skipped:
        print(f"  skipped {s['split']}/{s['id']}: {s['reason']}")
    if a.config is None and os.path.isdir(os.path.join(a.manual_dir, "train", CALIBRATION_FOLDER)):
        print(f"built zrr/patches (the default) without the calibration files in "
              f"{os.path.join(a.manual_dir, 'train', CALIBRATION_FOLDER)}; --config calibrated builds "
              "zrr/calibrated with them")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""TFDS builder for the Zurich RAW-to-RGB (ZRR) dataset (Ignatov et al. 2020).

Features are ``tfds.features.Tensor`` and the files are array_record, so the
built dataset is read (``builder.as_data_source()``, Grain) without TensorFlow.

    import tensorflow_datasets as tfds, tfds_zrr
    tfds.builder("zrr", data_dir=D, file_format="array_record").download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=ZRR_ROOT))

or ``python -m tfds_zrr.build --manual_dir ZRR_ROOT --data_dir D`` (see docs/data.md).

Configs: ``patches`` (448x448 pairs, the default), ``full_resolution`` (whole phone
frames) and ``calibrated``: the ``patches`` pairs plus each pair's camera calibration,
read from ``<calibration root>/<split>/calibration/<stem>.json`` (the calibration root
is ``manual_dir`` unless the builder gets ``calibration_dir=``; ``python -m
tfds_zrr.calibrate`` estimates one for real ZRR, the synthetic generator writes the
true one)::

    {"wb_gains": [r, 1.0, b], "ccm": [[3x3]], "baseline_exposure": EV}

stored as float32 features "wb_gains" [3], "ccm" [3, 3], "baseline_exposure" []
(``diffraw_jax.batches.CALIBRATION_SHAPES``). A pair without its file, or with an
invalid one, is skipped like other bad pairs; a split with no ``calibration/`` folder
at all stops the build with one line naming the command that estimates one.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import re

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from diffraw_jax.batches import CALIBRATION_SHAPES

log = logging.getLogger("tfds_zrr")

PATCH_SIZE = 448
BLACK_LEVEL = 63  # a RAW with no code above this holds no signal ("all black")
SKIPPED_FILE = "skipped_pairs.json"
CALIBRATION_FOLDER = "calibration"

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download the Zurich RAW to RGB dataset (Ignatov, Van Gool and Timofte, "Replacing
Mobile Camera ISP with a Single Deep Learning Model", CVPRW 2020) from
https://people.ee.ethz.ch/~ihnatova/pynet.html (archive Zurich-RAW-to-DSLR-Dataset.zip,
~23.8 GB), unzip it, and pass the folder that contains train/ and test/ as manual_dir:

  <manual_dir>/train/huawei_raw/<N>.png   448x448 single-channel RGGB Bayer PNG (16- or 8-bit)
  <manual_dir>/train/canon/<N>.jpg        448x448x3 Canon 5D Mark IV JPEG
  <manual_dir>/test/huawei_raw/<N>.png
  <manual_dir>/test/canon/<N>.jpg
  <manual_dir>/full_resolution/*.png      (optional; whole phone frames, config 'full_resolution')

No download? `python -m diffraw_jax.data.synthetic_zrr --out DIR --num_train N --num_test M`
writes synthetic data in this layout.
"""


class DataLayoutError(ValueError):
    """The manual_dir does not hold the expected ZRR layout."""


class NoUsablePairsError(DataLayoutError):
    """Every pair (or frame) of a split was skipped: TFDS cannot build an empty split."""


class BadPairError(ValueError):
    """A pair the builder skips. ``kind`` is a short label for summaries ("wrong size 64x64")."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


def summarize_skipped(skipped: list[dict]) -> str:
    """'wrong size 64x64: 12; all black: 1', most frequent first."""
    counts = collections.Counter(s.get("kind") or s["reason"] for s in skipped)
    return "; ".join(f"{kind}: {n}" for kind, n in counts.most_common())


def no_usable_pairs_message(folder: str, skipped: list[dict], size_hint: str = "") -> str:
    """One line: where, how many were skipped and why; ``size_hint`` is added when a
    reason is a wrong size."""
    if not skipped:
        return f"no usable pairs in {folder}: it holds no RAW/DSLR pair"
    msg = f"no usable pairs in {folder}: {len(skipped)} skipped ({summarize_skipped(skipped)})"
    if size_hint and any(str(s.get("kind", "")).startswith("wrong") for s in skipped):
        msg += f"; {size_hint}"
    return msg


def read_raw_png(path: str) -> np.ndarray:
    """A ZRR RAW PNG as uint16 [H, W], codes exactly as stored (8- or 16-bit)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()  # forces a full decode: truncated files raise here
        if im.mode not in ("I;16", "I;16B", "I;16L", "I", "L"):
            raise ValueError(f"expected a single-channel PNG, got mode {im.mode}")
        arr = np.asarray(im)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D mosaic, got shape {arr.shape}")
    if arr.dtype != np.uint8 and (arr.min() < 0 or arr.max() > 65535):
        raise ValueError("RAW codes out of the 16-bit range")
    return arr.astype(np.uint16)


def read_rgb_jpeg(path: str) -> np.ndarray:
    """An sRGB image as uint8 [H, W, 3]."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode != "RGB":
            raise ValueError(f"expected an RGB image, got mode {im.mode}")
        return np.asarray(im, dtype=np.uint8)


def _stems(folder: str, ext: str) -> dict[str, str]:
    if not os.path.isdir(folder):
        return {}
    return {os.path.splitext(f)[0]: os.path.join(folder, f)
            for f in os.listdir(folder) if f.lower().endswith(ext)}


def _sort_key(stem: str):
    return (0, int(stem), "") if re.fullmatch(r"\d+", stem) else (1, 0, stem)


def check_layout(root: str | None) -> None:
    """Raises DataLayoutError unless root has {train,test}/{huawei_raw,canon}."""
    if not root or not os.path.isdir(root):
        raise DataLayoutError(f"ZRR manual_dir {root!r} does not exist.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}")
    missing = [os.path.join(s, d) for s in ("train", "test") for d in ("huawei_raw", "canon")
               if not os.path.isdir(os.path.join(root, s, d))]
    if missing:
        raise DataLayoutError(
            f"ZRR manual_dir {root!r} lacks {', '.join(missing)}.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}")
    if not any(_stems(os.path.join(root, s, "huawei_raw"), ".png") for s in ("train", "test")):
        raise DataLayoutError(f"ZRR manual_dir {root!r} holds no RAW PNGs.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}")


def scan_split(root: str, split: str, skipped: list) -> list[tuple[str, str, str]]:
    """(stem, raw_path, dslr_path) for pairs with both partners; the others go to skipped."""
    raws = _stems(os.path.join(root, split, "huawei_raw"), ".png")
    dslrs = _stems(os.path.join(root, split, "canon"), ".jpg")
    for stem in sorted(set(raws) ^ set(dslrs), key=_sort_key):
        have = raws.get(stem) or dslrs.get(stem)
        reason = "missing DSLR partner" if stem in raws else "missing RAW partner"
        log.warning("zrr: skipping %s: %s", have, reason)
        skipped.append({"split": split, "id": stem, "file": have, "reason": reason, "kind": reason})
    return [(s, raws[s], dslrs[s]) for s in sorted(set(raws) & set(dslrs), key=_sort_key)]


def load_pair(raw_path: str, dslr_path: str, size: int = PATCH_SIZE):
    """Reads and validates one pair; returns (raw, dslr) or raises BadPairError (a
    ValueError) naming the problem."""
    try:
        raw = read_raw_png(raw_path)
    except Exception as e:  # PIL raises many types for corrupt files
        raise BadPairError(f"unreadable RAW {raw_path}: {e}", "unreadable RAW") from e
    try:
        dslr = read_rgb_jpeg(dslr_path)
    except Exception as e:
        raise BadPairError(f"unreadable DSLR {dslr_path}: {e}", "unreadable DSLR") from e
    if raw.shape != (size, size):
        raise BadPairError(f"RAW {raw_path} is {raw.shape}, expected ({size}, {size})",
                           f"wrong size {raw.shape[0]}x{raw.shape[1]}")
    if dslr.shape != (size, size, 3):
        raise BadPairError(f"DSLR {dslr_path} is {dslr.shape}, expected ({size}, {size}, 3)",
                           f"wrong DSLR size {dslr.shape[0]}x{dslr.shape[1]}")
    if int(raw.max()) <= BLACK_LEVEL:
        raise BadPairError(f"RAW {raw_path} is all black (max code {int(raw.max())} <= black level {BLACK_LEVEL})",
                           "all black")
    return raw, dslr


def calibration_path(cal_root: str, split: str, stem: str) -> str:
    """Where a pair's calibration JSON lives: ``cal_root/split/calibration/stem.json``."""
    return os.path.join(cal_root, split, CALIBRATION_FOLDER, f"{stem}.json")


def read_calibration(path: str) -> dict[str, np.ndarray]:
    """A calibration JSON -> {"wb_gains": float32 [3], "ccm": float32 [3, 3],
    "baseline_exposure": float32 []}. Raises BadPairError (kind "no calibration" for a
    missing file, "bad calibration" otherwise) unless the gains are finite and positive,
    the ccm finite with rows summing to 1 (+-1e-3) and the exposure a finite number."""
    if not os.path.isfile(path):
        raise BadPairError(f"no calibration file {path}", "no calibration")
    try:
        with open(path) as f:
            d = json.load(f)
        out = {k: np.asarray(d[k], np.float64) for k in CALIBRATION_SHAPES}
    except (OSError, ValueError, TypeError, KeyError) as e:  # KeyError: a missing entry
        raise BadPairError(f"unreadable calibration {path}: {e!r}", "bad calibration") from e
    problems = [f"{k} has shape {out[k].shape}, expected {shape}"
                for k, shape in CALIBRATION_SHAPES.items() if out[k].shape != shape]
    if not problems:
        if not all(np.isfinite(v).all() for v in out.values()):
            problems.append("non-finite values")
        elif (out["wb_gains"] <= 0).any():
            problems.append(f"wb_gains {out['wb_gains'].tolist()} not all positive")
        elif np.abs(out["ccm"].sum(axis=1) - 1).max() > 1e-3:
            problems.append(f"ccm rows sum to {out['ccm'].sum(axis=1).round(4).tolist()}, not 1")
    if problems:
        raise BadPairError(f"bad calibration {path}: {'; '.join(problems)}", "bad calibration")
    return {k: v.astype(np.float32) for k, v in out.items()}


class ZrrConfig(tfds.core.BuilderConfig):
    pass


class Zrr(tfds.core.GeneratorBasedBuilder):
    """Zurich RAW-to-RGB: Huawei P20 RAW patches paired with Canon 5D Mark IV JPEGs."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Patches (448x448) and full-resolution RAW frames; bad pairs skipped."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [
        ZrrConfig(name="patches", description="448x448 RAW/DSLR pairs, splits train and test."),
        ZrrConfig(name="full_resolution", description="Whole phone RAW frames (no DSLR), split test."),
        ZrrConfig(name="calibrated", description="The 448x448 pairs plus each pair's camera calibration "
                  "(white-balance gains, colour matrix, baseline exposure), splits train and test."),
    ]

    def __init__(self, *, calibration_dir: str | None = None, **kwargs):
        """``calibration_dir``: the calibration root of the ``calibrated`` config, holding
        ``<split>/calibration/<stem>.json`` (default: the manual_dir); other configs ignore it."""
        super().__init__(**kwargs)
        self._calibration_dir = None if calibration_dir is None else os.fspath(calibration_dir)
        self._original_state["calibration_dir"] = self._calibration_dir  # pickling re-runs __init__

    def _info(self) -> tfds.core.DatasetInfo:
        if self.builder_config.name == "full_resolution":
            features = {
                "raw": tfds.features.Tensor(shape=(None, None), dtype=np.uint16,
                                            encoding=tfds.features.Encoding.ZLIB,
                                            doc="Bayer mosaic codes exactly as stored"),
                "id": tfds.features.Tensor(shape=(), dtype=np.str_, doc="file stem"),
            }
        else:
            features = {
                "raw": tfds.features.Tensor(shape=(PATCH_SIZE, PATCH_SIZE), dtype=np.uint16,
                                            encoding=tfds.features.Encoding.ZLIB,
                                            doc="RGGB Bayer mosaic, 10-bit codes exactly as stored"),
                "dslr": tfds.features.Tensor(shape=(PATCH_SIZE, PATCH_SIZE, 3), dtype=np.uint8,
                                             encoding=tfds.features.Encoding.ZLIB,
                                             doc="Canon sRGB"),
                "id": tfds.features.Tensor(shape=(), dtype=np.str_, doc="file stem"),
            }
            if self.builder_config.name == "calibrated":
                docs = {"wb_gains": "white-balance gains (r, 1, b) for the camera-RGB planes",
                        "ccm": "white-balanced camera RGB -> linear sRGB, rows sum to 1",
                        "baseline_exposure": "EV: the rendering is the normalised RAW times 2**EV"}
                for k, shape in CALIBRATION_SHAPES.items():
                    features[k] = tfds.features.Tensor(shape=shape, dtype=np.float32, doc=docs[k])
        return self.dataset_info_from_configs(
            description=("Zurich RAW-to-RGB (ZRR). Pairs whose files are unreadable, truncated, "
                         "of the wrong size, all black, or lack a partner are skipped; the list is "
                         f"in the dataset folder's {SKIPPED_FILE} and in metadata['skipped_pairs']."),
            features=tfds.features.FeaturesDict(features),
            homepage="https://people.ee.ethz.ch/~ihnatova/pynet.html",
            metadata=tfds.core.MetadataDict(),
            citation="@inproceedings{ignatov2020replacing, title={Replacing Mobile Camera ISP with a "
                     "Single Deep Learning Model}, author={Ignatov, Andrey and Van Gool, Luc and "
                     "Timofte, Radu}, booktitle={CVPR Workshops}, year={2020}}",
        )

    def _split_generators(self, dl_manager):
        try:
            root = os.fspath(dl_manager.manual_dir)
        except AssertionError as e:  # TFDS: "does not exist or is empty"
            raise DataLayoutError(
                f"ZRR manual_dir {os.fspath(dl_manager._manual_dir)!r} does not exist or is empty.\n"
                f"{MANUAL_DOWNLOAD_INSTRUCTIONS}") from e
        self._skipped = []
        if self.builder_config.name == "full_resolution":
            folder = next((os.path.join(root or "", d) for d in ("full_resolution", "test/huawei_full_resolution")
                           if os.path.isdir(os.path.join(root or "", d))), None)
            if folder is None or not _stems(folder, ".png"):
                raise DataLayoutError(
                    f"ZRR manual_dir {root!r} has no full_resolution/*.png frames.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}")
            return {"test": self._generate_examples(folder, None)}
        check_layout(root)
        if self.builder_config.name == "calibrated":
            cal_root = self._calibration_dir or root
            for split in ("train", "test"):
                if not os.path.isdir(os.path.join(cal_root, split, CALIBRATION_FOLDER)):
                    raise DataLayoutError(
                        f"zrr/calibrated: {os.path.join(cal_root, split, CALIBRATION_FOLDER)} does not exist; "
                        f"estimate the calibration with `python -m tfds_zrr.calibrate --manual_dir {root} "
                        f"--out CAL_ROOT` and build with --calibration_dir CAL_ROOT")
        return {split: self._generate_examples(root, split) for split in ("train", "test")}

    def _generate_examples(self, root, split):
        """Pairs of ``root/split`` or, with split None, the full-resolution frames in ``root``."""
        if split is None:
            yield from self._generate_full(root)
        else:
            yield from self._generate_pairs(root, split)

    def _generate_pairs(self, root, split):
        first, yielded = len(self._skipped), 0
        calibrated = self.builder_config.name == "calibrated"
        cal_root = self._calibration_dir or root
        for stem, raw_path, dslr_path in scan_split(root, split, self._skipped):
            try:
                raw, dslr = load_pair(raw_path, dslr_path)
                cal = read_calibration(calibration_path(cal_root, split, stem)) if calibrated else {}
            except ValueError as e:
                log.warning("zrr: skipping pair %s/%s: %s", split, stem, e)
                self._skipped.append({"split": split, "id": stem, "file": raw_path, "reason": str(e),
                                      "kind": getattr(e, "kind", "invalid")})
                continue
            yielded += 1
            yield f"{split}/{stem}", {"raw": raw, "dslr": dslr, "id": stem, **cal}
        self._record_skipped()
        if not yielded:  # TFDS would fail with "AssertionError: No examples were yielded."
            raise NoUsablePairsError(no_usable_pairs_message(
                os.path.join(root, split), self._skipped[first:],
                f"zrr/{self.builder_config.name} stores {PATCH_SIZE}x{PATCH_SIZE} pairs"))

    def _generate_full(self, folder):
        yielded = 0
        for stem, path in sorted(_stems(folder, ".png").items(), key=lambda kv: _sort_key(kv[0])):
            try:
                raw = read_raw_png(path)
            except Exception as e:
                kind, reason = "unreadable RAW", f"unreadable RAW {path}: {e}"
            else:
                kind = reason = None
                if raw.shape[0] % 2 or raw.shape[1] % 2:
                    kind = f"odd size {raw.shape[0]}x{raw.shape[1]}"
                    reason = f"RAW {path} has an odd size {raw.shape} (2x2 Bayer cells)"
                elif int(raw.max()) <= BLACK_LEVEL:
                    kind = "all black"
                    reason = f"RAW {path} is all black (max code {int(raw.max())} <= black level {BLACK_LEVEL})"
            if kind:
                log.warning("zrr: skipping frame %s: %s", path, reason)
                self._skipped.append({"split": "test", "id": stem, "file": path, "reason": reason, "kind": kind})
                continue
            yielded += 1
            yield stem, {"raw": raw, "id": stem}
        self._record_skipped()
        if not yielded:
            raise NoUsablePairsError(no_usable_pairs_message(folder, self._skipped))

    def _record_skipped(self):
        # Called at the end of each split's generator; the last call has every split.
        self.info.metadata["skipped_pairs"] = list(self._skipped)
        self.info.metadata["num_skipped_pairs"] = len(self._skipped)
        if self._skipped:
            log.warning("zrr: %d pair(s) skipped so far", len(self._skipped))
        data_dir = epath.Path(self.data_dir)  # local or gs://, as TFDS has it
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / SKIPPED_FILE).write_text(
            json.dumps({"num_skipped": len(self._skipped), "skipped": self._skipped}, indent=1))

"""Stored codes -> model inputs, on the host (numpy) or inside a jitted step (jax).

Core: imports only numpy and ``diffraw_jax.raw`` (no grain), so the train step,
which normalises the uint16/uint8 batches the trainer ships to the devices,
runs on a machine with only jax, flax, optax and numpy.
"""
from __future__ import annotations

import numpy as np

from diffraw_jax import raw as raw_lib


def normalize_batch(batch, black_level=raw_lib.ZRR_BLACK_LEVEL, white_level=raw_lib.ZRR_WHITE_LEVEL):
    """Codes -> model inputs, for numpy (host) and jax (inside the jitted step) alike.

    ``batch["raw"]``: packed planes [..., h, w, 4], integer codes (uint16) ->
    float32 ``clip((code - black) / (white - black), 0, 1)`` (raw.normalize);
    ``batch["dslr"]``: uint8 [..., H, W, 3] -> float32 ``dslr / 127.5 - 1`` in [-1, 1].
    Leaves that are already floating point are returned unchanged, so a batch
    normalised on the host passes through; other keys are kept.
    """
    out = dict(batch)
    raw, dslr = batch["raw"], batch.get("dslr")
    if not np.issubdtype(raw.dtype, np.floating):
        out["raw"] = raw_lib.normalize(raw, black_level, white_level)
    if dslr is not None and not np.issubdtype(dslr.dtype, np.floating):
        out["dslr"] = dslr_to_model_range(dslr)
    return out


def dslr_to_model_range(dslr):
    """DSLR values 0..255 (any numeric dtype; numpy or jax) -> float32 ``dslr / 127.5 - 1``."""
    return dslr.astype(np.float32) / np.float32(127.5) - np.float32(1)


# Per-example camera calibration carried by a calibrated dataset (TFDS ``zrr/calibrated``)
# next to "raw" and "dslr": name -> shape of one example's float32 value.
#   "wb_gains" [3]: (r, 1, b), multiply the camera-RGB planes by them to white-balance;
#   "ccm" [3, 3]: white-balanced camera RGB -> linear sRGB (rows sum to 1), rgb = cam @ ccm.T;
#   "baseline_exposure" []: EV; the intended rendering is the normalised RAW times 2**EV.
CALIBRATION_SHAPES = {"wb_gains": (3,), "ccm": (3, 3), "baseline_exposure": ()}

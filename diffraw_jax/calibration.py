"""Calibrated colour: the RAW file's own calibration, applied before the networks see it.

The paper's colour network G learns the colour of the one phone it was trained on
(eq. 8); a model trained with ``model.condition = "calibrated"`` takes its colour
from each file's calibration instead (as ParamISP and CCMNet do), so it is
camera-agnostic:

* the planes the networks see are white-balanced and exposed as the file asks,
  ``balanced_planes``: ``clip(w * wb_gains * 2**baseline_exposure, 0, 1)``;
* the condition and start point x = c (Algorithm 2, lines 1-2) is the classical
  ISP of those planes with the file's colour matrix, ``calibrated_condition``:
  Malvar demosaic, camera RGB -> linear sRGB, sRGB curve;
* the diffusion adds the detail and the target's look (training: the DSLR image;
  ``train.train_step`` builds x the same way from each pair's true calibration).

A calibration (one per image) is

* ``wb_gains`` [3] (r, 1, b): multiply the camera-RGB planes by these to
  white-balance (1 / the as-shot neutral, G = 1);
* ``ccm`` [3, 3]: white-balanced camera RGB -> linear sRGB (D65), rows sum to 1,
  applied as ``rgb @ ccm.T`` (``isp_classic.apply_ccm``);
* ``baseline_exposure`` (EV): the intended rendering's linear values are the
  normalised RAW times ``2**baseline_exposure`` (DNG BaselineExposure; the
  synthetic generator's ``-log2(exposure)``).

On disk (the synthetic generator, ``tfds_zrr.calibrate``): ``<split>/calibration/<stem>.json``
with those three keys; in TFDS (``zrr/calibrated``) and in batches: the keys
``wb_gains`` float32 [B, 3], ``ccm`` float32 [B, 3, 3], ``baseline_exposure`` float32 [B].

Imports only jax, numpy and the project's core modules.
"""
from __future__ import annotations

from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffraw_jax import batches, isp_classic, raw

#: The condition a DiffRAW model is trained with (config ``model.condition``).
CONDITIONS = ("paper", "calibrated")

#: The batch / TFDS feature keys of a calibration (their shapes: ``batches.CALIBRATION_SHAPES``).
KEYS = tuple(batches.CALIBRATION_SHAPES)


class Calibration(NamedTuple):
    """One image's colour calibration (see the module docstring); numpy float32."""

    wb_gains: np.ndarray            # [3] (r, 1, b)
    ccm: np.ndarray                 # [3, 3] white-balanced camera RGB -> linear sRGB
    baseline_exposure: float = 0.0  # EV

    @classmethod
    def from_dict(cls, d: Mapping) -> "Calibration":
        """From the JSON / batch form; ValueError naming what is wrong."""
        try:
            wb = np.asarray(d["wb_gains"], np.float32).reshape(3)
            ccm = np.asarray(d["ccm"], np.float32).reshape(3, 3)
            ev = float(d.get("baseline_exposure", 0.0))
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"a calibration needs wb_gains [3], ccm [3, 3] and baseline_exposure: {e}") from e
        if not (np.all(np.isfinite(wb)) and np.all(wb > 0) and np.all(np.isfinite(ccm)) and np.isfinite(ev)):
            raise ValueError(f"calibration with non-finite or non-positive values: wb_gains {wb.tolist()}, "
                             f"baseline_exposure {ev}")
        return cls(wb, ccm, ev)

    def to_dict(self) -> dict:
        return {"wb_gains": [float(v) for v in self.wb_gains],
                "ccm": [[float(v) for v in row] for row in self.ccm],
                "baseline_exposure": float(self.baseline_exposure)}


def balanced_planes(planes: jax.Array, wb_gains: jax.Array, baseline_exposure: jax.Array) -> jax.Array:
    """The planes a calibrated model sees: ``clip(planes * gains * 2**EV, 0, 1)``.

    planes: [..., h, w, 4] (R, Gr, Gb, B) in [0, 1]; wb_gains [3] or [..., 3];
    baseline_exposure: a scalar or [...] (EV, one per image). float32 [..., h, w, 4] in [0, 1].
    """
    gain = jnp.exp2(jnp.asarray(baseline_exposure, jnp.float32))
    x = isp_classic.white_balance(planes, wb_gains) * gain[..., None, None, None]
    return jnp.clip(x, 0.0, 1.0)


#: At most this share of a frame's pixels may clip when its BaselineExposure is applied
#: (LibRaw's auto-brightness rule: 1% saturated); ``inference_exposure``.
MAX_CLIPPED = 0.01


def inference_exposure(planes, wb_gains, baseline_exposure: float, max_clipped: float = MAX_CLIPPED) -> float:
    """The exposure (EV) a frame is rendered with: its BaselineExposure, lowered (never below
    0 EV) where it would clip more than ``max_clipped`` of the pixels.

    The DNG spec scales the linear RAW by 2**BaselineExposure; Adobe's converters then roll
    the highlights off with a tone curve. The networks were trained on scenes whose
    highlights fit (``baseline_exposure`` puts white at 1), so instead of clipping a large
    share of the frame (the Blackmagic Pocket 4K's +2.65 EV would clip ~43%), the gain
    stops where the (1 - max_clipped) quantile of the brightest white-balanced channel
    reaches 1. Negative exposures and gains that clip less are applied as the file asks.
    planes: [h, w, 4] in [0, 1] (numpy or jax); wb_gains [3]. Returns a Python float.
    """
    ev = float(baseline_exposure)
    if ev <= 0.0:
        return ev
    x = np.asarray(isp_classic.white_balance(planes, wb_gains))
    bright = np.quantile(x.max(axis=-1), 1.0 - float(max_clipped))
    if bright <= 0.0:
        return ev
    return float(min(ev, max(0.0, -np.log2(bright))))


#: Slope of the sRGB curve at linear mid-grey 0.18: 1.055 / 2.4 * 0.18 ** (1 / 2.4 - 1).
SRGB_SLOPE_MID_GREY = 1.055 / 2.4 * 0.18 ** (1.0 / 2.4 - 1.0)


def condition_noise(planes, exposure_ev: float) -> float:
    """The noise std of a frame's condition c at mid-grey, in sRGB units of [0, 1] (float; nan when
    the frame's noise cannot be measured).

    ``planes``: the frame's normalised RAW planes [h, w, 4] in [0, 1] (before white balance and
    exposure); ``exposure_ev``: the EV it is rendered at (``inference_exposure``). The RAW noise
    is ``raw.noise_profile``'s (variance = shot * x + read**2); a mid-grey output (linear 0.18,
    the green channel, whose white-balance gain is 1) comes from x = 0.18 / 2**EV, so its linear
    std is 2**EV * sqrt(shot * x + read**2), and through the sRGB curve (slope
    ``SRGB_SLOPE_MID_GREY`` = 1.196 there) the sRGB std. Demosaicking and the colour matrix
    change it by a factor of order one, which this first-order figure leaves out.
    """
    prof = raw.noise_profile(np.asarray(planes, np.float64))
    if not np.isfinite(prof["shot"]):
        return float("nan")
    gain = 2.0 ** float(exposure_ev)
    x = 0.18 / gain
    return float(gain * np.sqrt(prof["shot"] * x + prof["read"] ** 2) * SRGB_SLOPE_MID_GREY)


def calibrated_condition(balanced: jax.Array, ccm: jax.Array) -> jax.Array:
    """The colour condition x = c of a calibrated model, sRGB float32 [..., 2h, 2w, 3] in [0, 1].

    balanced: ``balanced_planes`` [..., h, w, 4]; ccm [3, 3] or [..., 3, 3].
    The classical ISP (``isp_classic.process``) with unit gains: Malvar demosaic,
    the colour matrix, clip to [0, 1], sRGB curve.
    """
    ones = jnp.ones(jnp.shape(ccm)[:-2] + (3,), jnp.float32)
    return isp_classic.process(balanced, ones, ccm)


def network_inputs(planes: jax.Array, wb_gains: jax.Array, ccm: jax.Array,
                   baseline_exposure: jax.Array):
    """(balanced planes [..., h, w, 4] in [0, 1], condition sRGB [..., 2h, 2w, 3] in [0, 1])."""
    w = balanced_planes(planes, wb_gains, baseline_exposure)
    return w, calibrated_condition(w, ccm)

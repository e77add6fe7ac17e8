"""Calibrated colour: the RAW file's own calibration, applied before the networks see it.

The paper's colour network G learns the colour of the one phone it was trained on
(eq. 8); a model trained with ``model.condition = "calibrated"`` takes its colour
from each file's calibration instead (as ParamISP and CCMNet do), so it is
camera-agnostic:

* the planes the networks see are white-balanced and exposed as the file asks,
  ``balanced_planes``: ``clip(w * wb_gains * 2**baseline_exposure, 0, 1)`` in training; at
  inference the exposure is applied with LibRaw's highlight roll-off
  (``highlight_rolloff``: linear up to 2**(-2 EV), then compressed so that the white level
  stays 1), never lowered because highlights clip;
* the condition and start point x = c (Algorithm 2, lines 1-2) is the classical
  ISP of those planes with the file's colour matrix, ``calibrated_condition``:
  Malvar demosaic, camera RGB -> linear sRGB, sRGB curve;
* the diffusion adds the detail and the target's look (training: the DSLR image;
  ``train.train_step`` builds x the same way from each pair's true calibration).

A calibration (one per image) is

* ``wb_gains`` [3]: multiply the camera-RGB planes by these to white-balance
  (max(neutral) / neutral for a camera file: the largest channel of the scene white gets
  gain 1, as the DNG SDK and LibRaw normalise it; (r, 1, b) with G = 1 in the synthetic
  data, whose green is the largest);
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

from diffraw_jax import batches, color, isp_classic, raw

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


def balanced_planes(planes: jax.Array, wb_gains: jax.Array, baseline_exposure: jax.Array,
                    rolloff: bool = False) -> jax.Array:
    """The planes a calibrated model sees: white-balanced, exposed, in [0, 1].

    ``rolloff=False`` (training, ``train.diffraw_inputs``): ``clip(planes * gains * 2**EV, 0, 1)``;
    the synthetic pairs' exposure puts their white at 1, so nothing but the scene's own
    clipped highlights clips. ``rolloff=True`` (inference on camera files,
    ``DiffRAWPipeline.calibrated_inputs``): ``highlight_rolloff(clip(planes * gains, 0, 1), EV)``,
    LibRaw's order (dcraw_process: scale_colors white-balances and clips at the white level,
    then exp_bef applies the exposure with its highlight roll-off): the file's exposure is
    applied as it asks, whatever share of the frame is clipped, and a pixel the sensor
    clipped in every channel stays white (the gains are >= 1, normalised on the largest
    channel of the scene white). Both are the same for EV <= 0 up to values the sensor clipped.
    planes: [..., h, w, 4] (R, Gr, Gb, B) in [0, 1]; wb_gains [3] or [..., 3];
    baseline_exposure: a scalar or [...] (EV, one per image). float32 [..., h, w, 4] in [0, 1].
    """
    ev = jnp.asarray(baseline_exposure, jnp.float32)[..., None, None, None]
    if rolloff:
        return highlight_rolloff(jnp.clip(isp_classic.white_balance(planes, wb_gains), 0.0, 1.0), ev)
    x = isp_classic.white_balance(planes, wb_gains) * jnp.exp2(ev)
    return jnp.clip(x, 0.0, 1.0)


#: Below this many EV a positive exposure is applied as a plain gain (clipped at 1): LibRaw's
#: curve is within 2% of it there and its coefficients lose precision as the EV goes to 0.
ROLLOFF_MIN_EV = 0.05


def rolloff_coefficients(shift):
    """(knee x1, A, B, C) of LibRaw's highlight-preserving exposure curve for a linear gain
    ``shift`` > 1 (LibRaw exp_bef with smooth = 1, in units of the white level): below the knee
    x1 = 1 / shift**2 the gain is linear, y = shift x; above, y = A x**(1/3) + B x + C, which
    meets the line with the same slope at x1 and maps the white level 1 to 1. Array in,
    arrays out (numpy or JAX, the input's namespace)."""
    xp = color.array_namespace(shift)
    x1 = 1.0 / (shift * shift)
    y1 = x1 * shift
    sq3x = xp.cbrt(x1 * x1)
    b = (1.0 - y1 + shift * (3.0 * x1 - 3.0 * sq3x)) / (1.0 + 2.0 * x1 - 3.0 * sq3x)
    a = (shift - b) * 3.0 * sq3x
    c = 1.0 - a - b
    return x1, a, b, c


def highlight_rolloff(x, baseline_exposure):
    """Exposure ``baseline_exposure`` (EV) applied to linear values x in [0, 1] (1 = the white
    level) with LibRaw's highlight roll-off (exp_bef, ``exp_preserve_highlights = 1``):
    EV <= 0 (and below ``ROLLOFF_MIN_EV``): ``clip(x * 2**EV, 0, 1)``; EV > 0: linear
    ``x * 2**EV`` up to the knee 2**(-2 EV), then the curve of ``rolloff_coefficients`` up to
    the white level, which stays 1. The file's exposure is applied as it asks (the greys
    below the knee are exactly 2**EV brighter, whatever the highlights); the highlights are
    compressed instead of clipped; nothing is vetoed.
    x: [..., h, w, C]; baseline_exposure broadcastable to x (e.g. [..., 1, 1, 1]). float32.
    """
    x = jnp.asarray(x, jnp.float32)
    ev = jnp.asarray(baseline_exposure, jnp.float32)
    shift = jnp.exp2(ev)
    linear = jnp.clip(x * shift, 0.0, 1.0)
    safe = jnp.maximum(shift, jnp.exp2(jnp.float32(ROLLOFF_MIN_EV)))
    x1, a, b, c = rolloff_coefficients(safe)
    curve = jnp.where(x < x1, x * safe, a * jnp.cbrt(x) + b * x + c)
    return jnp.where(ev >= ROLLOFF_MIN_EV, jnp.clip(curve, 0.0, 1.0), linear)


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
                   baseline_exposure: jax.Array, rolloff: bool = False):
    """(balanced planes [..., h, w, 4] in [0, 1], condition sRGB [..., 2h, 2w, 3] in [0, 1]);
    ``rolloff``: ``balanced_planes``'s (True at inference)."""
    w = balanced_planes(planes, wb_gains, baseline_exposure, rolloff)
    return w, calibrated_condition(w, ccm)

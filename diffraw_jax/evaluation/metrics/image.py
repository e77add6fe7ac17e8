"""Full-reference pixel metrics: PSNR, SSIM and the 8-bit quantisation LiteISPNet applies first.

Conventions (LiteISPNet's ZRR evaluation, which DiffRAW's Table 2 follows):

* Images are RGB in [0, 1], ``[B, H, W, 3]`` or ``[H, W, 3]``; results are one value per
  image (``[B]``, or a scalar for an unbatched input).
* The whole image is scored (no border crop), with data range 1.
* PSNR: ``10 log10(1 / MSE)``, the MSE over all pixels and channels of one image;
  identical images give ``inf`` (as scikit-image does).
* SSIM: scikit-image's ``structural_similarity(a, b, channel_axis=-1,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)``: a
  Gaussian window (sigma 1.5, truncated at 3.5 sigma: 11 taps) applied with
  ``scipy.ndimage``'s ``reflect`` border, the SSIM map cropped by 5 pixels at each
  side, averaged, and the per-channel means averaged. The crop removes exactly the
  positions whose window touches the reflected border, so we filter 'valid' only;
  this also equals ``dm_pix.ssim(..., filter_size=11, filter_sigma=1.5)`` ('valid'
  filtering) up to float32 round-off (~1e-6).
* LiteISPNet writes uint8 PNGs and scores those, so call :func:`quantize` (or
  :func:`to_uint8`) on both images first to reproduce its numbers.

Computed in float32 JAX (one compiled program per shape); agreement with
scikit-image's float64 SSIM is ~1e-6.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["psnr", "ssim", "quantize", "to_uint8", "from_uint8", "gaussian_window"]


def to_uint8(img01) -> np.ndarray:
    """[0, 1] float -> uint8 as a PNG would store it: ``round(clip(x, 0, 1) * 255)``."""
    x = np.asarray(img01, dtype=np.float64)
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def from_uint8(img_u8) -> np.ndarray:
    """uint8 -> float32 in [0, 1]."""
    return np.asarray(img_u8, dtype=np.float32) / 255.0


def quantize(img01):
    """[0, 1] float -> the [0, 1] values an 8-bit PNG would hold (float32, same shape)."""
    return from_uint8(to_uint8(img01))


def _as_batch(a, b):
    a = jnp.asarray(a, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    if a.ndim == 3:
        return a[None], b[None], True
    if a.ndim != 4:
        raise ValueError(f"expected [B, H, W, C] or [H, W, C] images, got shape {a.shape}")
    return a, b, False


def _unbatch(x, single):
    x = np.asarray(x, dtype=np.float64)
    return float(x[0]) if single else x


@jax.jit
def _psnr(a, b, data_range):
    mse = jnp.mean((a - b) ** 2, axis=(1, 2, 3))
    return 10.0 * jnp.log10(data_range**2 / mse)


def psnr(a, b, *, data_range: float = 1.0):
    """Per-image PSNR in dB of [0, data_range] images ``[B, H, W, C]`` (``[B]``) or ``[H, W, C]`` (float)."""
    a, b, single = _as_batch(a, b)
    return _unbatch(_psnr(a, b, jnp.float32(data_range)), single)


def gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> np.ndarray:
    """The 1-D kernel ``scipy.ndimage.gaussian_filter`` uses (radius ``int(truncate * sigma + 0.5)``)."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def _filter_valid(x, w):
    """Separable filter of [N, H, W, C], 'valid' positions only (-> [N, H-2r, W-2r, C])."""
    k = w.shape[0]
    h = x.shape[1] - k + 1
    wd = x.shape[2] - k + 1
    # Taps accumulated as shifted sums: exact, and cheap to compile for an 11-tap kernel.
    y = sum(w[i] * x[:, i:i + h] for i in range(k))
    return sum(w[i] * y[:, :, i:i + wd] for i in range(k))


@functools.partial(jax.jit, static_argnames=("sigma", "truncate", "k1", "k2"))
def _ssim(a, b, data_range, *, sigma, truncate, k1, k2):
    w = gaussian_window(sigma, truncate).astype(np.float32)
    # skimage filters with 'reflect' borders and then crops (win - 1) // 2 pixels per side:
    # exactly the positions whose window lies inside the image, i.e. 'valid' filtering.
    ux, uy = _filter_valid(a, w), _filter_valid(b, w)
    uxx, uyy, uxy = _filter_valid(a * a, w), _filter_valid(b * b, w), _filter_valid(a * b, w)
    vx = uxx - ux * ux
    vy = uyy - uy * uy
    vxy = uxy - ux * uy
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return jnp.mean(s, axis=(1, 2, 3))  # = mean over channels of the per-channel means


def ssim(a, b, *, data_range: float = 1.0, sigma: float = 1.5, truncate: float = 3.5,
         k1: float = 0.01, k2: float = 0.03):
    """Per-image SSIM with scikit-image's Gaussian-window semantics (see the module docstring).

    ``[B, H, W, C]`` -> ``[B]``; ``[H, W, C]`` -> float. Images must be at least 11x11.
    """
    a, b, single = _as_batch(a, b)
    win = 2 * int(truncate * sigma + 0.5) + 1
    if min(a.shape[1], a.shape[2]) < win:
        raise ValueError(f"SSIM needs images of at least {win}x{win}, got {a.shape[1]}x{a.shape[2]}")
    out = _ssim(a, b, jnp.float32(data_range), sigma=float(sigma), truncate=float(truncate),
                k1=float(k1), k2=float(k2))
    return _unbatch(out, single)

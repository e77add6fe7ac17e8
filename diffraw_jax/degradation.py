"""High-order degradation D^2 (DiffRAW Algorithm 1 line 3: ``x = c = D2(y)``).

During training DiffRAW conditions the diffusion model on ``c_train = D2(y)``, a
*colour-position preserving condition*: a degraded (blurred, resampled, noisy,
JPEG-compressed, detail-lost) version of the DSLR image ``y`` that keeps ``y``'s
colour strictly and stays pixel-aligned with it. D2 is Real-ESRGAN's
second-order degradation model (Wang et al., ICCV-W 2021) adjusted for strict
colour consistency, as the DiffRAW paper describes. Written from the published
description; the defaults follow Real-ESRGAN's ``train_realesrgan_x4plus``
options.

Everything is a pure JAX function: jittable, vmappable, fixed shapes (output
size == input size), no Python control flow on traced values. Random choices are
``jnp.where`` selections over precomputed branches, so a single compiled
program serves every random draw.

Pipeline (per example, parameters drawn independently per example)
------------------------------------------------------------------
Round 1 and round 2 ("second order") each apply

1. **blur** with a random kernel on a fixed ``kernel_size`` (21) grid, the
   effective size being a random odd number in ``kernel_size_range`` (7..21)
   with the values outside it zeroed: isotropic / anisotropic Gaussian,
   generalized Gaussian ``exp(-q^beta / 2)``, plateau ``1 / (1 + q^beta)``
   (``q = p^T Sigma^-1 p``, ``Sigma = R(theta) diag(sx^2, sy^2) R(theta)^T``), or,
   with probability ``sinc_prob``, a circular low-pass (sinc) kernel. Kernels
   are normalised to sum 1 (the local mean and so the colour are preserved),
   shared by the three channels, applied as a depthwise correlation with
   reflect padding (computed with FFTs of the padded image). Round 2 blurs
   with probability ``blur_prob`` (0.8).
2. **resize** by a random factor (up / down / keep with ``resize_prob``;
   factor in ``resize_range``) with a random interpolation for the way down and
   another for the way back up (bilinear, bicubic a=-0.75, area). The image is
   resized to ``round(N * s)`` pixels and back to ``N``. To keep shapes static
   with a traced ``s``, each axis is resampled by an ``[N, N]`` matrix
   ``R = U @ D``: ``D`` maps ``N`` pixels onto a buffer of
   ``M = ceil(N * max_scale)`` slots of which the first ``n = round(N s)`` are
   used, ``U`` maps the first ``n`` slots back to ``N`` pixels (the weights of
   the unused slots are zero; rows are renormalised at the borders, which acts
   like edge clamping). Pixel centres are aligned (half-pixel convention,
   ``align_corners=False``), so there is no shift. ``s = 1`` gives ``R = I``.
3. **noise**: Gaussian (std in ``noise_range``/255) or, with probability
   ``1 - gaussian_noise_prob``, Poisson-like shot noise approximated by a
   Gaussian with variance ``scale^2 * x / poisson_levels`` (the Poisson noise
   of an 8-bit image, ``poisson_levels = 256`` as Real-ESRGAN's ``vals``);
   grey (same on all channels, from the luma for Poisson) with probability
   ``gray_noise_prob``. Zero-mean; the result is clipped to [0, 1]. The
   normal fields come from a counter-based hash seeded by the key and
   Box-Muller (see ``_normal_pair``: cheap to compile).
4. **JPEG** at a random quality in ``jpeg_range`` (30..95): JFIF YCbCr, 4:2:0
   chroma subsampling (2x2 mean, nearest upsampling), 8x8 orthonormal block
   DCT, quantisation with the standard (Annex K) luminance / chrominance tables
   scaled by the IJG quality formula, inverse DCT. Images whose sides are not
   multiples of 8 (16 with subsampling) are edge-padded at the bottom/right and
   cropped back.

As in Real-ESRGAN, round 2's JPEG and the final sinc filter (probability
``final_sinc_prob``, otherwise a delta) come in random order.

Colour-consistency adjustment (the DiffRAW change)
--------------------------------------------------
The degradations above preserve the mean only approximately: clipping after
noise biases dark / saturated channels (up to ``sigma / sqrt(2 pi)``), JPEG
quantises DC terms and bleeds subsampled chroma across edges, sinc kernels
overshoot. So the last step replaces the low-pass of the output by the
low-pass of ``y``, per channel, and projects back onto [0, 1]::

    out <- clip(out + G_s(y) - G_s(out), 0, 1)          (repeated color_fix_iters times)

with ``G_s`` a Gaussian low-pass (``color_fix_sigma`` px, reflect padding).
One pass leaves the residual ``G_s (I - G_s)(out - y)`` of the colour error,
the repetitions shrink it further and undo the bias that the clipping
re-introduces (alternating projections onto "low-pass == G_s(y)" and the
[0,1] box, which intersect: ``y`` itself is in both). The result keeps every
high-frequency degradation (blur, noise, ringing, blocking) but its colour at
scales above ~``color_fix_sigma`` pixels is ``y``'s: the colour of D2(y) stays
strictly consistent with y. Finally the image is rounded to 8 bits (as
Real-ESRGAN does) and, with ``strength < 1``, blended with y
(``y + strength * (D2(y) - y)``; ``strength = 0`` is the identity).

Also here: ``gaussian_lowpass`` (the low-pass of ``color_fix``; the tests compare
colour with it and ``diffraw_jax.color``'s CIELAB Delta E).
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from diffraw_jax import color

Array = jax.Array
_HI = lax.Precision.HIGHEST   # no TF32 on GPUs: colour must not drift

__all__ = [
    "RoundConfig",
    "DegradationConfig",
    "RoundParams",
    "DegradationParams",
    "degrade",
    "degrade_single",
    "sample_params",
    "apply_params",
    "mixed_kernel",
    "sinc_kernel",
    "delta_kernel",
    "sample_kernel",
    "blur",
    "resize_matrix",
    "resize_down_up",
    "add_noise",
    "jpeg_quant_tables",
    "jpeg_compress",
    "color_fix",
    "gaussian_lowpass",
    "BILINEAR",
    "BICUBIC",
    "AREA",
]

BILINEAR, BICUBIC, AREA = 0, 1, 2
KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso",
                "plateau_iso", "plateau_aniso")


# ----------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RoundConfig:
    """Parameter ranges of one degradation round (Real-ESRGAN names)."""
    blur_prob: float = 1.0
    kernel_prob: tuple = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)  # KERNEL_TYPES
    sinc_prob: float = 0.1
    blur_sigma: tuple = (0.2, 3.0)
    betag_range: tuple = (0.5, 4.0)
    betap_range: tuple = (1.0, 2.0)
    resize_prob: tuple = (0.2, 0.7, 0.1)          # up, down, keep
    resize_range: tuple = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_range: tuple = (1.0, 30.0)              # Gaussian std, in 1/255
    poisson_scale_range: tuple = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple = (30.0, 95.0)


ROUND1 = RoundConfig()
ROUND2 = RoundConfig(
    blur_prob=0.8, blur_sigma=(0.2, 1.5), resize_prob=(0.3, 0.4, 0.3),
    resize_range=(0.3, 1.2), noise_range=(1.0, 25.0),
    poisson_scale_range=(0.05, 2.5))


@dataclasses.dataclass(frozen=True)
class DegradationConfig:
    """Static configuration of D2 (hashable; a leafless pytree, so it can be
    passed through ``jax.jit``; a different config compiles a new program)."""
    round1: RoundConfig = ROUND1
    round2: RoundConfig = ROUND2
    kernel_size: int = 21                 # fixed grid of every kernel
    kernel_size_range: tuple = (7, 21)    # random odd effective size
    final_sinc_prob: float = 0.8
    poisson_levels: float = 256.0
    jpeg_chroma_subsample: bool = True
    color_fix: bool = True
    color_fix_sigma: float = 3.0          # pixels
    color_fix_iters: int = 3
    quantize_8bit: bool = True
    strength: float = 1.0                 # 0: identity, 1: full D2
    # stage switches (ablations / tests)
    use_blur: bool = True
    use_resize: bool = True
    use_noise: bool = True
    use_jpeg: bool = True
    use_second_order: bool = True
    use_final_sinc: bool = True

    def __post_init__(self):
        lo, hi = self.kernel_size_range
        if self.kernel_size % 2 == 0 or lo % 2 == 0 or hi % 2 == 0:
            raise ValueError("kernel sizes must be odd")
        if not 1 <= lo <= hi <= self.kernel_size:
            raise ValueError("need 1 <= kernel_size_range <= kernel_size")
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError("strength must be in [0, 1]")

    @property
    def max_scale(self) -> float:
        return max(1.0, self.round1.resize_range[1], self.round2.resize_range[1])


jax.tree_util.register_static(RoundConfig)
jax.tree_util.register_static(DegradationConfig)


class RoundParams(NamedTuple):
    """Random parameters of one round for one example (all arrays)."""
    kernel: Array         # [K, K], sums to 1
    scale: Array          # () resize factor
    down_mode: Array      # () int32: BILINEAR / BICUBIC / AREA
    up_mode: Array        # () int32
    poisson: Array        # () bool: Poisson-like (else Gaussian) noise
    gray: Array           # () bool: grey noise
    noise_sigma: Array    # () Gaussian std in [0, 1] units
    poisson_scale: Array  # ()
    jpeg_quality: Array   # () float in [1, 100]


class DegradationParams(NamedTuple):
    round1: RoundParams
    round2: RoundParams
    final_kernel: Array       # [K, K]: sinc or delta
    sinc_before_jpeg: Array   # () bool: order of the last two steps
    noise_key: Array          # PRNG key of the two noise fields


# ----------------------------------------------------------------------------
# Blur kernels
# ----------------------------------------------------------------------------

def _grid(kernel_size: int):
    r = kernel_size // 2
    ax = np.arange(-r, r + 1, dtype=np.float32)
    xx, yy = np.meshgrid(ax, ax)          # xx: column offset, yy: row offset
    return xx, yy


def _size_mask(kernel_size: int, size) -> Array:
    xx, yy = _grid(kernel_size)
    h = jnp.asarray(size, jnp.float32) // 2
    return ((jnp.abs(xx) <= h) & (jnp.abs(yy) <= h)).astype(jnp.float32)


def _normalise(k: Array) -> Array:
    return k / jnp.sum(k)


def mixed_kernel(kernel_size: int, sigma_x, sigma_y=None, theta=0.0, beta=1.0,
                 plateau=False, size=None) -> Array:
    """Bivariate (generalized / plateau) Gaussian kernel, normalised to sum 1.

    ``q = p^T Sigma^-1 p`` with ``Sigma = R(theta) diag(sx^2, sy^2) R^T``;
    kernel ``exp(-q^beta / 2)`` (``beta = 1``: Gaussian) or, if ``plateau``,
    ``1 / (1 + q^beta)``. Values outside the centred ``size`` x ``size`` window
    (default: the whole grid) are zero. All arguments but ``kernel_size`` may
    be traced.
    """
    sx = jnp.asarray(sigma_x, jnp.float32)
    sy = sx if sigma_y is None else jnp.asarray(sigma_y, jnp.float32)
    theta = jnp.asarray(theta, jnp.float32)
    c, s = jnp.cos(theta), jnp.sin(theta)
    xx, yy = _grid(kernel_size)
    # rotate into the principal axes: u = R^T p
    u = c * xx + s * yy
    v = -s * xx + c * yy
    q = (u / sx) ** 2 + (v / sy) ** 2
    qb = jnp.power(q, jnp.asarray(beta, jnp.float32))
    k = jnp.where(plateau, 1.0 / (1.0 + qb), jnp.exp(-0.5 * qb))
    if size is not None:
        k = k * _size_mask(kernel_size, size)
    return _normalise(k)


def _bessel_j1(x: Array, n: int = 128) -> Array:
    """J1(x) = 1/(2 pi) int_0^{2 pi} cos(t - x sin t) dt by the trapezoid rule,
    which converges geometrically for this periodic integrand (|x| < ~80)."""
    t = jnp.arange(n, dtype=jnp.float32) * (2.0 * math.pi / n)
    return jnp.mean(jnp.cos(t - x[..., None] * jnp.sin(t)), axis=-1)


def sinc_kernel(kernel_size: int, cutoff, size=None) -> Array:
    """Circular low-pass kernel ``wc J1(wc r) / (2 pi r)`` (``wc = cutoff``,
    rad/px), zeroed outside the ``size`` window, normalised to sum 1."""
    wc = jnp.asarray(cutoff, jnp.float32)
    xx, yy = _grid(kernel_size)
    r = jnp.sqrt(xx ** 2 + yy ** 2)
    r_safe = jnp.where(r == 0, 1.0, r)
    k = jnp.where(r == 0, wc ** 2 / (4 * math.pi),
                  wc * _bessel_j1(wc * r_safe) / (2 * math.pi * r_safe))
    if size is not None:
        k = k * _size_mask(kernel_size, size)
    return _normalise(k)


def delta_kernel(kernel_size: int) -> Array:
    r = kernel_size // 2
    return jnp.zeros((kernel_size, kernel_size), jnp.float32).at[r, r].set(1.0)


class _Draws:
    """Scalar random draws taken one by one from a single uniform vector
    (one threefry call per example: much faster to compile than many)."""

    def __init__(self, key, n: int = 64):
        self.u = jax.random.uniform(key, (n,), jnp.float32)
        self.i = 0

    def next(self) -> Array:
        if self.i >= self.u.shape[0]:
            raise RuntimeError("_Draws exhausted")
        self.i += 1
        return self.u[self.i - 1]

    def uniform(self, lo, hi) -> Array:
        return lo + (hi - lo) * self.next()

    def bernoulli(self, p) -> Array:
        return self.next() < p

    def randint(self, n: int) -> Array:
        return jnp.minimum(jnp.floor(self.next() * n), n - 1).astype(jnp.int32)

    def categorical(self, probs) -> Array:
        c = np.cumsum(np.asarray(probs, np.float64))
        c = (c / c[-1])[:-1].astype(np.float32)
        return jnp.sum(self.next() > jnp.asarray(c)).astype(jnp.int32)

    def odd_size(self, lo: int, hi: int) -> Array:
        return lo + 2 * self.randint((hi - lo) // 2 + 1)


class _KernelDraw(NamedTuple):
    size: Array       # () int32 odd effective size
    sx: Array
    sy: Array
    theta: Array
    beta: Array
    plateau: Array    # () bool
    cutoff: Array     # sinc cutoff (rad/px)
    sinc: Array       # () bool: use the sinc kernel


def _draw_kernel(r: _Draws, rc: RoundConfig, kernel_size_range) -> _KernelDraw:
    size = r.odd_size(*kernel_size_range)
    ktype = r.categorical(rc.kernel_prob)           # index into KERNEL_TYPES
    iso = (ktype % 2) == 0
    sx = r.uniform(*rc.blur_sigma)
    sy = jnp.where(iso, sx, r.uniform(*rc.blur_sigma))
    theta = jnp.where(iso, 0.0, r.uniform(-math.pi, math.pi))

    def beta_from(rng):   # Real-ESRGAN: U(lo, 1) or U(1, hi), 50/50
        low = r.bernoulli(0.5)
        return jnp.where(low, r.uniform(rng[0], 1.0), r.uniform(1.0, rng[1]))

    family = ktype // 2      # 0 Gaussian, 1 generalized, 2 plateau
    beta_g = beta_from(rc.betag_range)
    beta_p = beta_from(rc.betap_range)
    beta = jnp.where(family == 1, beta_g, jnp.where(family == 2, beta_p, 1.0))
    cutoff = jnp.where(size < 13, r.uniform(math.pi / 3, math.pi),
                       r.uniform(math.pi / 5, math.pi))
    return _KernelDraw(size, sx, sy, theta, beta, family == 2, cutoff,
                       r.bernoulli(rc.sinc_prob))


def _build_kernels(d: _KernelDraw, kernel_size: int) -> Array:
    """Kernels of a batch of draws (leading axis), in two vectorised calls."""
    gauss = jax.vmap(lambda a: mixed_kernel(kernel_size, a.sx, a.sy, a.theta, a.beta,
                                            a.plateau, a.size))(d)
    sinc = jax.vmap(lambda a: sinc_kernel(kernel_size, a.cutoff, a.size))(d)
    return jnp.where(d.sinc[:, None, None], sinc, gauss)


def sample_kernel(key, rc: RoundConfig, kernel_size: int = 21,
                  kernel_size_range=(7, 21)) -> Array:
    """Real-ESRGAN's random mixed kernel for one round: a random odd size in
    ``kernel_size_range``, one of KERNEL_TYPES with ``rc.kernel_prob``
    (sigmas in ``rc.blur_sigma``, rotation U(-pi, pi), generalized beta in
    ``rc.betag_range``, plateau beta in ``rc.betap_range``) or, with
    ``rc.sinc_prob``, a sinc (cutoff U(pi/3, pi), U(pi/5, pi) for sizes
    >= 13). Returns [K, K] summing to 1."""
    d = _draw_kernel(_Draws(key, 16), rc, kernel_size_range)
    d = jax.tree_util.tree_map(lambda a: a[None], d)
    return _build_kernels(d, kernel_size)[0]


def blur(img: Array, kernel: Array) -> Array:
    """Depthwise correlation of [H, W, C] with one [K, K] kernel (K odd, all
    channels), reflect padding; output [H, W, C].

    Computed with FFTs of the reflect-padded image (the circular wrap-around
    only touches the padding, which is cropped): O(HW log HW) whatever the
    kernel size, where XLA's grouped convolution on CPU is very slow for a
    per-example 21 x 21 kernel.
    """
    k = kernel.shape[0]
    p = k // 2
    h, w, _ = img.shape
    x = jnp.pad(img, ((p, p), (p, p), (0, 0)), mode="reflect")
    hp, wp = h + 2 * p, w + 2 * p
    # correlation = convolution with the flipped kernel, centred at (0, 0)
    kk = jnp.zeros((hp, wp), jnp.float32).at[:k, :k].set(kernel[::-1, ::-1].astype(jnp.float32))
    kk = jnp.roll(kk, (-p, -p), axis=(0, 1))
    fx = jnp.fft.rfft2(x.astype(jnp.float32), axes=(0, 1))
    fk = jnp.fft.rfft2(kk)
    out = jnp.fft.irfft2(fx * fk[:, :, None], s=(hp, wp), axes=(0, 1))
    return out[p:p + h, p:p + w].astype(img.dtype)


# ----------------------------------------------------------------------------
# Resize (static shapes, traced scale)
# ----------------------------------------------------------------------------

def _cubic(d, a=-0.75):
    d = jnp.abs(d)
    d2, d3 = d * d, d * d * d
    near = (a + 2) * d3 - (a + 3) * d2 + 1
    far = a * d3 - 5 * a * d2 + 8 * a * d - 4 * a
    return jnp.where(d <= 1, near, jnp.where(d < 2, far, 0.0))


def _resample(n_out: int, n_in: int, valid_out, valid_in, mode) -> Array:
    """[n_out, n_in] interpolation matrix from the first ``valid_in`` input
    pixels to ``valid_out`` output pixels (traced counts), half-pixel centres.
    Rows are renormalised over the valid inputs (edge handling)."""
    valid_out = jnp.asarray(valid_out, jnp.float32)
    valid_in = jnp.asarray(valid_in, jnp.float32)
    ratio = valid_in / valid_out                   # input px per output px
    i = jnp.arange(n_out, dtype=jnp.float32)
    j = jnp.arange(n_in, dtype=jnp.float32)
    c = (i + 0.5) * ratio - 0.5                    # source centre of output i
    d = c[:, None] - j[None, :]
    bil = jnp.maximum(0.0, 1.0 - jnp.abs(d))
    cub = _cubic(d)
    half = 0.5 * ratio                             # box of the output pixel
    area = jnp.maximum(0.0, jnp.minimum(d + half, 0.5) - jnp.maximum(d - half, -0.5))
    w = jnp.where(mode == BILINEAR, bil, jnp.where(mode == BICUBIC, cub, area))
    w = w * (j < valid_in)[None, :]
    tot = jnp.sum(w, axis=1, keepdims=True)
    return w / jnp.where(jnp.abs(tot) < 1e-8, 1.0, tot)


def resize_matrix(n: int, scale, down_mode, up_mode, max_scale: float = 1.5) -> Array:
    """[n, n] matrix of "resize n -> round(n*scale) -> n" along one axis."""
    m = max(n, int(math.ceil(n * max_scale)))
    k = jnp.clip(jnp.round(n * jnp.asarray(scale, jnp.float32)), 1, m)
    down = _resample(m, n, k, n, down_mode)        # [m, n]; rows >= k unused
    up = _resample(n, m, n, k, up_mode)            # [n, m]; cols >= k zero
    return jnp.matmul(up, down, precision=_HI)


def resize_down_up(img: Array, scale, down_mode=BILINEAR, up_mode=BILINEAR,
                   max_scale: float = 1.5) -> Array:
    """Resize [H, W, C] by ``scale`` (traced; <= max_scale) and back to H x W."""
    h, w = img.shape[0], img.shape[1]
    rh = resize_matrix(h, scale, down_mode, up_mode, max_scale)
    rw = resize_matrix(w, scale, down_mode, up_mode, max_scale)
    x = jnp.einsum("ij,jwc->iwc", rh, img, precision=_HI)
    return jnp.einsum("kw,iwc->ikc", rw, x, precision=_HI)


# ----------------------------------------------------------------------------
# Noise
# ----------------------------------------------------------------------------

def _hash32(x: Array) -> Array:
    """Integer avalanche hash of uint32 (the "lowbias32" xorshift-multiply)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _normal_pair(key, shape) -> tuple[Array, Array]:
    """Two independent N(0, 1) fields of ``shape`` for the noise stages.

    Two 32-bit seeds come from ``key`` (threefry); the per-pixel uniforms are
    a counter-based integer hash of (pixel index, seed) and Box-Muller turns
    them into normals. Same statistics for our purpose as
    ``jax.random.normal`` but far cheaper to compile on CPU (threefry over a
    whole image takes seconds of XLA compile time there).
    """
    n = int(np.prod(shape))
    seed = jax.random.bits(key, (2,), jnp.uint32)
    idx = lax.iota(jnp.uint32, 2 * n)
    bits = _hash32(_hash32(idx ^ seed[0]) + seed[1])
    u = ((bits >> 8).astype(jnp.float32) + 0.5) * (1.0 / (1 << 24))   # (0, 1)
    u = u.reshape((2,) + tuple(shape))
    rad = jnp.sqrt(-2.0 * jnp.log(u[0]))
    ang = (2.0 * math.pi) * u[1]
    return rad * jnp.cos(ang), rad * jnp.sin(ang)


def _noise_from(img: Array, z: Array, poisson, gray, sigma, poisson_scale,
                levels: float, clip: bool) -> Array:
    z = jnp.where(gray, jnp.broadcast_to(z[..., :1], img.shape), z)
    pos = jnp.clip(img, 0.0, 1.0)
    luma = color.luma(pos)[..., None]
    signal = jnp.where(gray, jnp.broadcast_to(luma, img.shape), pos)
    std = jnp.where(poisson, poisson_scale * jnp.sqrt(signal / levels), sigma)
    out = img + std * z
    return jnp.clip(out, 0.0, 1.0) if clip else out


def add_noise(img: Array, key, poisson=False, gray=False, sigma=0.0,
              poisson_scale=1.0, levels: float = 256.0, clip: bool = True) -> Array:
    """Zero-mean noise on [H, W, C]: Gaussian with std ``sigma`` or, if
    ``poisson``, Gaussian with variance ``poisson_scale^2 * x / levels``
    (shot noise; on the luma if ``gray``). ``gray``: one field for all
    channels. Arguments may be traced. ``clip``: clip to [0, 1]."""
    z, _ = _normal_pair(key, img.shape)
    return _noise_from(img, z, poisson, gray, sigma, poisson_scale, levels, clip)


# ----------------------------------------------------------------------------
# JPEG
# ----------------------------------------------------------------------------

_JPEG_LUMA = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61],
    [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77],
    [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101],
    [72, 92, 95, 98, 112, 100, 103, 99]], np.float32)
_JPEG_CHROMA = np.full((8, 8), 99, np.float32)
_JPEG_CHROMA[:4, :4] = np.array([
    [17, 18, 24, 47],
    [18, 21, 26, 66],
    [24, 26, 56, 99],
    [47, 66, 99, 99]], np.float32)


def _dct_matrix() -> np.ndarray:
    u = np.arange(8)[:, None]
    x = np.arange(8)[None, :]
    d = np.cos((2 * x + 1) * u * np.pi / 16) * np.sqrt(2 / 8)
    d[0] /= np.sqrt(2)
    return d.astype(np.float32)        # orthonormal DCT-II (JPEG's)


_DCT = _dct_matrix()


def jpeg_quant_tables(quality):
    """(luma, chroma) [8, 8] tables for a (traced, float) quality in [1, 100]
    with the IJG scaling; quality 100 gives all ones."""
    q = jnp.clip(jnp.asarray(quality, jnp.float32), 1.0, 100.0)
    scale = jnp.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q)

    def tab(t):
        return jnp.clip(jnp.floor((t * scale + 50.0) / 100.0), 1.0, 255.0)
    return tab(jnp.asarray(_JPEG_LUMA)), tab(jnp.asarray(_JPEG_CHROMA))


def _block_quantise(plane: Array, table: Array) -> Array:
    """Round the 8x8 block DCT of a [H, W] plane (H, W multiples of 8)."""
    h, w = plane.shape
    d = jnp.asarray(_DCT)
    b = plane.reshape(h // 8, 8, w // 8, 8)
    coef = jnp.einsum("ui,aibj,vj->aubv", d, b, d, precision=_HI)
    t = table[None, :, None, :]
    coef = jnp.round(coef / t) * t
    return jnp.einsum("ui,aubv,vj->aibj", d, coef, d, precision=_HI).reshape(h, w)


def jpeg_compress(img: Array, quality, chroma_subsample: bool = True) -> Array:
    """JPEG-like compression of [H, W, 3] in [0, 1] (quality may be traced)."""
    h, w, _ = img.shape
    mult = 16 if chroma_subsample else 8
    ph, pw = (-h) % mult, (-w) % mult
    x = jnp.pad(jnp.clip(img, 0.0, 1.0), ((0, ph), (0, pw), (0, 0)), mode="edge") * 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    yy = 0.299 * r + 0.587 * g + 0.114 * b - 128.0
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b
    lt, ct = jpeg_quant_tables(quality)
    yy = _block_quantise(yy, lt)
    if chroma_subsample:
        hh, ww = yy.shape

        def sub(p):
            p = p.reshape(hh // 2, 2, ww // 2, 2).mean(axis=(1, 3))
            p = _block_quantise(p, ct)
            return jnp.repeat(jnp.repeat(p, 2, axis=0), 2, axis=1)
        cb, cr = sub(cb), sub(cr)
    else:
        cb, cr = _block_quantise(cb, ct), _block_quantise(cr, ct)
    yy = yy + 128.0
    r = yy + 1.402 * cr
    g = yy - 0.344136 * cb - 0.714136 * cr
    b = yy + 1.772 * cb
    out = jnp.stack([r, g, b], axis=-1)[:h, :w] / 255.0
    return jnp.clip(out, 0.0, 1.0)


# ----------------------------------------------------------------------------
# Colour
# ----------------------------------------------------------------------------

def _gauss1d(sigma: float) -> np.ndarray:
    r = max(1, int(math.ceil(3.0 * sigma)))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def _reflect_index(n: int, r: int) -> np.ndarray:
    """Indices of a length n+2r reflect-padded axis (repeats when r >= n)."""
    idx = np.arange(-r, n + r)
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    idx = np.mod(idx, period)
    return np.where(idx >= n, period - idx, idx)


def _sep_filter(x: Array, k: np.ndarray, axis: int) -> Array:
    """Correlate along ``axis`` with the symmetric 1-D kernel ``k`` (reflect
    padding): a sum of shifted slices, which XLA fuses into one loop."""
    n = x.shape[axis]
    r = len(k) // 2
    xp = jnp.take(x, jnp.asarray(_reflect_index(n, r)), axis=axis)
    acc = None
    for t, wt in enumerate(k):
        term = lax.slice_in_dim(xp, t, t + n, axis=axis) * float(wt)
        acc = term if acc is None else acc + term
    return acc


def gaussian_lowpass(img: Array, sigma: float) -> Array:
    """Separable Gaussian low-pass of [..., H, W, C] (``sigma`` in pixels, a
    Python float; support +-ceil(3 sigma); reflect padding, i.e.
    scipy.ndimage's ``mode="mirror"``)."""
    if sigma <= 0:
        return img
    k = _gauss1d(float(sigma))
    x = _sep_filter(img, k, img.ndim - 3)
    return _sep_filter(x, k, img.ndim - 2)


def color_fix(out: Array, ref: Array, sigma: float = 3.0, iters: int = 3) -> Array:
    """Give ``out`` the Gaussian low-pass (``sigma`` px, per channel) of
    ``ref``, keeping its high frequencies: ``iters`` times
    ``out <- clip(out + G(ref) - G(out), 0, 1)``. Shapes [..., H, W, C]."""
    ref_lp = gaussian_lowpass(ref, sigma)
    for _ in range(iters):
        out = jnp.clip(out + ref_lp - gaussian_lowpass(out, sigma), 0.0, 1.0)
    return out


# ----------------------------------------------------------------------------
# D2
# ----------------------------------------------------------------------------

def _draw_round(r: _Draws, rc: RoundConfig, cfg: DegradationConfig):
    kd = _draw_kernel(r, rc, cfg.kernel_size_range)
    blurred = r.bernoulli(rc.blur_prob)
    updown = r.categorical(rc.resize_prob)          # 0 up, 1 down, 2 keep
    s_up = r.uniform(1.0, rc.resize_range[1])
    s_down = r.uniform(rc.resize_range[0], 1.0)
    scale = jnp.where(updown == 0, s_up, jnp.where(updown == 1, s_down, 1.0))
    rp = RoundParams(
        kernel=None,
        scale=scale,
        down_mode=r.randint(3),
        up_mode=r.randint(3),
        poisson=~r.bernoulli(rc.gaussian_noise_prob),
        gray=r.bernoulli(rc.gray_noise_prob),
        noise_sigma=r.uniform(*rc.noise_range) / 255.0,
        poisson_scale=r.uniform(*rc.poisson_scale_range),
        jpeg_quality=r.uniform(*rc.jpeg_range),
    )
    return kd, blurred, rp


def sample_params(key, config: DegradationConfig = DegradationConfig()) -> DegradationParams:
    """Draw the random parameters of D2 for one example (Real-ESRGAN's
    sampling scheme with the ranges of ``config``)."""
    cfg = config
    k_draws, k_noise = jax.random.split(key)
    r = _Draws(k_draws, 64)
    kd1, blur1, rp1 = _draw_round(r, cfg.round1, cfg)
    kd2, blur2, rp2 = _draw_round(r, cfg.round2, cfg)
    # final sinc: random size, cutoff U(pi/3, pi), applied with final_sinc_prob
    size = r.odd_size(*cfg.kernel_size_range)
    kd3 = kd2._replace(size=size, cutoff=r.uniform(math.pi / 3, math.pi),
                       sinc=jnp.asarray(True))
    use_final = r.bernoulli(cfg.final_sinc_prob)
    first = r.bernoulli(0.5)
    kds = jax.tree_util.tree_map(lambda *a: jnp.stack(a), kd1, kd2, kd3)
    kernels = _build_kernels(kds, cfg.kernel_size)
    delta = delta_kernel(cfg.kernel_size)
    on = jnp.stack([blur1, blur2, use_final])
    kernels = jnp.where(on[:, None, None], kernels, delta)
    return DegradationParams(
        round1=rp1._replace(kernel=kernels[0]),
        round2=rp2._replace(kernel=kernels[1]),
        final_kernel=kernels[2], sinc_before_jpeg=first, noise_key=k_noise)


def _round(x: Array, p: RoundParams, z: Array, cfg: DegradationConfig,
           jpeg: bool) -> Array:
    if cfg.use_blur:
        x = blur(x, p.kernel)
    if cfg.use_resize:
        x = resize_down_up(x, p.scale, p.down_mode, p.up_mode, cfg.max_scale)
    if cfg.use_noise:
        x = _noise_from(x, z, p.poisson, p.gray, p.noise_sigma,
                        p.poisson_scale, cfg.poisson_levels, True)
    if jpeg and cfg.use_jpeg:
        x = jpeg_compress(x, p.jpeg_quality, cfg.jpeg_chroma_subsample)
    return x


def apply_params(y: Array, params: DegradationParams,
                 config: DegradationConfig = DegradationConfig()) -> Array:
    """D2 of one example y [H, W, 3] in [0, 1] with given parameters."""
    cfg = config
    y = jnp.asarray(y, jnp.float32)
    if cfg.strength == 0.0:
        return y
    z1, z2 = (_normal_pair(params.noise_key, y.shape) if cfg.use_noise
              else (None, None))
    x = _round(y, params.round1, z1, cfg, jpeg=True)
    if cfg.use_second_order:
        x = _round(x, params.round2, z2, cfg, jpeg=False)
    sinc = cfg.use_final_sinc
    delta = delta_kernel(cfg.kernel_size)
    first = params.sinc_before_jpeg
    if sinc:
        x = blur(x, jnp.where(first, params.final_kernel, delta))
    if cfg.use_second_order and cfg.use_jpeg:
        x = jpeg_compress(x, params.round2.jpeg_quality, cfg.jpeg_chroma_subsample)
    if sinc:
        x = blur(x, jnp.where(first, delta, params.final_kernel))
    x = jnp.clip(x, 0.0, 1.0)
    if cfg.color_fix:
        x = color_fix(x, y, cfg.color_fix_sigma, cfg.color_fix_iters)
    if cfg.quantize_8bit:
        x = jnp.round(x * 255.0) / 255.0
    if cfg.strength != 1.0:
        x = y + cfg.strength * (x - y)
    return x


def degrade_single(y: Array, key, config: DegradationConfig = DegradationConfig()) -> Array:
    """D2 of one example [H, W, 3]; parameters drawn from ``key``."""
    return apply_params(y, sample_params(key, config), config)


def degrade(y: Array, key, config: DegradationConfig = DegradationConfig()) -> Array:
    """High-order degradation D2 (Algorithm 1 line 3: c_train = D2(y)).

    ``y``: [B, H, W, 3] (or one example [H, W, 3]) float32 sRGB in [0, 1].
    Returns the same shape, float32 in [0, 1]. Example ``b`` uses
    ``jax.random.split(key, B)[b]`` for its own parameters. Pure and jittable;
    ``config`` is static (its fields are Python values).
    """
    y = jnp.asarray(y, jnp.float32)
    if y.ndim == 3:
        return degrade_single(y, key, config)
    if y.ndim != 4 or y.shape[-1] != 3:
        raise ValueError(f"expected [B, H, W, 3] or [H, W, 3], got {y.shape}")
    keys = jax.random.split(key, y.shape[0])
    return jax.vmap(lambda im, k: degrade_single(im, k, config))(y, keys)

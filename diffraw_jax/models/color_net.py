"""The colour network G(w; Theta_G) of DiffRAW eq. 8: ``ColorNet``.

G maps packed, normalised RAW planes to an sRGB image at full resolution. It is a
reconstruction of LiteISPNet (Zhang et al., "Learning RAW-to-sRGB Mappings with
Inaccurately Aligned Supervision", ICCV 2021) from its published description: a
U-Net-like encoder/decoder whose down/up-sampling is a fixed Haar wavelet
transform and whose blocks are residual channel-attention groups. The code is
ours; the layer list below is a plausible design matching the facts published in
that paper and in DiffRAW (AAAI 2024, G's role in eq. 8), not a port of the
reference code.

Call
----
``ColorNet(...)(w, *, coords=None, train=False)``

* ``w``: [B, h, w, 4] packed RAW planes in [0, 1], canonical order
  (R, G_r, G_b, B), with ``h = H/2`` and ``w = W/2`` both divisible by 8
  (three Haar levels). Anything else raises ``ValueError``.
* returns [B, 2h, 2w, 3] = [B, H, W, 3] float32 sRGB, nominally in [0, 1]
  (no output activation, as in LiteISPNet: clip for display, not for the loss).
* The network first computes ``max(w, 0) ** (1 / input_gamma)`` (2.2, like
  LiteISPNet's packed RAW ** (1/2.2)), in float32.
* ``use_coords=True`` concatenates a 2-channel coordinate map (after the
  gamma) before the head conv. Pass ``coords`` [B, h, w, 2] (e.g. the patch's
  position in the full frame, normalised to [-1, 1]); if omitted, a grid of
  pixel centres spanning the patch in [-1, 1] (channel 0 = x / column,
  channel 1 = y / row) is used. Off by default.
* ``zero_mean_details=True`` (off by default; the shipped weights were trained
  without it) subtracts, before each of the three Haar syntheses (IDWT), the
  spatial mean over the image of every detail band (HL, LH, HH) of its input.
  A detail band that is constant over the image synthesises to a fixed pattern
  of period 2 at that level, i.e. a lattice of 4, 8 and 16 output px (levels
  1, 2, 3) in phase over the whole frame; without the mean no such lattice can
  be drawn (issue 21: the shipped G's deepest detail bands are 94% a constant
  on a real camera crop, and the 16-px lattice is their synthesis). The mean is
  over the whole input, so the output of a crop then depends slightly on what
  else the crop holds (a global ramp's constant detail component goes too).
* ``train`` is accepted for API uniformity; the network has no dropout or
  batch statistics, so it changes nothing.
* ``dtype`` is the compute dtype (e.g. bfloat16); parameters are stored in
  ``param_dtype`` (float32). The output is always float32.

Note on channel order: LiteISPNet/PyNET stack the planes as (B, Gb, R, Gr) in
their naming; this network is trained from scratch on the canonical
(R, G_r, G_b, B) order, so no reordering is done here. Feeding a differently
ordered packing to trained weights gives tinted results.

Layer design (C = ``width`` = 64 by default, s = packed size h; all convs
3x3, stride 1, zero 'SAME' padding, with bias; RCAG(c) = RCAGroup)
---------------------------------------------------------------------------
::

    x0 = head:  conv 4(+2) -> C                                    @ s
    d1 = DWT(RCAG(C)(conv C -> C)(x0))                  4C        @ s/2
    d2 = DWT(RCAG(C)(conv 4C -> C)(d1))                 4C        @ s/4
    d3 = DWT(RCAG(2C)(conv 4C -> 2C)(d2))               8C        @ s/8
    m  = d3 + conv 2C -> 8C (RCAG(2C)(RCAG(2C)(conv 8C -> 2C)(d3)))
    u3 = d2 + conv 2C -> 4C (RCAG(2C)(IDWT(Z(m))))      4C        @ s/4
    u2 = d1 + conv C -> 4C  (RCAG(C)(IDWT(Z(u3))))      4C        @ s/2
    u1 = x0 + conv C -> C   (RCAG(C)(IDWT(Z(u2))))      C         @ s
    out = conv C -> 3 (PixelShuffle(2)(conv C -> 4C (u1)))  3     @ 2s

    RCAB(c)  : x + CA(conv c->c (ReLU(conv c->c (x))))
    CA(c)    : x * sigmoid(W2 ReLU(W1 avgpool(x) + b1) + b2),
               W1: c -> max(1, c // reduction), W2: back to c (1x1 convs)
    RCAG(c)  : x + conv c->c (RCAB(c)^n_blocks (x))
    DWT/IDWT : fixed orthonormal +-0.5 Haar (reshapes and adds, no params)
    Z        : identity, or with ``zero_mean_details`` the detail bands less their
               spatial means (``remove_detail_means``)

Parameter counts (exact, ``factory.count_params(factory.abstract_params(net))``;
coordinate map off)
-------------------------------------------------------------------
* ``"default"`` (width 64, 4 RCABs per group, reduction 16):
  **8,978,051** trainable parameters (LiteISPNet reports ~9.04M: -0.7%).
  With ``use_coords=True`` the head has 1,152 more (8,979,203).
* ``"tiny"`` (width 8, 1 RCAB per group): **71,587** parameters.

Initialisation: kernels use PyTorch's default Conv2d scale
(uniform on +-1/sqrt(fan_in), variance 1/(3 fan_in)), biases are zero. Draw
initial parameters with the project's one init path,
``diffraw_jax.models.factory.init_variables(net, key)["params"]`` (its "rbg"
PRNG keeps the CPU compile short, where threefry for every parameter shape
takes many seconds even for the tiny net).
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

Array = jax.Array
Dtype = Any

__all__ = [
    "haar_dwt",
    "haar_idwt",
    "pixel_shuffle",
    "remove_detail_means",
    "coordinate_map",
    "ChannelAttention",
    "RCAB",
    "RCAGroup",
    "ColorNet",
    "COLOR_NET_CONFIGS",
    "color_net_config",
]

# PyTorch's default Conv2d kernel init (kaiming_uniform with a=sqrt(5)):
# U(-b, b) with b = 1/sqrt(fan_in), i.e. variance 1/(3 fan_in).
_torch_like_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


# ---------------------------------------------------------------------------
# Fixed transforms
# ---------------------------------------------------------------------------
def haar_dwt(x: Array) -> Array:
    """One level of the orthonormal 2-D Haar DWT with +-0.5 filters.

    ``x`` [B, H, W, C] (H, W even) -> [B, H/2, W/2, 4C], band-major channels:
    ``out[..., k*C + c]`` is band k of input channel c, with bands
    (LL, HL, LH, HH). With x00 = x[:, 0::2, 0::2], x01 = x[:, 0::2, 1::2],
    x10 = x[:, 1::2, 0::2], x11 = x[:, 1::2, 1::2]::

        LL = ( x00 + x01 + x10 + x11) / 2     # local sum (2x the 2x2 mean)
        HL = (-x00 + x01 - x10 + x11) / 2     # difference across columns
        LH = (-x00 - x01 + x10 + x11) / 2     # difference across rows
        HH = ( x00 - x01 - x10 + x11) / 2     # diagonal

    The 4x4 analysis matrix is orthogonal (and symmetric), so the transform
    preserves the sum of squares and ``haar_idwt`` is its exact inverse. A
    constant image v gives LL = 2v and zero detail bands.
    """
    if x.ndim != 4:
        raise ValueError(f"haar_dwt expects [B, H, W, C], got shape {x.shape}")
    b, h, w, c = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"haar_dwt needs even H and W, got {h}x{w}")
    x = x.reshape(b, h // 2, 2, w // 2, 2, c)
    x00 = x[:, :, 0, :, 0, :]
    x01 = x[:, :, 0, :, 1, :]
    x10 = x[:, :, 1, :, 0, :]
    x11 = x[:, :, 1, :, 1, :]
    s0, d0 = x00 + x01, x01 - x00  # top row: sum, column difference
    s1, d1 = x10 + x11, x11 - x10  # bottom row
    ll = 0.5 * (s0 + s1)
    hl = 0.5 * (d0 + d1)
    lh = 0.5 * (s1 - s0)
    hh = 0.5 * (d1 - d0)
    return jnp.concatenate([ll, hl, lh, hh], axis=-1)


def haar_idwt(y: Array) -> Array:
    """Exact inverse of :func:`haar_dwt`: [B, h, w, 4C] -> [B, 2h, 2w, C]."""
    if y.ndim != 4:
        raise ValueError(f"haar_idwt expects [B, h, w, 4C], got shape {y.shape}")
    b, h, w, c4 = y.shape
    if c4 % 4:
        raise ValueError(f"haar_idwt needs a channel count divisible by 4, got {c4}")
    c = c4 // 4
    ll, hl, lh, hh = (y[..., k * c:(k + 1) * c] for k in range(4))
    # The analysis matrix is symmetric orthogonal, so synthesis uses it again.
    a, d = ll - lh, hl - hh  # -> top row
    e, f = ll + lh, hl + hh  # -> bottom row
    x00 = 0.5 * (a - d)
    x01 = 0.5 * (a + d)
    x10 = 0.5 * (e - f)
    x11 = 0.5 * (e + f)
    top = jnp.stack([x00, x01], axis=3)  # [b, h, w, 2, c]
    bot = jnp.stack([x10, x11], axis=3)
    out = jnp.stack([top, bot], axis=2)  # [b, h, 2, w, 2, c]
    return out.reshape(b, 2 * h, 2 * w, c)


def remove_detail_means(y: Array) -> Array:
    """A Haar synthesis input [B, h, w, 4C] (band-major, as :func:`haar_dwt` returns) less the
    spatial mean (over h and w, per example and channel) of its detail bands HL, LH, HH
    (channels C..4C); LL is unchanged. ``haar_idwt`` of a constant detail band is a pattern of
    period 2 in phase over the whole output, so after this the synthesis cannot draw one.
    The mean is taken in float32; the output has ``y``'s dtype and shape."""
    if y.ndim != 4 or y.shape[-1] % 4:
        raise ValueError(f"remove_detail_means expects [B, h, w, 4C], got shape {y.shape}")
    c = y.shape[-1] // 4
    mean = jnp.mean(y[..., c:].astype(jnp.float32), axis=(1, 2), keepdims=True)
    return jnp.concatenate([y[..., :c], y[..., c:] - mean.astype(y.dtype)], axis=-1)


def pixel_shuffle(x: Array, r: int) -> Array:
    """Depth-to-space with PyTorch ``nn.PixelShuffle(r)`` channel ordering, NHWC.

    ``x`` [B, H, W, C*r*r] -> [B, H*r, W*r, C] with
    ``out[b, h*r + i, w*r + j, c] = x[b, h, w, c*r*r + i*r + j]``
    (PyTorch, NCHW: ``out[c, h*r+i, w*r+j] = in[c*r*r + i*r + j, h, w]``),
    i.e. the output channel is the slowest-varying index of the input channel,
    then the sub-pixel row i, then the sub-pixel column j.
    """
    if x.ndim != 4:
        raise ValueError(f"pixel_shuffle expects [B, H, W, C], got shape {x.shape}")
    b, h, w, crr = x.shape
    if crr % (r * r):
        raise ValueError(f"channels {crr} not divisible by r*r = {r * r}")
    c = crr // (r * r)
    x = x.reshape(b, h, w, c, r, r)
    x = x.transpose(0, 1, 4, 2, 5, 3)  # [b, h, i, w, j, c]
    return x.reshape(b, h * r, w * r, c)


def coordinate_map(batch: int, height: int, width: int, dtype: Dtype = jnp.float32) -> Array:
    """Pixel-centre coordinates in [-1, 1]: [B, H, W, 2], channel 0 = x, 1 = y."""
    xs = (np.arange(width) + 0.5) / width * 2.0 - 1.0
    ys = (np.arange(height) + 0.5) / height * 2.0 - 1.0
    grid = np.stack(np.meshgrid(xs, ys, indexing="xy"), axis=-1)  # [H, W, 2]
    return jnp.broadcast_to(jnp.asarray(grid, dtype), (batch, height, width, 2))


# ---------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------
def _conv(features: int, name: str, dtype: Dtype, param_dtype: Dtype, kernel: int = 3) -> nn.Conv:
    return nn.Conv(
        features,
        (kernel, kernel),
        padding="SAME",
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=_torch_like_init,
        name=name,
    )


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation gate: x * sigmoid(W2 relu(W1 mean_hw(x) + b1) + b2).

    W1, W2 are the 1x1 convs of RCAN (stored as Dense layers ``down``/``up``);
    the bottleneck has ``max(1, C // reduction)`` channels. The gate is one
    value in (0, 1) per (example, channel), broadcast over H and W. The pooling
    and the gate are computed in float32.
    """

    reduction: int = 16
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        hidden = max(1, c // self.reduction)
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True)
        z = nn.Dense(hidden, dtype=jnp.float32, param_dtype=self.param_dtype,
                     kernel_init=_torch_like_init, name="down")(pooled)
        z = nn.relu(z)
        z = nn.Dense(c, dtype=jnp.float32, param_dtype=self.param_dtype,
                     kernel_init=_torch_like_init, name="up")(z)
        gate = jax.nn.sigmoid(z)
        self.sow("intermediates", "gate", gate)
        return x * gate.astype(x.dtype)


class RCAB(nn.Module):
    """Residual channel-attention block: x + CA(conv(relu(conv(x))))."""

    reduction: int = 16
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        y = _conv(c, "conv1", self.dtype, self.param_dtype)(x)
        y = nn.relu(y)
        y = _conv(c, "conv2", self.dtype, self.param_dtype)(y)
        y = ChannelAttention(self.reduction, self.dtype, self.param_dtype, name="ca")(y)
        return x + y


class RCAGroup(nn.Module):
    """``n_blocks`` RCABs, a 3x3 conv, and a residual over the whole group."""

    n_blocks: int = 4
    reduction: int = 16
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        y = x
        for i in range(self.n_blocks):
            y = RCAB(self.reduction, self.dtype, self.param_dtype, name=f"rcab{i}")(y)
        y = _conv(c, "conv", self.dtype, self.param_dtype)(y)
        return x + y


# ---------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------
class ColorNet(nn.Module):
    """The colour network G (a LiteISPNet reconstruction): packed RAW [B,h,w,4] -> sRGB [B,2h,2w,3].

    See the module docstring for the layer design and parameter counts.
    """

    width: int = 64
    n_blocks: int = 4
    reduction: int = 16
    use_coords: bool = False
    input_gamma: float = 2.2
    zero_mean_details: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, w: Array, *, coords: Optional[Array] = None, train: bool = False) -> Array:
        del train  # no dropout / batch statistics
        w = jnp.asarray(w)
        if w.ndim != 4:
            raise ValueError(f"ColorNet expects packed RAW [B, H/2, W/2, 4], got shape {w.shape}")
        b, h, wd, ch = w.shape
        if ch != 4:
            raise ValueError(
                f"ColorNet expects 4 packed RAW planes (R, G_r, G_b, B), got {ch} channels")
        if h % 8 or wd % 8 or h == 0 or wd == 0:
            raise ValueError(
                f"ColorNet needs packed height/width (H/2, W/2) divisible by 8 for three "
                f"Haar DWT levels, i.e. RAW H, W divisible by 16; got packed {h}x{wd}")

        dt, pdt, n, red = self.dtype, self.param_dtype, self.n_blocks, self.reduction
        c = self.width

        x = jnp.power(jnp.maximum(w.astype(jnp.float32), 0.0), 1.0 / self.input_gamma)
        if self.use_coords:
            if coords is None:
                coords = coordinate_map(b, h, wd)
            elif coords.shape != (b, h, wd, 2):
                raise ValueError(f"coords must have shape {(b, h, wd, 2)}, got {coords.shape}")
            x = jnp.concatenate([x, coords.astype(jnp.float32)], axis=-1)
        elif coords is not None:
            raise ValueError("coords given but use_coords=False")
        x = x.astype(dt)

        def group(name: str):
            return RCAGroup(n, red, dt, pdt, name=name)

        x0 = _conv(c, "head", dt, pdt)(x)                                    # C   @ s
        d1 = haar_dwt(group("down1_group")(_conv(c, "down1_conv", dt, pdt)(x0)))      # 4C @ s/2
        d2 = haar_dwt(group("down2_group")(_conv(c, "down2_conv", dt, pdt)(d1)))      # 4C @ s/4
        d3 = haar_dwt(group("down3_group")(_conv(2 * c, "down3_conv", dt, pdt)(d2)))  # 8C @ s/8

        m = _conv(2 * c, "mid_conv_in", dt, pdt)(d3)
        m = group("mid_group1")(m)
        m = group("mid_group2")(m)
        m = d3 + _conv(8 * c, "mid_conv_out", dt, pdt)(m)                    # 8C @ s/8

        z = remove_detail_means if self.zero_mean_details else (lambda t: t)
        u3 = d2 + _conv(4 * c, "up3_conv", dt, pdt)(group("up3_group")(haar_idwt(z(m))))   # 4C @ s/4
        u2 = d1 + _conv(4 * c, "up2_conv", dt, pdt)(group("up2_group")(haar_idwt(z(u3))))  # 4C @ s/2
        u1 = x0 + _conv(c, "up1_conv", dt, pdt)(group("up1_group")(haar_idwt(z(u2))))      # C  @ s

        y = _conv(4 * c, "tail_conv1", dt, pdt)(u1)
        y = pixel_shuffle(y, 2)                                              # C  @ 2s
        y = _conv(3, "tail_conv2", dt, pdt)(y)
        return y.astype(jnp.float32)


# ---------------------------------------------------------------------------
# Named sizes
# ---------------------------------------------------------------------------
COLOR_NET_CONFIGS = {
    # ~9M parameters, the LiteISPNet size used as G in the paper.
    "default": dict(width=64, n_blocks=4, reduction=16),
    # For tests: 71,587 parameters.
    "tiny": dict(width=8, n_blocks=1, reduction=16),
    # The shipped CPU-trained model (pretrained/): width 16, two blocks per group.
    "small": dict(width=16, n_blocks=2, reduction=8),
}


def color_net_config(name: str = "default", **overrides: Any) -> dict:
    """Keyword arguments for :class:`ColorNet` of a named size (a fresh dict).

    ``overrides`` replace or add fields, e.g. ``color_net_config("tiny",
    dtype=jnp.bfloat16)``. Use as ``ColorNet(**color_net_config("tiny"))``.
    """
    if name not in COLOR_NET_CONFIGS:
        raise ValueError(f"unknown ColorNet config {name!r}; choose from {sorted(COLOR_NET_CONFIGS)}")
    cfg = dict(COLOR_NET_CONFIGS[name])
    cfg.update(overrides)
    return cfg

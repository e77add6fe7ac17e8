"""The conditional denoiser f(m_t, w, c, t) of DiffRAW: an SR3/Palette U-Net.

Architecture (the "guided diffusion" family used by SR3 and Palette)
--------------------------------------------------------------------
* Inputs are NHWC. ``m_t`` [B, H, W, 3] is the current DTDM state, ``c``
  [B, H, W, 3] the colour condition (G(w) in the paper), ``w`` [B, H/2, W/2, 4]
  the packed RAW planes in canonical order (R, G_r, G_b, B), i.e. the raster
  order of an RGGB 2x2 cell, so ``depth_to_space(w, 2)`` is the Bayer mosaic.
  ``t`` is the 1-based diffusion step, int32 [B] (a scalar is broadcast; float
  steps are accepted too, which makes the output differentiable in t).
* The step t enters through a sinusoidal embedding (``time_embed_dim`` features,
  default ``base_channels``) followed by an MLP Dense -> SiLU -> Dense to
  ``time_mlp_dim`` (default 4 * ``base_channels``; 64 -> 256 as in Palette).
* Every residual block is GroupNorm -> SiLU -> conv3x3 -> scale-shift norm
  (FiLM: GroupNorm(h) * (1 + scale) + shift, with (scale, shift) = Dense(SiLU(emb)))
  -> SiLU -> dropout -> conv3x3 (zero-initialised), plus a 1x1 conv on the skip
  path when the channel count changes. Attention blocks are GroupNorm ->
  multi-head self-attention over all H*W positions (``jax.nn.dot_product_attention``)
  -> output projection (zero-initialised) + residual.
* Encoder: conv3x3 to ``base_channels``, then per level ``num_res_blocks`` res
  blocks (+ attention where the level is in ``attention_levels``), and a
  downsample (strided conv3x3, or 2x2 average pooling) between levels. Middle:
  res block, attention (``mid_attention``), res block. Decoder: per level
  ``num_res_blocks + 1`` res blocks, each on the concatenation of the running
  features and one encoder skip, then nearest-neighbour x2 + conv3x3
  upsampling between levels. Output: GroupNorm -> SiLU -> conv3x3 to
  ``out_channels``, zero-initialised, so a fresh network outputs exactly 0.
* Initialisation: kernels U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's
  default, which guided diffusion uses), biases 0, GroupNorm scale 1; the last
  conv of every res block, every attention output projection and the final
  conv are zero-initialised. Parameters are drawn with
  ``diffraw_jax.models.factory.init_variables`` (the one init path);
  ``factory.abstract_variables`` / ``factory.count_params`` use ``jax.eval_shape``
  and allocate nothing.
* Levels are indexed from 0 (full resolution) to ``len(channel_mults) - 1``
  (resolution H / 2**(levels-1)); ``attention_levels`` uses these indices, so a
  config does not depend on the crop size.

How w enters at full resolution (our design; the paper only says "conditioned
on w and c")
--------------------------------------------------------------------------
A learned *sub-pixel stem* (``SubPixelStem``): a conv3x3 at half resolution on
the 4 planes producing 4*k channels, followed by depth-to-space(2) to
[B, H, W, k]. Output channel block s = 2*dy + dx of the conv lands on the
pixel (2i + dy, 2j + dx) of every cell, i.e. on the Bayer site of plane s, so
each of the 4 sites gets its own filters (and bias) and keeps its colour
identity. A plain full-resolution conv on the mosaic could not tell sites apart
(convolutions are translation-equivariant: the same filter at R and B sites).
The model input is then concat([m_t, c, stem(w)], channels) -> conv3x3.
``use_w`` / ``use_c`` switch the conditions off (the paper's Fig. 3 ablation:
no condition / w / w + c); a disabled condition is not used at all and may be
passed as None.

Precision
---------
``dtype`` is the compute dtype (e.g. jnp.bfloat16) of convs, dense layers and
attention matmuls; ``param_dtype`` (float32) the storage dtype of parameters.
Attention goes through ``dot_product_attention`` (``attention_impl``): by
default queries in chunks of at most ``ATTENTION_CHUNK`` positions (the zrr
middle block at 448 px: 4 x 784 of 3,136), so no [B, heads, N, N] buffer is
ever whole; "cudnn" selects cuDNN's flash attention on NVIDIA GPUs.
GroupNorm (and the scale-shift that follows it) and the attention softmax run
in float32; the output is cast back to float32.

Partitioning (FSDP)
-------------------
Every parameter is created through ``nn.with_logical_partitioning`` with names
from ``LOGICAL_AXES``:

  "conv_in"   input-channel axis of conv kernels and of channel projections
              (attention qkv / out: kernels [C_in, C_out]);
  "conv_out"  output-channel axis of those kernels;
  "embed"     input axis of the time-embedding dense layers (MLP and the
              per-block scale-shift projections);
  "mlp"       output axis of those dense layers;
  "image"     the output-channel axis of the final conv (3 image channels, too
              few to shard);
  "norm"      every 1-D parameter: biases and GroupNorm scales/offsets.

Conv kernels are (None, None, "conv_in", "conv_out") (spatial axes unnamed).
``default_logical_axis_rules()`` maps them onto a ("data", "fsdp") mesh:
"conv_out" and "mlp" are sharded over "fsdp", everything else is replicated;
it also maps the activation name "batch" to ("data", "fsdp") for the training
loop's input sharding. With the rules,
``diffraw_jax.parallel.logical_shardings(variables, mesh, rules)`` gives the
NamedShardings of an (abstract) variable tree. Sharded channel counts (base *
mult, 3 * C for qkv, 2 * C for scale-shift, 4 * stem_channels, time_mlp_dim)
must be divisible by the fsdp axis size.

Named configurations (``UNET_CONFIGS`` / ``unet_config(name)``), parameter
counts from ``factory.count_params(factory.abstract_params(make_unet(name)))``
(independent of the crop size):

  "tiny":  8 ch, mults (1, 2), 1 res block, attention at level 1 (2 heads)
           + middle, GroupNorm 4, stem 4 ch, no dropout    ->     49,787 params
  "demo":  16 ch, mults (1, 2, 4, 8), 1 res block, attention at level 3
           (4 heads) + middle, GroupNorm 8, stem 16 ch, dropout 0.1
                                                            ->  2,756,723 params
           (23.7 GFLOP per Adam train step at batch 8, 64x64 by XLA's cost
           analysis; 0.47 s per train step on 2 CPU cores, results/benchmarks/cpu.md)
  "zrr":   64 ch, mults (1, 2, 4, 8), 2 res blocks, attention only in the
           middle block (at the lowest resolution, H/8; 32 channels per head),
           dropout 0.2, GroupNorm 32, stem 32 ch, time MLP 64 -> 256
                                                            -> 58,096,259 params
           (Palette class; Palette's own default is ~62.6M: it uses res-block
           up/downsampling where we use convs, and has no RAW stem). Forward:
           1.10 TFLOP per 448x448 image in bfloat16 (XLA's cost analysis,
           attention_impl "xla"; 2.10 with attention at levels 2 and 3 as
           well, as before, 1.24 at level 3 as well). Memory per device and
           FLOPs of the train and sampler steps on any mesh:
           ``benchmarks/plan.py``, results/plan/zrr.md.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffraw_jax.raw import depth_to_space, space_to_depth  # noqa: F401  (re-exported)

Array = jax.Array

__all__ = [
    "UNet",
    "SubPixelStem",
    "ResBlock",
    "AttentionBlock",
    "ATTENTION_IMPLEMENTATIONS",
    "ATTENTION_CHUNK",
    "dot_product_attention",
    "REMAT_POLICIES",
    "REMAT_CHOICES",
    "remat_name",
    "depth_to_space",
    "space_to_depth",
    "timestep_embedding",
    "LOGICAL_AXES",
    "default_logical_axis_rules",
    "UNET_CONFIGS",
    "unet_config",
    "make_unet",
    "PARAM_COUNTS",
]

# --------------------------------------------------------------------------
# Logical partitioning vocabulary.
# --------------------------------------------------------------------------
LOGICAL_AXES = ("conv_in", "conv_out", "embed", "mlp", "image", "norm")

_CONV_AXES = (None, None, "conv_in", "conv_out")
_OUT_CONV_AXES = (None, None, "conv_in", "image")
_PROJ_AXES = ("conv_in", "conv_out")
_DENSE_AXES = ("embed", "mlp")
_VEC_AXES = ("norm",)


def default_logical_axis_rules(data_axis: str = "data", fsdp_axis: str = "fsdp"):
    """Logical-name -> mesh-axis rules for a (data_axis, fsdp_axis) mesh.

    Output-channel / MLP axes of kernels are sharded over ``fsdp_axis``; input
    axes, the 3-channel image axis and all 1-D parameters are replicated.
    "batch" (not a parameter name: for the training loop's inputs) is sharded
    over both mesh axes.
    """
    return (
        ("batch", (data_axis, fsdp_axis)),
        ("conv_in", None),
        ("conv_out", fsdp_axis),
        ("embed", None),
        ("mlp", fsdp_axis),
        ("image", None),
        ("norm", None),
    )


# PyTorch's default conv/linear init (as in guided diffusion / Palette):
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)), i.e. variance 1 / (3 fan_in).
_DEFAULT_KERNEL_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _kernel_init(axes, zero: bool = False):
    init = nn.initializers.zeros_init() if zero else _DEFAULT_KERNEL_INIT
    return nn.with_logical_partitioning(init, axes)


def _vec_init(value: float = 0.0):
    init = nn.initializers.zeros_init() if value == 0.0 else nn.initializers.constant(value)
    return nn.with_logical_partitioning(init, _VEC_AXES)


# --------------------------------------------------------------------------
# Small functional helpers.
# --------------------------------------------------------------------------
# depth_to_space / space_to_depth: the Bayer-consistent pair of diffraw_jax.raw
# (channel block s = block*dy + dx <-> pixel (block*i + dy, block*j + dx)).


def timestep_embedding(t: Array, dim: int, max_period: float = 10000.0) -> Array:
    """Sinusoidal embedding [B] -> [B, dim] (float32): [cos(t f_i), sin(t f_i)]."""
    if dim % 2:
        raise ValueError(f"time embedding dim must be even, got {dim}")
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class _Conv(nn.Module):
    """nn.Conv with logical-partitioned kernel/bias (kept thin for param names)."""

    features: int
    kernel: int = 3
    stride: int = 1
    zero_init: bool = False
    axes: tuple = _CONV_AXES
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        p = self.kernel // 2
        return nn.Conv(
            self.features,
            (self.kernel, self.kernel),
            strides=(self.stride, self.stride),
            padding=((p, p), (p, p)),
            kernel_init=_kernel_init(self.axes, self.zero_init),
            bias_init=_vec_init(),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv",
        )(x)


def _dense(features, axes, dtype, param_dtype, name, zero_init=False):
    return nn.Dense(
        features,
        kernel_init=_kernel_init(axes, zero_init),
        bias_init=_vec_init(),
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


def _per_group(v: Array, num_groups: int) -> Array:
    """Per-channel sums [B, C] -> per-group sums [B, G] ."""
    b, c = v.shape
    return jnp.sum(v.reshape(b, num_groups, c // num_groups), axis=-1)


def _to_channels(v: Array, c: int) -> Array:
    """Per-group values [B, G] -> per channel [B, 1, C] (for x viewed as [B, N, C])."""
    b, g = v.shape
    return jnp.repeat(v, c // g, axis=1)[:, None, :]


def _group_norm_fwd(x, scale, bias, num_groups, epsilon):
    # x viewed as [B, N, C]: per-channel sums over N (one pass over x), combined per
    # group on [B, G]; then y = x * a + b with per-(example, channel) a, b (one pass).
    shape = x.shape
    b, c = shape[0], shape[-1]
    x3 = x.astype(jnp.float32).reshape(b, -1, c)
    count = x3.shape[1] * (c // num_groups)
    mean = _per_group(jnp.sum(x3, axis=1), num_groups) / count
    var = jnp.maximum(_per_group(jnp.sum(jnp.square(x3), axis=1), num_groups) / count - jnp.square(mean), 0.0)
    rstd = jax.lax.rsqrt(var + epsilon)
    gamma = scale.astype(jnp.float32)
    a = _to_channels(rstd, c) * gamma
    shift = bias.astype(jnp.float32) - _to_channels(mean, c) * a
    y = (x3 * a + shift).reshape(shape)
    return y, (x, mean, rstd, scale)


def _group_norm_bwd(num_groups, epsilon, res, dy):
    # With g = dy * gamma and xhat = (x - mu) r per group of M = N * C/G values:
    #   dx = r (g - mean(g) - xhat mean(g xhat))
    #      = (r gamma) dy - (r^2 B) x + (r^2 B mu - r A),  A = mean(g), B = mean(g xhat),
    # where A and B need only the per-channel sums S_dy = sum_n dy, S_dyx = sum_n dy x.
    x, mean, rstd, scale = res
    shape = x.shape
    b, c = shape[0], shape[-1]
    x3 = x.astype(jnp.float32).reshape(b, -1, c)
    dy3 = dy.astype(jnp.float32).reshape(b, -1, c)
    count = x3.shape[1] * (c // num_groups)
    gamma = scale.astype(jnp.float32)
    s_dy = jnp.sum(dy3, axis=1)                      # [B, C]
    s_dyx = jnp.sum(dy3 * x3, axis=1)                # [B, C]
    mu_c, r_c = _to_channels(mean, c), _to_channels(rstd, c)             # [B, 1, C]
    s_dyxhat = s_dyx - mu_c[:, 0] * s_dy                                   # [B, C]: sum dy (x - mu)
    big_a = _per_group(gamma * s_dy, num_groups) / count                   # [B, G]
    big_b = rstd * _per_group(gamma * s_dyxhat, num_groups) / count
    coef_dy = r_c * gamma
    coef_x = -_to_channels(jnp.square(rstd) * big_b, c)
    coef_0 = _to_channels(jnp.square(rstd) * big_b * mean - rstd * big_a, c)
    dx = (dy3 * coef_dy + x3 * coef_x + coef_0).reshape(shape).astype(x.dtype)
    dscale = jnp.sum(r_c[:, 0] * s_dyxhat, axis=0)
    dbias = jnp.sum(s_dy, axis=0)
    return dx, dscale.astype(scale.dtype), dbias.astype(scale.dtype)


def _group_norm(x, scale, bias, num_groups, epsilon):
    return _group_norm_fwd(x, scale, bias, num_groups, epsilon)[0]


_group_norm_vjp = jax.custom_vjp(_group_norm, nondiff_argnums=(3, 4))
_group_norm_vjp.defvjp(_group_norm_fwd, _group_norm_bwd)


def group_norm(x: Array, scale: Array, bias: Array, num_groups: int, epsilon: float = 1e-5) -> Array:
    """GroupNorm over all positions and the channels of each group, float32.

    x: [B, ..., C] with C divisible by ``num_groups``; scale, bias: [C].
    Returns (x - mean) / sqrt(var + epsilon) * scale + bias with statistics per
    example and group (as PyTorch's / Flax's GroupNorm; var = E[x^2] - E[x]^2).
    Both passes read the activations once for per-channel sums and once for an
    elementwise update, with a hand-written backward (dx = rstd (g - mean(g) -
    xhat mean(g xhat)), g = dy scale). Flax's GroupNorm under autodiff re-reads
    them several times; it was a quarter of the U-Net's CPU forward time and
    an eighth of its gradient (``benchmarks/run.py``).
    """
    return _group_norm_vjp(x, scale, bias, int(num_groups), float(epsilon))


class GroupNorm(nn.Module):
    """GroupNorm with parameters "scale" [C] (init 1) and "bias" [C] (init 0), float32
    compute and output (the parameter layout of ``flax.linen.GroupNorm``)."""

    num_groups: int
    epsilon: float = 1e-5
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        if c % self.num_groups:
            raise ValueError(
                f"GroupNorm '{self.name}': {c} channels are not divisible by num_groups={self.num_groups}")
        scale = self.param("scale", _vec_init(1.0), (c,), self.param_dtype)
        bias = self.param("bias", _vec_init(0.0), (c,), self.param_dtype)
        return group_norm(x, scale, bias, self.num_groups, self.epsilon)


# --------------------------------------------------------------------------
# Blocks.
# --------------------------------------------------------------------------
class SubPixelStem(nn.Module):
    """w [B, H/2, W/2, 4] -> [B, H, W, features]: conv3x3 to 4*features at half
    resolution, then depth_to_space(2); site s = 2*dy + dx of each 2x2 cell gets
    output channels [s*features, (s+1)*features) of the conv (its own filters)."""

    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, w: Array) -> Array:
        h = _Conv(4 * self.features, 3, dtype=self.dtype, param_dtype=self.param_dtype, name="conv")(
            w.astype(self.dtype)
        )
        return depth_to_space(h, 2)


class ResBlock(nn.Module):
    """Residual block with scale-shift (FiLM) conditioning on the t embedding."""

    out_channels: int
    num_groups: int = 32
    dropout: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, emb: Array, train: bool = False) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.silu(GroupNorm(self.num_groups, param_dtype=self.param_dtype, name="norm1")(x)).astype(self.dtype)
        h = _Conv(self.out_channels, 3, name="conv1", **kw)(h)
        ss = _dense(2 * self.out_channels, _DENSE_AXES, self.dtype, self.param_dtype, "film")(nn.silu(emb))
        scale, shift = jnp.split(ss.astype(jnp.float32)[:, None, None, :], 2, axis=-1)
        h = GroupNorm(self.num_groups, param_dtype=self.param_dtype, name="norm2")(h) * (1.0 + scale) + shift
        h = nn.silu(h).astype(self.dtype)
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = _Conv(self.out_channels, 3, zero_init=True, name="conv2", **kw)(h)
        if x.shape[-1] != self.out_channels:
            x = _Conv(self.out_channels, 1, name="skip", **kw)(x.astype(self.dtype))
        return x.astype(self.dtype) + h


ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn", "chunked")
ATTENTION_CHUNK = 1024  # "chunked": at most this many query positions at a time


def dot_product_attention(q: Array, k: Array, v: Array, implementation: str = "auto") -> Array:
    """softmax(q k^T / sqrt(d)) v per head, through ``jax.nn.dot_product_attention``.

    q, k, v: [B, N, heads, d] in the compute dtype (float32, or bfloat16 / float16);
    returns [B, N, heads, d] in that dtype. The logits q k^T are accumulated and
    soft-maxed in float32 (the probabilities are then cast back to the compute
    dtype for the product with v), whatever the implementation.

    ``implementation``:
      "xla": XLA's attention, which materialises the [B, heads, N, N] logits (and
        keeps float32 and compute-dtype probabilities of that size for the backward);
      "cudnn": cuDNN flash attention (NVIDIA GPUs, bfloat16 / float16, head dim a
        multiple of 8; JAX raises otherwise): no N x N buffer at all;
      "chunked": XLA's attention over ceil(N / ``ATTENTION_CHUNK``) equal chunks of
        queries in turn (``lax.map``), each chunk rematerialised, so the largest
        buffer is [B, heads, chunk, N], forward and backward; exact (each query's
        softmax runs over all keys), at the cost of recomputing the logits once
        in the backward;
      "auto": "chunked" when N > ``ATTENTION_CHUNK``, else JAX's own choice
        (``implementation=None``: XLA in jax 0.10, cuDNN when JAX starts picking it).
    """
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attention implementation must be one of {ATTENTION_IMPLEMENTATIONS}, "
                         f"got {implementation!r}")
    n = q.shape[1]
    if implementation == "auto":
        implementation = "chunked" if n > ATTENTION_CHUNK else None
    if implementation == "chunked" and n <= ATTENTION_CHUNK:
        implementation = "xla"
    if implementation != "chunked":
        return jax.nn.dot_product_attention(q, k, v, implementation=implementation)
    # ceil(n / ATTENTION_CHUNK) equal chunks; the queries are zero-padded to fill the
    # last one and the padded rows dropped (keys and values are never padded).
    chunks = -(-n // ATTENTION_CHUNK)
    size = -(-n // chunks)
    b, _, heads, d = q.shape
    qp = jnp.pad(q, ((0, 0), (0, chunks * size - n), (0, 0), (0, 0)))
    qs = jnp.moveaxis(qp.reshape(b, chunks, size, heads, d), 1, 0)        # [chunks, B, size, heads, d]
    one = jax.checkpoint(lambda qc: jax.nn.dot_product_attention(qc, k, v, implementation="xla"))
    out = jax.lax.map(one, qs)                                           # [chunks, B, size, heads, d]
    return jnp.moveaxis(out, 0, 1).reshape(b, chunks * size, heads, d)[:, :n]


class AttentionBlock(nn.Module):
    """GroupNorm -> multi-head self-attention over H*W -> zero-init projection, residual.

    x: [B, H, W, C] -> [B, H, W, C] in ``dtype``. Parameters: "norm" (GroupNorm
    scale/bias [C]), "qkv" (Dense [C, 3C] + [3C]; output channels ordered
    (q|k|v, head, d)), "proj" (Dense [C, C] + [C], zero-initialised). The
    attention itself is ``dot_product_attention`` (``implementation``).
    """

    num_heads: int
    num_groups: int = 32
    implementation: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, hh, ww, c = x.shape
        heads = self.num_heads
        if c % heads:
            raise ValueError(f"attention: {c} channels not divisible by {heads} heads")
        d = c // heads
        h = GroupNorm(self.num_groups, param_dtype=self.param_dtype, name="norm")(x).astype(self.dtype)
        qkv = _dense(3 * c, _PROJ_AXES, self.dtype, self.param_dtype, "qkv")(h.reshape(b, hh * ww, c))
        q, k, v = jnp.split(qkv.reshape(b, hh * ww, 3, heads, d), 3, axis=2)
        q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]  # [B, N, heads, d]
        out = dot_product_attention(q, k, v, self.implementation).reshape(b, hh * ww, c)
        out = _dense(c, _PROJ_AXES, self.dtype, self.param_dtype, "proj", zero_init=True)(out)
        return x.astype(self.dtype) + out.reshape(b, hh, ww, c)


# --------------------------------------------------------------------------
# Rematerialisation.
# --------------------------------------------------------------------------
# What a rematerialised res / attention block keeps for the backward pass
# (``jax.checkpoint_policies``); everything else inside the block is recomputed.
REMAT_POLICIES: dict[str, Callable[..., bool] | None] = {
    # only the block's inputs (jax.checkpoint's default: nothing inside is saved)
    "full": None,
    # conv and matmul outputs, the attention logits q k^T included
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    # matmuls without batch dimensions: the dense layers (qkv, proj, FiLM, time
    # MLP); convolutions and the attention logits are recomputed
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
REMAT_CHOICES = ("none",) + tuple(REMAT_POLICIES)


def remat_name(remat: bool | str) -> str:
    """``UNet.remat`` as one of ``REMAT_CHOICES``: False -> "none", True -> "full",
    a policy name -> itself; ValueError for anything else."""
    if isinstance(remat, (bool, np.bool_)):
        return "full" if remat else "none"
    if remat not in REMAT_CHOICES:
        raise ValueError(f"remat must be a bool or one of {REMAT_CHOICES}, got {remat!r}")
    return remat


# --------------------------------------------------------------------------
# The U-Net.
# --------------------------------------------------------------------------
class UNet(nn.Module):
    """f(m_t, w, c, t) -> [B, H, W, out_channels] float32. See the module docstring.

    Attributes:
      out_channels: output channels (3).
      base_channels: channels at level 0.
      channel_mults: per-level multipliers of base_channels; the number of
        levels is len(channel_mults).
      num_res_blocks: res blocks per encoder level (decoder: one more).
      attention_levels: level indices (0 = full resolution) with attention
        after each res block.
      mid_attention: attention in the middle block.
      num_heads: attention heads, used when head_channels is None.
      head_channels: channels per head (heads = C // head_channels), overrides
        num_heads when set.
      dropout: dropout rate inside res blocks (train=True only; rng "dropout").
      num_groups: GroupNorm groups; must divide every normalised channel count.
      time_embed_dim: sinusoidal embedding size (default base_channels).
      time_mlp_dim: time MLP width (default 4 * base_channels).
      downsample: "conv" (strided conv3x3) or "avgpool".
      stem_channels: k, channels per Bayer site of the sub-pixel stem of w.
      use_w, use_c: use the RAW / colour conditions.
      remat: rematerialise every res and attention block (``nn.remat``: its
        insides are recomputed on the backward pass): False / "none" (off),
        True / "full" (keep only the block inputs), or a policy name of
        ``REMAT_POLICIES`` (what else to keep). Outputs and gradients do not
        depend on it; memory and FLOPs do (``benchmarks/plan.py``).
      attention_impl: "auto" | "xla" | "cudnn" | "chunked", see ``dot_product_attention``.
      dtype: compute dtype; param_dtype: parameter dtype.
    """

    out_channels: int = 3
    base_channels: int = 64
    channel_mults: Sequence[int] = (1, 2, 4, 8)
    num_res_blocks: int = 2
    attention_levels: Sequence[int] = (2, 3)
    mid_attention: bool = True
    num_heads: int = 1
    head_channels: int | None = 32
    dropout: float = 0.0
    num_groups: int = 32
    time_embed_dim: int | None = None
    time_mlp_dim: int | None = None
    downsample: str = "conv"
    stem_channels: int = 32
    use_w: bool = True
    use_c: bool = True
    remat: bool | str = False
    attention_impl: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    # ---- static validation -------------------------------------------------
    def _heads(self, channels: int) -> int:
        if self.head_channels is not None:
            if channels % self.head_channels:
                raise ValueError(
                    f"attention: {channels} channels not divisible by head_channels={self.head_channels}"
                )
            return channels // self.head_channels
        if channels % self.num_heads:
            raise ValueError(f"attention: {channels} channels not divisible by num_heads={self.num_heads}")
        return self.num_heads

    def validate_config(self) -> None:
        """Raises ValueError for an inconsistent configuration (no shapes needed)."""
        levels = len(self.channel_mults)
        if levels < 1:
            raise ValueError("channel_mults must have at least one level")
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {self.num_res_blocks}")
        if self.downsample not in ("conv", "avgpool"):
            raise ValueError(f"downsample must be 'conv' or 'avgpool', got {self.downsample!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        bad_levels = [l for l in self.attention_levels if not 0 <= l < levels]
        if bad_levels:
            raise ValueError(f"attention_levels {bad_levels} out of range for {levels} levels")
        g = self.num_groups
        if g < 1:
            raise ValueError(f"num_groups must be >= 1, got {g}")
        # Walk the channel plan and check every GroupNorm input.
        normed = []
        ch = self.base_channels
        skips = [ch]
        for i, m in enumerate(self.channel_mults):
            out = self.base_channels * m
            for _ in range(self.num_res_blocks):
                normed += [ch, out]
                ch = out
                skips.append(ch)
            if i < levels - 1:
                skips.append(ch)
        normed += [ch]
        for i in reversed(range(levels)):
            out = self.base_channels * self.channel_mults[i]
            for _ in range(self.num_res_blocks + 1):
                normed += [ch + skips.pop(), out]
                ch = out
        normed += [ch]
        bad = sorted({c for c in normed if c % g})
        if bad:
            raise ValueError(
                f"num_groups={g} must divide every GroupNorm channel count; "
                f"it does not divide {bad} (base_channels={self.base_channels}, "
                f"channel_mults={tuple(self.channel_mults)})"
            )
        for i in self.attention_levels:
            self._heads(self.base_channels * self.channel_mults[i])
        if self.mid_attention:
            self._heads(self.base_channels * self.channel_mults[-1])
        if (self.time_embed_dim or self.base_channels) % 2:
            raise ValueError("time_embed_dim must be even")
        remat_name(self.remat)
        if self.attention_impl not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLEMENTATIONS}, "
                             f"got {self.attention_impl!r}")

    def _check_inputs(self, m_t, w, c, t):
        if m_t.ndim != 4:
            raise ValueError(f"m_t must be [B, H, W, C], got shape {m_t.shape}")
        b, hh, ww, _ = m_t.shape
        levels = len(self.channel_mults)
        f = 2 ** (levels - 1)
        if self.use_w:
            f = max(f, 2)
        if hh % f or ww % f:
            raise ValueError(
                f"H and W must be divisible by {f} (2**(levels-1) = {2 ** (levels - 1)} for "
                f"{levels} levels{', and 2 for the packed RAW w' if self.use_w else ''}); got H={hh}, W={ww}"
            )
        if self.use_w:
            if w is None:
                raise ValueError("use_w=True but w is None")
            if tuple(w.shape) != (b, hh // 2, ww // 2, 4):
                raise ValueError(
                    f"w must be the packed RAW planes [B, H/2, W/2, 4] = {(b, hh // 2, ww // 2, 4)}, "
                    f"got {tuple(w.shape)}"
                )
        if self.use_c:
            if c is None:
                raise ValueError("use_c=True but c is None")
            if c.ndim != 4 or tuple(c.shape[:3]) != (b, hh, ww):
                raise ValueError(f"c must be [B, H, W, C] with (B, H, W) = {(b, hh, ww)}, got {tuple(c.shape)}")
        t = jnp.asarray(t)
        if t.ndim == 0:
            t = jnp.broadcast_to(t, (b,))
        if t.shape != (b,):
            raise ValueError(f"t must be a scalar or shape [B] = ({b},), got {t.shape}")
        return t

    # ---- forward -----------------------------------------------------------
    @nn.compact
    def __call__(self, m_t: Array, w: Array | None, c: Array | None, t: Array, *, train: bool = False) -> Array:
        self.validate_config()
        t = self._check_inputs(m_t, w, c, t)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        levels = len(self.channel_mults)

        res_cls, attn_cls = ResBlock, AttentionBlock
        remat = remat_name(self.remat)
        if remat != "none":
            policy = REMAT_POLICIES[remat]
            res_cls = nn.remat(ResBlock, static_argnums=(3,), policy=policy)
            attn_cls = nn.remat(AttentionBlock, policy=policy)

        def res(x, emb, out, name):
            return res_cls(out, self.num_groups, self.dropout, name=name, **kw)(x, emb, train)

        def attn(x, name):
            return attn_cls(self._heads(x.shape[-1]), self.num_groups, self.attention_impl, name=name, **kw)(x)

        # Time embedding.
        temb_dim = self.time_embed_dim or self.base_channels
        mlp_dim = self.time_mlp_dim or 4 * self.base_channels
        emb = timestep_embedding(t, temb_dim)
        emb = _dense(mlp_dim, _DENSE_AXES, self.dtype, self.param_dtype, "time_mlp_0")(emb)
        emb = _dense(mlp_dim, _DENSE_AXES, self.dtype, self.param_dtype, "time_mlp_1")(nn.silu(emb))

        # Inputs: [m_t, c, stem(w)].
        parts = [m_t.astype(self.dtype)]
        if self.use_c:
            parts.append(c.astype(self.dtype))
        if self.use_w:
            parts.append(SubPixelStem(self.stem_channels, name="w_stem", **kw)(w))
        h = jnp.concatenate(parts, axis=-1)
        h = _Conv(self.base_channels, 3, name="conv_in", **kw)(h)

        # Encoder.
        skips = [h]
        for i, mult in enumerate(self.channel_mults):
            for j in range(self.num_res_blocks):
                h = res(h, emb, self.base_channels * mult, f"down_{i}_res_{j}")
                if i in self.attention_levels:
                    h = attn(h, f"down_{i}_attn_{j}")
                skips.append(h)
            if i < levels - 1:
                if self.downsample == "conv":
                    h = _Conv(h.shape[-1], 3, stride=2, name=f"down_{i}_downsample", **kw)(h)
                else:
                    h = nn.avg_pool(h, (2, 2), strides=(2, 2))
                skips.append(h)

        # Middle.
        ch = h.shape[-1]
        h = res(h, emb, ch, "mid_res_0")
        if self.mid_attention:
            h = attn(h, "mid_attn")
        h = res(h, emb, ch, "mid_res_1")

        # Decoder.
        for i in reversed(range(levels)):
            out = self.base_channels * self.channel_mults[i]
            for j in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop().astype(h.dtype)], axis=-1)
                h = res(h, emb, out, f"up_{i}_res_{j}")
                if i in self.attention_levels:
                    h = attn(h, f"up_{i}_attn_{j}")
            if i > 0:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
                h = _Conv(out, 3, name=f"up_{i}_upsample", **kw)(h)
        assert not skips

        h = nn.silu(GroupNorm(self.num_groups, param_dtype=self.param_dtype, name="norm_out")(h)).astype(self.dtype)
        h = _Conv(self.out_channels, 3, zero_init=True, axes=_OUT_CONV_AXES, name="conv_out", **kw)(h)
        return h.astype(jnp.float32)


# --------------------------------------------------------------------------
# Named configurations.
# --------------------------------------------------------------------------
UNET_CONFIGS: dict[str, dict[str, Any]] = {
    # Unit tests (16x16 / 32x32 crops).
    "tiny": dict(
        base_channels=8,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_levels=(1,),
        mid_attention=True,
        num_heads=2,
        head_channels=None,
        dropout=0.0,
        num_groups=4,
        stem_channels=4,
    ),
    # CPU training demo (batch 8, 64x64 crops): 23.7 GFLOP per train step.
    "demo": dict(
        base_channels=16,
        channel_mults=(1, 2, 4, 8),
        num_res_blocks=1,
        attention_levels=(3,),
        mid_attention=True,
        num_heads=4,
        head_channels=None,
        dropout=0.1,
        num_groups=8,
        stem_channels=16,
    ),
    # Palette-class model for ZRR, as Palette's image-to-image U-Net (Janspiry's
    # PyTorch Palette, colorization config, which has DiffRAW's T = 2000 linear
    # 1e-6..1e-2 schedule):
    # 64 ch, [1, 2, 4, 8], 2 res blocks, dropout 0.2, GroupNorm 32, 32 channels
    # per head, and self-attention only in the middle block, at the lowest
    # resolution (56x56 = 3,136 positions at 448 px; Palette's attn_res [16] is a
    # downsampling factor that 4 levels never reach). Attention at levels 2 and 3
    # as well (12,544 and 3,136 positions) took the forward from 1.09 to 2.10
    # TFLOP per 448 px image, and its [B, heads, N, N] logits dominated the
    # training step's memory; at level 3 alone: 1.23 TFLOP.
    "zrr": dict(
        base_channels=64,
        channel_mults=(1, 2, 4, 8),
        num_res_blocks=2,
        attention_levels=(),
        mid_attention=True,
        num_heads=1,
        head_channels=32,
        dropout=0.2,
        num_groups=32,
        stem_channels=32,
    ),
}

# Parameter counts of the named configs (checked by tests/test_unet.py).
PARAM_COUNTS = {"tiny": 49_787, "demo": 2_756_723, "zrr": 58_096_259}


def unet_config(name: str, **overrides) -> dict[str, Any]:
    """A copy of the named config's UNet kwargs, with overrides applied."""
    if name not in UNET_CONFIGS:
        raise ValueError(f"unknown UNet config {name!r}; expected one of {sorted(UNET_CONFIGS)}")
    cfg = dict(UNET_CONFIGS[name])
    unknown = set(overrides) - set(UNet.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown UNet fields {sorted(unknown)}")
    cfg.update(overrides)
    return cfg


def make_unet(name: str, **overrides) -> UNet:
    return UNet(**unet_config(name, **overrides))

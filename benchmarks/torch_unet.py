"""PyTorch reference of the DiffRAW U-Net (``diffraw_jax/models/unet.py``).

``TorchUNet`` is the same network as the Flax ``UNet``: the same layers in the
same order, the same shapes and parameter count, the same math (GroupNorm
eps 1e-5, FiLM ``norm(h) * (1 + scale) + shift``, multi-head self-attention
with the Flax qkv layout, nearest x2 + conv3x3 upsampling, strided-conv or
2x2 average-pool downsampling, the sub-pixel RAW stem with the project's
``depth_to_space`` channel order), so that weights ported from Flax with
``load_flax_params`` give the same outputs. It exists for benchmarks that time
the JAX and PyTorch models side by side; it is not used by the package.

torch is not a dependency of diffraw_jax; install it separately, e.g.::

    pip install torch==2.13.0

This module imports only torch and numpy (``make_torch_unet`` with a config
*name* imports ``diffraw_jax.models.unet`` lazily, which pulls in JAX).

Layout: the network runs in NCHW internally. ``forward(m_t, w, c, t)`` takes
m_t [B, out_channels, H, W], c [B, 3, H, W], w [B, 4, H/2, W/2] (packed RAW
planes R, G_r, G_b, B) and t [B] (int or float; a scalar is broadcast), and
returns float [B, out_channels, H, W]; i.e. the JAX model's NHWC inputs
transposed with ``x.permute(0, 3, 1, 2)``. A disabled condition (``use_w`` /
``use_c`` False) may be None.

Parameter names: every torch module is named after its Flax scope
(``down_0_res_0.conv1``, ``mid_attn.qkv``, ``w_stem.conv``, ...), so the
state-dict key of a parameter is its Flax path with ``.`` separators, except
that Flax wraps every conv in a ``conv`` sub-scope and names parameters
kernel/bias (convs, dense) or scale/bias (GroupNorm).

Initialisation follows the Flax model: PyTorch's default U(-1/sqrt(fan_in),
1/sqrt(fan_in)) weights, zero biases, GroupNorm scale 1 / offset 0, and the
last conv of every res block, every attention output projection and the
final conv zero-initialised (a fresh network outputs exactly 0). The values
differ from a Flax init (different RNG); only ported weights match.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "TorchUNet",
    "TorchResBlock",
    "TorchAttentionBlock",
    "TorchSubPixelStem",
    "depth_to_space",
    "timestep_embedding",
    "make_torch_unet",
    "load_flax_params",
    "count_params",
]

# Channels of the colour condition c (the JAX model infers it from c at init;
# its dummy inputs, and the whole project, use RGB).
C_CHANNELS = 3


# --------------------------------------------------------------------------
# Functional helpers.
# --------------------------------------------------------------------------
def depth_to_space(x: torch.Tensor, block_size: int = 2) -> torch.Tensor:
    """NCHW [B, b*b*C, h, w] -> [B, C, h*b, w*b] in diffraw_jax.raw's order:
    channel block s = b*dy + dx (channels [s*C, (s+1)*C)) lands on pixel
    (b*i + dy, b*j + dx). This is *not* ``F.pixel_shuffle``, whose channel
    index is c*b*b + s."""
    b = int(block_size)
    n, cc, h, w = x.shape
    if cc % (b * b):
        raise ValueError(f"channels ({cc}) must be a multiple of block_size**2 = {b * b}")
    c = cc // (b * b)
    y = x.reshape(n, b, b, c, h, w)  # [n, dy, dx, c, h, w]
    y = y.permute(0, 3, 4, 1, 5, 2)  # [n, c, h, dy, w, dx]
    return y.reshape(n, c, h * b, w * b)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [B] -> [B, dim] (float32): [cos(t f_i), sin(t f_i)]."""
    if dim % 2:
        raise ValueError(f"time embedding dim must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _conv(cin: int, cout: int, kernel: int = 3, stride: int = 1, zero: bool = False) -> nn.Conv2d:
    """Conv with 'same' padding (kernel // 2 on each side, as the Flax _Conv),
    default weight init, zero bias (zero weight too with ``zero``)."""
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)
    if zero:
        nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def _linear(cin: int, cout: int, zero: bool = False) -> nn.Linear:
    lin = nn.Linear(cin, cout)
    if zero:
        nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    return lin


def _group_norm(num_groups: int, channels: int) -> nn.GroupNorm:
    if channels % num_groups:
        raise ValueError(f"GroupNorm: {channels} channels are not divisible by num_groups={num_groups}")
    return nn.GroupNorm(num_groups, channels, eps=1e-5)


# --------------------------------------------------------------------------
# Blocks.
# --------------------------------------------------------------------------
class TorchSubPixelStem(nn.Module):
    """w [B, 4, H/2, W/2] -> [B, features, H, W]: conv3x3 to 4*features, then
    depth_to_space(2) (site s = 2*dy + dx gets conv channels [s*k, (s+1)*k))."""

    def __init__(self, features: int, in_channels: int = 4):
        super().__init__()
        self.conv = _conv(in_channels, 4 * features, 3)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return depth_to_space(self.conv(w), 2)


class TorchResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3 -> FiLM(GroupNorm) -> SiLU -> dropout ->
    conv3x3 (zero-init), plus a 1x1 skip conv when the channel count changes."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, num_groups: int, dropout: float):
        super().__init__()
        self.norm1 = _group_norm(num_groups, in_channels)
        self.conv1 = _conv(in_channels, out_channels, 3)
        self.film = _linear(emb_dim, 2 * out_channels)
        self.norm2 = _group_norm(num_groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv(out_channels, out_channels, 3, zero=True)
        self.skip = _conv(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1.0 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        if self.skip is not None:
            x = self.skip(x)
        return x + h


class TorchAttentionBlock(nn.Module):
    """GroupNorm -> multi-head self-attention over the H*W positions ->
    zero-init output projection, residual.

    qkv is Linear(C, 3C) whose output is read as (3, heads, d) per position,
    exactly as the Flax ``reshape(b, N, 3, heads, d)``. Flax multiplies q and k
    each by d**-0.25 before the dot product; ``scaled_dot_product_attention``
    with ``scale=d**-0.5`` is the same softmax(q k^T / sqrt(d)) v.
    """

    def __init__(self, channels: int, num_heads: int, num_groups: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention: {channels} channels not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.norm = _group_norm(num_groups, channels)
        self.qkv = _linear(channels, 3 * channels)
        self.proj = _linear(channels, channels, zero=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        heads, d = self.num_heads, c // self.num_heads
        n = hh * ww
        h = self.norm(x).reshape(b, c, n).transpose(1, 2)  # [B, N, C], positions row-major
        qkv = self.qkv(h).reshape(b, n, 3, heads, d).permute(2, 0, 3, 1, 4)  # [3, B, heads, N, d]
        q, k, v = qkv[0], qkv[1], qkv[2]
        out = F.scaled_dot_product_attention(q, k, v, scale=d ** -0.5)  # [B, heads, N, d]
        out = self.proj(out.transpose(1, 2).reshape(b, n, c))  # [B, N, C]
        return x + out.transpose(1, 2).reshape(b, c, hh, ww)


# --------------------------------------------------------------------------
# The U-Net.
# --------------------------------------------------------------------------
class TorchUNet(nn.Module):
    """f(m_t, w, c, t) -> [B, out_channels, H, W]; the NCHW twin of the Flax
    ``UNet`` with the same constructor arguments (``dtype``, ``param_dtype``
    and ``remat`` are accepted and ignored: use ``.to(dtype)`` instead).

    Submodules carry the Flax scope names: ``time_mlp_0/1``, ``w_stem``,
    ``conv_in``, ``down_{i}_res_{j}``, ``down_{i}_attn_{j}``,
    ``down_{i}_downsample``, ``mid_res_0``, ``mid_attn``, ``mid_res_1``,
    ``up_{i}_res_{j}``, ``up_{i}_attn_{j}``, ``up_{i}_upsample``, ``norm_out``,
    ``conv_out``.

    The configuration is not validated again here: take it from
    ``unet_config(name)``, whose Flax ``UNet.validate_config`` checks it.
    """

    def __init__(
        self,
        out_channels: int = 3,
        base_channels: int = 64,
        channel_mults: Sequence[int] = (1, 2, 4, 8),
        num_res_blocks: int = 2,
        attention_levels: Sequence[int] = (2, 3),
        mid_attention: bool = True,
        num_heads: int = 1,
        head_channels: int | None = 32,
        dropout: float = 0.0,
        num_groups: int = 32,
        time_embed_dim: int | None = None,
        time_mlp_dim: int | None = None,
        downsample: str = "conv",
        stem_channels: int = 32,
        use_w: bool = True,
        use_c: bool = True,
        remat: bool = False,
        dtype: Any = None,
        param_dtype: Any = None,
    ):
        super().__init__()
        del remat, dtype, param_dtype  # JAX-only knobs
        self.out_channels = out_channels
        self.base_channels = base_channels
        self.channel_mults = tuple(channel_mults)
        self.num_res_blocks = num_res_blocks
        self.attention_levels = tuple(attention_levels)
        self.mid_attention = mid_attention
        self.num_heads = num_heads
        self.head_channels = head_channels
        self.dropout = dropout
        self.num_groups = num_groups
        self.downsample = downsample
        self.stem_channels = stem_channels
        self.use_w = use_w
        self.use_c = use_c
        self.time_embed_dim = time_embed_dim or base_channels
        self.time_mlp_dim = time_mlp_dim or 4 * base_channels

        levels = len(self.channel_mults)
        emb = self.time_mlp_dim
        g = num_groups

        def res(name, cin, cout):
            self.add_module(name, TorchResBlock(cin, cout, emb, g, dropout))

        def attn(name, ch):
            self.add_module(name, TorchAttentionBlock(ch, self._heads(ch), g))

        # Time embedding MLP.
        self.time_mlp_0 = _linear(self.time_embed_dim, emb)
        self.time_mlp_1 = _linear(emb, emb)

        # Inputs: [m_t, c, stem(w)] -> conv3x3.
        cin = out_channels + (C_CHANNELS if use_c else 0) + (stem_channels if use_w else 0)
        if use_w:
            self.w_stem = TorchSubPixelStem(stem_channels)
        self.conv_in = _conv(cin, base_channels, 3)

        # Encoder (same channel walk as the Flax forward).
        ch = base_channels
        skips = [ch]
        for i, mult in enumerate(self.channel_mults):
            for j in range(num_res_blocks):
                res(f"down_{i}_res_{j}", ch, base_channels * mult)
                ch = base_channels * mult
                if i in self.attention_levels:
                    attn(f"down_{i}_attn_{j}", ch)
                skips.append(ch)
            if i < levels - 1:
                if downsample == "conv":
                    self.add_module(f"down_{i}_downsample", _conv(ch, ch, 3, stride=2))
                skips.append(ch)

        # Middle.
        res("mid_res_0", ch, ch)
        if mid_attention:
            attn("mid_attn", ch)
        res("mid_res_1", ch, ch)

        # Decoder.
        for i in reversed(range(levels)):
            out = base_channels * self.channel_mults[i]
            for j in range(num_res_blocks + 1):
                res(f"up_{i}_res_{j}", ch + skips.pop(), out)
                ch = out
                if i in self.attention_levels:
                    attn(f"up_{i}_attn_{j}", ch)
            if i > 0:
                self.add_module(f"up_{i}_upsample", _conv(ch, out, 3))
        assert not skips

        self.norm_out = _group_norm(g, ch)
        self.conv_out = _conv(ch, out_channels, 3, zero=True)

    # ---- heads per attention block (as UNet._heads) ----------------------
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

    def _check_inputs(self, m_t, w, c, t) -> torch.Tensor:
        if m_t.ndim != 4:
            raise ValueError(f"m_t must be [B, C, H, W], got shape {tuple(m_t.shape)}")
        b, _, hh, ww = m_t.shape
        levels = len(self.channel_mults)
        f = 2 ** (levels - 1)
        if self.use_w:
            f = max(f, 2)
        if hh % f or ww % f:
            raise ValueError(f"H and W must be divisible by {f}; got H={hh}, W={ww}")
        if self.use_w:
            if w is None:
                raise ValueError("use_w=True but w is None")
            if tuple(w.shape) != (b, 4, hh // 2, ww // 2):
                raise ValueError(
                    f"w must be the packed RAW planes [B, 4, H/2, W/2] = {(b, 4, hh // 2, ww // 2)}, "
                    f"got {tuple(w.shape)}"
                )
        if self.use_c:
            if c is None:
                raise ValueError("use_c=True but c is None")
            if c.ndim != 4 or c.shape[0] != b or tuple(c.shape[2:]) != (hh, ww):
                raise ValueError(f"c must be [B, C, H, W] with (B, H, W) = {(b, hh, ww)}, got {tuple(c.shape)}")
        t = torch.as_tensor(t, device=m_t.device)
        if t.ndim == 0:
            t = t.expand(b)
        if tuple(t.shape) != (b,):
            raise ValueError(f"t must be a scalar or shape [B] = ({b},), got {tuple(t.shape)}")
        return t

    # ---- forward -----------------------------------------------------------
    def forward(self, m_t: torch.Tensor, w: torch.Tensor | None, c: torch.Tensor | None, t) -> torch.Tensor:
        """m_t [B, out_channels, H, W], w [B, 4, H/2, W/2], c [B, 3, H, W],
        t [B] (or a scalar) -> [B, out_channels, H, W]. Dropout is active in
        ``train()`` mode only."""
        t = self._check_inputs(m_t, w, c, t)
        levels = len(self.channel_mults)
        dtype = self.conv_in.weight.dtype

        emb = timestep_embedding(t, self.time_embed_dim).to(dtype)
        emb = self.time_mlp_1(F.silu(self.time_mlp_0(emb)))

        parts = [m_t.to(dtype)]
        if self.use_c:
            parts.append(c.to(dtype))
        if self.use_w:
            parts.append(self.w_stem(w.to(dtype)))
        h = self.conv_in(torch.cat(parts, dim=1))

        # Encoder.
        skips = [h]
        for i in range(levels):
            for j in range(self.num_res_blocks):
                h = getattr(self, f"down_{i}_res_{j}")(h, emb)
                if i in self.attention_levels:
                    h = getattr(self, f"down_{i}_attn_{j}")(h)
                skips.append(h)
            if i < levels - 1:
                if self.downsample == "conv":
                    h = getattr(self, f"down_{i}_downsample")(h)
                else:
                    h = F.avg_pool2d(h, 2)
                skips.append(h)

        # Middle.
        h = self.mid_res_0(h, emb)
        if self.mid_attention:
            h = self.mid_attn(h)
        h = self.mid_res_1(h, emb)

        # Decoder.
        for i in reversed(range(levels)):
            for j in range(self.num_res_blocks + 1):
                h = torch.cat([h, skips.pop()], dim=1)
                h = getattr(self, f"up_{i}_res_{j}")(h, emb)
                if i in self.attention_levels:
                    h = getattr(self, f"up_{i}_attn_{j}")(h)
            if i > 0:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
                h = getattr(self, f"up_{i}_upsample")(h)
        assert not skips

        return self.conv_out(F.silu(self.norm_out(h)))


def make_torch_unet(config: str | Mapping[str, Any], **overrides) -> TorchUNet:
    """``TorchUNet`` from a config dict (e.g. ``unet_config(name)`` of
    diffraw_jax.models.unet) or a config name, with overrides applied. A name
    is resolved through ``diffraw_jax.models.unet.unet_config`` (imported
    here, lazily: it imports JAX)."""
    if isinstance(config, str):
        from diffraw_jax.models.unet import unet_config  # lazy: pulls in jax

        cfg = unet_config(config, **overrides)
    else:
        cfg = {**dict(config), **overrides}
    return TorchUNet(**cfg)


def count_params(model: nn.Module) -> int:
    """Number of parameters (elements) of a torch module."""
    return int(sum(p.numel() for p in model.parameters()))


# --------------------------------------------------------------------------
# Weight porting from Flax.
# --------------------------------------------------------------------------
def _flatten(tree: Mapping, prefix: tuple = ()) -> dict[tuple, Any]:
    out = {}
    for k, v in tree.items():
        path = prefix + (str(k),)
        if isinstance(v, Mapping):
            out.update(_flatten(v, path))
        else:
            if hasattr(v, "unbox"):  # an un-unboxed nn.LogicallyPartitioned leaf
                v = v.unbox()
            out[path] = v
    return out


def _flax_layout(model: nn.Module):
    """Yields (flax path, torch parameter, converter) for every parameter."""

    def conv_kernel(a):  # HWIO -> OIHW
        return a.transpose(3, 2, 0, 1)

    def dense_kernel(a):  # [in, out] -> [out, in]
        return a.T

    def same(a):
        return a

    for name, mod in model.named_modules():
        scope = tuple(name.split(".")) if name else ()
        if isinstance(mod, nn.Conv2d):
            yield scope + ("conv", "kernel"), mod.weight, conv_kernel
            yield scope + ("conv", "bias"), mod.bias, same
        elif isinstance(mod, nn.Linear):
            yield scope + ("kernel",), mod.weight, dense_kernel
            yield scope + ("bias",), mod.bias, same
        elif isinstance(mod, nn.GroupNorm):
            yield scope + ("scale",), mod.weight, same
            yield scope + ("bias",), mod.bias, same


@torch.no_grad()
def load_flax_params(model: TorchUNet, params: Mapping) -> TorchUNet:
    """Copies a Flax ``UNet`` parameter tree (``variables["params"]``, nested
    dicts of numpy / JAX arrays, unboxed or not) into ``model`` in place and
    returns it. Conv kernels HWIO -> OIHW, Dense kernels [in, out] -> Linear
    weights [out, in], GroupNorm scale/bias -> weight/bias.

    Raises ValueError, before copying anything, if a Flax parameter has no
    torch counterpart, a torch parameter has no Flax value, or a shape differs.
    """
    if isinstance(params, Mapping) and set(params) == {"params"}:
        params = params["params"]
    flat = _flatten(params)
    layout = list(_flax_layout(model))
    covered = {id(p) for _, p, _ in layout}
    stray = [n for n, p in model.named_parameters() if id(p) not in covered]
    if stray:
        raise ValueError(f"torch parameters with no Flax mapping: {stray}")

    missing, mismatched, values = [], [], []
    for path, param, convert in layout:
        key = "/".join(path)
        if path not in flat:
            missing.append(key)
            continue
        arr = convert(np.asarray(flat[path], dtype=np.float32))
        if tuple(arr.shape) != tuple(param.shape):
            mismatched.append(f"{key}: flax {tuple(np.asarray(flat[path]).shape)} -> {tuple(arr.shape)}, "
                              f"torch {tuple(param.shape)}")
            continue
        values.append((param, arr))
    unused = sorted(set(flat) - {path for path, _, _ in layout})
    errors = []
    if missing:
        errors.append(f"missing in the Flax params ({len(missing)}): {missing}")
    if unused:
        errors.append(f"unused Flax params ({len(unused)}): {['/'.join(p) for p in unused]}")
    if mismatched:
        errors.append(f"shape mismatches ({len(mismatched)}): {mismatched}")
    if errors:
        raise ValueError("load_flax_params: " + "; ".join(errors))
    for param, arr in values:
        param.copy_(torch.tensor(arr, dtype=param.dtype))
    return model

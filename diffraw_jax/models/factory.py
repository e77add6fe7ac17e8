"""Models, schedules and sampler settings from a config: the one factory.

Training, evaluation and inference all build f (the DiffRAW U-Net), G (the
colour network) and the diffusion schedule through these functions, so a
config means the same model everywhere. Imports only jax, flax, numpy and the
project's core modules.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffraw_jax import dtdm
from diffraw_jax.models import init as init_lib
from diffraw_jax.models import isp as isp_lib
from diffraw_jax.models import unet as unet_lib

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
TASKS = ("diffraw", "color_net")


def create_model(config) -> nn.Module:
    """The network of ``config.task``: the U-Net f ("diffraw") or G ("color_net")."""
    dtype = DTYPES.get(config.model.dtype)
    if dtype is None:
        raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {config.model.dtype!r}")
    if config.task == "color_net":
        return isp_lib.ColorNet(**isp_lib.color_net_config(config.color_net.name), dtype=dtype)
    if config.task != "diffraw":
        raise ValueError(f"task must be one of {TASKS}, got {config.task!r}")
    overrides = dict(dtype=dtype, remat=remat_policy(config),
                     attention_impl=config.model.attention_impl,
                     use_w=bool(config.model.use_w), use_c=bool(config.model.use_c))
    if config.model.dropout >= 0:
        overrides["dropout"] = float(config.model.dropout)
    return unet_lib.make_unet(config.model.name, **overrides)


def remat_policy(config) -> str:
    """The U-Net's rematerialisation (``unet.REMAT_CHOICES``) from ``config.model``:
    ``remat_policy`` when set (not "" / "none"), else "full" if the older boolean
    ``remat`` is true, else "none" (configs saved before ``remat_policy`` existed
    set only ``remat``)."""
    m = config.model
    policy = m.remat_policy or "none"
    if policy == "none" and m.remat:
        policy = "full"
    return unet_lib.remat_name(policy)


def create_schedule(config) -> dtdm.Schedule:
    """The betas of ``config.diffusion`` (T steps); checks 1 <= s <= T and the objective."""
    d = config.diffusion
    if not 1 <= d.s <= d.num_timesteps:
        raise ValueError(f"diffusion.s={d.s} must be in [1, num_timesteps={d.num_timesteps}]")
    if d.objective not in ("dtdm", "ddpm"):
        raise ValueError(f"diffusion.objective must be 'dtdm' or 'ddpm', got {d.objective!r}")
    return dtdm.make_schedule(d.num_timesteps, d.beta_start, d.beta_end, d.schedule)


def model_inputs(config, batch_size: int, crop_size: Optional[int] = None):
    """Abstract inputs (``jax.ShapeDtypeStruct``) for init: (m_t, w, c, t) for f, (w,) for G.

    ``crop_size`` (mosaic pixels, even): default ``config.data.crop_size``;
    parameter shapes do not depend on it.
    """
    h = int(crop_size or config.data.crop_size)
    f32 = jnp.float32
    w = jax.ShapeDtypeStruct((batch_size, h // 2, h // 2, 4), f32)
    if config.task == "color_net":
        return (w,)
    return (jax.ShapeDtypeStruct((batch_size, h, h, 3), f32), w,
            jax.ShapeDtypeStruct((batch_size, h, h, 3), f32),
            jax.ShapeDtypeStruct((batch_size,), jnp.int32))


def abstract_variables(config, model: Optional[nn.Module] = None) -> Any:
    """``jax.eval_shape`` of ``model.init`` (boxed: logical partitioning kept); no memory."""
    model = model or create_model(config)
    # A small crop that every named model accepts: parameters do not depend on it.
    inputs = model_inputs(config, 1, crop_size=64)
    return jax.eval_shape(lambda k, *a: model.init(k, *a), jax.random.key(0), *inputs)


def abstract_params(config, model: Optional[nn.Module] = None) -> Any:
    """The unboxed ``params`` tree of ``ShapeDtypeStruct`` leaves the config's model has."""
    return nn.unbox(abstract_variables(config, model))["params"]


def init_variables(config, model: nn.Module, key, *, out_shardings=None) -> Any:
    """``model.init`` (boxed variables) for ``config``'s inputs, jitted, drawn with the fast
    "rbg" PRNG seeded from ``key`` (``models.init.init_variables``); the values do not
    depend on ``out_shardings`` (the mesh)."""
    return init_lib.init_variables(model, model_inputs(config, 1, crop_size=64), key,
                                   out_shardings=out_shardings)


def count_params(tree: Any) -> int:
    """Number of scalars in a parameter tree (arrays or ShapeDtypeStructs)."""
    return int(sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree)))


def is_distilled(config) -> bool:
    """True for a progressively distilled student (``distill.teacher`` set)."""
    return bool(config.distill.teacher)


class SamplerSettings(NamedTuple):
    """How a trained f is sampled: ``dtdm.sample(..., method, num_steps)`` from step ``s``."""

    method: str
    num_steps: Optional[int]   # None: all s steps
    s: int
    label: str                 # e.g. "DTDM-100", "DTDM-93 (s=100)", "DTDM-DDIM-10", "DDPM-100"


def sampler_settings(config, method: Optional[str] = None, num_steps: Optional[int] = None,
                     ) -> SamplerSettings:
    """The sampler a DiffRAW config asks for, with explicit overrides.

    Defaults come from the config: ``diffusion.objective = "ddpm"`` (a network
    trained on the plain epsilon target, the Fig. 4 baseline) samples with
    "ddpm"; otherwise ``sample.method`` ("dtdm" unless set). ``num_steps``:
    the override, else ``sample.num_steps`` when > 0, else all s steps. The
    paper's test setting is ``method="dtdm", num_steps=93`` with s = 100.
    ValueError for a sampler that does not fit the objective (a DTDM sampler on
    an epsilon network, or the reverse) or a step count outside [1, s].
    """
    objective = config.diffusion.objective
    s = int(config.diffusion.s)
    if method is None:
        method = "ddpm" if objective == "ddpm" else config.sample.method
    if method not in dtdm.METHODS:
        raise ValueError(f"unknown sampling method {method!r}; expected one of {dtdm.METHODS}")
    if (objective == "ddpm") != (method == "ddpm"):
        raise ValueError(f"a network trained with diffusion.objective={objective!r} cannot be sampled "
                         f"with method {method!r}; use {'ddpm' if objective == 'ddpm' else 'dtdm or dtdm_ddim'}")
    if num_steps is None:
        n = int(config.sample.num_steps)
        num_steps = n if n > 0 else None
    if num_steps is not None:
        num_steps = int(num_steps)
        if not 1 <= num_steps <= s:
            raise ValueError(f"num_steps must be in [1, s={s}], got {num_steps}")
        if method == "ddpm" and num_steps != s:
            raise ValueError(f"method 'ddpm' runs all s={s} steps; got num_steps={num_steps}")
        if num_steps == s and method != "dtdm_ddim":
            num_steps = None
    if method == "dtdm":
        label = f"DTDM-{s}" if num_steps is None else f"DTDM-{num_steps} (s={s})"
    elif method == "dtdm_ddim":
        label = f"DTDM-DDIM-{num_steps or s}"
        if is_distilled(config):
            label = f"distilled {label}"
    else:
        label = f"DDPM-{s}"
    return SamplerSettings(method, num_steps, s, label)

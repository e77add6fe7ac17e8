"""Models, schedules and sampler settings from a config: the one factory.

Training, evaluation and inference all build f (the DiffRAW U-Net), G (the
colour network) and the diffusion schedule through these functions, so a
config means the same model everywhere. The model helpers live here once:
``create_model`` (config -> module), ``model_inputs`` (the abstract call
arguments, None for an input the model does not use), ``abstract_variables`` /
``abstract_params`` (``jax.eval_shape``, no memory), ``init_variables`` (the
jitted init with the "rbg" PRNG), ``param_shardings`` (their layout on a mesh) and
``count_params``. Imports only jax, flax,
numpy and the project's core modules.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffraw_jax import calibration, dtdm, parallel
from diffraw_jax.models import color_net as color_net_lib
from diffraw_jax.models import unet as unet_lib

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
TASKS = ("diffraw", "color_net")


def create_model(config) -> nn.Module:
    """The network of ``config.task``: the U-Net f ("diffraw") or G ("color_net")."""
    dtype = DTYPES.get(config.model.dtype)
    if dtype is None:
        raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {config.model.dtype!r}")
    if config.task == "color_net":
        return color_net_lib.ColorNet(**color_net_lib.color_net_config(config.color_net.name), dtype=dtype,
                                      zero_mean_details=bool(config.color_net.zero_mean_details))
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
    if d.objective not in dtdm.OBJECTIVES:
        raise ValueError(f"diffusion.objective must be one of {dtdm.OBJECTIVES}, got {d.objective!r}")
    return dtdm.make_schedule(d.num_timesteps, d.beta_start, d.beta_end, d.schedule)


def model_condition(config) -> str:
    """``config.model.condition`` checked: "paper" (x = c = D2(y) in training, G(w) at test
    time) or "calibrated" (each file's own calibration, ``diffraw_jax.calibration``)."""
    kind = config.model.condition
    if kind not in calibration.CONDITIONS:
        raise ValueError(f"model.condition must be one of {calibration.CONDITIONS}, got {kind!r}")
    return kind


class ModelSpec(NamedTuple):
    """Everything a config fixes about a trained network before its parameters are read."""

    model: nn.Module           # ``create_model(config)``
    abstract_params: Any       # ``abstract_params(model)``: the parameter tree's shapes and dtypes
    schedule: Optional[dtdm.Schedule]  # ``create_schedule(config)`` for f; None for G
    condition: str             # ``model_condition(config)``: "paper" or "calibrated"
    distilled: bool            # ``is_distilled(config)``


def model_spec(config) -> ModelSpec:
    """The network of ``config`` with what is needed to restore and run it: the one call the
    checkpoint loader (``checkpoints.weights``) makes here. Raises ValueError for an invalid config."""
    model = create_model(config)
    schedule = create_schedule(config) if config.task == "diffraw" else None
    return ModelSpec(model, abstract_params(model), schedule, model_condition(config), is_distilled(config))


def model_inputs(model: nn.Module, batch_size: int = 1, crop_size=64) -> tuple:
    """Abstract positional inputs (``jax.ShapeDtypeStruct``, float32) of ``model``'s call.

    ``crop_size``: the full-resolution size H (or (H, W)), even; the packed RAW
    planes are H/2 x W/2. Parameter shapes do not depend on it, so the default
    (64, which every named model accepts) serves init and ``jax.eval_shape``.

    * G (``color_net.ColorNet``): ``(w,)``, w [B, H/2, W/2, 4].
    * f (``unet.UNet``): ``(m_t, w, c, t)``: m_t [B, H, W, out_channels],
      w [B, H/2, W/2, 4], c [B, H, W, 3], t int32 [B]; w (c) is None when the
      U-Net does not use it (``use_w`` / ``use_c`` off), as the model is called.
    """
    h, wd = (crop_size, crop_size) if np.isscalar(crop_size) else tuple(crop_size)
    h, wd = int(h), int(wd)
    if h % 2 or wd % 2:
        raise ValueError(f"crop_size must be even, got {h}x{wd}")
    f32 = jnp.float32
    w = jax.ShapeDtypeStruct((batch_size, h // 2, wd // 2, 4), f32)
    if isinstance(model, color_net_lib.ColorNet):
        return (w,)
    if not isinstance(model, unet_lib.UNet):
        raise TypeError(f"model must be a UNet or a ColorNet, got {type(model).__name__}")
    return (jax.ShapeDtypeStruct((batch_size, h, wd, model.out_channels), f32),
            w if model.use_w else None,
            jax.ShapeDtypeStruct((batch_size, h, wd, 3), f32) if model.use_c else None,
            jax.ShapeDtypeStruct((batch_size,), jnp.int32))


def abstract_variables(model: nn.Module, crop_size=64) -> Any:
    """``jax.eval_shape`` of ``model.init`` on ``model_inputs``: the boxed variable tree
    (``nn.LogicallyPartitioned`` leaves keep the logical axes), no memory allocated."""
    inputs = model_inputs(model, 1, crop_size)
    return jax.eval_shape(lambda k, *a: model.init(k, *a), jax.random.key(0), *inputs)


def abstract_params(model: nn.Module, crop_size=64) -> Any:
    """The unboxed ``params`` tree (``ShapeDtypeStruct`` leaves) of ``model``."""
    return nn.unbox(abstract_variables(model, crop_size))["params"]


def init_variables(model: nn.Module, key, crop_size=64, *, fast_rng: bool = True) -> Any:
    """``model.init`` on zeros shaped like ``model_inputs(model, 1, crop_size)``, jitted:
    the one way parameters are drawn (the trainer, tests, benchmarks). The draw is not
    sharded: ``train.create_train_state`` lays the parameters out on a mesh
    (``param_shardings``), so the values never depend on the mesh.

    Args:
      model: the U-Net f or the colour network G.
      key: a PRNG key (any impl: ``jax.random.key`` or ``jax.random.PRNGKey``).
      crop_size: H or (H, W) of the dummy inputs; the values do not depend on it.
      fast_rng: draw the parameters with the "rbg" PRNG seeded from ``key``
        (``jax.random.bits(key, (4,), uint32)``, one threefry call). On CPU,
        XLA compiles a threefry-based init very slowly (~40 s for the tiny
        U-Net on 2 cores, minutes for larger nets); rbg compiles in a few
        seconds. Values are deterministic for a given key, backend and JAX
        version, but (unlike threefry) not guaranteed across platforms.
        ``fast_rng=False`` uses ``key`` directly.

    Returns:
      The variables as ``model.init`` returns them (boxed
      ``nn.LogicallyPartitioned`` leaves where the model annotates them;
      ``nn.unbox`` them or pass them straight to ``model.apply``).
    """
    inputs = model_inputs(model, 1, crop_size)

    def init(k):
        if fast_rng:
            k = jax.random.wrap_key_data(jax.random.bits(k, (4,), jnp.uint32), impl="rbg")
        return model.init(k, *[None if a is None else jnp.zeros(a.shape, a.dtype) for a in inputs])

    return jax.jit(init)(key)


def param_shardings(model: nn.Module, mesh) -> Any:
    """NamedShardings of ``model``'s parameters on ``mesh`` (``parallel.create_mesh``) from
    its logical-axis annotations (``unet.default_logical_axis_rules``: split over "fsdp",
    replicated over "data"): the one layout of the parameters, used by the trainer (train
    state, EMA, Adam moments), evaluation and PeriodicEval."""
    rules = unet_lib.default_logical_axis_rules(*parallel.DATA_AXES)
    return parallel.logical_shardings(abstract_variables(model), mesh, rules)["params"]


def count_params(tree: Any) -> int:
    """Number of scalars in a parameter tree (arrays or ShapeDtypeStructs), e.g.
    ``count_params(abstract_params(model))`` for a model's trainable parameters."""
    return int(sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree)))


def auto_start(config, start_noise_factor: Optional[float] = None, start_switch: Optional[int] = None,
               *, used: bool = True) -> tuple[float, int]:
    """The file-dependent start's settings (docs/real-detail.md "The file-dependent sampler"):
    (start_noise_factor, start_switch), each the override or the config's ``sample`` field; the one
    validator. ValueError for a factor <= 0, a switch outside [0, s] (0: never), or -- when
    ``used`` (the auto start is asked for) -- a model without the calibrated condition, whose noise
    it measures."""
    factor = float(config.sample.start_noise_factor if start_noise_factor is None else start_noise_factor)
    switch = int(config.sample.start_switch if start_switch is None else start_switch)
    s = int(config.diffusion.s)
    if not factor > 0:
        raise ValueError(f"start_noise_factor must be > 0, got {factor}")
    if not 0 <= switch <= s:
        raise ValueError(f"start_switch must be in [0, s={s}] (0: never), got {switch}")
    if used and model_condition(config) != "calibrated":
        raise ValueError("start 'auto' measures the noise of the calibrated condition; this is not a "
                         "calibrated model")
    return factor, switch


def is_distilled(config) -> bool:
    """True for a progressively distilled student (``distill.teacher`` set)."""
    return bool(config.distill.teacher)


class SamplerSettings(NamedTuple):
    """How a trained f is sampled: ``dtdm.sample(..., method, num_steps)`` from step ``s``."""

    method: str
    num_steps: Optional[int]   # None: all s steps
    s: int
    label: str                 # e.g. "DTDM-100", "DTDM-93 (s=100)", "DTDM-DDIM-10", "DDPM-100"
    start: Optional[int] = None  # dtdm_ddim: the step sampling starts from (None: s; dtdm.sample)


def sampler_settings(config, method: Optional[str] = None, num_steps: Optional[int] = None, *,
                     other_than_distilled: bool = False, start: Optional[int] = None) -> SamplerSettings:
    """The sampler a DiffRAW config asks for, with explicit overrides: the one validator.

    Defaults come from the config: ``diffusion.objective = "ddpm"`` (a network
    trained on the plain epsilon target, the Fig. 4 baseline) samples with
    "ddpm"; otherwise ``sample.method`` ("dtdm" unless set). ``num_steps``:
    the override, else ``sample.num_steps`` when > 0, else all s steps. The
    paper's test setting is ``method="dtdm", num_steps=93`` with s = 100.
    ValueError for a sampler that does not fit the objective (a DTDM sampler on
    an epsilon network, or the reverse) or a step count outside [1, s].

    A progressively distilled student (``is_distilled``) was trained for one
    sampler, its config's (e.g. DTDM-DDIM-1): any other method or step count is a
    ValueError saying what it was distilled for, unless ``other_than_distilled``
    (the caller then warns; the label says "student of ...").

    ``start``: the step a "dtdm_ddim" sampler starts from (``dtdm.sample``; 1..s, default
    s; docs/real-detail.md): ValueError for another method or a step count above it. A
    start below s is allowed for a distilled student too (its one step then jumps from
    there); the label says "from t=START".
    """
    method, num_steps, s = _resolve_sampler(config, method, num_steps)
    if start is not None:
        start = int(start)
        if method != "dtdm_ddim":
            raise ValueError(f"a start step is a dtdm_ddim option, not {method!r}'s "
                             "(method 'dtdm' starts at num_steps)")
        if not 1 <= start <= s:
            raise ValueError(f"start must be in [1, s={s}], got {start}")
        if (num_steps or s) > start:
            raise ValueError(f"{num_steps or s} steps cannot start from t={start}; "
                             f"ask for at most {start} steps")
        if start == s:
            start = None
    if method == "dtdm":
        label = f"DTDM-{s}" if num_steps is None else f"DTDM-{num_steps} (s={s})"
    elif method == "dtdm_ddim":
        label = f"DTDM-DDIM-{num_steps or s}"
    else:
        label = f"DDPM-{s}"
    if is_distilled(config):
        own_method, own_steps, _ = _resolve_sampler(config, None, None)
        own = f"DTDM-DDIM-{own_steps or s}" if own_method == "dtdm_ddim" else own_method
        if (method, num_steps) == (own_method, own_steps):
            label = f"distilled {label}"
        elif not other_than_distilled:
            raise ValueError(
                f"this model is a student distilled for {own} ({own_steps or s} network evaluation"
                f"{'s' * ((own_steps or s) > 1)}) and runs only that sampler, not {label}; "
                "drop --method/--steps (or pass --other-sampler to run it anyway)")
        else:
            label = f"{label} (student of {own})"
    if start is not None:
        label = f"{label} from t={start}"
    return SamplerSettings(method, num_steps, s, label, start)


def _resolve_sampler(config, method: Optional[str], num_steps: Optional[int]):
    """(method, num_steps or None for all s, s) after the config's defaults; ValueError if invalid."""
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
    return method, num_steps, s

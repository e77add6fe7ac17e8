"""The one sampler builder over a trained U-Net, the test-time colour condition, and
the [0, 1] <-> [-1, 1] image conversions.

Imports only jax, flax, numpy and the project's core modules.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

import jax
import jax.numpy as jnp

from diffraw_jax import dtdm, isp_classic, tiling

if TYPE_CHECKING:  # annotations only
    from diffraw_jax.models import factory


def make_sampler(model, schedule: dtdm.Schedule, settings: "factory.SamplerSettings", *,
                 eta: float = 0.0, plan: Optional[tiling.TilePlan] = None,
                 on_step: Optional[Callable[[], Any]] = None, jit: bool = True,
                 tile_sharding=None) -> Callable:
    """``fn(params, w, c, x, key) -> y_hat`` (``dtdm.sample`` with the U-Net as denoiser).

    ``settings``: the validated sampler (``factory.sampler_settings``): ``dtdm.sample``
    with its ``method`` and ``num_steps`` from step ``s`` (``start`` for dtdm_ddim).

    w: packed RAW [B, H/2, W/2, 4] in [0, 1]; c, x: [B, H, W, 3] in [-1, 1]
    (x = c = G(w) at test time, Algorithm 2 lines 1-2); y_hat: [B, H, W, 3]
    float32 in [-1, 1] (not clipped). ``plan``: sample one frame (B = 1) of the
    plan's size as one sample, evaluating the network in the plan's tiles at
    every step (``tiling.tiled_denoiser``). ``on_step()`` is called on the host
    after every network evaluation of the frame (a progress bar). Jitted unless
    ``jit=False`` (for ``jax.export`` or an outer jit); compiles once per input shape.
    ``tile_sharding``: spread each tile batch over devices (``parallel.tile_sharding``), or
    for a plan of one tile the whole frame in bands of rows (``tiling.frame_sharding``);
    see ``tiling.tiled_denoiser``.
    """
    method, num_steps, s = settings.method, settings.num_steps, settings.s

    def sample_fn(params, w, c, x, key):
        def apply(m, w_, c_, t):
            return model.apply({"params": params}, m, w_, c_, t, train=False)

        if plan is None:
            denoise = lambda m, t: apply(m, w, c, t)  # noqa: E731
        else:
            denoise = tiling.tiled_denoiser(apply, plan, w, c, tile_sharding)
        if on_step is not None:
            inner = denoise

            def denoise(m, t):
                f = inner(m, t)
                jax.debug.callback(lambda _: on_step(), t)
                return f
        return dtdm.sample(denoise, schedule, x, s, key, method=method, num_steps=num_steps, eta=eta,
                           start=settings.start)

    return jax.jit(sample_fn) if jit else sample_fn


def to_model_range(img01: jax.Array) -> jax.Array:
    """[0, 1] sRGB -> [-1, 1] (the diffusion convention), clipped."""
    return jnp.clip(img01, 0.0, 1.0) * 2.0 - 1.0


def to_unit_range(img: jax.Array) -> jax.Array:
    """[-1, 1] -> [0, 1], clipped."""
    return jnp.clip((img + 1.0) / 2.0, 0.0, 1.0)


def make_color_condition(color_model=None, color_params: Any = None) -> Callable:
    """The colour condition c = x of Algorithm 2: ``fn(w, wb_gains=None, ccm=None) -> x``.

    w: planes [B, h, w, 4] in [0, 1]; x: [B, 2h, 2w, 3] in [-1, 1]. G(w) when a
    trained colour network is given (``wb_gains``/``ccm`` are ignored), else the
    classical ISP (white balance ``wb_gains`` [3] or gray world, Malvar demosaic,
    colour matrix ``ccm`` [3, 3] or identity, sRGB curve). Jitted. G's three Haar
    levels need h and w to be multiples of 8 (``inference.camera.pad_planes``).
    """
    if color_model is None:
        return jax.jit(lambda w, wb_gains=None, ccm=None: to_model_range(isp_classic.process(w, wb_gains, ccm)))
    return jax.jit(lambda w, wb_gains=None, ccm=None: to_model_range(
        color_model.apply({"params": color_params}, w)))


def color_condition(color_net=None) -> Callable:
    """``make_color_condition`` of a loaded G: ``color_net`` is a ``weights.LoadedModel``
    of G (anything with ``.model`` and ``.params``), or None for the classical ISP."""
    if color_net is None:
        return make_color_condition()
    return make_color_condition(color_net.model, color_net.params)

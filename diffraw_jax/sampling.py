"""Jit-compiled samplers over a trained U-Net, and the test-time colour condition.

Imports only jax, flax, numpy and the project's core modules.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from diffraw_jax import dtdm, isp_classic


def make_sampler(model, schedule: dtdm.Schedule, s: int, *, method: str = "dtdm",
                 num_steps: int | None = None, eta: float = 0.0) -> Callable:
    """``fn(params, w, c, x, key) -> y_hat``, jitted; compiles once per input shape.

    w: packed RAW [B, H/2, W/2, 4] in [0, 1]; c, x: [B, H, W, 3] in [-1, 1]
    (x = c = G(w) at test time, Algorithm 2 lines 1-2); y_hat: [B, H, W, 3] float32.
    """
    def sample_fn(params, w, c, x, key):
        def denoise(m, t):
            return model.apply({"params": params}, m, w, c, t, train=False)
        return dtdm.sample(denoise, schedule, x, s, key, method=method, num_steps=num_steps, eta=eta)

    return jax.jit(sample_fn)


def to_model_range(img01: jax.Array) -> jax.Array:
    """[0, 1] sRGB -> [-1, 1] (the diffusion convention)."""
    return jnp.clip(img01, 0.0, 1.0) * 2.0 - 1.0


def to_unit_range(img: jax.Array) -> jax.Array:
    """[-1, 1] -> [0, 1], clipped."""
    return jnp.clip((img + 1.0) / 2.0, 0.0, 1.0)


def make_color_condition(color_model=None, color_params: Any = None) -> Callable:
    """``fn(w) -> x`` in [-1, 1]: G(w) when a trained colour network is given,
    else the classical ISP (gray-world white balance, Malvar demosaic, sRGB)."""
    if color_model is None:
        return jax.jit(lambda w: to_model_range(isp_classic.process(w)))
    return jax.jit(lambda w: to_model_range(color_model.apply({"params": color_params}, w)))

"""Parameter initialisation of any Flax model: the one init path.

``init_variables(model, inputs, key)`` is ``jax.jit(model.init)`` on zeros of
the given abstract inputs. The U-Net (``unet.init_variables``), the colour
network G and the config factory (``factory.init_variables``) all draw their
initial parameters through it. Imports only jax (no project modules), so every
model module and the factory can use it without an import cycle.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp

__all__ = ["init_variables"]


def init_variables(model, inputs: Sequence[Optional[Any]], key, *, fast_rng: bool = True,
                   out_shardings=None) -> Any:
    """``model.init`` on zeros shaped like ``inputs``, jitted.

    Args:
      model: a ``flax.linen.Module``.
      inputs: the positional inputs of ``model.__call__`` as
        ``jax.ShapeDtypeStruct`` (anything with ``shape`` and ``dtype``), or
        None for an input the model does not use (passed as None).
        Parameter shapes must not depend on the spatial size, so a small one
        does.
      key: a PRNG key (any impl: ``jax.random.key`` or ``jax.random.PRNGKey``).
      fast_rng: draw the parameters with the "rbg" PRNG seeded from ``key``
        (``jax.random.bits(key, (4,), uint32)``, one threefry call). On CPU,
        XLA compiles a threefry-based init very slowly (~40 s for the tiny
        U-Net on 2 cores, minutes for larger nets); rbg compiles in a few
        seconds. Values are deterministic for a given key, backend and JAX
        version, but (unlike threefry) not guaranteed across platforms.
        ``fast_rng=False`` uses ``key`` directly.
      out_shardings: ``jax.jit`` out_shardings for the variables, e.g.
        ``parallel.logical_shardings(abstract, mesh, rules)``, so parameters
        are created already sharded. The values do not depend on it.

    Returns:
      The variables as ``model.init`` returns them (boxed
      ``nn.LogicallyPartitioned`` leaves where the model annotates them;
      ``nn.unbox`` them or pass them straight to ``model.apply``).
    """
    inputs = tuple(inputs)

    def init(k):
        if fast_rng:
            k = jax.random.wrap_key_data(jax.random.bits(k, (4,), jnp.uint32), impl="rbg")
        return model.init(k, *[None if a is None else jnp.zeros(a.shape, a.dtype) for a in inputs])

    return jax.jit(init, out_shardings=out_shardings)(key)

"""The sampler as a ``jax.export`` artifact (StableHLO) with the parameters baked in.

``export_sampler(pipe, tile_shape, path)`` serialises the pipeline's sampler for
a fixed batch of [th, tw] images as a function of
``(w [B, th/2, tw/2, 4], c [B, th, tw, 3], x [B, th, tw, 3], key_data uint32 [2])``
-> y [B, th, tw, 3] in [-1, 1], exactly ``sampling.make_sampler(...)(params, w,
c, x, jax.random.wrap_key_data(key_data))``; ``load_exported(path)`` runs it
without the model code (any program with jax).
"""
from __future__ import annotations

import os
import tempfile
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from diffraw_jax import sampling
from diffraw_jax.tiling import as_tile_shape


def _avals(tile_shape, batch: int):
    th, tw = as_tile_shape(tile_shape)
    f32 = jnp.float32
    return (jax.ShapeDtypeStruct((batch, th // 2, tw // 2, 4), f32),
            jax.ShapeDtypeStruct((batch, th, tw, 3), f32),
            jax.ShapeDtypeStruct((batch, th, tw, 3), f32),
            jax.ShapeDtypeStruct((2,), jnp.uint32))


def export_sampler(pipe, tile_shape, path: str, *, batch: Optional[int] = None,
                   platforms: Optional[Sequence[str]] = None) -> str:
    """Writes ``pipe``'s (a ``DiffRAWPipeline``) sampler for ``batch`` (default ``pipe.batch``) images of
    ``tile_shape`` to ``path`` (atomically); ``platforms``: e.g. ("cpu", "cuda"),
    default the current backend. Returns ``path``."""
    th, tw = as_tile_shape(tile_shape)
    pipe._check_tile((th, tw))
    fn = sampling.make_sampler(pipe.model, pipe.schedule, pipe.settings, eta=pipe.eta, jit=False)
    params = pipe.params
    exported = jax.export.export(
        jax.jit(lambda w, c, x, k: fn(params, w, c, x, jax.random.wrap_key_data(k))),
        platforms=platforms)(*_avals((th, tw), batch or pipe.batch))
    data = exported.serialize()
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".export-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


class ExportedSampler:
    """A deserialised sampler: ``sampler(w, c, x, key_data) -> y`` (see ``export_sampler``).

    Attributes: ``exported`` (the ``jax.export.Exported``), ``tile_shape`` (th, tw), ``batch``.
    """

    def __init__(self, exported):
        self.exported = exported
        w_aval = exported.in_avals[0]
        self.batch = int(w_aval.shape[0])
        self.tile_shape = (2 * int(w_aval.shape[1]), 2 * int(w_aval.shape[2]))

    def __call__(self, w, c, x, key_data):
        return self.exported.call(jnp.asarray(w, jnp.float32), jnp.asarray(c, jnp.float32),
                                  jnp.asarray(x, jnp.float32), jnp.asarray(key_data, jnp.uint32))


def load_exported(path: str) -> ExportedSampler:
    """Deserialises an ``export_sampler`` file; runs without the model code."""
    with open(path, "rb") as f:
        return ExportedSampler(jax.export.deserialize(bytearray(f.read())))

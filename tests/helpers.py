"""Plain helpers shared by the test modules and by the scripts they run in subprocesses
(``from tests.helpers import ...`` with the repository on PYTHONPATH). Fixtures (the tiny
trained model, ``run_py``, ``compare_devices``) are in conftest.py; no test module imports
another."""
import os

import jax
import jax.numpy as jnp
import numpy as np

from diffraw_jax import parallel, raw
from diffraw_jax.training import train
from diffraw_jax.models import factory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GCS_BUCKET = "diffraw-test"  # conftest's GCS emulator (tensorstore accepts only valid bucket names)


# ------------------------------------------------------------------ training data and step


def tiny_source(n=12, size=64, seed=0):
    """An in-memory data source with the ZRR example format: ``n`` records of a uint16
    mosaic "raw" [size, size] (codes about 63..1023) and a uint8 "dslr" [size, size, 3]."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        dslr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        base = dslr.astype(np.float64).mean(-1) * 3 + 63
        mosaic = np.clip(base + rng.normal(0, 5, base.shape), 0, 1023).astype(np.uint16)
        out.append({"raw": mosaic, "dslr": dslr, "id": str(i).encode()})
    return out


def fixed_batch(cfg, seed=0):
    """One training batch of ``cfg``'s size: "raw" float32 [B, h/2, h/2, 4] in [0, 1] and
    "dslr" float32 [B, h, h, 3] in [-1, 1], constant on 8x8 blocks (h = data.crop_size)."""
    rng = np.random.default_rng(seed)
    b, h = cfg.data.global_batch_size, cfg.data.crop_size
    y = rng.uniform(-1, 1, (b, h // 8, h // 8, 3))
    y = np.kron(y, np.ones((1, 8, 8, 1)))  # smooth-ish blocks
    return {"raw": jnp.asarray(rng.uniform(0, 1, (b, h // 2, h // 2, 4)), jnp.float32),
            "dslr": jnp.asarray(y, jnp.float32)}


def state_and_step(cfg, mesh):
    """A fresh train state of ``cfg`` on ``mesh``, its jitted train step and the batch sharding."""
    model, tx, sched = factory.create_model(cfg), train.create_optimizer(cfg), factory.create_schedule(cfg)
    state = train.create_train_state(cfg, model, tx, mesh, jax.random.key(cfg.seed))
    sh = jax.tree.map(lambda x: x.sharding, state)
    return state, train.make_train_step(cfg, model, tx, sched, mesh, sh), parallel.batch_sharding(mesh)


# ------------------------------------------------------------------------------ DNG files

WHITE = 1020
# Black level of each canonical plane (R, Gr, Gb, B): distinct, so a wrong
# reordering of rawpy's per-channel levels changes the normalised data.
BLACK = np.array([60, 61, 62, 64])
NEUTRAL = (0.5, 1.0, 1.0 / 3.0)  # as-shot neutral: camera R = G/2, B = G/3 for gray


def write_dng(path, data, pattern="RGGB", *, black=BLACK, white=WHITE, neutral=NEUTRAL, **kw):
    """A DNG via pidng (``diffraw_jax.data.dng_writer.write_dng``); ``black`` per canonical plane (R, Gr, Gb, B),
    written per position of the 2x2 cell. Other keywords (orientation, cfa_dim, cfa_codes,
    linear) go to ``write_dng``."""
    from diffraw_jax.data import dng_writer  # pidng: only the tests that write DNGs load it

    top, left = raw.cfa_offset(pattern)
    cell = [int(black[((r - top) % 2) * 2 + (c - left) % 2]) for r in (0, 1) for c in (0, 1)]
    dng_writer.write_dng(str(path), data, cfa=pattern, black=cell, white=white, neutral=neutral, **kw)
    return path

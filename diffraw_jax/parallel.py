"""The device mesh and shardings, declared once.

Mesh axes: ``("data", "fsdp")``. The batch is split over both axes (every device
holds a different slice of the global batch); parameters, EMA and optimiser
state are split over "fsdp" according to the models' logical partitioning
annotations (``nn.with_logical_partitioning``) and replicated over "data".
With ``fsdp = 1`` this is plain data parallelism.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXES = ("data", "fsdp")


def create_mesh(fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "fsdp") mesh over all (global) devices, Auto axis types."""
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    if fsdp < 1 or n % fsdp:
        raise ValueError(f"mesh.fsdp={fsdp} must be >= 1 and divide the device count {n}")
    return jax.make_mesh((n // fsdp, fsdp), DATA_AXES, axis_types=(AxisType.Auto, AxisType.Auto),
                         devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over every device."""
    return NamedSharding(mesh, P(DATA_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _fit(spec: P, shape: tuple, mesh: Mesh) -> P:
    """Drops a mesh axis from a dimension it does not divide (that leaf is replicated there)."""
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
        out.append(axes if names and dim % size == 0 else None)
    return P(*out)


def logical_shardings(abstract_variables: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Any:
    """NamedShardings for a (possibly boxed) variable tree from its logical annotations.

    ``rules`` map logical axis names to mesh axes, e.g. ``(("conv_out", "fsdp"), ...)``;
    unnamed or unmapped dimensions are replicated, and so is any dimension the mesh
    axis does not divide.
    """
    specs = nn.get_partition_spec(abstract_variables)
    mesh_specs = nn.logical_to_mesh(specs, rules)
    shapes = jax.tree.map(lambda x: x.shape, nn.meta.unbox(abstract_variables))
    return jax.tree.map(lambda s, shp: NamedSharding(mesh, _fit(s, shp, mesh)), mesh_specs, shapes,
                        is_leaf=lambda x: isinstance(x, P))


def global_from_full(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A host array that EVERY process holds in full (the same values) -> the global
    ``jax.Array`` laid out by ``sharding``: each device gets its slice of ``x``. (For data
    each process holds only its share of, see ``input_pipeline.to_global_batch``.)"""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


TILE_AXIS = "tiles"


def tile_sharding(devices: Sequence[jax.Device] | None = None) -> NamedSharding | None:
    """The sharding that spreads a batch of tiles over this process's devices (inference:
    ``tiling.tiled_denoiser``), or None with one local device."""
    devices = list(devices if devices is not None else jax.local_devices())
    if len(devices) < 2:
        return None
    return NamedSharding(Mesh(np.array(devices), (TILE_AXIS,)), P(TILE_AXIS))


def broadcast_bytes(data: bytes) -> bytes:
    """Process 0's ``data`` on every process (two collectives: the length, then the bytes);
    ``data`` itself on one process. Every process must call it; the others' ``data`` is ignored."""
    if jax.process_count() == 1:
        return data
    from jax.experimental import multihost_utils

    n = int(multihost_utils.broadcast_one_to_all(np.int32(len(data))))
    buf = np.zeros(max(n, 1), np.uint8)
    if jax.process_index() == 0:
        buf[:n] = np.frombuffer(data, np.uint8)
    return bytes(np.asarray(multihost_utils.broadcast_one_to_all(buf)).astype(np.uint8)[:n])


# ---------------------------------------------------------------------------
# Processes that must agree (several hosts: one program each).

#: How long ``process_values`` waits for the other processes (they start together).
AGREE_WAIT_S = 600
_exchanges = itertools.count()  # every process calls in the same order: the same keys


def coordination_client():
    """jax.distributed's client of the coordination service (its key-value store and barriers;
    no public name: orbax's multihost helpers reach it the same way)."""
    from jax._src import distributed

    return distributed.global_state.client


def process_values(value: str, wait_s: float = AGREE_WAIT_S) -> list:
    """Every process's ``value`` (a short string), in process order, through jax.distributed's
    key-value store: no device collective, so it works on any backend (CPU without gloo
    included) and a process that never comes is an error after ``wait_s``, not a hang.
    ``[value]`` on one process. Every process must call it, in the same order.
    Raises RuntimeError (one line) when another process does not answer."""
    n, i = jax.process_count(), jax.process_index()
    if n == 1:
        return [value]
    key = f"diffraw/values/{next(_exchanges)}"
    client = coordination_client()
    try:
        client.key_value_set(f"{key}/{i}", value)
        return [client.blocking_key_value_get(f"{key}/{j}", int(wait_s * 1000)) for j in range(n)]
    except Exception as e:  # noqa: BLE001 -- jaxlib's errors: a process that never came
        raise RuntimeError(f"the processes could not compare their values ({' '.join(str(e).split())[:200]})")


def check_processes_agree(role: str = "evaluation", hint: str = "", **values) -> None:
    """ValueError (one line, on every process) when the processes of a multi-process run do
    not all pass the same ``values`` (e.g. config=its JSON, checkpoint_step=6): each is
    hashed and the hashes are exchanged (``process_values``). A no-op on one process.
    ``role`` names the run in the message ("evaluation", "training"); ``hint`` replaces its
    advice (default: the same --config, overrides, --workdir and checkpoint)."""
    if jax.process_count() == 1:
        return
    names = sorted(values)
    mine = [hashlib.sha256(str(values[k]).encode()).hexdigest()[:16] for k in names]
    every = [json.loads(v) for v in process_values(json.dumps(mine))]
    bad = [k for j, k in enumerate(names) if len({e[j] for e in every}) > 1]
    if bad:
        shown = ", ".join(f"{k}={values[k]}" for k in bad if not k.startswith("config"))
        raise ValueError(
            f"the {jax.process_count()} {role} processes disagree on {', '.join(bad)}"
            + (f" (process {jax.process_index()} has {shown})" if shown else "")
            + ": " + (hint or "start every process with the same --config, overrides and --workdir, "
                      "on the same checkpoint"))

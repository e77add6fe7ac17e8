"""Trained models in and out: the one read-only loader, and portable weights.

A *model path* is either

* a **training workdir** (``config.json`` + ``checkpoints/<step>/``, written by
  ``main.py``), or
* a **weights folder** (``manifest.json`` + ``config.json`` + ``params.npz``,
  written by ``export_weights`` / ``diffraw export-weights``): the EMA
  parameters of f and, in ``color_net/`` (a weights folder of its own), of G.
  No optimiser or data-iterator state; plain NumPy arrays, so it loads on any
  device count, with or without orbax.

``load_inference(path)`` returns a ``LoadedModel``: the config, the network, its
schedule (for f), the parameters on the first local device and, when the model
has a trained G, the loaded G. It reads only the parameter subtree of a
checkpoint (never the Adam moments), onto local devices, whatever mesh wrote
it. Loading never writes, renames or moves anything: an unreadable checkpoint
is an error naming its step (``step=`` picks an older one); only the trainer
sets damaged checkpoints aside.

Paths may be local or ``gs://`` (``diffraw_jax.runtime.paths``; read through etils.epath).

Imports jax, flax, numpy and the core modules; orbax (``diffraw_jax.checkpoints.checkpointing``, the
one orbax module) only when a workdir is read.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import uuid
from typing import Any, Optional

import jax
import numpy as np
from etils import epath

from diffraw_jax.runtime import configuration, paths
from diffraw_jax.runtime.paths import as_path
from diffraw_jax.models import factory

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"      # the training config (workdirs and weights folders)
MANIFEST_FILE = "manifest.json"  # weights folders only
PARAMS_FILE = "params.npz"
COLOR_NET_DIR = "color_net"
FORMAT = "diffraw-jax-weights"
FORMAT_VERSION = 1


@dataclasses.dataclass
class LoadedModel:
    """A trained network ready to run.

    Attributes:
      config: the ml_collections ConfigDict it was trained with.
      model: the flax module (``factory.create_model(config)``).
      params: the ``params`` tree (EMA unless ``use_ema=False``) on one local device.
      step: training step of the parameters.
      path: where it was loaded from; ``kind``: "workdir" or "weights".
      schedule: the diffusion schedule (f only; None for G).
      condition: the colour condition it was trained with ("paper" or "calibrated").
      distilled: True for a progressively distilled student (it runs one sampler).
      color_net: the trained G that gives c_test = G(w) (f only; None if there is none).

    Everything the config fixes comes from one ``factory.model_spec`` call at load:
    a caller needs nothing else from ``models.factory`` to run what it loaded.
    """

    config: Any
    model: Any
    params: Any
    step: int
    path: str
    kind: str
    schedule: Any = None
    condition: str = "paper"
    distilled: bool = False
    color_net: Optional["LoadedModel"] = None

    @property
    def num_params(self) -> int:
        return factory.count_params(self.params)

    def sampler_settings(self, method=None, num_steps=None, *,
                         other_than_distilled: bool = False, start=None) -> factory.SamplerSettings:
        return factory.sampler_settings(self.config, method, num_steps,
                                        other_than_distilled=other_than_distilled, start=start)


# ---------------------------------------------------------------------------
# Paths and configs.


def is_weights_folder(path: str) -> bool:
    return (epath.Path(path) / MANIFEST_FILE).is_file()


def load_config(path: str):
    """The ConfigDict of a workdir or weights folder: its ``config.json``, upgraded to the
    current schema (``configuration.upgrade``: defaults for fields it lacks, renamed fields
    moved). ValueError for a field the schema does not know."""
    file = epath.Path(path) / CONFIG_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: {path} is neither a diffraw-jax training "
                                "workdir nor a weights folder")
    try:
        return configuration.upgrade(json.loads(file.read_text()))
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from e


def resolve_color_net_path(config, base: str) -> str:
    """``config.color_net.workdir`` as a path: as given (relative to the current
    directory, or a ``gs://`` URI), else relative to ``base`` (the model path) or its parent."""
    path = config.color_net.workdir
    if not path or epath.Path(path).is_absolute() or epath.Path(path).is_dir():
        return path
    base = as_path(base)
    for root in (base.parent, base):
        for cand in (root / path, root / epath.Path(path).name):
            if cand.is_dir():
                return os.fspath(cand)
    return path


def _is_model_path(path: str) -> bool:
    if not path or is_weights_folder(path):
        return bool(path)
    from diffraw_jax.checkpoints import checkpointing  # orbax: only a workdir needs it

    return epath.Path(checkpointing.checkpoint_dir(path)).is_dir()


def color_net_config(config):
    """The G config implied by a DiffRAW config (task "color_net"), for a G workdir without config.json."""
    cfg = config.copy_and_resolve_references()
    cfg.task = "color_net"
    return cfg


# ---------------------------------------------------------------------------
# Loading.


def _device():
    return jax.local_devices()[0]


def _restore_from_workdir(abstract, workdir: str, use_ema: bool, step: Optional[int]):
    """(params, step) from a workdir's orbax checkpoint, read-only, parameters only."""
    from diffraw_jax.checkpoints import checkpointing  # orbax: only a workdir needs it

    return checkpointing.restore_params(workdir, abstract, use_ema=use_ema, step=step, device=_device())


def _flat_keys(tree) -> dict:
    return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _sha256(path) -> str:
    h = hashlib.sha256()
    with epath.Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_manifest(path: str) -> dict:
    manifest = json.loads((epath.Path(path) / MANIFEST_FILE).read_text())
    if manifest.get("format") != FORMAT or int(manifest.get("version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{path}: not a {FORMAT} folder of version <= {FORMAT_VERSION} "
                         f"(format {manifest.get('format')!r}, version {manifest.get('version')!r})")
    return manifest


def _restore_from_weights(abstract, path: str):
    """(params, step) from a weights folder, checking the sha256 and every shape."""
    manifest = _read_manifest(path)
    file = epath.Path(path) / PARAMS_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found")
    data = file.read_bytes()  # read once: hashed, then parsed
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest["sha256"][PARAMS_FILE]:
        raise ValueError(f"{file} is damaged: sha256 {digest[:12]}... does not match the manifest's "
                         f"{manifest['sha256'][PARAMS_FILE][:12]}...")
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        stored = {k: arrays[k] for k in arrays.files}
    want = _flat_keys(abstract)
    missing, extra = sorted(set(want) - set(stored)), sorted(set(stored) - set(want))
    if missing or extra:
        raise ValueError(f"{file} does not match the configured model: missing {missing[:3]}, "
                         f"unexpected {extra[:3]}")
    for k, a in want.items():
        if tuple(stored[k].shape) != tuple(a.shape):
            raise ValueError(f"{file}: {k} has shape {stored[k].shape}, the model needs {tuple(a.shape)}")
    device = _device()
    treedef = jax.tree_util.tree_structure(abstract)
    params = jax.tree_util.tree_unflatten(  # _flat_keys keeps the flattening order
        treedef, [jax.device_put(stored[k].astype(a.dtype), device) for k, a in want.items()])
    return params, int(manifest["step"])


def _load_one(path: str, config, *, use_ema: bool, step: Optional[int]) -> LoadedModel:
    spec = factory.model_spec(config)
    if is_weights_folder(path):
        if step is not None:
            raise ValueError(f"{path} is a weights folder (one step); step= applies to workdirs")
        params, got = _restore_from_weights(spec.abstract_params, path)
        kind = "weights"
    else:
        params, got = _restore_from_workdir(spec.abstract_params, path, use_ema, step)
        kind = "workdir"
    log.info("loaded %s (%s, step %d, %d parameters)", path, config.task, got, factory.count_params(params))
    return LoadedModel(config=config, model=spec.model, params=params, step=got, path=path, kind=kind,
                       schedule=spec.schedule, condition=spec.condition, distilled=spec.distilled)


def load_color_net(path: str) -> LoadedModel:
    """G from a G workdir or weights folder (``config.json`` fixes its architecture)."""
    config = load_config(path)
    if config.task != "color_net":
        raise ValueError(f"{path} holds a {config.task!r} model, not a colour network")
    return _load_one(path, config, use_ema=bool(config.optim.ema_decay > 0), step=None)


def load_inference(path: str, *, use_ema: Optional[bool] = None, step: Optional[int] = None,
                   color_net: bool = True) -> LoadedModel:
    """Loads a trained model (f with its G, or G alone) for sampling or evaluation.

    Args:
      path: a training workdir or a weights folder.
      use_ema: EMA parameters (default: the config's ``sample.use_ema``; G
        trained without EMA uses its parameters). Weights folders hold one set.
      step: a workdir's checkpoint step (default: the latest).
      color_net: also load the trained G named by the config (a weights
        folder's ``color_net/``, a workdir's ``color_net.workdir``); a missing
        G is not an error (``LoadedModel.color_net`` is then None).

    Raises ConnectionError (a gs:// path whose storage does not answer), FileNotFoundError (nothing there), ValueError (a model that does not
    match its config, a damaged weights file), RuntimeError (an unreadable
    checkpoint; the workdir is left exactly as it was).
    """
    path = os.fspath(path)
    unreachable = paths.unreachable_reason(path)  # before any gs:// read: no retries, no client noise
    if unreachable:
        raise ConnectionError(f"{path}: cannot reach the storage: {unreachable}")
    if not epath.Path(path).is_dir():
        raise FileNotFoundError(f"{path}: no such model folder")
    config = load_config(path)
    if config.task == "color_net":
        return load_color_net(path)
    if use_ema is None:
        use_ema = bool(config.sample.use_ema)
    loaded = _load_one(path, config, use_ema=use_ema, step=step)
    if color_net:
        loaded.color_net = find_color_net(config, path)
    return loaded


def find_color_net(config, path: str) -> Optional[LoadedModel]:
    """The trained G a DiffRAW model at ``path`` names, or None (with a warning) if there is none.

    A weights folder keeps G in ``color_net/``; a workdir names G's workdir or
    weights folder in ``config.color_net.workdir`` (relative to the current
    directory, to ``path`` or to its parent).
    """
    if is_weights_folder(path) and not config.color_net.workdir:
        return None
    gpath = (os.fspath(epath.Path(path) / COLOR_NET_DIR) if is_weights_folder(path)
             else resolve_color_net_path(config, path))
    if not _is_model_path(gpath):
        if gpath:
            log.warning("no trained colour network at %r (color_net.workdir of %s)", gpath, path)
        return None
    if (epath.Path(gpath) / CONFIG_FILE).is_file():
        return load_color_net(gpath)
    # A G workdir without config.json: its architecture from f's config.
    return _load_one(gpath, color_net_config(config), use_ema=False, step=None)


# ---------------------------------------------------------------------------
# Export.


def _write_weights(loaded: LoadedModel, out: epath.Path, source: str) -> dict:
    arrays = {k: np.asarray(v) for k, v in _flat_keys(loaded.params).items()}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    (out / PARAMS_FILE).write_bytes(buf.getvalue())
    (out / CONFIG_FILE).write_text(loaded.config.to_json_best_effort(indent=1))
    manifest = {
        "format": FORMAT, "version": FORMAT_VERSION, "task": loaded.config.task,
        "step": loaded.step, "source": source,
        "num_params": loaded.num_params,
        "params_bytes": int(sum(a.nbytes for a in arrays.values())),
        "sha256": {PARAMS_FILE: _sha256(out / PARAMS_FILE)},  # as stored, read back
    }
    if loaded.config.task == "diffraw":
        st = loaded.sampler_settings()
        manifest["sampler"] = {"method": st.method, "num_steps": st.num_steps, "s": st.s, "label": st.label,
                               "start": loaded.config.sample.start or "s",
                               "start_noise_factor": float(loaded.config.sample.start_noise_factor),
                               "start_switch": int(loaded.config.sample.start_switch)}
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    return manifest


def export_weights(path: str, out: str, *, step: Optional[int] = None, use_ema: Optional[bool] = None,
                   sample_method: Optional[str] = None, sample_num_steps: Optional[int] = None,
                   sample_start: Optional[str] = None, start_noise_factor: Optional[float] = None,
                   start_switch: Optional[int] = None) -> dict:
    """Writes the portable weights folder ``out`` for the model at ``path``; returns its manifest.

    ``out`` (local or ``gs://``) must not exist (nothing is ever overwritten); it
    is written to a temporary sibling and renamed into place, so a crash leaves no
    half folder (on GCS the rename copies object by object: a crash during it
    may leave part of ``out`` beside the hidden temporary folder).
    ``sample_method``/``sample_num_steps`` set the sampler the folder asks for
    (stored in its config's ``sample`` fields and the manifest); so do ``sample_start``
    ("" for s, or "auto"), ``start_noise_factor`` (the auto start's, > 0) and ``start_switch``
    (0..s, 0 never; ``dtdm.file_sampler``).
    """
    out = as_path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new folder (weights are never overwritten)")
    loaded = load_inference(path, use_ema=use_ema, step=step)
    if loaded.config.task != "diffraw":
        raise ValueError(f"{path} is a colour network; export the DiffRAW model that uses it")
    config = loaded.config.copy_and_resolve_references()
    if sample_start is not None and sample_start not in ("", "auto"):
        raise ValueError(f"sample_start must be '' (start at s) or 'auto', got {sample_start!r}")
    overrides = {"method": sample_method, "num_steps": None if sample_num_steps is None else int(sample_num_steps),
                 "start": sample_start,
                 "start_noise_factor": None if start_noise_factor is None else float(start_noise_factor),
                 "start_switch": None if start_switch is None else int(start_switch)}
    if any(v is not None for v in overrides.values()):
        with config.unlocked():
            for key, value in overrides.items():
                if value is not None:
                    config.sample[key] = value
        factory.sampler_settings(config)  # validate
        try:
            factory.auto_start(config, used=config.sample.start == "auto")
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    config.color_net.workdir = COLOR_NET_DIR if loaded.color_net is not None else ""
    loaded = dataclasses.replace(loaded, config=config)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir()  # mode 0777 less the umask: a release is readable like any folder
    try:
        manifest = _write_weights(loaded, tmp, os.fspath(path))
        if loaded.color_net is not None:
            (tmp / COLOR_NET_DIR).mkdir()
            manifest["color_net"] = _write_weights(loaded.color_net, tmp / COLOR_NET_DIR,
                                                   os.fspath(loaded.color_net.path))
            (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
        tmp.rename(out)
    except BaseException:
        try:
            if tmp.exists():
                tmp.rmtree()
        except OSError:
            pass
        raise
    return manifest


def folder_bytes(path: str) -> int:
    """Total size of the files under ``path`` (local or ``gs://``)."""
    # Not Path.walk(): through fsspec it yields gs:// folders without their "gs://".
    return sum(folder_bytes(p) if p.is_dir() else p.stat().length for p in epath.Path(path).iterdir())

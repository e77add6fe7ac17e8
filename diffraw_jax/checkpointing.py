"""Orbax checkpoints of the train state and the Grain iterator.

Layout: ``<workdir>/checkpoints/<step>/{state,data}``. Saves are asynchronous;
the last ``keep`` are kept. ``restore_latest`` (the trainer's resume) walks back
from the newest step when a checkpoint is unreadable (partial write,
corruption), reporting each one it skips and moving it to
``checkpoints_unreadable/``, so a damaged latest checkpoint never ends a run
that has an older one. Only the trainer calls it: evaluation and inference load
through ``diffraw_jax.weights.load_inference``, which never changes a workdir.
The workdir may be local or ``gs://`` (``diffraw_jax.paths``).
"""
from __future__ import annotations

import logging
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from diffraw_jax import weights

log = logging.getLogger(__name__)

UNREADABLE_NOTE = "README.txt"  # in checkpoints_unreadable/


checkpoint_dir = weights.checkpoint_dir  # <workdir>/checkpoints


def create_manager(workdir: str, keep: int = 3, *, read_only: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, read_only=read_only,
        enable_async_checkpointing=not read_only, cleanup_tmp_directories=not read_only)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iterator=None, *, force=False) -> bool:
    """Starts an async save of ``state`` (and the Grain iterator, if given)."""
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
        import grain

        items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return manager.save(step, args=ocp.args.Composite(**items), force=force)


def _set_aside(manager: ocp.CheckpointManager, steps) -> None:
    """Moves unreadable step folders to ``checkpoints_unreadable/`` (kept for inspection,
    out of the manager's way so the run can save those steps again)."""
    if not steps or jax.process_index() != 0:
        return
    root = epath.Path(manager.directory)
    aside = root.parent / f"{root.name}_unreadable"
    aside.mkdir(parents=True, exist_ok=True)
    note = aside / UNREADABLE_NOTE
    if not note.exists():  # also makes the folder exist on GCS, where a rename needs that
        note.write_text(f"Checkpoints the trainer could not restore, moved here from {root.name}/ "
                        "(a step seen twice gets .1, .2, ...). Kept for inspection; safe to delete.\n")
    for step in steps:
        src = root / str(step)
        dst = aside / f"{step}"
        k = 0
        while dst.exists():
            k += 1
            dst = aside / f"{step}.{k}"
        src.rename(dst)
        log.error("moved the unreadable checkpoint of step %d to %s", step, dst)
    manager.reload()


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any, data_iterator=None):
    """Restores the newest readable checkpoint.

    Returns ``(step, state)`` or ``(None, None)`` when there is none. ``abstract_state``
    (``jax.ShapeDtypeStruct`` leaves with shardings) fixes the restored layout; with
    None the tree comes back as saved (nested dicts of arrays). The
    iterator, if given, is restored in place.
    """
    if getattr(getattr(manager, "_options", None), "read_only", False):
        raise ValueError("restore_latest is the trainer's resume (it may move damaged checkpoints "
                         "aside); load read-only with diffraw_jax.weights.load_inference")
    steps = sorted(manager.all_steps(), reverse=True)
    unreadable = []
    weights.ignore_reads_finishing_after_a_failed_restore()
    for step in steps:
        items = {"state": ocp.args.StandardRestore(abstract_state)}  # None: as saved
        if data_iterator is not None:
            import grain

            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        try:
            restored = manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # noqa: BLE001 -- orbax raises many types for damaged files
            log.error("checkpoint at step %d is unreadable (%s: %s); trying the previous one",
                      step, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            unreadable.append(step)
            continue
        _set_aside(manager, unreadable)
        return step, restored["state"]
    if steps:
        raise RuntimeError(f"no readable checkpoint among steps {steps} in {manager.directory}")
    return None, None

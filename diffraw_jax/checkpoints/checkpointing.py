"""Orbax checkpoints, all of them: the trainer's (train state and Grain iterator)
and the read-only restore of a model's parameters for evaluation and inference.

Layout: ``<workdir>/checkpoints/<step>/{state,data}`` (``checkpoint_dir``). The
workdir may be local or ``gs://`` (``diffraw_jax.runtime.paths``).

Two contracts:

* **The trainer's** (``create_manager``, ``save``, ``restore_latest``): saves are
  asynchronous; the last ``keep`` are kept. ``restore_latest`` (the resume) walks
  back from the newest step when a checkpoint is damaged (a partial write, bytes
  that do not parse), reporting each one it skips and moving it to
  ``checkpoints_unreadable/``, so a damaged latest checkpoint never ends a run
  that has an older one. An error of the storage (EIO, permission, unreachable)
  is not damage: the read is retried, then reported (``CheckpointReadError``) and
  nothing is moved. Every process of a multi-process run decides alike (the
  outcomes are gathered) and reloads the manager after a checkpoint is moved.
* **Read-only** (``restore_params``, what ``diffraw_jax.checkpoints.weights.load_inference``
  calls for a workdir): the parameter subtree of one step only (never the Adam
  moments), onto one local device, whatever mesh wrote it. It never writes,
  creates, cleans up or moves anything: an unreadable checkpoint is an error
  naming its step.

Both install ``ignore_reads_finishing_after_a_failed_restore`` (a known asyncio
noise of orbax's failed restores). Imports jax, orbax, etils and, of diffraw_jax,
only ``logs`` and ``paths`` (never ``weights``: weights imports this module, and only
when it reads a workdir, so a weights folder loads without orbax).
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath

from diffraw_jax.runtime import logs
from diffraw_jax.runtime.paths import as_path

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
UNREADABLE_NOTE = "README.txt"  # in checkpoints_unreadable/


def checkpoint_dir(workdir: str) -> str:
    """``<workdir>/checkpoints``: absolute if local, ``gs://...`` as it is."""
    return os.fspath(as_path(workdir) / CHECKPOINTS_DIR)


# ---------------------------------------------------------------------------
# The trainer's: save, resume, set damaged checkpoints aside.


def create_manager(workdir: str, keep: int = 3, *, read_only: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, read_only=read_only,
        enable_async_checkpointing=not read_only, cleanup_tmp_directories=not read_only)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, data=None, *, force=False) -> bool:
    """Starts an async save of ``state`` and, if given, ``data``: the orbax argument that saves
    the data iterator (``input_pipeline.DevicePrefetch.save_args()``; this module never
    imports grain, so the read-only loader of inference does not either)."""
    items = {"state": ocp.args.StandardSave(state)}
    if data is not None:
        items["data"] = data
    return manager.save(step, args=ocp.args.Composite(**items), force=force)


class CheckpointSaveError(RuntimeError):
    """A checkpoint save did not commit (disk full, permission, network): training stops."""


def describe_save_error(error: BaseException) -> str:
    """The cause of a failed save in a few words: disk full, permission denied, read-only
    file system, network, or the error's first line."""
    text = f"{type(error).__name__}: {error}"
    low = text.lower()
    if "no space left" in low or "resource_exhausted" in low or "os_error_code='28'" in low or "enospc" in low:
        return "the disk is full (No space left on device)"
    if "read-only file system" in low or "os_error_code='30'" in low:
        return "the file system is read-only"
    if "permission denied" in low or "permission_denied" in low or "os_error_code='13'" in low:
        return "permission denied"
    if any(k in low for k in ("unavailable", "deadline_exceeded", "connection", "timed out", "timeout")):
        return f"the storage could not be reached ({_first_line(text)})"
    return _first_line(text)


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= 300 else line[:297] + "..."


COMMIT_MARKER = "commit_success.txt"  # orbax's mark of a committed step on gs:// (no atomic rename there)


def remove_unfinished(directory, step: int) -> list:
    """Removes what a save of ``step`` that did not commit left: ``<directory>/<step>.orbax-checkpoint-tmp*``
    (local disks: orbax renames it to ``<step>`` on commit) and, on gs:// (where orbax writes
    ``<step>/`` in place and marks the commit with ``commit_success.txt``), ``<step>/`` when it
    has no such mark. Returns the names removed (those it could remove)."""
    removed = []
    root = epath.Path(directory)
    try:
        candidates = [p for p in root.iterdir() if p.name.startswith(f"{step}.orbax-checkpoint-tmp")]
        in_place = root / str(step)
        if "://" in os.fspath(root) and in_place.exists() and not (in_place / COMMIT_MARKER).exists():
            candidates.append(in_place)
    except (FileNotFoundError, OSError):
        return removed
    for path in candidates:
        try:
            path.rmtree() if path.is_dir() else path.unlink()
            removed.append(path.name)
        except (FileNotFoundError, OSError) as e:
            log.warning("could not remove the unfinished checkpoint %s: %s", path, e)
    return removed


class Saves:
    """The trainer's checkpoint saves: asynchronous, one in flight at a time.

    ``start(step, state, data)`` first finishes the previous save, then starts this
    one; ``poll()`` (at reports) and ``finish()`` (at the end) wait for it. A save is
    logged ("checkpoint step N -> DIR") only once it has committed; one that failed
    raises ``CheckpointSaveError`` naming its cause and the last good step, after
    removing its unfinished folder. Orbax's own error logs of a failed background
    save (absl ERROR records with tracebacks, asyncio's "exception was never
    retrieved") are dropped unless the absl logger is at INFO (``--verbose``).
    """

    def __init__(self, manager: ocp.CheckpointManager):
        self.manager = manager
        self.pending: Optional[int] = None
        self.last_good = manager.latest_step()
        quiet_failed_saves()

    def start(self, step: int, state: Any, data=None) -> None:
        self.finish()
        try:
            save(self.manager, step, state, data, force=True)
        except Exception as e:  # noqa: BLE001 -- orbax raises many types
            self._fail(step, e)
        self.pending = step

    def poll(self) -> None:
        if self.pending is not None and not self.manager.is_saving_in_progress():
            self.finish()

    def finish(self) -> None:
        if self.pending is None:
            return
        step, self.pending = self.pending, None
        try:
            self.manager.wait_until_finished()
            self.manager.check_for_errors()
        except Exception as e:  # noqa: BLE001
            self._fail(step, e)
        self.last_good = step
        log.info("checkpoint step %d -> %s", step, self.manager.directory)

    def _fail(self, step: int, error: BaseException):
        removed = remove_unfinished(self.manager.directory, step) if jax.process_index() == 0 else []
        good = (f"the last good checkpoint is step {self.last_good}" if self.last_good is not None
                else "there is no earlier checkpoint")
        raise CheckpointSaveError(
            f"the checkpoint of step {step} was not saved: {describe_save_error(error)}; training stopped "
            f"({'its unfinished folder was removed; ' if removed else ''}{good} in {self.manager.directory}, "
            "and a rerun resumes from it)") from error


def _is_failed_save_record(record: logging.LogRecord) -> bool:
    """orbax's background-thread error logs of a failed save, and asyncio's reports of its
    failed writes: the trainer reports the failure itself, in one line."""
    msg = record.getMessage()
    if record.name == "asyncio":
        exc = record.exc_info[1] if record.exc_info else None
        return ("exception was never retrieved" in msg.splitlines()[0]
                and exc is not None and any(k in str(exc) for k in ("tensorstore", "OCDBT", "RESOURCE_EXHAUSTED",
                                                                      "No space left", "Permission denied")))
    return ("orbax" in record.pathname and record.levelno >= logging.ERROR
            and (record.exc_info is not None or "fail" in msg.lower() or "raised an exception" in msg))


class _DropFailedSaveNoise(logging.Filter):
    def filter(self, record):
        if logging.getLogger("absl").getEffectiveLevel() <= logging.INFO:  # --verbose: keep everything
            return True
        return not _is_failed_save_record(record)


def quiet_failed_saves() -> None:
    """Installs ``_DropFailedSaveNoise`` on the absl and asyncio loggers (once)."""
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropFailedSaveNoise) for f in logger.filters):
            logger.addFilter(_DropFailedSaveNoise())


class CheckpointReadError(RuntimeError):
    """A checkpoint could not be read because of the storage (an I/O error, permission,
    unreachable), not its bytes: nothing was set aside."""


READ_TRIES = 3
_STORAGE_WORDS = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "PERMISSION_DENIED", "Input/output error",
                  "Permission denied", "Connection reset", "Connection refused", "timed out")


def is_storage_error(error: BaseException) -> bool:
    """True when ``error`` (or an exception it was raised from) is the storage failing rather
    than a checkpoint that does not parse: an OSError other than a missing file, or a
    tensorstore/orbax text naming an OS error code other than ENOENT, unavailability,
    a deadline or a permission."""
    seen = set()
    e = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and not isinstance(e, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
            return True
        text = str(e)
        code = re.search(r"os_error_code='?(\d+)", text)
        if (code and code.group(1) != "2") or any(k in text for k in _STORAGE_WORDS):
            return True
        e = e.__cause__ or e.__context__
    return False


def _parse_metadata(step_dir: epath.Path) -> None:
    """Reads and parses the JSON files of a step (its step metadata, the state's tree
    metadata and the data iterator's files): ValueError / FileNotFoundError for damage,
    OSError for the storage. Reads a few kB; no collective."""
    files = [step_dir / "_CHECKPOINT_METADATA", step_dir / "state" / "_METADATA"]
    data = step_dir / "data"
    if data.exists():
        files += sorted(p for p in data.iterdir() if p.name.endswith(".json"))
    for f in files:
        json.loads(f.read_bytes().decode())


def _read_step(manager, step: int, items: dict):
    """('ok', restored) | ('damaged', error) | ('storage', error) for one step: the metadata
    parsed first, then the restore; storage errors retried (READ_TRIES, backing off)."""
    many = jax.process_count() > 1
    for attempt in range(READ_TRIES):
        try:
            _parse_metadata(epath.Path(manager.directory) / str(step))
            if many:  # the restore has barriers inside: first agree that every process can begin it
                return "ok", None
            return "ok", manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # noqa: BLE001 -- orbax raises many types for damaged files
            if not is_storage_error(e):
                return "damaged", e
            if attempt == READ_TRIES - 1:
                return "storage", e
            log.warning("reading the checkpoint of step %d failed (%s); trying again", step, _first_line(str(e)))
            time.sleep(0.5 * 2 ** attempt)


_OUTCOMES = ("ok", "damaged", "storage")


def _agree(outcome: str) -> str:
    """The worst outcome over every process (storage > damaged > ok)."""
    from diffraw_jax import parallel

    return max(parallel.process_values(outcome), key=_OUTCOMES.index)


def _set_aside(manager: ocp.CheckpointManager, steps) -> None:
    """Moves unreadable step folders to ``checkpoints_unreadable/`` (kept for inspection,
    out of the manager's way so the run can save those steps again): process 0 moves them,
    then every process waits for it and reloads its manager."""
    if not steps:
        return
    if jax.process_index() == 0:
        _move_aside(manager, steps)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"diffraw set aside {steps}")
    manager.reload()


def _move_aside(manager: ocp.CheckpointManager, steps) -> None:
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


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any, data=None):
    """Restores the newest readable checkpoint (alike on every process).

    Returns ``(step, state)`` or ``(None, None)`` when there is none. Damaged checkpoints
    (module docstring) newer than the one restored are moved aside; ``CheckpointReadError``
    when the storage fails on one (retried first), ``RuntimeError`` when none is readable. ``abstract_state``
    (``jax.ShapeDtypeStruct`` leaves with shardings) fixes the restored layout; with
    None the tree comes back as saved (nested dicts of arrays). ``data``: the orbax
    argument that restores the data iterator in place
    (``input_pipeline.DevicePrefetch.restore_args()``), if any.
    """
    if getattr(getattr(manager, "_options", None), "read_only", False):
        raise ValueError("restore_latest is the trainer's resume (it may move damaged checkpoints "
                         "aside); load read-only with restore_params (diffraw_jax.checkpoints.weights.load_inference)")
    steps = sorted(manager.all_steps(), reverse=True)
    unreadable = []
    ignore_reads_finishing_after_a_failed_restore()
    items = {"state": ocp.args.StandardRestore(abstract_state)}  # None: as saved
    if data is not None:
        items["data"] = data
    for step in steps:
        outcome, result = _read_step(manager, step, items)
        if jax.process_count() > 1:
            outcome = _agree(outcome)
            if outcome == "ok":  # every process parsed the metadata: restore together
                try:
                    result = manager.restore(step, args=ocp.args.Composite(**items))
                except Exception as e:  # noqa: BLE001
                    outcome, result = ("storage" if is_storage_error(e) else "damaged"), e
                outcome = _agree(outcome)
        if outcome == "storage":
            why = _first_line(f"{type(result).__name__}: {result}") if isinstance(result, BaseException) else \
                "another process could not read it"
            raise CheckpointReadError(
                f"could not read the checkpoint of step {step} in {manager.directory} ({why}; "
                f"{READ_TRIES} tries): the storage failed, not the checkpoint; nothing was moved; "
                "rerun when the storage answers")
        if outcome == "damaged":
            why = (f"{type(result).__name__}: {_first_line(str(result))}" if isinstance(result, BaseException)
                   else "another process could not parse it")
            log.error("checkpoint at step %d is unreadable (%s); trying the previous one", step, why)
            unreadable.append(step)
            continue
        _set_aside(manager, unreadable)
        return step, result["state"]
    if steps:
        raise RuntimeError(f"no readable checkpoint among steps {steps} in {manager.directory}")
    return None, None


# ---------------------------------------------------------------------------
# Read-only: the parameters of one step, for evaluation and inference.


def restore_params(workdir: str, abstract_params: Any, *, use_ema: bool, step: Optional[int] = None,
                   device=None) -> tuple[Any, int]:
    """Read-only: ``(params, step)`` from ``<workdir>/checkpoints/<step>/state``.

    Args:
      workdir: a training workdir (local or ``gs://``).
      abstract_params: the model's ``params`` tree (``jax.ShapeDtypeStruct`` or array
        leaves: only shapes and dtypes are used), e.g. ``models.factory.abstract_params``.
      use_ema: the ``ema_params`` subtree, else ``params``.
      step: a saved step (default: the newest).
      device: where the arrays go (default: the first local device).

    Raises FileNotFoundError (no checkpoint, or not that step), ValueError (saved
    shapes that differ from ``abstract_params``, the first one named) and
    RuntimeError (an unreadable checkpoint, naming the step and an older one to
    load). Nothing under ``workdir`` is ever written, created or moved.
    """
    with logs.quiet_libraries():  # orbax's read-only notices are not the user's concern
        return _restore_params(workdir, abstract_params, use_ema, step, device or jax.local_devices()[0])


def _restore_params(workdir: str, abstract_params: Any, use_ema: bool, step: Optional[int], device):
    directory = checkpoint_dir(workdir)
    # Before any read: a damaged step fails the metadata read as well as the restore.
    ignore_reads_finishing_after_a_failed_restore()
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        read_only=True, create=False, enable_async_checkpointing=False,
        cleanup_tmp_directories=False))
    try:
        steps = sorted(manager.all_steps())
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {directory}")
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise FileNotFoundError(f"no checkpoint of step {step} in {directory} (steps: {steps})")
        field = "ema_params" if use_ema else "params"
        sharding = jax.sharding.SingleDeviceSharding(device)
        target = {field: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                                      abstract_params)}
        restore_args = ocp.checkpoint_utils.construct_restore_args(target)
        mismatch = _shape_mismatch(directory, step, target)
        if mismatch:
            raise ValueError(f"the checkpoint of step {step} in {directory} does not match the "
                             f"configured model ({mismatch})")
        try:
            restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
                item=target, restore_args=restore_args, partial_restore=True)))
        except Exception as e:  # noqa: BLE001 -- orbax raises many types for damaged files
            older = [s for s in steps if s < step]
            hint = f"; load an earlier step with step={older[-1]} (--step {older[-1]})" if older else ""
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise RuntimeError(f"the checkpoint of step {step} in {directory} is unreadable "
                               f"({type(e).__name__}: {first[:300]}); nothing was changed{hint}") from e
        return restored["state"][field], int(step)
    finally:
        manager.close()


def _is_closed_loop_callback(unraisable) -> bool:
    exc = unraisable.exc_value
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


def _is_abandoned_tensorstore_read(record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return (record.getMessage().startswith(("Task exception was never retrieved",
                                            "Future exception was never retrieved"))
            and exc is not None and "tensorstore_spec" in str(exc))


class _DropAbandonedTensorstoreReads(logging.Filter):
    def filter(self, record):
        return not _is_abandoned_tensorstore_read(record)


def ignore_reads_finishing_after_a_failed_restore() -> None:
    """Silences one known noise: when a restore fails on a damaged file, orbax closes
    its event loop while tensorstore reads of other arrays are still in flight; as
    they finish, their callbacks hit the closed loop and Python prints
    "RuntimeError: Event loop is closed" tracebacks (unraisable exceptions), and
    asyncio logs "Task (or Future) exception was never retrieved" for the reads that
    failed too, over the one error line the user should see. Only those are dropped:
    that exact unraisable exception, and asyncio records whose exception is a
    tensorstore read error; everything else still goes to the previous hook and
    to the asyncio logger's handlers."""
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _DropAbandonedTensorstoreReads) for f in asyncio_log.filters):
        asyncio_log.addFilter(_DropAbandonedTensorstoreReads())
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop_callbacks", False):
        return

    def hook(unraisable):
        if not _is_closed_loop_callback(unraisable):
            previous(unraisable)

    hook.drops_closed_loop_callbacks = True
    sys.unraisablehook = hook


def _shape_mismatch(directory: str, step: int, target) -> str:
    """A description of the first leaf whose saved shape differs from ``target``, or ''."""
    try:
        with ocp.PyTreeCheckpointer() as checkpointer:
            meta = checkpointer.metadata(epath.Path(directory) / str(step) / "state")
        tree = getattr(meta, "item_metadata", None)
        tree = getattr(tree, "tree", tree) if tree is not None else getattr(meta, "tree", meta)
        saved = {jax.tree_util.keystr(p): tuple(m.shape) for p, m in
                 jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
                 if hasattr(m, "shape")}
    except Exception:  # noqa: BLE001 -- unreadable metadata: not a shape problem we can name
        return ""
    for p, leaf in jax.tree_util.tree_flatten_with_path(target)[0]:
        k = jax.tree_util.keystr(p)
        if k not in saved:
            return f"{k} is missing" if saved else ""
        if saved[k] != tuple(leaf.shape):
            return f"{k}: saved {saved[k]}, model {tuple(leaf.shape)}"
    return ""

"""One trainer per workdir: a lock file naming its owner, refreshed while it trains.

``<workdir>/trainer.lock`` is a small JSON file: the owner's host, pid, a random
token, when it started and its last heartbeat. The trainer takes it before it
writes anything else to the workdir and deletes it when training ends, however
it ends. A second trainer on the same workdir refuses in one line naming the
owner (``WorkdirLockedError``). Evaluation and inference only read a workdir
and never take it.

The stale-lock rule (what a crashed or killed trainer leaves behind):

* a lock whose owner ran on this host and whose pid is no longer alive is stale;
* a lock whose heartbeat is older than ``stale_after`` seconds (default 10
  minutes; the owner refreshes it every minute from a background thread) is
  stale, whatever host it names (a preempted VM, another machine).

A stale lock is taken over with one warning line naming the old owner.
``break_lock=True`` (``main.py --break_lock``) takes any lock: for a user who
knows its owner is gone. A trainer whose lock was taken from it stops at its
next checkpoint (``check``) instead of saving over the new owner's work.

Atomicity: on a local disk the lock is created with ``O_CREAT | O_EXCL`` under
an ``flock`` of ``.trainer.lock.guard``, so of any number of trainers started at
once exactly one gets it. On ``gs://`` (no exclusive create through epath) the
trainer writes its token, waits ``settle`` seconds and reads it back: the last
writer wins and every other writer sees a foreign token and refuses.

Only process 0 of a multi-process job holds the lock; the trainer shares the
outcome with the other processes. Imports only the standard library and etils.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from typing import Optional

from diffraw_jax.runtime import paths, processes

log = logging.getLogger(__name__)

LOCK_FILE = "trainer.lock"
GUARD_FILE = ".trainer.lock.guard"
STALE_AFTER_S = 600.0
HEARTBEAT_EVERY_S = 60.0
SETTLE_S = 2.0


class WorkdirLockedError(RuntimeError):
    """Another trainer holds the workdir (or took it from this one)."""


def _now() -> float:
    return time.time()


def _utc(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def describe(owner: dict) -> str:
    """'pid 123 on host h (since ..., heartbeat 5 s ago)'."""
    age = max(0.0, _now() - float(owner.get("heartbeat", 0)))
    return (f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')} "
            f"(since {_utc(float(owner.get('started', 0)))}, heartbeat {age:.0f} s ago)")


def stale_reason(owner: dict, stale_after: float = STALE_AFTER_S) -> Optional[str]:
    """Why ``owner``'s lock is stale, or None when it is held (the rule in the module docstring)."""
    if owner.get("host") == socket.gethostname() and not processes.pid_alive(int(owner.get("pid", -1))):
        return f"its process {owner.get('pid')} on this host is gone"
    age = _now() - float(owner.get("heartbeat", 0))
    if age > stale_after:
        return f"its heartbeat is {age / 60:.0f} min old (stale after {stale_after / 60:.0f} min)"
    return None


class WorkdirLock:
    """The lock of one workdir. ``acquire`` / ``release``, or use it as a context manager.

    Args:
      workdir: local path or ``gs://`` URI.
      break_lock: take the lock whoever holds it.
      stale_after, heartbeat_every, settle: seconds (the module docstring's rule).
    """

    def __init__(self, workdir, *, break_lock: bool = False, stale_after: float = STALE_AFTER_S,
                 heartbeat_every: float = HEARTBEAT_EVERY_S, settle: float = SETTLE_S):
        self.workdir = paths.as_path(workdir)
        self.path = self.workdir / LOCK_FILE
        self.break_lock = break_lock
        self.stale_after, self.heartbeat_every, self.settle = stale_after, heartbeat_every, settle
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
                      "started": _now(), "heartbeat": _now(), "command": " ".join(sys.argv)[:500]}
        self.held = False
        self.lost_to: Optional[dict] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ---- reading and writing the file ---------------------------------------
    def read(self) -> Optional[dict]:
        """The lock file's owner record, or None when there is no lock (an unreadable file counts as
        a lock of an unknown owner whose heartbeat is its modification time)."""
        try:
            text = self.path.read_text()
        except (FileNotFoundError, OSError):
            if not self.path.exists():
                return None
            text = ""
        try:
            owner = json.loads(text)
            if isinstance(owner, dict) and "token" in owner:
                return owner
        except ValueError:
            pass
        try:
            mtime = self.path.stat().mtime
        except (FileNotFoundError, OSError):
            return None
        return {"host": "?", "pid": -1, "token": "", "started": mtime, "heartbeat": mtime}

    def _text(self) -> str:
        return json.dumps(self.owner, indent=1) + "\n"

    @contextlib.contextmanager
    def _guard(self):
        """An flock serialising acquirers on a local disk; nothing on gs://."""
        if paths.is_uri(self.workdir):
            yield
            return
        import fcntl

        fd = os.open(os.fspath(self.workdir / GUARD_FILE), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _create_local(self) -> bool:
        try:
            fd = os.open(os.fspath(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(self._text())
        return True

    def _write(self) -> None:
        if paths.is_uri(self.path):
            self.path.write_text(self._text())
            return
        tmp = self.path.parent / f".{LOCK_FILE}.{self.owner['token'][:8]}.tmp"
        tmp.write_text(self._text())
        os.replace(os.fspath(tmp), os.fspath(self.path))

    # ---- acquire / release ----------------------------------------------------
    def acquire(self) -> "WorkdirLock":
        """Takes the lock or raises ``WorkdirLockedError`` naming its owner. The workdir is created."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self._guard():
            current = self.read()
            if current is not None:
                why = "--break_lock" if self.break_lock else stale_reason(current, self.stale_after)
                if why is None:
                    raise WorkdirLockedError(
                        f"{self.workdir} is being trained by {describe(current)}; one trainer per workdir. "
                        f"If that trainer is gone, rerun with --break_lock (a lock is stale by itself "
                        f"when its process is gone or its heartbeat is over {self.stale_after / 60:.0f} min old)")
                log.warning("taking over the lock of %s from %s: %s", self.workdir, describe(current), why)
                if not paths.is_uri(self.path):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.fspath(self.path))
            if paths.is_uri(self.path):
                self.owner["heartbeat"] = _now()
                self._write()
                time.sleep(self.settle)
                seen = self.read()
                if seen is None or seen.get("token") != self.owner["token"]:
                    raise WorkdirLockedError(f"{self.workdir} was taken at the same moment by "
                                             f"{describe(seen or {})}; one trainer per workdir")
            elif not self._create_local():
                raise WorkdirLockedError(f"{self.workdir} is being trained by {describe(self.read() or {})}; "
                                         "one trainer per workdir")
        self.held = True
        if self.heartbeat_every > 0:
            self._thread = threading.Thread(target=self._beat, name="workdir-lock-heartbeat", daemon=True)
            self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_every):
            try:
                self.refresh()
            except Exception as e:  # noqa: BLE001 -- a failed heartbeat must not kill training
                log.warning("could not refresh the workdir lock %s: %s", self.path, e)

    def refresh(self) -> None:
        """Rewrites the heartbeat if the lock is still ours; records the new owner otherwise."""
        if not self.held or self.lost_to is not None:
            return
        seen = self.read()
        if seen is None or seen.get("token") != self.owner["token"]:
            self.lost_to = seen or {"host": "?", "pid": "?", "started": 0, "heartbeat": 0}
            log.error("the workdir lock %s was taken by %s", self.path, describe(self.lost_to))
            return
        self.owner["heartbeat"] = _now()
        self._write()

    def check(self) -> None:
        """Raises ``WorkdirLockedError`` when another trainer took the lock (call before each save)."""
        if self.lost_to is None and self.held:
            seen = self.read()
            if seen is None or seen.get("token") != self.owner["token"]:
                self.lost_to = seen or {"host": "?", "pid": "?", "started": 0, "heartbeat": 0}
        if self.lost_to is not None:
            raise WorkdirLockedError(f"the lock of {self.workdir} was taken by {describe(self.lost_to)} "
                                     "(--break_lock or a stale-lock takeover); stopped without saving")

    def release(self) -> None:
        """Stops the heartbeat and deletes the lock file if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if not self.held:
            return
        self.held = False
        try:
            seen = self.read()
            if seen is not None and seen.get("token") == self.owner["token"]:
                self.path.unlink()
        except (FileNotFoundError, OSError) as e:
            log.warning("could not remove the workdir lock %s: %s", self.path, e)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def holder(workdir) -> Optional[dict]:
    """The owner record of ``workdir``'s lock, or None (read-only; for messages and tests)."""
    return WorkdirLock(workdir, heartbeat_every=0).read()


__all__ = ["WorkdirLock", "WorkdirLockedError", "holder", "stale_reason", "describe", "LOCK_FILE"]

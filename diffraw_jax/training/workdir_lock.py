"""One trainer per workdir, on what the storage provides.

* **Local and NFS disks**: ``<workdir>/trainer.lock`` held with ``flock`` for as long
  as the trainer runs. The kernel (or the NFS server, for a client that died) drops
  the lock with its process, so nothing is ever stale: a trainer restarted in a new
  container (same host name, pid 1 again) takes a lock its dead predecessor left,
  whatever pid and host the file names. The file also records its owner (host, pid,
  a random token, start time, command line) for the messages.
* **gs://**: a lease, ``<workdir>/trainer.lock`` written with GCS generation
  preconditions (``ifGenerationMatch``, through tensorstore, as Orbax writes its
  arrays): created only if absent, renewed every ``renew_every`` seconds only if
  still at the generation this trainer wrote, taken over only when its last renewal
  (the holder's clock) is over ``lease_s`` seconds old. Of trainers racing for it,
  exactly one write succeeds. A read or write that cannot reach the storage is
  retried, then reported (``ConnectionError``): never taken for an absent lock.
* Other URI schemes: no lock (a warning says so).

A second trainer is refused in one line naming the owner (``WorkdirLockedError``).
``break_lock=True`` (``main.py --break_lock``) takes the lock from a live owner (the
flock file is replaced by a new one; the lease is overwritten): the old owner finds
at its next ``check`` (before each save) that the lock is no longer its own and
stops without saving. Evaluation and inference only read a workdir and never lock it.

Several processes: process 0 holds the lock (``WorkdirLock``); the others follow
it (``Follower``: the holder's token, read back from the record); the trainer
combines their ``check`` results with a collective, so every process stops alike.
Imports only the standard library, etils and (for gs://) tensorstore.
"""
from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from typing import Optional

from diffraw_jax.runtime import paths

log = logging.getLogger(__name__)

LOCK_FILE = "trainer.lock"
LEASE_S = 600.0  # a gs:// lease not renewed for this long may be taken over
RENEW_EVERY_S = 60.0
RETRIES = 4  # reads/writes of a gs:// lease that cannot reach the storage, before giving up


class WorkdirLockedError(RuntimeError):
    """Another trainer holds the workdir (or took it from this one)."""


def _utc(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def describe(owner: Optional[dict]) -> str:
    """'pid 123 on host h (since 2026-01-01 10:00:00 UTC)' (+ ', renewed 20 s ago' for a lease)."""
    owner = owner or {}
    text = f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}"
    if owner.get("started"):
        text += f" (since {_utc(float(owner['started']))}"
        if owner.get("renewed"):
            text += f", renewed {max(0.0, time.time() - float(owner['renewed'])):.0f} s ago"
        text += ")"
    return text


def _parse(data: bytes) -> dict:
    """The owner record in a lock file's bytes; {} when it is empty or not one (a holder that
    died while writing it: the flock or the lease's generation decides, not the text)."""
    try:
        owner = json.loads(data.decode() or "{}")
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _record(token: str) -> dict:
    now = time.time()
    return {"host": socket.gethostname(), "pid": os.getpid(), "token": token, "started": now,
            "renewed": now, "command": " ".join(sys.argv)[:500]}


def _locked_message(workdir, owner: dict, extra: str = "") -> str:
    return (f"{workdir} is being trained by {describe(owner)}; one trainer per workdir{extra}. "
            "If that trainer is gone and its lock outlived it, rerun with --break_lock")


# ----------------------------------------------------------------- local and NFS disks


class _FlockFile:
    """``trainer.lock`` held with flock on an open descriptor (released with the process)."""

    def __init__(self, path: str):
        self.path = path
        self.fd: Optional[int] = None

    def read(self) -> dict:
        try:
            with open(self.path, "rb") as f:
                return _parse(f.read())
        except FileNotFoundError:
            return {}

    def _same_file(self, fd: int) -> bool:
        try:
            st, cur = os.fstat(fd), os.stat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == (cur.st_dev, cur.st_ino)

    def acquire(self, record: dict, workdir, break_lock: bool) -> None:
        import fcntl

        for _ in range(5):  # the file may change hands (released, broken) between open and flock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                owner = self.read()
                for _ in range(40):  # a holder that has just taken the flock writes its record next
                    if owner.get("token"):
                        break
                    time.sleep(0.05)
                    owner = self.read()
                if not break_lock:
                    raise WorkdirLockedError(_locked_message(workdir, owner, " (its process holds the lock)"))
                log.warning("--break_lock: taking the lock of %s from %s, which still holds it; it stops "
                            "at its next checkpoint", workdir, describe(owner))
                try:
                    os.unlink(self.path)  # the old owner keeps a lock on a file that is no longer the lock
                except FileNotFoundError:
                    pass
                break_lock = False
                continue
            if not self._same_file(fd):  # released and removed by its owner after our open
                os.close(fd)
                continue
            previous = _parse(os.pread(fd, 1 << 16, 0))
            if previous.get("token"):
                log.warning("taking the lock of %s left by %s: that process is gone (its lock went with it)",
                            workdir, describe(previous))
            data = (json.dumps(record, indent=1) + "\n").encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
            self.fd = fd
            return
        raise WorkdirLockedError(f"{workdir}: the lock changed hands 5 times while this trainer tried to "
                                 "take it; one trainer per workdir")

    def held(self) -> bool:
        return self.fd is not None and self._same_file(self.fd)

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            if self._same_file(fd):
                os.unlink(self.path)
        except OSError as e:
            log.warning("could not remove the workdir lock %s: %s", self.path, e)
        finally:
            os.close(fd)  # drops the flock


# ------------------------------------------------------------------------- gs:// leases


def _transient(error: BaseException) -> bool:
    text = str(error)
    return isinstance(error, OSError) or any(k in text for k in (
        "UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "INTERNAL", "UNKNOWN", "Connection", "timed out"))


class _GcsLease:
    """A lease object written with generation preconditions (tensorstore's GCS key-value store)."""

    def __init__(self, uri: str, lease_s: float):
        self.uri, self.lease_s = uri, lease_s
        self.generation: Optional[bytes] = None
        self._kv = None

    def _store(self):
        if self._kv is None:
            import tensorstore as ts

            bucket, _, folder = self.uri[len("gs://"):].rsplit("/", 1)[0].partition("/")
            # tensorstore's own retries of a request kept short: this class retries and reports.
            self._kv = ts.KvStore.open({"driver": "gcs", "bucket": bucket, "path": folder + "/" if folder else "",
                                        "gcs_request_retries": {"max_retries": 2, "initial_delay": "0.2s",
                                                                "max_delay": "2s"}}).result()
        return self._kv

    def _retry(self, what: str, fn):
        delay = 0.5
        for attempt in range(RETRIES):
            try:
                return fn()
            except Exception as e:  # noqa: BLE001 -- tensorstore raises ValueError with a status text
                if not _transient(e):
                    raise
                if attempt == RETRIES - 1:
                    raise ConnectionError(f"could not {what} {self.uri} ({str(e).splitlines()[0][:200]}) after "
                                          f"{RETRIES} tries") from e
                time.sleep(delay)
                delay *= 2

    def read(self) -> tuple[dict, bytes]:
        """(owner record or {} when absent, the object's generation)."""
        r = self._retry("read the lock", lambda: self._store().read(LOCK_FILE).result())
        return (_parse(r.value) if r.state == "value" else {}), r.stamp.generation

    def _write(self, record: Optional[dict], if_equal: bytes) -> bytes:
        """The new generation, or b'' when the object was no longer at ``if_equal``. A write whose
        answer was lost and was retried finds its own record there: that counts as written."""
        value = None if record is None else (json.dumps(record, indent=1) + "\n").encode()
        new = self._retry("write the lock", lambda: self._store().write(
            LOCK_FILE, value, if_equal=if_equal).result()).generation
        if not new and record is not None:
            owner, generation = self.read()
            if owner.get("token") == record["token"] and owner.get("renewed") == record["renewed"]:
                return generation
        return new

    def acquire(self, record: dict, workdir, break_lock: bool) -> None:
        """Read, decide, write with the read generation as precondition; when the object changed in
        between (a racing trainer, or the owner's renewal landing during a --break_lock or an expired
        take-over) read again and decide again: a live new owner is refused, --break_lock retries."""
        for _ in range(5):
            owner, generation = self.read()
            if owner or generation not in (b"", b"\x02"):  # \x02: tensorstore's "no such object"
                age = time.time() - float(owner.get("renewed", 0))
                if not break_lock and age <= self.lease_s:
                    raise WorkdirLockedError(_locked_message(
                        workdir, owner, f" (its lease is renewed every minute and expires {self.lease_s / 60:.0f} "
                                        "min after the last renewal)"))
                why = "--break_lock" if break_lock else f"its lease expired {age / 60:.0f} min ago"
                log.warning("taking over the lock of %s from %s: %s", workdir, describe(owner), why)
            new = self._write(record, generation)
            if new:
                self.generation = new
                return
        raise WorkdirLockedError(f"{workdir}: the lock changed hands 5 times while this trainer tried to "
                                 "take it; one trainer per workdir")

    def renew(self, record: dict) -> Optional[dict]:
        """Rewrites the lease if it is still ours; else returns the new owner (no write)."""
        record["renewed"] = time.time()
        new = self._write(record, self.generation)
        if not new:
            return self.read()[0]
        self.generation = new
        return None

    def held(self) -> bool:
        return self.read()[1] == self.generation

    def release(self) -> None:
        if self.generation:
            self._write(None, self.generation)  # deletes it only if it is still ours
            self.generation = None


# ------------------------------------------------------------------------- the lock


class WorkdirLock:
    """The lock of one workdir: ``acquire`` / ``check`` / ``release``, or a context manager.

    Args:
      workdir: local path or ``gs://`` URI.
      break_lock: take the lock from a live owner.
      lease_s, renew_every: seconds (gs:// only; ``renew_every=0``: no renewal thread).
    """

    def __init__(self, workdir, *, break_lock: bool = False, lease_s: float = LEASE_S,
                 renew_every: float = RENEW_EVERY_S):
        self.workdir = paths.as_path(workdir)
        self.path = self.workdir / LOCK_FILE
        self.break_lock = break_lock
        self.renew_every = renew_every
        self.owner = _record(uuid.uuid4().hex)
        uri = os.fspath(self.path)
        if uri.startswith("gs://"):
            self._backend = _GcsLease(uri, lease_s)
        elif paths.is_uri(uri):
            self._backend = None
        else:
            self._backend = _FlockFile(uri)
        self.lost_to: Optional[dict] = None
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._acquired = False

    @property
    def token(self) -> str:
        return self.owner["token"]

    def acquire(self) -> "WorkdirLock":
        """Takes the lock (creating the workdir) or raises ``WorkdirLockedError`` naming its owner;
        ``ConnectionError`` when a gs:// lease cannot be read or written."""
        if not paths.is_uri(self.workdir):  # gs:// has no folders to make
            self.workdir.mkdir(parents=True, exist_ok=True)
        if self._backend is not None:
            self._backend.acquire(self.owner, self.workdir, self.break_lock)
        else:
            log.warning("no workdir lock on %s (only local/NFS disks and gs:// have one): make sure one "
                        "trainer at a time uses it", self.workdir)
        self._acquired = True
        if isinstance(self._backend, _GcsLease) and self.renew_every > 0:
            self._thread = threading.Thread(target=self._renew_loop, name="workdir-lease", daemon=True)
            self._thread.start()
        return self

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_every):
            try:
                self.renew()
            except Exception as e:  # noqa: BLE001 -- retried at the next renewal; the lease outlasts several
                log.warning("could not renew the workdir lease %s: %s", self.path, e)

    def renew(self) -> None:
        """Renews a gs:// lease if it is still ours; records the new owner otherwise."""
        with self._mutex:
            if isinstance(self._backend, _GcsLease) and self.lost_to is None and self._acquired:
                self.lost_to = self._backend.renew(self.owner)
                if self.lost_to is not None:
                    log.error("the workdir lock %s was taken by %s", self.path, describe(self.lost_to))

    def lost(self) -> Optional[str]:
        """None while the lock is this trainer's; else the one line that says who took it."""
        with self._mutex:
            if self.lost_to is None and self._backend is not None and self._acquired:
                try:
                    if not self._backend.held():
                        self.lost_to = _holder(self._backend) or {}
                except ConnectionError as e:  # unknown, not lost: the next check or renewal decides
                    log.warning("could not check the workdir lock %s: %s", self.path, e)
        if self.lost_to is None:
            return None
        return (f"the lock of {self.workdir} was taken by {describe(self.lost_to)} (--break_lock or an "
                "expired lease); stopped without saving")

    def check(self) -> None:
        """Raises ``WorkdirLockedError`` when another trainer took the lock (call before each save)."""
        why = self.lost()
        if why:
            raise WorkdirLockedError(why)

    def release(self) -> None:
        """Stops the renewals and removes the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if not self._acquired:
            return
        self._acquired = False
        if self._backend is not None and self.lost_to is None:
            try:
                self._backend.release()
            except (OSError, ValueError) as e:
                log.warning("could not remove the workdir lock %s: %s", self.path, e)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


class Follower:
    """What a process other than 0 knows of the lock: the holder's ``token``. ``lost()``: None
    while the lock file's record still carries it, else the line naming the new owner."""

    def __init__(self, workdir, token: str):
        self.workdir = paths.as_path(workdir)
        self.token = token
        self._backend = WorkdirLock(workdir, renew_every=0)._backend

    def lost(self) -> Optional[str]:
        if self._backend is None:  # no lock on this storage
            return None
        try:
            owner = _holder(self._backend)
        except ConnectionError as e:  # unknown, not lost
            log.warning("could not check the workdir lock of %s: %s", self.workdir, e)
            return None
        if owner is not None and owner.get("token") == self.token:
            return None
        return (f"the lock of {self.workdir} was taken by {describe(owner)} (--break_lock or an expired lease); "
                "stopped without saving")


def holder(workdir) -> Optional[dict]:
    """The owner record of ``workdir``'s lock, or None when there is no lock file (read-only).
    A flock file left by a dead process still names it: ``WorkdirLock.acquire`` decides."""
    backend = WorkdirLock(workdir, renew_every=0)._backend
    return None if backend is None else _holder(backend)


def _holder(backend) -> Optional[dict]:
    if isinstance(backend, _GcsLease):
        owner, generation = backend.read()
        return owner if owner or generation not in (b"", b"\x02") else None
    if not os.path.exists(backend.path):
        return None
    return backend.read()


__all__ = ["WorkdirLock", "Follower", "WorkdirLockedError", "holder", "describe", "LOCK_FILE"]

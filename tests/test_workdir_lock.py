"""One trainer per workdir (diffraw_jax.training.workdir_lock): races, the stale rule, takeover, loss."""
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time

import pytest

from diffraw_jax.training import workdir_lock as wl


def _race(workdir, start_at, queue, all_tried):
    while time.time() < start_at:
        time.sleep(0.0005)
    try:
        lock = wl.WorkdirLock(workdir, heartbeat_every=0).acquire()
        queue.put(("ok", os.getpid()))
        all_tried.wait(60)  # hold it until every racer has tried, however slowly they start
        lock.release()
    except wl.WorkdirLockedError as e:
        queue.put(("refused", str(e)))


def test_of_trainers_started_at_the_same_moment_exactly_one_gets_the_lock(tmp_path):
    ctx = mp.get_context("fork")
    q, all_tried = ctx.Queue(), ctx.Event()
    start_at = time.time() + 0.5
    procs = [ctx.Process(target=_race, args=(str(tmp_path), start_at, q, all_tried)) for _ in range(6)]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    all_tried.set()
    for p in procs:
        p.join(timeout=30)
    winners = [r for r in results if r[0] == "ok"]
    refused = [r[1] for r in results if r[0] == "refused"]
    assert len(winners) == 1 and len(refused) == 5
    # Each refusal is one line naming the owner.
    assert all("\n" not in m and f"pid {winners[0][1]} on host {socket.gethostname()}" in m for m in refused)
    assert not (tmp_path / wl.LOCK_FILE).exists()  # the winner released it


def test_lock_file_names_the_owner_and_is_removed_on_release(tmp_path):
    with wl.WorkdirLock(tmp_path, heartbeat_every=0) as lock:
        owner = json.loads((tmp_path / wl.LOCK_FILE).read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        assert owner["token"] == lock.owner["token"]
        with pytest.raises(wl.WorkdirLockedError, match="one trainer per workdir"):
            wl.WorkdirLock(tmp_path, heartbeat_every=0).acquire()
    assert not (tmp_path / wl.LOCK_FILE).exists()


def _write_owner(path, **kw):
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": "x" * 32,
             "started": time.time(), "heartbeat": time.time()}
    owner.update(kw)
    (path / wl.LOCK_FILE).write_text(json.dumps(owner))
    return owner


def test_stale_rule_dead_pid_on_this_host_and_old_heartbeat(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_owner(tmp_path, pid=dead.pid)
    assert "is gone" in wl.stale_reason(wl.holder(tmp_path))
    with caplog.at_level("WARNING", logger="diffraw_jax.training.workdir_lock"):
        with wl.WorkdirLock(tmp_path, heartbeat_every=0) as lock:
            assert wl.holder(tmp_path)["token"] == lock.owner["token"]
    assert any("taking over" in r.getMessage() and str(dead.pid) in r.getMessage() for r in caplog.records)

    # Another host, fresh heartbeat: held. Old heartbeat: stale.
    _write_owner(tmp_path, host="other-host", pid=1, heartbeat=time.time() - 60)
    assert wl.stale_reason(wl.holder(tmp_path)) is None
    with pytest.raises(wl.WorkdirLockedError, match="pid 1 on host other-host"):
        wl.WorkdirLock(tmp_path, heartbeat_every=0).acquire()
    _write_owner(tmp_path, host="other-host", pid=1, heartbeat=time.time() - 3600)
    assert "heartbeat is 60 min old" in wl.stale_reason(wl.holder(tmp_path))
    wl.WorkdirLock(tmp_path, heartbeat_every=0).acquire().release()


def test_break_lock_takes_a_live_lock_and_the_old_owner_stops_at_its_next_check(tmp_path):
    first = wl.WorkdirLock(tmp_path, heartbeat_every=0).acquire()
    first.check()  # still ours
    second = wl.WorkdirLock(tmp_path, break_lock=True, heartbeat_every=0).acquire()
    with pytest.raises(wl.WorkdirLockedError, match="was taken by .*stopped without saving"):
        first.check()
    first.release()  # does not delete the new owner's lock
    assert wl.holder(tmp_path)["token"] == second.owner["token"]
    second.release()
    assert wl.holder(tmp_path) is None


def test_heartbeat_thread_refreshes_the_lock(tmp_path):
    with wl.WorkdirLock(tmp_path, heartbeat_every=0.1):
        t0 = wl.holder(tmp_path)["heartbeat"]
        time.sleep(0.5)
        assert wl.holder(tmp_path)["heartbeat"] > t0


def test_a_damaged_lock_file_counts_as_held_until_its_age_says_stale(tmp_path):
    (tmp_path / wl.LOCK_FILE).write_text("{not json")
    with pytest.raises(wl.WorkdirLockedError, match="host \\?"):
        wl.WorkdirLock(tmp_path, heartbeat_every=0).acquire()
    old = time.time() - 7200
    os.utime(tmp_path / wl.LOCK_FILE, (old, old))
    wl.WorkdirLock(tmp_path, heartbeat_every=0).acquire().release()

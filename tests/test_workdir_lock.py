"""One trainer per workdir (diffraw_jax.training.workdir_lock): flock on local disks, a
generation-precondition lease on gs:// (against the GCS emulator), races, takeover, loss."""
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from diffraw_jax.training import workdir_lock as wl
from tests.helpers import GCS_BUCKET, REPO


def _race(workdir, start_at, queue, all_tried):
    while time.time() < start_at:
        time.sleep(0.0005)
    try:
        lock = wl.WorkdirLock(workdir, renew_every=0).acquire()
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
    with wl.WorkdirLock(tmp_path, renew_every=0) as lock:
        owner = json.loads((tmp_path / wl.LOCK_FILE).read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        assert owner["token"] == lock.token
        with pytest.raises(wl.WorkdirLockedError, match="one trainer per workdir"):
            wl.WorkdirLock(tmp_path, renew_every=0).acquire()  # another open file: flock refuses
    assert not (tmp_path / wl.LOCK_FILE).exists()


def _write_record(path, **kw):
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": "x" * 32, "started": time.time(),
             "renewed": time.time()}
    owner.update(kw)
    (path / wl.LOCK_FILE).write_text(json.dumps(owner))
    return owner


@pytest.mark.parametrize("pid", [1, "own"])
def test_a_restart_in_a_new_container_takes_the_lock_its_dead_predecessor_left(tmp_path, caplog, pid):
    # The old container's trainer was killed: its record names this host and pid 1 (or the very
    # pid this process has now), but no process holds the flock. Not refused.
    pid = os.getpid() if pid == "own" else pid
    _write_record(tmp_path, pid=pid)
    with caplog.at_level("WARNING", logger="diffraw_jax.training.workdir_lock"):
        with wl.WorkdirLock(tmp_path, renew_every=0) as lock:
            assert wl.holder(tmp_path)["token"] == lock.token
    assert any("is gone" in r.getMessage() and f"pid {pid} on host" in r.getMessage() for r in caplog.records)


HOLDER = """
import fcntl, json, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"host": "other-container", "pid": 1, "token": "y" * 32,
                         "started": time.time() - 3600, "renewed": time.time() - 3600}).encode())
print("held", flush=True)
sys.stdin.read()
"""


def test_a_lock_held_in_another_pid_namespace_is_refused_until_its_process_dies(tmp_path):
    # A live process (another container: its record says host other-container, pid 1, an hour
    # old) holds the flock: refused whatever the record's age. Killed: the lock goes with it.
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLDER), str(tmp_path / wl.LOCK_FILE)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(wl.WorkdirLockedError) as e:
            wl.WorkdirLock(tmp_path, renew_every=0).acquire()
        assert str(e.value).startswith(f"{tmp_path} is being trained by pid 1 on host other-container")
        assert "\n" not in str(e.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    wl.WorkdirLock(tmp_path, renew_every=0).acquire().release()


def test_break_lock_takes_a_live_lock_and_the_old_owner_and_its_followers_learn_it(tmp_path):
    first = wl.WorkdirLock(tmp_path, renew_every=0).acquire()
    follower = wl.Follower(tmp_path, first.token)  # what process 1 of the first trainer knows
    assert first.lost() is None and follower.lost() is None
    first.check()
    second = wl.WorkdirLock(tmp_path, break_lock=True, renew_every=0).acquire()
    who = f"pid {os.getpid()} on host {socket.gethostname()}"
    with pytest.raises(wl.WorkdirLockedError, match=f"was taken by {who} .*stopped without saving"):
        first.check()
    assert follower.lost().startswith(f"the lock of {tmp_path} was taken by {who}")
    first.release()  # does not remove the new owner's lock
    assert wl.holder(tmp_path)["token"] == second.token
    with pytest.raises(wl.WorkdirLockedError):  # the new owner really holds it
        wl.WorkdirLock(tmp_path, renew_every=0).acquire()
    second.release()
    assert wl.holder(tmp_path) is None


def test_a_damaged_lock_file_that_no_process_holds_is_taken(tmp_path):
    (tmp_path / wl.LOCK_FILE).write_text("{not json")
    wl.WorkdirLock(tmp_path, renew_every=0).acquire().release()


GCS_LEASE = """
import json, multiprocessing as mp, os, sys, time
from diffraw_jax.training import workdir_lock as wl
wd = sys.argv[1]


def wait_for(condition, what, timeout=60):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, what
        time.sleep(0.05)


def race(start_at, q):
    while time.time() < start_at:
        time.sleep(0.0005)
    try:
        lock = wl.WorkdirLock(wd + "/race", renew_every=0).acquire()
        q.put("ok")
        time.sleep(2)
        lock.release()
    except wl.WorkdirLockedError as e:
        q.put("refused: " + str(e))


if __name__ == "__main__":
    # Exactly one of 3 trainers racing for a new lease gets it (generation 0 precondition).
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    start_at = time.time() + 1
    procs = [ctx.Process(target=race, args=(start_at, q)) for _ in range(3)]
    for p in procs:
        p.start()
    results = sorted(q.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
    assert results.count("ok") == 1 and all("one trainer per workdir" in r for r in results if r != "ok"), results

    # Held and renewed: a second trainer is refused; the lease's record names the owner.
    first = wl.WorkdirLock(wd, renew_every=0.2).acquire()
    seen = wl.holder(wd)
    assert seen["token"] == first.token and seen["pid"] == os.getpid(), seen
    wait_for(lambda: wl.holder(wd)["renewed"] > seen["renewed"], "never renewed by its thread")
    try:
        wl.WorkdirLock(wd, renew_every=0).acquire()
        raise AssertionError("a second trainer got a held lease")
    except wl.WorkdirLockedError as e:
        assert f"pid {os.getpid()} on host" in str(e) and "renewed" in str(e), e
    first.check()

    # --break_lock takes it even when the owner renews between the taker's read and its write (the
    # write's generation precondition fails once; the taker reads again and retries).
    second = wl.WorkdirLock(wd, break_lock=True, renew_every=0)
    real_read, reads = second._backend.read, []
    def read_then_owner_renews():
        got = real_read()
        if not reads:
            first.renew()
        reads.append(got)
        return got
    second._backend.read = read_then_owner_renews
    second.acquire()
    assert len(reads) >= 2 and wl.holder(wd)["token"] == second.token, reads
    # The old owner's renewal and check both learn it; release keeps the new one.
    wait_for(lambda: first.lost_to is not None, "the old owner's renewal never found the new owner")
    assert first.lost_to["token"] == second.token
    try:
        first.check()
        raise AssertionError("the old owner did not notice")
    except wl.WorkdirLockedError as e:
        assert "was taken by" in str(e) and "stopped without saving" in str(e)
    first.release()
    assert wl.holder(wd)["token"] == second.token
    assert wl.Follower(wd, second.token).lost() is None and wl.Follower(wd, first.token).lost()

    # An expired lease (not renewed for longer than lease_s) is taken over; a live one is not.
    third = wl.WorkdirLock(wd, renew_every=0, lease_s=0.5)
    time.sleep(1.0)
    third.acquire()
    assert wl.holder(wd)["token"] == third.token
    try:
        second.check()
        raise AssertionError("the expired owner did not notice")
    except wl.WorkdirLockedError:
        pass
    third.release()
    assert wl.holder(wd) is None
    print("OK")
"""


def test_gcs_lease_race_renewal_break_and_expiry(gcs_env, tmp_path):
    script = tmp_path / "lease.py"
    script.write_text(textwrap.dedent(GCS_LEASE))
    env = dict(os.environ, PYTHONPATH=REPO, **gcs_env)
    r = subprocess.run([sys.executable, str(script), f"gs://{GCS_BUCKET}/locks"], capture_output=True, text=True,
                       env=env, cwd=REPO, timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]


def test_gcs_lease_unreachable_is_an_error_not_an_absent_lock(tmp_path):
    # Nothing listens on the port: the read fails, is retried, then reported; never "no lock".
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = textwrap.dedent("""
        import sys
        from diffraw_jax.training import workdir_lock as wl
        wl.RETRIES = 2
        try:
            wl.WorkdirLock("gs://%s/x", renew_every=0).acquire()
        except ConnectionError as e:
            print("ConnectionError:", e)
        else:
            print("acquired")
    """ % GCS_BUCKET)
    env = dict(os.environ, PYTHONPATH=REPO, TENSORSTORE_GCS_HTTP_URL=f"http://127.0.0.1:{port}",
               GOOGLE_AUTH_TOKEN_FOR_TESTING="x", EPATH_USE_TF="false", STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{port}")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert "ConnectionError: could not read the lock" in r.stdout, r.stdout + r.stderr[-2000:]

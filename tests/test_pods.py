"""Pods: a trainer of 2 processes (jax.distributed on loopback, one CPU device each) survives
preemption, a lost lock, a damaged or flaky checkpoint and hosts given other data (issue 29).

One module fixture runs the pod four times on one workdir, as an operator would meet it,
and the tests below read what each run left (its exit codes, output lines and files):

1. SIGTERM to process 0, then to process 1 two seconds later (a preemption notice);
2. a rerun, with one real EIO (``tests/fault_io.py``) on each process's first read of the
   preempted checkpoint's metadata, to 2 steps further;
3. a rerun after the newest checkpoint's files were overwritten with garbage; once it has
   saved that step again, the workdir's lock is taken from it (``--break_lock`` in this
   test process);
4. a pod whose process 1 reads other training data.
"""
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from diffraw_jax.checkpoints import checkpointing
from diffraw_jax.training import workdir_lock
from tests.helpers import REPO

SCRIPT = """
import os, sys
pid, port, wd, steps, every = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address="127.0.0.1:" + port, num_processes=2, process_id=pid)
from tests import fault_io
fault_io.install()
from configs import test as tc
from diffraw_jax.checkpoints import checkpointing
from diffraw_jax.runtime import logs
from diffraw_jax.training import train, workdir_lock
from tests.helpers import tiny_source
logs.setup(False)
cfg = tc.get_config(); cfg.degradation.enabled = False; cfg.data.crop_size = 32
cfg.train.num_train_steps = steps; cfg.train.checkpoint_every_steps = every; cfg.train.log_every_steps = 1
cfg.train.keep_checkpoints = 100
seed = int(os.environ.get(f"DATA_SEED_{pid}", "0"))
try:
    train.train_and_evaluate(cfg, wd, data_sources=(tiny_source(seed=seed), tiny_source(4)))
except (ValueError, FileNotFoundError, ConnectionError, workdir_lock.WorkdirLockedError,
        checkpointing.CheckpointSaveError, checkpointing.CheckpointReadError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)  # as main.py reports it
    sys.exit(2)
print("trained", flush=True)
"""

LONG = 100000  # steps: a run that only a signal or an error ends
_STARTED = []  # every pod process, killed (SIGKILL: SIGTERM is a preemption notice) when the module ends


class Pod:
    """Two trainer processes; their merged stdout/stderr lines are collected as they come."""

    def __init__(self, tmp, wd, steps, every=2, env_extra=None):
        script = tmp / "pod.py"
        script.write_text(textwrap.dedent(SCRIPT))
        with __import__("socket").socket() as s:
            s.bind(("127.0.0.1", 0))
            port = str(s.getsockname()[1])
        env = dict(os.environ, PYTHONPATH=REPO, **(env_extra or {}))
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=1").strip()
        self.procs = [subprocess.Popen([sys.executable, str(script), str(i), port, str(wd), str(steps), str(every)],
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                       cwd=REPO) for i in range(2)]
        _STARTED.extend(self.procs)
        self.lines = [[], []]
        self.readers = [threading.Thread(target=self._read, args=(i,), daemon=True) for i in range(2)]
        for t in self.readers:
            t.start()

    def _read(self, i):
        for line in self.procs[i].stdout:
            self.lines[i].append(line.rstrip("\n"))

    def wait_line(self, i, pattern, timeout=300):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for line in list(self.lines[i]):
                m = re.search(pattern, line)
                if m:
                    return m
            if self.procs[i].poll() is not None and not self.readers[i].is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"process {i} never printed {pattern!r}:\n" + "\n".join(self.lines[i][-30:]))

    def wait(self, timeout=300):
        """[(returncode, output text)] once both have exited."""
        for p in self.procs:
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                for q in self.procs:
                    q.kill()
                raise
        for t in self.readers:
            t.join(timeout=10)
        return [(p.returncode, "\n".join(lines)) for p, lines in zip(self.procs, self.lines)]


def _latest(wd):
    manager = checkpointing.create_manager(str(wd), read_only=True)
    try:
        return manager.latest_step(), sorted(manager.all_steps())
    finally:
        manager.close()


def _errors(text):
    return [ln for ln in text.splitlines() if ln.startswith("error:")]


@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    """The four runs of the module docstring; each entry records what a test checks."""
    try:
        yield _runs(tmp_path_factory.mktemp("pod"))
    finally:
        for q in _STARTED:
            if q.poll() is None:
                q.kill()


def _runs(tmp):
    wd = tmp / "run"
    runs = {"wd": wd}

    # 1. Preemption notices 2 s apart.
    p = Pod(tmp, wd, LONG)
    for i in range(2):
        p.wait_line(i, rf"step \d+/{LONG} ")
    p.procs[0].send_signal(signal.SIGTERM)
    t0 = time.time()
    time.sleep(2)
    p.procs[1].send_signal(signal.SIGTERM)
    runs["preempt"] = p.wait(timeout=120)
    runs["preempt_seconds"] = time.time() - t0
    runs["preempt_latest"] = _latest(wd)

    # 2. Rerun to 2 steps further; one EIO on each process's first read of that step's metadata.
    saved = runs["preempt_latest"][0]
    if saved is not None:
        p = Pod(tmp, wd, saved + 2, env_extra={"DIFFRAW_FAULT_EIO": f"checkpoints/{saved}/state/_METADATA=1"})
        runs["eio"] = p.wait()
        runs["eio_latest"] = _latest(wd)
        runs["eio_set_aside"] = (wd / "checkpoints_unreadable").exists()

        # 3. The newest checkpoint damaged; the lock taken once that step is saved again.
        newest = runs["eio_latest"][0]
        for root, _, files in os.walk(wd / "checkpoints" / str(newest) / "state"):
            for f in files:
                with open(os.path.join(root, f), "wb") as out:
                    out.write(b"garbage")
        p = Pod(tmp, wd, LONG, every=1)
        try:
            p.wait_line(0, rf"checkpoint step {newest} -> ", timeout=300)
            breaker = workdir_lock.WorkdirLock(wd, break_lock=True, renew_every=0).acquire()
            t0 = time.time()
            runs["broken"] = p.wait(timeout=120)
            runs["broken_seconds"] = time.time() - t0
            runs["breaker"] = breaker.owner
            breaker.release()
        finally:
            for q in p.procs:
                if q.poll() is None:
                    q.kill()
        runs["damaged_step"] = newest
        runs["broken_latest"] = _latest(wd)

    # 4. Process 1 reads other training data.
    other = tmp / "other"
    p = Pod(tmp, other, 2, env_extra={"DATA_SEED_1": "1"})
    runs["mismatch"] = p.wait()
    runs["mismatch_wd_exists"] = other.exists()
    return runs


def test_sigterm_2s_apart_both_exit_0_within_60s_with_one_committed_step(pod):
    (rc0, out0), (rc1, out1) = pod["preempt"]
    assert rc0 == 0 and rc1 == 0, out0[-3000:] + "\n----\n" + out1[-3000:]
    assert pod["preempt_seconds"] < 60
    latest, steps = pod["preempt_latest"]
    stops = [re.search(r"stopping at step (\d+) for preemption", out) for out in (out0, out1)]
    assert all(stops), (out0[-2000:], out1[-2000:])
    assert int(stops[0].group(1)) == int(stops[1].group(1)) == latest  # the same step on both, committed
    assert f"checkpoint step {latest} -> " in out0
    assert "Traceback" not in out0 + out1


def test_rerun_resumes_from_the_preempted_step_and_one_eio_does_not_set_it_aside(pod):
    saved = pod["preempt_latest"][0]
    for rc, out in pod["eio"]:
        assert rc == 0, out[-3000:]
        assert "fault_io: EIO on " in out  # the error really happened, on each process
        assert f"resumed from step {saved}" in out
        assert "unreadable" not in out
    assert pod["eio_latest"][0] == saved + 2
    assert not pod["eio_set_aside"]


def test_damaged_newest_checkpoint_resumes_from_the_previous_on_both_and_is_saved_again(pod):
    damaged = pod["damaged_step"]
    previous = max(s for s in pod["eio_latest"][1] if s < damaged)
    for rc, out in pod["broken"]:
        assert f"checkpoint at step {damaged} is unreadable" in out, out[-3000:]
        assert f"resumed from step {previous}" in out
        assert "StepAlreadyExists" not in out
    assert (pod["wd"] / "checkpoints_unreadable" / str(damaged)).is_dir()  # kept for inspection, once
    assert damaged in pod["broken_latest"][1]  # saved again by the resumed run


def test_a_taken_lock_stops_every_process_within_a_checkpoint_interval_in_one_line(pod):
    breaker = pod["breaker"]
    assert pod["broken_seconds"] < 60
    for rc, out in pod["broken"]:
        errors = _errors(out)
        assert rc == 2 and len(errors) == 1, out[-3000:]
        assert errors[0].startswith(f"error: the lock of {pod['wd']} was taken by pid {breaker['pid']} ")
        assert "Traceback" not in out


def test_a_host_reading_other_data_is_refused_before_the_workdir_exists(pod):
    for rc, out in pod["mismatch"]:
        errors = _errors(out)
        assert rc == 2 and len(errors) == 1, out[-3000:]
        assert "the 2 training processes disagree on train_data" in errors[0]
    assert not pod["mismatch_wd_exists"]

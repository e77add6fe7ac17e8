"""Faults during training end cleanly (#23): a second trainer, a full disk, bad inputs.

The full-disk test mounts a real 3 MB tmpfs (root, Linux); where the machine cannot
mount, it skips and ``test_injected_save_failure_stops_training_in_one_line``
covers the same path on any machine.
"""
import errno
import os
import subprocess
import sys
import textwrap
import time

import pytest

from diffraw_jax.checkpoints import checkpointing
from diffraw_jax.training import train, workdir_lock
from tests.helpers import REPO, tiny_source

SCRIPT = textwrap.dedent("""
    import sys
    from diffraw_jax.checkpoints import checkpointing
    from diffraw_jax.runtime import logs
    from diffraw_jax.training import train, workdir_lock
    from configs import test as tc
    from tests.helpers import tiny_source
    logs.setup(False)
    cfg = tc.get_config()
    cfg.train.num_train_steps = int(sys.argv[2])
    cfg.train.checkpoint_every_steps = 3
    cfg.train.keep_checkpoints = 100
    try:
        train.train_and_evaluate(cfg, sys.argv[1], data_sources=(tiny_source(), tiny_source(4)))
    except (ValueError, FileNotFoundError, workdir_lock.WorkdirLockedError, checkpointing.CheckpointSaveError) as e:
        print(f"error: {e}", file=sys.stderr)  # as main.py reports it
        sys.exit(2)
    print("trained")
""")


def _train(workdir, steps, **kw):
    env = {**os.environ, "PYTHONPATH": REPO}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(workdir), str(steps)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=env, **kw)


def test_two_trainers_started_at_once_exactly_one_trains(tmp_path):
    wd = tmp_path / "wd"
    procs = [_train(wd, 6) for _ in range(2)]
    t0 = time.time()
    ended = {}
    while len(ended) < len(procs) and time.time() - t0 < 900:  # when each one exits
        for i, p in enumerate(procs):
            if i not in ended and p.poll() is not None:
                ended[i] = time.time() - t0
        time.sleep(0.05)
    results = []
    for i, p in enumerate(procs):
        out, err = p.communicate(timeout=60)
        results.append((p.returncode, out, err, ended[i]))
    winners = [r for r in results if r[0] == 0]
    losers = [r for r in results if r[0] != 0]
    assert len(winners) == 1 and len(losers) == 1, [(r[0], r[2][-500:]) for r in results]
    code, _, err, seconds = losers[0]
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith(("WARNING: All log", "I0000"))]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith(f"error: {wd} is being trained by pid ") and "one trainer per workdir" in lines[0]
    assert seconds < winners[0][3]  # refused before the winner finished, not after training
    assert sorted(os.listdir(wd / "checkpoints")) == ["3", "6"]
    assert not (wd / workdir_lock.LOCK_FILE).exists()  # released by the winner
    assert len([f for f in os.listdir(wd) if f.startswith("events.out")]) == 1


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a 3 MB tmpfs here ({r.stderr.strip() or r.returncode}); "
                    "test_injected_save_failure_stops_training_in_one_line covers the save-failure path")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_at_a_save_stops_in_one_line_and_a_rerun_with_space_resumes(small_tmpfs):
    wd = small_tmpfs / "wd"
    p = _train(wd, 30)
    out, err = p.communicate(timeout=900)
    assert p.returncode == 2, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) <= 20 and "Traceback" not in err, err[-3000:]
    (error,) = [ln for ln in lines if ln.startswith("error:")]
    assert "the disk is full (No space left on device)" in error and "the last good checkpoint is step" in error
    failed = int(error.split("the checkpoint of step ")[1].split()[0])
    good = int(error.split("the last good checkpoint is step ")[1].split()[0])
    assert good == failed - 3 and good >= 3
    ckpts = os.listdir(wd / "checkpoints")
    assert not [c for c in ckpts if "tmp" in c]  # the unfinished folder is gone
    assert max(int(c) for c in ckpts) == good
    assert not any(f"checkpoint step {failed} ->" in ln for ln in lines)  # never claimed
    # Earlier checkpoints restore read-only.
    from diffraw_jax.checkpoints import weights

    assert weights.load_inference(str(wd), color_net=False).step == good
    # More space: the rerun resumes from the last good step and finishes.
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], check=True)
    p = _train(wd, failed + 3)
    out, err = p.communicate(timeout=900)
    assert p.returncode == 0 and "trained" in out, err[-3000:]
    assert f"resumed from step {good}" in err


def test_injected_save_failure_stops_training_in_one_line(tmp_path, monkeypatch, caplog):
    from configs import test as tc

    cfg = tc.get_config()
    cfg.train.num_train_steps, cfg.train.checkpoint_every_steps = 9, 3
    real = checkpointing.save

    def failing(manager, step, *a, **kw):
        if step == 6:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(manager, step, *a, **kw)

    monkeypatch.setattr(checkpointing, "save", failing)
    with pytest.raises(checkpointing.CheckpointSaveError) as e:
        train.train_and_evaluate(cfg, str(tmp_path / "wd"), data_sources=(tiny_source(), tiny_source(4)))
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("the checkpoint of step 6 was not saved: the disk is full (No space left on device)")
    assert "the last good checkpoint is step 3" in msg
    assert sorted(os.listdir(tmp_path / "wd" / "checkpoints")) == ["3"]
    assert not (tmp_path / "wd" / workdir_lock.LOCK_FILE).exists()  # released on the error too


@pytest.mark.parametrize("error,cause", [
    (ValueError("RESOURCE_EXHAUSTED: ... Failed to write: No space left on device [os_error_code='28']"),
     "the disk is full"),
    (OSError(errno.EACCES, "Permission denied"), "permission denied"),
    (OSError(errno.EROFS, "Read-only file system"), "the file system is read-only"),
    (RuntimeError("UNAVAILABLE: Connection reset by peer"), "the storage could not be reached"),
])
def test_save_failures_are_named_by_cause(error, cause):
    assert checkpointing.describe_save_error(error).startswith(cause)


def test_bad_inputs_are_found_before_anything_is_written(tmp_path):
    from configs import test as tc

    cfg = tc.get_config()
    file = tmp_path / "a_file"
    file.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        train.train_and_evaluate(cfg, str(file), data_sources=(tiny_source(), tiny_source(4)))
    cfg.distill.teacher, cfg.distill.teacher_steps = str(tmp_path / "no_teacher"), 16
    cfg.sample.method, cfg.sample.num_steps = "dtdm_ddim", 8
    wd = tmp_path / "new"
    t0 = time.time()
    with pytest.raises(FileNotFoundError, match="no_teacher"):
        train.train_and_evaluate(cfg, str(wd), data_sources=(tiny_source(), tiny_source(4)))
    assert time.time() - t0 < 10 and not wd.exists()


# ------------------------------------------------ resume: damage against storage errors (#29)


def _two_checkpoints(root):
    """A manager of <root>/checkpoints with steps 1 and 2 of a tiny state {"w": [3] float32 = step}."""
    import numpy as np

    manager = checkpointing.create_manager(str(root))
    for step in (1, 2):
        checkpointing.save(manager, step, {"w": np.full(3, step, np.float32)})
        manager.wait_until_finished()
    return manager


@pytest.mark.parametrize("eio,outcome", [(1, "restored"), (10, "reported")])
def test_an_io_error_on_a_good_checkpoint_is_retried_or_reported_never_set_aside(tmp_path, eio, outcome):
    from tests import fault_io

    manager = _two_checkpoints(tmp_path)
    undo = fault_io.install(f"checkpoints/2/state/_METADATA={eio}")  # real OSError(EIO) from open()
    try:
        if outcome == "restored":
            step, state = checkpointing.restore_latest(manager, None)
            assert step == 2 and state["w"].tolist() == [2, 2, 2]
        else:
            with pytest.raises(checkpointing.CheckpointReadError) as e:
                checkpointing.restore_latest(manager, None)
            msg = str(e.value)
            assert "\n" not in msg and msg.startswith("could not read the checkpoint of step 2 in ")
            assert "Input/output error" in msg and "nothing was moved" in msg
    finally:
        undo()
        manager.close()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]
    assert not (tmp_path / "checkpoints_unreadable").exists()


def test_a_checkpoint_that_does_not_parse_is_set_aside_and_the_previous_restored(tmp_path):
    manager = _two_checkpoints(tmp_path)
    (tmp_path / "checkpoints" / "2" / "state" / "_METADATA").write_text("{garbage")
    step, state = checkpointing.restore_latest(manager, None)
    manager.close()
    assert step == 1 and state["w"].tolist() == [1, 1, 1]
    assert os.listdir(tmp_path / "checkpoints") == ["1"]
    assert (tmp_path / "checkpoints_unreadable" / "2" / "state").is_dir()


@pytest.mark.parametrize("error,storage", [
    (OSError(errno.EIO, "Input/output error"), True),
    (PermissionError(errno.EACCES, "Permission denied"), True),
    (ValueError("UNAVAILABLE: Error reading gs://b/c/2/state/x"), True),
    (ValueError("INTERNAL: read failed [os_error_code='5']"), True),
    (FileNotFoundError(errno.ENOENT, "No such file"), False),  # a file a partial save never wrote
    (ValueError("Expecting property name enclosed in double quotes"), False),
    (ValueError("DATA_LOSS: Error decoding manifest"), False),
])
def test_storage_errors_are_told_from_damage(error, storage):
    assert checkpointing.is_storage_error(error) is storage
    try:  # also when orbax wraps it
        raise RuntimeError("restore failed") from error
    except RuntimeError as wrapped:
        assert checkpointing.is_storage_error(wrapped) is storage

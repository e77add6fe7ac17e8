"""``diffraw`` batches that resume, and output folders checked before any sampling (#23);
temporaries that name their host and pid, left alone by another host (#29)."""
import contextlib
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from diffraw_jax.inference import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDENT = os.path.join(REPO, "pretrained", "distill-1")  # one network evaluation per tile
# This host in temporaries' names: host name + the inode of this process's pid namespace.
HERE = f"{socket.gethostname()}+{os.stat('/proc/self/ns/pid').st_ino}"


def _mosaics(folder, n=3, size=64):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        codes = (63 + rng.uniform(0.1, 0.6, (size, size)) * 957).astype(np.uint16)
        Image.fromarray(codes).save(folder / f"m{i}.png")
    return folder


def _args(src, out, *extra):
    return ["--checkpoint", STUDENT, "--input", str(src), "--output", str(out), "--quiet", "--tile", "0",
            *extra]


def test_a_rerun_skips_finished_outputs_removes_stale_temporaries_and_exits_0(tmp_path, capsys):
    src, out = _mosaics(tmp_path / "in"), tmp_path / "out"
    out.mkdir()
    # The first run was killed after m0: m0.png is finished, a truncated temporary of m1 is left
    # (by a process of this host that is gone), and an older release's pid-less temporary two
    # hours old; another host's fresh temporary (its pid means nothing here) is kept.
    assert cli.main(_args(src / "m0.png", out)) == 0
    first = (out / "m0.png").read_bytes()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out / f".m1.png.{dead.pid}@{HERE}.k3j2h1ab.tmp"
    stale.write_bytes(b"\x89PNG half")
    old = out / ".m2.png.a8f7d6.tmp"
    old.write_bytes(b"\x89PNG")
    os.utime(old, (time.time() - 7200,) * 2)
    live = out / f".m2.png.{os.getppid()}@{HERE}.zzzzzz.tmp"  # a running process's temporary: kept
    live.write_bytes(b"in progress")
    foreign = out / f".m1.png.{dead.pid}@other-host+4026531999.q1w2e3r4.tmp"
    foreign.write_bytes(b"another host is writing this")
    unrelated = out / ".notes.tmp"
    unrelated.write_text("mine")
    capsys.readouterr()

    assert cli.main(_args(src, out)) == 0
    o = capsys.readouterr()
    assert "processed 2, failed 0, skipped 1 (outputs exist; --overwrite replaces them)" in o.out
    assert (out / "m0.png").read_bytes() == first  # kept, not re-rendered
    assert {p.name for p in out.iterdir()} == {"m0.png", "m1.png", "m2.png", live.name, unrelated.name, foreign.name}
    assert "error" not in o.err

    # Everything done: a third run skips all three and still exits 0.
    assert cli.main(_args(src, out)) == 0
    assert "processed 0, failed 0, skipped 3" in capsys.readouterr().out
    # --overwrite renders again.
    assert cli.main(_args(src / "m0.png", out, "--overwrite", "--seed", "5")) == 0
    assert "processed 1, failed 0\n" in capsys.readouterr().out


def test_remove_stale_temporaries_touches_only_dead_runs_files(tmp_path):
    """This host's temporaries go when their pid is gone (any extension); another host's, or an
    older release's (no host: it may be another host's), only when over an hour old."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    other = "node-7.cluster+4026531999"
    names = {f".a.png.{dead.pid}@{HERE}.x1abcdef.tmp": False, f".a.tif.{dead.pid}@{HERE}.x5.tmp": False,
             f".photo@2x.jpg.{dead.pid}@{HERE}.x7.tmp": False,
             f".a.png.{os.getpid()}@{HERE}.x2.tmp": True, f".b.png.{os.getppid()}@{HERE}.x3.tmp": True,
             f".b.jpg.{dead.pid}@{other}.x4.tmp": True, f".c.png.{dead.pid}.x6.tmp": True,
             ".c.png.fresh0.tmp": True, "a.png": True, ".a.png": True, ".notes.tmp": True}
    hours_old = {f".d.tif.{dead.pid}@{other}.y1.tmp": False, f".d.png.{os.getppid()}@{other}.y2.tmp": False,
                 f".e.png.{dead.pid}.y3.tmp": False, ".e.png.y4abcd.tmp": False, ".notes2.tmp": True,
                 f".d.png.{os.getppid()}@{HERE}.y5.tmp": True}
    for n in {**names, **hours_old}:
        (tmp_path / n).write_bytes(b"x")
    for n in hours_old:
        os.utime(tmp_path / n, (time.time() - 2 * 3600,) * 2)
    assert cli.remove_stale_temporaries(str(tmp_path)) == 7
    assert {p.name for p in tmp_path.iterdir()} == {n for n, kept in {**names, **hours_old}.items() if kept}


def test_a_second_host_on_the_same_folder_leaves_an_in_flight_output_alone(tmp_path, monkeypatch):
    """Host A (this process) is writing x.png: its temporary is there (``os.fsync`` is where
    ``write_atomic`` waits for the disk) when host B starts on the same folder: another host
    name and pid namespace (``unshare``), which cannot see A's process. B's cleanup leaves the
    temporary alone and A's output is written."""
    unshare = ["unshare", "--uts", "--pid", "--fork", "--mount-proc"]
    probe = subprocess.run(unshare + ["true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no new UTS and pid namespaces here ({probe.stderr.strip() or probe.returncode}); "
                    "test_remove_stale_temporaries_touches_only_dead_runs_files covers the names")
    host_b = ("import os, socket, sys; socket.sethostname('second-host'); from diffraw_jax.inference import cli; "
              f"print(os.path.exists('/proc/{os.getpid()}'), "
              f"socket.gethostname() + '+' + str(os.stat('/proc/self/ns/pid').st_ino) != {HERE!r}, "
              f"cli.remove_stale_temporaries({str(tmp_path)!r}))")
    seen = {}
    real_fsync = os.fsync

    def fsync_then_host_b(fd):
        real_fsync(fd)
        seen["folder"] = sorted(os.listdir(tmp_path))
        seen["b"] = subprocess.run(unshare + [sys.executable, "-c", host_b], capture_output=True, text=True,
                                   cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, timeout=120)

    monkeypatch.setattr(os, "fsync", fsync_then_host_b)
    cli.write_atomic(str(tmp_path / "x.png"), b"the picture", overwrite=False)
    monkeypatch.undo()
    assert seen["b"].returncode == 0, seen["b"].stderr[-2000:]
    # B sees no process of A's, has another host id, and removed nothing.
    assert seen["b"].stdout.split() == ["False", "True", "0"]
    assert len(seen["folder"]) == 1 and seen["folder"][0].startswith(f".x.png.{os.getpid()}@{HERE}.")
    assert os.listdir(tmp_path) == ["x.png"] and (tmp_path / "x.png").read_bytes() == b"the picture"


def test_output_that_is_a_file_is_refused_in_one_line_before_any_work(tmp_path, capsys):
    src = _mosaics(tmp_path / "in", n=1)
    target = tmp_path / "out.png"
    target.write_bytes(b"not a folder")
    assert cli.main(_args(src, target)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {target}: not a folder (--output names an existing file)"]
    assert target.read_bytes() == b"not a folder"


@contextlib.contextmanager
def _read_only_tmpfs(path):
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here ({r.stderr.strip() or r.returncode}); "
                    "test_unwritable_output_injected covers the path")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)


def test_read_only_output_folder_is_refused_before_sampling(tmp_path, capsys):
    src = _mosaics(tmp_path / "in", n=2)
    with _read_only_tmpfs(tmp_path / "ro") as ro:
        t0 = time.perf_counter()
        assert cli.main(_args(src, ro)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: {ro}: the output folder is not writable (Read-only file system)"]
        assert os.listdir(ro) == []
    assert time.perf_counter() - t0 < 120


def test_unwritable_output_injected(tmp_path, capsys, monkeypatch):
    """The portable fallback of the read-only test: the folder's write check fails."""
    import errno
    import tempfile

    src = _mosaics(tmp_path / "in", n=1)
    real = tempfile.mkstemp

    def refuse(*a, **kw):
        if kw.get("prefix", "").startswith(".diffraw-write-check"):
            raise OSError(errno.EACCES, "Permission denied")
        return real(*a, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    sampled = []
    monkeypatch.setattr(cli, "process_file", lambda *a: sampled.append(a))
    assert cli.main(_args(src, tmp_path / "out")) == 2
    assert capsys.readouterr().err.strip() == (f"error: {tmp_path / 'out'}: the output folder is not "
                                               "writable (Permission denied)")
    assert sampled == []


def _distilled_student(folder):
    """A weights folder of a progressively distilled student (``distill.teacher`` set, DTDM-DDIM-1 from
    s): pretrained/distill-1's weights (since #28 a specialised one-step model, not a distilled one)
    under the config of a student of the last distillation round. The refusals below depend on the
    config only; the loader checks the weights' sha256 and shapes as for any folder."""
    import shutil

    shutil.copytree(STUDENT, folder)
    cfg_path = os.path.join(folder, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["distill"].update(teacher="pretrained/demo", teacher_steps=2, start="s")
    cfg["sample"].update(method="dtdm_ddim", num_steps=1, start="")
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    return str(folder)


def test_a_student_runs_only_the_sampler_it_was_distilled_for(tmp_path, capsys):
    """A student distilled for DTDM-DDIM-1: --method dtdm or --steps 4 is refused in one line naming
    that; --other-sampler runs it with one warning."""
    student = _distilled_student(tmp_path / "student")
    src = _mosaics(tmp_path / "in", n=1)

    def _args(src, out, *extra):  # noqa: F811 -- this test's own checkpoint
        return ["--checkpoint", student, "--input", str(src), "--output", str(out), "--quiet", "--tile", "0",
                *extra]

    for extra in (["--method", "dtdm"], ["--steps", "4"], ["--method", "dtdm_ddim", "--steps", "2"]):
        assert cli.main(_args(src, tmp_path / "out", *extra)) == 2
        err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.startswith("error")]
        assert len(err) == 1 and "a student distilled for DTDM-DDIM-1 (1 network evaluation)" in err[0], err
        assert "--other-sampler" in err[0]
    assert not list((tmp_path / "out").glob("*.png"))
    # Its own sampler, named explicitly, is fine; another one behind the flag warns once.
    assert cli.main(_args(src, tmp_path / "out", "--method", "dtdm_ddim", "--steps", "1")) == 0
    capsys.readouterr()
    assert cli.main(_args(src, tmp_path / "out2", "--steps", "2", "--other-sampler")) == 0
    err = capsys.readouterr().err
    assert err.count("warning: --other-sampler") == 1
    assert "DTDM-DDIM-2 (student of DTDM-DDIM-1)" in err


def test_monochrome_and_truncated_dngs_end_in_one_clear_line_each(tmp_path, capsys):
    pytest.importorskip("pidng")
    from diffraw_jax.data import dng_writer

    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(1)
    codes = (63 + rng.uniform(0.1, 0.6, (64, 64)) * 957).astype(np.uint16)
    dng_writer.write_dng(str(src / "mono.dng"), codes, monochrome=True)
    dng_writer.write_dng(str(src / "full.dng"), codes)
    data = (src / "full.dng").read_bytes()
    (src / "truncated.dng").write_bytes(data[: len(data) // 3])
    (src / "full.dng").unlink()
    assert cli.main(_args(src, tmp_path / "out")) == 1
    o = capsys.readouterr()
    errors = [ln for ln in o.err.splitlines() if ln.startswith("error:")]
    other = [ln for ln in o.err.splitlines() if not ln.startswith("error:") and not ln[:2].isdigit()]
    assert len(errors) == 2 and not other, o.err  # no lines of LibRaw's own, only ours
    (mono,) = [e for e in errors if "mono.dng" in e]
    (trunc,) = [e for e in errors if "truncated.dng" in e]
    assert "a monochrome RAW (one channel, no colour filter array)" in mono and "X-Trans" not in mono
    assert "the file is truncated or damaged (LibRaw: Unexpected end of file)" in trunc
    assert "Input/output error" not in o.err and "Unexpected end of file\n" not in o.err.replace(trunc, "")
    assert "processed 0, failed 2" in o.out


def test_unreachable_gs_checkpoint_says_cannot_reach_in_one_line(tmp_path, capsys, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on: the "storage" does not answer
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    src = _mosaics(tmp_path / "in", n=1)
    out = tmp_path / "out"
    t0 = time.perf_counter()
    assert cli.main(["--checkpoint", "gs://bucket/model", "--input", str(src), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: gs://bucket/model: cannot reach the storage: 127.0.0.1:")
    assert "no such model folder" not in err[0] and err[0].count("gs://bucket/model") == 1
    assert not out.exists()  # no empty output folder left by a run that did nothing
    assert time.perf_counter() - t0 < 30


def test_export_weights_refusal_names_the_output_folder(tmp_path, capsys):
    out = tmp_path / "weights"
    out.mkdir()
    assert cli.main(["export-weights", "--checkpoint", STUDENT, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {out}: exists; choose a new folder (weights are never overwritten)"]


def _main_py(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "main.py"), *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, timeout=300)


def test_main_py_bad_flags_and_a_file_as_workdir_end_in_one_line(tmp_path):
    r = _main_py("--config=configs/distill.py:3", f"--workdir={tmp_path / 'w'}")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: --config=configs/distill.py:3: ValueError: configs/distill.py:<n> takes n in [1, 2, 4, 8], "
        "got 3 (python main.py --helpshort lists the flags)"]
    file = tmp_path / "a_file"
    file.write_text("x")
    r = _main_py("--config=configs/test.py", f"--workdir={file}", "--config.data.data_dir=/nonexistent")
    lines = [ln for ln in r.stderr.strip().splitlines() if not ln[:2].isdigit()]  # drop the log lines
    assert r.returncode == 2 and lines == [f"error: --workdir {file} is a file, not a folder"], r.stderr
    assert file.read_text() == "x"


def test_a_second_run_compiles_nothing_and_the_last_line_gives_seconds_per_megapixel(tmp_path):
    """JAX's persistent compilation cache (DIFFRAW_CACHE_DIR): the second identical run loads every
    program from it; the last log line gives the time per megapixel and the compile counts."""
    src = _mosaics(tmp_path / "in", n=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT"))}
    env.update(PYTHONPATH=REPO, DIFFRAW_CACHE_DIR=str(tmp_path / "cache"))
    last = []
    for run in range(2):
        r = subprocess.run([sys.executable, "-m", "diffraw_jax.inference.cli", *_args(src, tmp_path / f"out{run}")],
                           capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        last.append(r.stderr.strip().splitlines()[-1])
    assert " s for 0.0041 MP: " in last[0] and "s per megapixel" in last[0]
    first_compiled = int(last[0].split("compiled ")[1].split()[0])
    assert first_compiled > 5 and ", 0 from the cache" in last[0]
    assert "(compiled 0 programs, " in last[1] and f"{first_compiled} from the cache" in last[1], last
    same = [np.asarray(Image.open(tmp_path / f"out{run}" / "m0.png")) for run in range(2)]
    assert np.array_equal(*same)


def test_cli_profile_splits_a_run_and_measures_the_network_apart(tmp_path):
    pytest.importorskip("pidng")
    from benchmarks import cli_profile
    from diffraw_jax.data import dng_writer

    rng = np.random.default_rng(2)
    path = dng_writer.write_dng(str(tmp_path / "f.dng"), (63 + rng.uniform(0.1, 0.6, (64, 96)) * 957).astype(np.uint16))
    r = cli_profile.profile(path, STUDENT, tile=32, batch=2)
    assert r["tiles"] > 2 and r["network_calls"] == -(-r["tiles"] // 2) and r["sampler"] == "DTDM-DDIM-1"
    assert set(r["steps_s"]) == {"read", "prepare", "colour condition (G or calibrated)", "sampling (f, tiled)",
                                 "finish (crop, orient)", "PNG encode", "write"}
    assert r["f_s"] > 0 and r["g_s"] is None and r["network_s"] >= r["f_s"]  # calibrated: no G in the path
    assert r["wall_s"] >= sum(r["steps_s"].values()) - 0.05 and r["wall_over_network"] > 0


def test_the_compilation_cache_is_bounded(tmp_path):
    """diffraw's persistent compilation cache stays under its bound: at start, the least recently
    used programs go first, down to 3/4 of the bound; a folder under the bound is left alone."""
    from diffraw_jax.inference import cli

    folder = tmp_path / "cache"
    folder.mkdir()
    for k in range(10):  # 10 programs of 100 bytes, used at times 1000 + k (k = 0 the oldest)
        f = folder / f"prog{k}"
        f.write_bytes(b"x" * 100)
        os.utime(f, (1000 + k, 1000 + k))
    assert cli.prune_compilation_cache(str(folder), 1000) == 0  # 1000 bytes: at the bound, kept
    assert cli.prune_compilation_cache(str(folder), 800) == 4  # down to 600 <= 3/4 of 800
    assert sorted(os.listdir(folder)) == [f"prog{k}" for k in range(4, 10)]
    os.utime(folder / "prog4", (5000, 5000))  # prog4 used again: now the newest
    assert cli.prune_compilation_cache(str(folder), 500) == 3  # 600 -> 300 <= 375
    assert sorted(os.listdir(folder)) == ["prog4", "prog8", "prog9"]

"""A ``gs://`` workdir end to end, against a GCS emulator on loopback (issue #14, item 5).

The fixture starts ``gcp-storage-emulator`` on a free port of 127.0.0.1 with an
in-memory bucket, through ``tests/gcs_emulator.py`` (the same command line and
server, plus the parts of the GCS API the emulator lacks and tensorstore,
ArrayRecord and gcsfs use: generation headers and preconditions, suffix
ranges, moveTo), and kills it at the end. One subprocess, with the emulator's
endpoints in its environment before anything is imported (``EPATH_USE_TF=false``
+ gcsfs for etils.epath, ``TENSORSTORE_GCS_HTTP_URL`` for Orbax's arrays,
``CLOUD_STORAGE_EMULATOR_ENDPOINT`` for ArrayRecord's reader), then:

1. builds a tiny synthetic ZRR locally and copies the TFDS folder to
   ``gs://diffraw-test/tfds`` (the ArrayRecord *writer* opens local files only:
   a dataset for GCS is built locally and copied);
2. runs the documented pod command (docs/training.md) (``main.py --workdir=gs://BUCKET/run
   --config.data.data_dir=gs://BUCKET/tfds --jax_distributed``, tiny overrides,
   one process with an explicit coordinator): 2 steps, data read from GCS;
3. resumes to step 4 with ``train.train_and_evaluate`` and the config.json the
   trainer wrote to the bucket (train state and Grain iterator come back from GCS);
4. loads the model read-only with ``weights.load_inference("gs://...")``
   (nothing in the bucket changes), exports a weights folder to ``gs://`` and
   loads that, and evaluates the test split into ``gs://.../eval/test``;
5. damages the step-4 checkpoint in the bucket: the next run reports it,
   moves it to ``checkpoints_unreadable/`` in the bucket, resumes from step 2.

Proven: every file a run writes (config.json, parameters.txt, checkpoints,
eval tables and grid, weights folders) lands in the bucket, resume, fallback
and the loader read it back, and no ``gs:`` folder appears on local disk.

Not proven here: TensorBoard events. clu's SummaryWriter writes through
TensorFlow's own GCS client (tf.io.gfile), which has no setting for another
endpoint; the test swaps it for a recorder and checks it is given the
``gs://`` workdir unchanged. Nor TensorFlow's GCS client in general (what
etils.epath and TFDS use in production, where TensorFlow is installed), real
GCS (credentials, consistency, speed), or several hosts sharing one bucket
(the multi-host test in test_train.py uses local disk).
"""
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import textwrap

import pytest

from diffraw_jax.checkpoints import checkpointing, weights
from diffraw_jax.runtime import paths
from tests.helpers import GCS_BUCKET as BUCKET, REPO
from tests.readme_commands import TINY, find_commands, substitute


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RUN = """
import json, os, runpy, sys, time
import numpy as np
from clu import metric_writers

T0 = time.perf_counter()
summary_logdirs = []


def mark(name):
    print(f"TIME {name} {time.perf_counter() - T0:.1f}", flush=True)


class NoEvents(metric_writers.MultiWriter):
    # TensorBoard goes through tf.io.gfile, which cannot be pointed at the emulator.
    def __init__(self, logdir):
        summary_logdirs.append(os.fspath(logdir))
        super().__init__([])


metric_writers.SummaryWriter = NoEvents

from etils import epath
from diffraw_jax.data import synthetic_zrr
from tfds_zrr import build

REPO, BUCKET, MAIN_ARGV = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
WD, DATA = f"gs://{BUCKET}/run", f"gs://{BUCKET}/tfds"
out = {}


def listing(path):  # file -> (size, mtime) under path (epath's walk and ** do not serve gs:// here)
    found = {}
    for p in epath.Path(path).iterdir():
        found.update(listing(p) if p.is_dir() else {os.fspath(p): (p.stat().length, p.stat().mtime)})
    return found


def same(a, b):
    import jax
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


# 1. A tiny dataset, built locally, copied to the bucket.
synthetic_zrr.generate("zrr", 4, 2, size=448, workers=1, progress=False)
local = epath.Path(build.build("zrr", "tfds_local").data_dir).parent.parent.parent  # tfds_local/
for root, _, files in local.walk():
    for f in files:
        (epath.Path(DATA) / (root / f).relative_to(local)).write_bytes((root / f).read_bytes())
mark("data")

# 2. The documented pod command (docs/training.md) (main.py), on one host.
sys.argv = MAIN_ARGV
try:
    runpy.run_path(f"{REPO}/main.py", run_name="__main__")
except SystemExit as e:
    assert e.code in (None, 0), e.code
from diffraw_jax.checkpoints import checkpointing, weights
from diffraw_jax.evaluation import evaluate
from diffraw_jax.training import train

out["after_main"] = sorted(checkpointing.create_manager(WD, read_only=True).all_steps())
out["workdir_files"] = sorted(p.name for p in epath.Path(WD).iterdir())
mark("main.py")

# 3. Resume to step 4 from the bucket, with the config the trainer wrote there.
config = weights.load_config(WD)
config.train.num_train_steps = 4
state = train.train_and_evaluate(config, WD)
out["after_resume"] = [int(state.step), sorted(checkpointing.create_manager(WD, read_only=True).all_steps())]
mark("resume")

# 4. The read-only loader, a weights folder on GCS, evaluation into the bucket.
before = listing(WD)
m = weights.load_inference(WD)
out["loaded"] = [m.kind, m.step, same(m.params, state.ema_params)]
out["loader_wrote_nothing"] = bool(before) and before == listing(WD)
manifest = weights.export_weights(WD, f"gs://{BUCKET}/release/tiny")
w = weights.load_inference(f"gs://{BUCKET}/release/tiny")
out["weights"] = [manifest["step"], w.kind, w.step, same(w.params, state.ema_params),
                  sorted(p.name for p in epath.Path(f"gs://{BUCKET}/release").iterdir()),
                  weights.folder_bytes(f"gs://{BUCKET}/release/tiny") > 0]
mark("load+export")
summary = evaluate.evaluate(config, WD)
out["eval"] = [summary["checkpoint_step"], summary["model"],
               sorted(p.name for p in epath.Path(WD, "eval", "test").iterdir())]
mark("eval")

# 5. A damaged latest checkpoint: the resume falls back to step 2 and sets step 4 aside, in the bucket.
for f in listing(f"{WD}/checkpoints/4/state"):
    epath.Path(f).write_bytes(b"garbage")
state = train.train_and_evaluate(config, WD)
out["set_aside"] = [int(state.step), sorted(checkpointing.create_manager(WD, read_only=True).all_steps()),
                    sorted(p.name for p in epath.Path(f"{WD}/checkpoints_unreadable").iterdir())]
mark("set aside")
out["summary_logdirs"] = summary_logdirs
print("RESULT " + json.dumps(out))
"""


def readme_pod_command(bucket: str, port: int) -> list:
    """argv of the documented multi-host command (what each host runs), on this bucket, tiny,
    one process with an explicit coordinator (README: either form)."""
    (gcloud,) = find_commands("gcloud")
    host_cmd = shlex.split(shlex.split(gcloud)[-1].split("&&", 1)[1])
    argv = substitute(host_cmd, {"gs://BUCKET/run": f"gs://{bucket}/run", "gs://BUCKET/tfds": f"gs://{bucket}/tfds",
                                 "configs/zrr.py": os.path.join(REPO, "configs", "zrr.py")})
    assert argv[:2] == ["python", "main.py"] and "--jax_distributed" in argv, argv
    return ["main.py"] + argv[2:] + TINY + [
        "--config.train.num_train_steps=2", "--config.train.checkpoint_every_steps=2",
        f"--coordinator_address=127.0.0.1:{port}", "--num_processes=1", "--process_id=0"]


def test_gs_workdir_trains_resumes_loads_evaluates(gcs_env, tmp_path):
    cwd = tmp_path / "cwd"  # the run's current directory: a gs:// path made local would land here
    cwd.mkdir()
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), **gcs_env)
    argv = json.dumps(readme_pod_command(BUCKET, _free_port()))
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(RUN), REPO, BUCKET, argv], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-5000:]
    (line,) = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
    out = json.loads(line[len("RESULT "):])
    wd = f"gs://{BUCKET}/run"
    assert out["after_main"] == [2]
    assert out["workdir_files"] == ["checkpoints", "config.json", "parameters.txt"]
    assert "JAX process 0 / 1" in r.stderr
    assert out["after_resume"] == [4, [2, 4]]
    assert out["loaded"] == ["workdir", 4, True]
    assert out["loader_wrote_nothing"]
    assert out["weights"] == [4, "weights", 4, True, ["tiny"], True]  # no temporary folder left beside it
    assert out["eval"] == [4, wd, ["metrics.csv", "samples.png", "summary.json", "summary.md"]]
    assert "checkpoint at step 4 is unreadable" in r.stderr
    assert f"moved the unreadable checkpoint of step 4 to {wd}/checkpoints_unreadable/4" in r.stderr
    assert r.stderr.count(f"resumed from step 2 in {wd}") == 2
    assert out["set_aside"] == [4, [2, 4], ["4", checkpointing.UNREADABLE_NOTE]]
    assert out["summary_logdirs"] == [wd] * 3
    # Nothing went to local disk under a "gs:" name.
    for d in (cwd, REPO, tempfile.gettempdir()):
        assert not os.path.exists(os.path.join(d, "gs:")), d
    assert sorted(os.listdir(cwd)) == ["tfds_local", "zrr"]


def test_a_gs_path_is_never_made_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert checkpointing.checkpoint_dir("gs://b/x") == "gs://b/x/checkpoints"
    assert checkpointing.checkpoint_dir("gs://b/x/") == "gs://b/x/checkpoints"
    assert os.fspath(paths.as_path("gs://b/x") / "eval") == "gs://b/x/eval"
    # Local paths: absolute against the current directory, as before.
    assert checkpointing.checkpoint_dir("run") == os.path.join(str(tmp_path), "run", "checkpoints")
    assert checkpointing.checkpoint_dir("a/../run") == os.path.join(str(tmp_path), "run", "checkpoints")
    assert os.fspath(paths.as_path("/abs/run")) == "/abs/run"
    assert os.listdir(tmp_path) == []


UNFINISHED = """
import sys
from etils import epath
from diffraw_jax.checkpoints import checkpointing
root = epath.Path(sys.argv[1])
(root / "6" / "state").mkdir(parents=True, exist_ok=True)  # a save of step 6 that failed midway
(root / "6" / "state" / "_METADATA").write_text("{}")
(root / "3" / "state").mkdir(parents=True, exist_ok=True)  # a committed step
(root / "3" / "state" / "_METADATA").write_text("{}")
(root / "3" / checkpointing.COMMIT_MARKER).write_text("ok")
print("REMOVED", checkpointing.remove_unfinished(root, 6), checkpointing.remove_unfinished(root, 3))
print("LEFT", sorted(p.name for p in root.iterdir()))
"""


def test_a_failed_gs_save_leaves_no_step_folder(gcs_env, tmp_path):
    # On gs:// orbax writes <step>/ in place and marks the commit with commit_success.txt: what a
    # failed save leaves is that folder without the mark, removed like a local tmp folder.
    env = dict(os.environ, PYTHONPATH=REPO, **gcs_env)
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(UNFINISHED), f"gs://{BUCKET}/unfinished/checkpoints"],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "REMOVED ['6'] []" in r.stdout and "LEFT ['3']" in r.stdout, r.stdout + r.stderr[-2000:]

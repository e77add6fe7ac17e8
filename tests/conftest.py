import os
import tempfile

# Tests run on the CPU, whatever accelerator the machine has; multi-device
# tests start their own subprocess with XLA_FLAGS set (they inherit the rest).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compile time dominates these tiny programs on CPU: skip XLA's expensive
# backend passes and cache compiled programs across tests and subprocesses.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "diffraw_jax_test_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import dataclasses  # noqa: E402  (after the environment above: jax reads it on import)
import fcntl  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402

import pytest  # noqa: E402

from tests.helpers import GCS_BUCKET, REPO  # noqa: E402


# ------------------------------------------------------------------ subprocesses


def _run_py(code, env_extra=None, timeout=600):
    """Runs ``code`` (dedented) with this Python in a subprocess at the repository root, the
    repository first on PYTHONPATH; ``env_extra`` is added to the environment (XLA_FLAGS
    appended to the flags set above). Asserts exit 0; returns stdout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    for k, v in (env_extra or {}).items():
        env[k] = (env.get(k, "") + " " + v).strip() if k == "XLA_FLAGS" else v
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                       env=env, cwd=REPO, timeout=timeout)
    assert r.returncode == 0, r.stderr[-4000:]
    return r.stdout


@pytest.fixture(scope="session")
def run_py():
    """``run_py(code, env_extra=None, timeout=600) -> stdout``: ``code`` in a fresh Python."""
    return _run_py


# The harness of compare_devices: ``make_step(devices, fsdp)``, defined by the caller's code,
# returns (train state, jitted step, batch) on a mesh of ``devices`` (FSDP over ``fsdp`` of
# them); each run takes 3 steps with the same key.
_COMPARE_DEVICES = """
import jax, numpy as np
assert jax.device_count() == 8
{make_step}
def run(devices, fsdp):
    state, step, batch = make_step(devices, fsdp)
    losses = []
    for _ in range(3):
        state, m = step(state, batch, jax.random.key(1))
        losses.append(float(m["loss"]))
    return losses, state
l1, state = run(jax.devices()[:1], 1)
assert all(np.isfinite(l1)) and l1[0] > 1e-4, l1
p1 = [np.asarray(x) for x in jax.tree.leaves(state.params)]
for fsdp in (1, 4):
    l8, state = run(jax.devices(), fsdp)
    np.testing.assert_allclose(l8, l1, rtol=2e-4)
    for a, b in zip(p1, jax.tree.leaves(state.params)):
        np.testing.assert_allclose(a, np.asarray(b), rtol=2e-3, atol=2e-5)
    if fsdp == 4:  # some parameters really are split over the fsdp axis
        specs = [x.sharding.spec for x in jax.tree.leaves(state.params)]
        assert any("fsdp" in str(s) for s in specs), specs
print("OK", l1)
"""


@pytest.fixture(scope="session")
def compare_devices():
    """``compare_devices(make_step_code)``: in a subprocess with 8 virtual CPU devices, the
    code (which defines ``make_step(devices, fsdp) -> (state, step, batch)``) is trained 3
    steps on 1 device, then on 8 with FSDP over 1 and over 4: finite, non-zero losses equal
    to rtol 2e-4, parameters to rtol 2e-3 / atol 2e-5, and with FSDP over 4 some parameters
    sharded over the "fsdp" axis."""
    def compare(make_step_code):
        script = _COMPARE_DEVICES.format(make_step=textwrap.dedent(make_step_code))
        out = _run_py(script, {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
        assert "OK" in out
    return compare


# ------------------------------------------------------------ the tiny trained model


@dataclasses.dataclass(frozen=True)
class TinyModel:
    """A tiny DiffRAW model (configs/test.py, D2 off, no G) trained for 6 steps on
    ``tiny_source(), tiny_source(4, seed=1)``, checkpoints at steps 3 and 6.

    workdir: its training workdir, shared by every test of the run: read it, never write
      to it (copy it where a test changes or adds files).
    params, ema_params: the final train state's trees (numpy), as ``train_and_evaluate``
      returned them.
    """
    workdir: str
    params: dict
    ema_params: dict


def _train_tiny_model(root):
    """Trains the tiny model into ``root``/workdir and writes its final trees to
    ``root``/state.msgpack (last: the file marks a finished model)."""
    import jax
    import numpy as np
    from flax import serialization

    from configs import test as test_config
    from diffraw_jax.training import train
    from tests.helpers import tiny_source

    cfg = test_config.get_config()
    cfg.degradation.enabled = False
    state = train.train_and_evaluate(cfg, os.path.join(root, "workdir"),
                                     data_sources=(tiny_source(), tiny_source(4, seed=1)))
    trees = {"params": jax.tree.map(np.asarray, state.params), "ema_params": jax.tree.map(np.asarray, state.ema_params)}
    tmp = os.path.join(root, "state.msgpack.tmp")
    with open(tmp, "wb") as f:
        f.write(serialization.msgpack_serialize(trees))
    os.replace(tmp, os.path.join(root, "state.msgpack"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> TinyModel:
    """The tiny trained model (``TinyModel``), built once per test run. Under pytest-xdist
    the workers share the run's base temporary folder: the first to take the lock trains
    the model there, the others wait and reuse it."""
    from flax import serialization

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root = shared / "tiny_model"
    with open(shared / "tiny_model.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (root / "state.msgpack").exists():
                shutil.rmtree(root, ignore_errors=True)  # a build that failed part-way
                root.mkdir()
                _train_tiny_model(str(root))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    trees = serialization.msgpack_restore((root / "state.msgpack").read_bytes())
    return TinyModel(str(root / "workdir"), trees["params"], trees["ema_params"])


# ------------------------------------------------------------------ a GCS emulator


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def gcs_env(tmp_path_factory):
    """A GCS emulator on loopback with the bucket ``tests.helpers.GCS_BUCKET`` (``tests/gcs_emulator.py``,
    in memory), for the whole session: the environment variables that point every GCS client
    of a new process at it."""
    pytest.importorskip("gcsfs")
    pytest.importorskip("gcp_storage_emulator")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("gcs") / "emulator.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, os.path.join(REPO, "tests", "gcs_emulator.py"), "start", "--host", "127.0.0.1",
             "--port", str(port), "--in-memory", "--default-bucket", GCS_BUCKET, "--quiet"],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/storage/v1/b/{GCS_BUCKET}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the GCS emulator did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield {"EPATH_USE_TF": "false", "STORAGE_EMULATOR_HOST": url,  # etils.epath -> fsspec/gcsfs
               "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # no bucket-layout lookups (need credentials)
               "TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "x",  # orbax's arrays
               "CLOUD_STORAGE_EMULATOR_ENDPOINT": url}  # ArrayRecord's reader (google-cloud-cpp)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()



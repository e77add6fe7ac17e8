"""A frame's tiles spread over every local device give the same picture as one device (#22 item 2);
``diffraw`` on two processes over loopback (#29): shares that end far apart, one stem on two
processes."""
import json
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
from PIL import Image

from tests.helpers import REPO

RENDER = """
import json, numpy as np, jax
from diffraw_jax.inference import DiffRAWPipeline
rng = np.random.default_rng(3)
mosaic = np.round(63 + rng.uniform(0.1, 0.6, (96, 128)) * 957).astype(np.uint16)
pipe = DiffRAWPipeline.from_checkpoint("pretrained/distill-1", tile=32, overlap=8, batch=3)
out = pipe(mosaic, seed=5)
plan = pipe.plan(96, 128)
np.save(OUT, out)
# --tile 0: the whole frame in one piece, in bands of rows over the devices.
whole = DiffRAWPipeline.from_checkpoint("pretrained/distill-1", tile=0)
np.save(OUT.replace(".npy", "_whole.npy"), whole(mosaic, seed=5))
frame = whole.plan(96, 128)
w, c = jax.numpy.zeros((1, 48, 64, 4)), jax.numpy.zeros((1, 96, 128, 3))
bands = whole.sharding(frame)
if bands is not None:
    w, c = jax.device_put(w, bands), jax.device_put(c, bands)
cost = whole.sampler(frame).lower(whole.params, w, c, c, jax.random.key(0)).compile().cost_analysis()
cost = cost[0] if isinstance(cost, list) else cost
print(json.dumps({"devices": jax.local_device_count(), "tiles": len(plan.tiles),
                  "sharded": pipe.tile_sharding is not None,
                  "param_devices": len(jax.tree.leaves(pipe.params)[0].sharding.device_set),
                  "bands": None if bands is None else dict(bands.mesh.shape)["bands"],
                  "whole_flops_per_device": cost["flops"]}))
"""


def test_tiles_over_8_devices_give_the_one_device_picture(tmp_path, run_py):
    """Tiles (--tile 32) and the whole frame in one piece (--tile 0) on 8 devices: the
    picture of one device. The whole 96 x 128 frame goes in 4 bands of 24 rows (96 / 8 = 12
    rows at the U-Net's coarsest level: gcd(12, 8) = 4), so each device's program has
    about 1/4 of one device's flops (XLA's cost analysis; the rest: borders)."""
    outs, wholes, infos = [], [], []
    for n in (1, 8):
        path = str(tmp_path / f"out{n}.npy")
        env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
        stdout = run_py(RENDER.replace("OUT", repr(path)), env_extra=env)
        infos.append(json.loads(stdout.strip().splitlines()[-1]))
        outs.append(np.load(path))
        wholes.append(np.load(path.replace(".npy", "_whole.npy")))
    flops = [info.pop("whole_flops_per_device") for info in infos]
    assert infos[0] == {"devices": 1, "tiles": infos[0]["tiles"], "sharded": False, "param_devices": 1,
                        "bands": None}
    assert infos[1]["devices"] == 8 and infos[1]["sharded"] and infos[1]["param_devices"] == 8
    assert infos[1]["bands"] == 4
    assert 0.2 < flops[1] / flops[0] < 0.3, flops
    assert infos[0]["tiles"] >= 12  # several tile batches, each split over the 8 devices
    assert outs[0].shape == outs[1].shape == wholes[0].shape == wholes[1].shape == (96, 128, 3)
    np.testing.assert_allclose(outs[1], outs[0], atol=2e-6)
    np.testing.assert_allclose(wholes[1], wholes[0], atol=2e-6)
    assert np.abs(wholes[0] - outs[0]).max() > 1e-3  # the whole frame is another computation than tiles


CLI = [sys.executable, "-m", "diffraw_jax.inference.cli", "--checkpoint", "pretrained/distill-1", "--tile", "0",
       "--quiet"]
SHUTDOWN_TIMEOUT_S = 2  # JAX's shutdown timeout in these runs (its default: 300 s)


def _mosaic_png(path, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray((63 + rng.uniform(0.1, 0.6, (64, 64)) * 957).astype(np.uint16)).save(path)


def _two_processes(args_of, env):
    """``diffraw`` as processes 0 and 1 of a loopback cluster; ``args_of(i)``: process i's arguments."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [subprocess.Popen(CLI + args_of(i) + [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                                                 f"--process_id={i}"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
            for i in range(2)]


def test_two_processes_finishing_far_apart_both_exit_0_and_write_every_output_once(tmp_path):
    """diffraw on 2 processes over loopback, JAX's shutdown timeout cut to 2 s: process 1's
    last input is a FIFO fed only once process 0 has finished and waited 5 s more, so the
    hosts finish further apart than that timeout (as hosts 300 s apart do by default). Without
    an end-of-run wait for every process both abort (rc -6) and m3 is never written. Both exit
    0; every input is rendered exactly once, by one process, and the pictures equal a
    single-process run's."""
    src, slow = tmp_path / "in", tmp_path / "slow"
    src.mkdir()
    slow.mkdir()
    for k in range(4):
        _mosaic_png(src / f"m{k}.png", k)
    fifo = slow / "m3.png"
    os.mkfifo(fifo)
    env = {**os.environ, "PYTHONPATH": REPO, "DIFFRAW_SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_TIMEOUT_S)}
    single = subprocess.run(CLI + ["--input", str(src), "--output", str(tmp_path / "single")], capture_output=True,
                            text=True, cwd=REPO, env=env, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]

    inputs = [str(src / "m0.png"), str(src / "m1.png"), str(src / "m2.png"), str(fifo)]  # 1 gets m1, m3
    procs = _two_processes(lambda i: ["--input", *inputs, "--output", str(tmp_path / "multi")], env)
    first = []
    for line in procs[0].stdout:  # process 0 renders m0 and m2, then is done
        first.append(line)
        if line.startswith("processed "):
            break
    time.sleep(SHUTDOWN_TIMEOUT_S + 3)  # past JAX's shutdown timeout: now process 1 gets its last input
    feed = threading.Thread(target=lambda: fifo.write_bytes((src / "m3.png").read_bytes()), daemon=True)
    feed.start()
    outs = [p.communicate(timeout=600) for p in procs]
    outs[0] = ("".join(first) + outs[0][0], outs[0][1])
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    written = [sorted(ln.split("/")[-1] for ln in o[0].splitlines() if ln.startswith("wrote ")) for o in outs]
    assert written == [["m0.png", "m2.png"], ["m1.png", "m3.png"]]  # each output by one process, once
    assert "processed 2, failed 0" in outs[0][0] and "processed 2, failed 0" in outs[1][0]
    assert sorted(os.listdir(tmp_path / "multi")) == ["m0.png", "m1.png", "m2.png", "m3.png"]  # no temporaries
    for k in range(4):
        a = np.asarray(Image.open(tmp_path / "single" / f"m{k}.png"))
        b = np.asarray(Image.open(tmp_path / "multi" / f"m{k}.png"))
        assert np.array_equal(a, b), k


def test_one_stem_on_two_processes_or_unlike_inputs_are_refused_before_any_work(tmp_path):
    """a/x.png and b/x.png would go to processes 0 and 1 and both write x.png: each process
    refuses the run in one line before loading the model (rc 2, --overwrite or not) and writes
    nothing. Processes given different inputs (each would render a share of another list) are
    refused the same way."""
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        _mosaic_png(tmp_path / d / "x.png", 0)
    _mosaic_png(tmp_path / "b" / "y.png", 1)
    a, b, by, out = (str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png"), str(tmp_path / "b" / "y.png"),
                     tmp_path / "out")
    env = {**os.environ, "PYTHONPATH": REPO}
    cases = [(lambda i: ["--input", a, b, "--output", str(out), "--overwrite"],
              lambda i: f"error: {b}: output {out / 'x.png'} is also the output of {a}: nothing rendered "
                        "(rename one, or render them into separate folders)"),
             (lambda i: ["--input", a, *([by] if i else []), "--output", str(out)],
              lambda i: f"error: --input: process {i} has {i + 1} input file{'s' * i}, process {1 - i} has {2 - i}: "
                        "give every process the same --input")]
    for args_of, line in cases:
        procs = _two_processes(args_of, env)
        outs = [p.communicate(timeout=300) for p in procs]
        for i, (p, (stdout, stderr)) in enumerate(zip(procs, outs)):
            assert p.returncode == 2, stderr[-2000:]
            assert [ln for ln in stderr.splitlines() if "error" in ln or "sampler" in ln] == [line(i)], stderr
            assert stdout == ""
        assert not out.exists()  # created for the run, removed again: nothing written

"""A frame's tiles spread over every local device give the same picture as one device (#22 item 2)."""
import json

import numpy as np

RENDER = """
import json, numpy as np, jax
from diffraw_jax.inference import DiffRAWPipeline
rng = np.random.default_rng(3)
mosaic = np.round(63 + rng.uniform(0.1, 0.6, (96, 128)) * 957).astype(np.uint16)
pipe = DiffRAWPipeline.from_checkpoint("pretrained/distill-1", tile=32, overlap=8, batch=3)
out = pipe(mosaic, seed=5)
plan = pipe.plan(96, 128)
np.save(OUT, out)
print(json.dumps({"devices": jax.local_device_count(), "tiles": len(plan.tiles),
                  "sharded": pipe.tile_sharding is not None,
                  "param_devices": len(jax.tree.leaves(pipe.params)[0].sharding.device_set)}))
"""


def test_tiles_over_8_devices_give_the_one_device_picture(tmp_path, run_py):
    outs, infos = [], []
    for n in (1, 8):
        path = str(tmp_path / f"out{n}.npy")
        env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
        stdout = run_py(RENDER.replace("OUT", repr(path)), env_extra=env)
        infos.append(json.loads(stdout.strip().splitlines()[-1]))
        outs.append(np.load(path))
    assert infos[0] == {"devices": 1, "tiles": infos[0]["tiles"], "sharded": False, "param_devices": 1}
    assert infos[1]["devices"] == 8 and infos[1]["sharded"] and infos[1]["param_devices"] == 8
    assert infos[0]["tiles"] >= 12  # several tile batches, each split over the 8 devices
    assert outs[0].shape == outs[1].shape == (96, 128, 3)
    np.testing.assert_allclose(outs[1], outs[0], atol=2e-6)


def test_a_folder_is_split_over_two_processes_each_writing_its_share(tmp_path):
    """diffraw on 2 processes over loopback: every input is rendered exactly once, by one process,
    and the pictures equal a single-process run's."""
    import os
    import socket
    import subprocess
    import sys

    from PIL import Image

    from tests.helpers import REPO

    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for k in range(5):
        Image.fromarray((63 + rng.uniform(0.1, 0.6, (64, 64)) * 957).astype(np.uint16)).save(src / f"m{k}.png")
    base = [sys.executable, "-m", "diffraw_jax.inference.cli", "--checkpoint", "pretrained/distill-1",
            "--input", str(src), "--tile", "0", "--quiet"]
    env = {**os.environ, "PYTHONPATH": REPO}
    single = subprocess.run(base + ["--output", str(tmp_path / "single")], capture_output=True, text=True,
                            cwd=REPO, env=env, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen(base + ["--output", str(tmp_path / "multi"), f"--coordinator_address=127.0.0.1:{port}",
                                      "--num_processes=2", f"--process_id={i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
             for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    written = [sorted(ln.split("/")[-1] for ln in o[0].splitlines() if ln.startswith("wrote ")) for o in outs]
    assert written == [["m0.png", "m2.png", "m4.png"], ["m1.png", "m3.png"]]
    assert "processed 3, failed 0" in outs[0][0] and "processed 2, failed 0" in outs[1][0]
    for k in range(5):
        a = np.asarray(Image.open(tmp_path / "single" / f"m{k}.png"))
        b = np.asarray(Image.open(tmp_path / "multi" / f"m{k}.png"))
        assert np.array_equal(a, b), k

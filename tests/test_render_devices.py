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

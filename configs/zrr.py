"""The paper's setting on ZRR: T=2000, s=100, batch 32, Adam 1e-4 after a 10k-step
linear warm-up, 1M steps, the Palette-class U-Net, full 448x448 patches.

    python main.py --config=configs/zrr.py --workdir=W --config.data.data_dir=D
"""
from configs import default


def get_config():
    c = default.get_config()
    c.data.data_dir = ""          # set on the command line
    c.model.name = "zrr"
    c.model.dtype = "bfloat16"
    c.color_net.name = "default"
    return c

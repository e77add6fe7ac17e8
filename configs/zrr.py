"""The paper's setting on ZRR: T=2000, s=100, batch 32, Adam 1e-4 after a 10k-step
linear warm-up, 1M steps, the Palette-class U-Net, full 448x448 patches.

    python main.py --config=configs/zrr.py --workdir=W --config.data.data_dir=D

Memory per device (results/plan/zrr.md, ``python -m benchmarks.plan --config=configs/zrr.py
--devices 8 --fsdp 4 --sweep``; XLA:CPU stand-ins, to be confirmed on the hardware): on 8
devices (4 images each) without remat ~22-29 GiB, so 32 GiB chips and GPUs need nothing
more; 16 GiB chips (TPU v5e) need ``--config.model.remat_policy=full`` (~7 GiB, +16% FLOPs),
and so does the whole batch of 32 on one 80 GB GPU (~55 GiB; ~176 GiB without).
"""
from configs import default


def get_config():
    c = default.get_config()
    c.data.data_dir = ""          # set on the command line
    c.model.name = "zrr"
    c.model.dtype = "bfloat16"
    c.model.remat_policy = "none"  # "full" below ~30 GiB per device at 4 images each (see above)
    c.color_net.name = "default"
    c.data.worker_count = 8       # Grain worker processes per host (uint16/uint8 batches)
    c.train.eval_every_steps = 10_000  # DTDM-DDIM-10 PSNR/SSIM/LPIPS + a grid in TensorBoard
    return c

"""The paper's colour network G on ZRR, trained with LiteISPNet's recipe.

G (eq. 8) gives the condition c = x = G(w) at test time and so sets the output
colours of DiffRAW; the paper uses LiteISPNet. Here: the full-width
LiteISPNet-style network (`default`, ~9M parameters) on whole 448 x 448 patches,
batch 16, Adam 1e-4, 80 epochs of the 46,839 ZRR training pairs (2,927 steps per
epoch, 234,160 steps), the rate halved every 40 epochs, L1 + 0.15 (1 - SSIM) on the
DSLR image aligned to G's output (a global shift: no PWC-Net weights are
available; LiteISPNet warps with PWC-Net flow, see docs/deviations.md).

    python main.py --config=configs/isp_zrr.py --workdir=W_G --config.data.data_dir=D
    python main.py --config=configs/zrr.py --workdir=W --config.data.data_dir=D \
        --config.color_net.workdir=W_G
"""
from configs import default

ZRR_TRAIN_PAIRS = 46_839
BATCH = 16
STEPS_PER_EPOCH = ZRR_TRAIN_PAIRS // BATCH  # 2,927 (the last partial batch is dropped)


def get_config():
    c = default.get_config()
    c.task = "color_net"
    c.data.data_dir = ""            # set on the command line
    c.data.crop_size = 448          # whole patches, as LiteISPNet (no crops)
    c.data.global_batch_size = BATCH
    c.data.worker_count = 8
    c.color_net.name = "default"
    c.color_net.workdir = ""
    c.color_net.zero_mean_details = True  # no 16-px lattice (issue 21; results/real_camera/lattice_cause.md)
    c.optim.learning_rate = 1e-4
    c.optim.warmup_steps = 0
    c.optim.decay_every_steps = 40 * STEPS_PER_EPOCH
    c.optim.decay_factor = 0.5
    c.optim.ema_decay = 0.0         # LiteISPNet keeps no EMA
    c.train.num_train_steps = 80 * STEPS_PER_EPOCH
    c.train.checkpoint_every_steps = STEPS_PER_EPOCH
    return c

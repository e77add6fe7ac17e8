"""Trains the colour network G (eq. 8, LiteISPNet-style) with L1 + (1 - SSIM).

No PWC-Net weights are available here, so the DSLR target is aligned to G's output
with a classical method (a global sub-pixel shift by phase correlation) before the
loss; LiteISPNet aligns with PWC-Net optical flow. See docs/deviations.md.
"""
from configs import synthetic


def get_config():
    c = synthetic.get_config()
    c.task = "color_net"
    c.color_net.workdir = ""
    c.color_net.zero_mean_details = True  # no 16-px lattice (issue 21; results/real_camera/lattice_cause.md)
    c.optim.learning_rate = 1e-3
    c.optim.ema_decay = 0.0
    c.train.num_train_steps = 600
    return c

"""Tiny everything, for tests: runs a few steps in seconds."""
from configs import default


def get_config():
    c = default.get_config()
    c.data.data_dir = ""
    c.data.crop_size = 32
    c.data.global_batch_size = 8
    c.data.eval_batch_size = 4
    c.model.name = "tiny"
    c.color_net.name = "tiny"
    c.diffusion.num_timesteps = 200
    c.diffusion.s = 20
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 5
    c.optim.ema_decay = 0.9
    c.train.num_train_steps = 6
    c.train.log_every_steps = 2
    c.train.checkpoint_every_steps = 3
    c.eval.crop_size = 32
    c.eval.num_images = 4
    c.eval.ddim_steps = 4
    c.eval.grid_images = 2
    return c

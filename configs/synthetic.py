"""The embedded default: synthetic ZRR-format data, a CPU-sized model and crops.

Finishes in about 5 minutes on 2 CPU cores (`make demo` runs it).
"""
from configs import default


def get_config():
    c = default.get_config()
    c.data.data_dir = "data/tfds"
    c.data.manual_dir = "data/synthetic_zrr"
    c.data.crop_size = 64
    c.data.global_batch_size = 8
    c.data.eval_batch_size = 8
    c.model.name = "demo"
    c.color_net.name = "tiny"
    c.color_net.workdir = "workdir/demo_isp"
    c.optim.learning_rate = 3e-4
    c.optim.warmup_steps = 50
    c.optim.ema_decay = 0.99
    c.train.num_train_steps = 300
    c.eval.crop_size = 128
    c.eval.num_images = 8
    c.train.log_every_steps = 20
    c.train.checkpoint_every_steps = 100
    return c

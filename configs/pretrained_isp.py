"""G for the shipped CPU model (`make pretrained-paper`, pretrained/paper-demo/color_net): the `small`
colour network on synthetic ZRR-format data, 64 px crops, 3,000 steps.

    python main.py --config=configs/pretrained_isp.py --workdir=workdir/pretrained_isp
"""
from configs import isp


def get_config():
    c = isp.get_config()
    c.data.data_dir = "data/tfds_pretrain"
    c.data.manual_dir = "data/synthetic_zrr_pretrain"
    c.color_net.name = "small"
    c.optim.learning_rate = 1e-3
    c.train.num_train_steps = 3000
    c.train.log_every_steps = 100
    c.train.checkpoint_every_steps = 1000
    return c

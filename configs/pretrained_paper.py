"""The paper-condition model pretrained/paper-demo (`make pretrained-paper`): the `demo`
U-Net on synthetic ZRR-format data (1,024 training pairs), 64 px crops, batch 8,
EMA 0.999; G from configs/pretrained_isp.py.

    python main.py --config=configs/pretrained_paper.py --workdir=workdir/pretrained_paper
"""
from configs import synthetic


def get_config():
    c = synthetic.get_config()
    c.data.data_dir = "data/tfds_pretrain"
    c.data.manual_dir = "data/synthetic_zrr_pretrain"
    c.color_net.name = "small"
    c.color_net.workdir = "workdir/pretrained_isp"
    c.optim.learning_rate = 3e-4
    c.optim.warmup_steps = 200
    c.optim.ema_decay = 0.999
    c.train.num_train_steps = 5000
    c.train.log_every_steps = 100
    c.train.checkpoint_every_steps = 250
    c.train.keep_checkpoints = 2
    c.eval.crop_size = 192
    c.eval.num_images = 16
    return c

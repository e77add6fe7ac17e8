"""The shipped CPU model (`make pretrained`, pretrained/demo): calibrated colour.

The `demo` U-Net with ``model.condition = "calibrated"`` (diffraw_jax/calibration.py):
the networks see the planes white-balanced and exposed by each file's own calibration,
x = c is the classical ISP of them with the file's colour matrix, so the colour of
an unseen camera comes from its file, not from one sensor's training data. Trained on
the photographic synthetic pairs (textured dead leaves, a sensor model spanning phone
and camera sensors; `python -m diffraw_jax.data.synthetic_zrr --aligned`), built as
``zrr/calibrated`` (each pair's true calibration). The pairs are pixel-aligned: the
condition comes from the RAW itself, and a misaligned target teaches a calibrated model to
distrust the detail of c (it smeared edges and painted mottled texture on clean input). It starts from the paper-condition model
pretrained/paper-demo (``train.init_from``; its U-Net has already learned the
diffusion at this size), 64 px crops, batch 8. G (pretrained/paper-demo/color_net)
is named only for the evaluation's "G (color_net)" comparison row.

    python main.py --config=configs/pretrained.py --workdir=workdir/pretrained
"""
from configs import pretrained_paper


def get_config():
    c = pretrained_paper.get_config()
    c.data.name = "zrr/calibrated"
    c.data.data_dir = "data/tfds_photo"
    c.data.manual_dir = "data/synthetic_photo"
    c.model.condition = "calibrated"
    c.color_net.workdir = "pretrained/paper-demo/color_net"
    c.train.init_from = "pretrained/paper-demo"
    c.optim.learning_rate = 2e-4
    c.optim.warmup_steps = 100
    c.optim.ema_decay = 0.999
    c.train.num_train_steps = 4450  # the shipped weights: 2,000 + 1,250 + 1,200 steps in three stages (TRAINING.md)
    return c

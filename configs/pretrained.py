"""The shipped teacher (`make pretrained`, pretrained/demo): calibrated colour, real photographs.

pretrained/synthetic (configs/pretrained_synthetic.py: the `demo` U-Net with
``model.condition = "calibrated"``, trained on textured dead leaves) fine-tuned on the data
command's set (docs/real-detail.md): 23 real photographs from Debian's wallpaper packages and
the textured dead leaves, half each, unprocessed through the calibrated sensor model into
pixel-aligned RAW pairs with each pair's own calibration, 40% of them at a base-ISO noise
level as clean as a real camera's, the rest up to an ISO-3200-like phone, with at most a slight
optics blur (sigma 0-0.3 px: the model is not taught to sharpen a camera's picture):

    python -m diffraw_jax.data.photos --out data/photos --num_train 1024 --num_test 32 --blur 0,0.3
    python -m tfds_zrr.build --manual_dir data/photos --data_dir data/tfds_photos --config calibrated
    python main.py --config=configs/pretrained.py --workdir=workdir/pretrained

Half the examples are at their own late start (``train.own_start_share``: the exact late start,
docs/real-detail.md). 64 px crops, batch 8, Adam 1e-4 after 50 warm-up steps, EMA 0.999. G
(pretrained/paper-demo/color_net) is named only for the evaluation's "G (color_net)" row.
"""
from configs import pretrained_synthetic

# The auto start's noise, in multiples of the file's condition noise at mid-grey: chosen on the
# shared DNG and the real-photo proxy (docs/real-detail.md "The file-dependent sampler").
START_NOISE_FACTOR = 2.0
# 0: one step from the noise-matched start at every noise level (dtdm.file_sampler); the
# DTDM-DDIM-4 sampler from s only where that start reaches s. (A switch > 0 would send noisy files
# to the sampler from s; measured worse at ISO 800 and 3200-like noise, docs/real-detail.md.)
START_SWITCH = 0


def get_config():
    c = pretrained_synthetic.get_config()
    c.data.data_dir = "data/tfds_photos"
    c.data.manual_dir = "data/photos"
    c.train.init_from = "pretrained/synthetic"
    c.optim.learning_rate = 1e-4
    c.optim.warmup_steps = 50
    c.train.num_train_steps = 4000
    c.train.own_start_share = 0.5   # half the examples at their own late start (exact late starts)
    # The file-dependent sampler (docs/real-detail.md): one step from the exact late start that
    # matches the file's noise (taught by the own-start examples); DTDM-DDIM-4 from s on request.
    c.sample.method = "dtdm_ddim"
    c.sample.num_steps = 4
    c.sample.start = "auto"
    c.sample.start_noise_factor = START_NOISE_FACTOR
    c.sample.start_switch = START_SWITCH
    return c

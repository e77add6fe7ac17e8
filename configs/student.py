"""The shipped one-step model (`make student`, pretrained/distill-1): pretrained/demo specialised
to its own one-step sampler.

The teacher (configs/pretrained.py) learns two things at once: the DTDM process from s (the
paper's sampler, DTDM-DDIM-4 from s) and, in half its examples, the exact late start
(``train.own_start_share``; docs/real-detail.md "Exact late starts"), whose one step from the
file's noise-matched start is the default sampler of both shipped models. This student starts
as the teacher and trains on the late starts only (share 1.0): the whole network for the one
evaluation it runs. Same data, same sampler (``sample.start = "auto"``, one step):

    python main.py --config=configs/student.py --workdir=workdir/student

(The folder keeps its name, distill-1, from the progressively distilled students it replaces;
configs/distill.py still makes those.)
"""
from configs import pretrained


def get_config():
    c = pretrained.get_config()
    c.train.init_from = "pretrained/demo"
    c.train.own_start_share = 1.0
    c.train.num_train_steps = 1500
    c.optim.warmup_steps = 20
    c.sample.num_steps = 1
    # Its start noise covers the file's own (k = 1; the teacher's is 2): it denoises harder from the
    # same start (docs/real-detail.md "What ships").
    c.sample.start_noise_factor = 1.0
    return c

"""Progressive distillation of the shipped model (pretrained/demo) into few-step students.

Each run halves the steps of its teacher's deterministic DTDM-DDIM sampler (docs/evaluation.md
"Few-step DiffRAW"): the config argument is the student's step count, and the
teacher defaults to the previous round's workdir (``workdir/distill/student-<2n>``;
the 16-step teacher of round one is pretrained/demo itself):

    python main.py --config=configs/distill.py:8 --workdir=workdir/distill/student-8
    python main.py --config=configs/distill.py:4 --workdir=workdir/distill/student-4
    python main.py --config=configs/distill.py:2 --workdir=workdir/distill/student-2
    python main.py --config=configs/distill.py:1 --workdir=workdir/distill/student-1

The student is the teacher's network, initialised from the teacher's EMA parameters; data,
mesh, EMA, orbax checkpoints and resume are the trainer's own.

The shipped student (pretrained/distill-1, ``make distill``) is instead one round for every start
(``distill.start = "any"``, docs/real-detail.md "A student for every start"): the config
argument ``any``. It learns in one step, from each start T in [1, s], what pretrained/demo's
own sampler (DTDM-DDIM-4 from s, the same stride from T) makes, and samples like its teacher
with the file-dependent start:

    python main.py --config=configs/distill.py:any --workdir=workdir/distill/student-any
"""
from configs import pretrained

# Training steps per round: the last halvings are the hard ones.
ROUND_STEPS = {8: 150, 4: 200, 2: 400, 1: 800}


# The student for every start: its teacher's steps from s, and its length.
ANY_TEACHER_STEPS = 4
ANY_STEPS = 1500


def get_config(student_steps="4"):
    if student_steps == "any":
        return any_start_config()
    n = int(student_steps)
    if n not in ROUND_STEPS:
        raise ValueError(f"configs/distill.py:<n> takes n in {sorted(ROUND_STEPS)}, got {n}")
    c = pretrained.get_config()
    c.color_net.workdir = "pretrained/demo/color_net"  # G: only the evaluation's comparison row
    c.train.init_from = ""          # the student starts as its teacher
    c.distill.teacher = "pretrained/demo" if n == max(ROUND_STEPS) else f"workdir/distill/student-{2 * n}"
    c.distill.teacher_steps = 2 * n
    c.sample.method = "dtdm_ddim"
    c.sample.num_steps = n
    c.sample.start = ""             # distilled from s: the paper's start
    c.model.dropout = 0.0           # the targets are deterministic
    c.optim.learning_rate = 1e-4
    c.optim.warmup_steps = 20
    c.optim.ema_decay = 0.99        # short rounds: the EMA must leave the teacher's weights behind
    c.train.num_train_steps = ROUND_STEPS[n]
    c.train.log_every_steps = 50
    c.train.checkpoint_every_steps = 100
    c.eval.ddim_steps = 0           # the student's own sampler is the main row
    return c


def any_start_config():
    """One round, a 1-step student for every start of pretrained/demo's file-dependent sampler."""
    c = get_config(str(min(ROUND_STEPS)))
    c.distill.teacher = "pretrained/demo"
    c.distill.teacher_steps = ANY_TEACHER_STEPS
    c.distill.start = "any"
    c.sample.start = "auto"         # its teacher's file-dependent sampler, in one step
    c.train.num_train_steps = ANY_STEPS
    c.train.checkpoint_every_steps = 250
    return c

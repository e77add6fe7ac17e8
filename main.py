"""diffraw-jax entry point.

    python main.py --config=configs/zrr.py --workdir=DIR [--mode=train|eval] [--verbose] [--config.x=y ...]

Logs: one line per progress report, checkpoint and evaluation (``diffraw_jax.runtime.logs``);
``--verbose`` adds the libraries' INFO lines and full tracebacks.

Multi-host (TPU pod slices, GPU clusters): pass --jax_distributed to call
jax.distributed.initialize() (auto-detected on Cloud TPU and SLURM), or give
--coordinator_address/--num_processes/--process_id explicitly.
"""
import logging
import sys
import traceback

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and outputs.")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (resumes automatically) or eval.")
flags.DEFINE_bool("jax_distributed", False, "Call jax.distributed.initialize() (multi-host).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
flags.DEFINE_bool("break_lock", False, "Take the workdir's lock from a trainer that still holds it "
                  "(only when you know it is gone: a lock goes with its process on local and NFS disks, "
                  "and a gs:// lease not renewed for 10 minutes is taken over without it).")
flags.DEFINE_bool("verbose", False, "Also show library INFO logs (orbax, clu, absl) and full tracebacks.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from diffraw_jax.runtime import logs

    logs.setup(FLAGS.verbose)
    import jax

    if FLAGS.coordinator_address or FLAGS.jax_distributed:
        jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                   num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
    logging.getLogger("diffraw_jax").info("JAX process %d / %d, local devices %s", jax.process_index(),
                                          jax.process_count(), jax.local_devices())
    config = FLAGS.config
    from diffraw_jax.training import workdir_lock

    one_line_errors = (ValueError, FileNotFoundError, ConnectionError, FloatingPointError,
                       workdir_lock.WorkdirLockedError)
    try:
        if FLAGS.mode == "train":
            from diffraw_jax.checkpoints import checkpointing
            from diffraw_jax.training import train

            one_line_errors += (checkpointing.CheckpointSaveError, checkpointing.CheckpointReadError)
            train.train_and_evaluate(config, FLAGS.workdir, break_lock=FLAGS.break_lock)
        else:
            from diffraw_jax.evaluation import evaluate

            evaluate.evaluate(config, FLAGS.workdir)
    except one_line_errors as e:
        # Configuration, data, lock and save problems: one clear line, non-zero exit.
        if FLAGS.verbose:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def parse_flags(argv):
    """absl's flag parsing, with a bad flag (a config file that raises, an unknown flag) as one
    line ``error: <flag>: <reason>`` and exit status 2 instead of absl's report with a traceback."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()] or [type(e).__name__]
        where, rest = "", lines[0]
        if rest.startswith("flag ") and ": " in rest:  # "flag --config=configs/distill.py:3: ..."
            where, rest = rest[len("flag "):].split(": ", 1)
            where += ": "
        # A config file's own exception is the last line of the traceback absl embeds.
        tb = any(ln.startswith("Traceback") for ln in lines)
        reason = lines[-1] if tb else " ".join([rest] + lines[1:])
        print(f"error: {where}{reason} (python main.py --helpshort lists the flags)", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)

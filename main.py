"""diffraw-jax entry point.

    python main.py --config=configs/zrr.py --workdir=DIR [--mode=train|eval] [--verbose] [--config.x=y ...]

Logs: one line per progress report, checkpoint and evaluation (``diffraw_jax.logs``);
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
flags.DEFINE_bool("break_lock", False, "Train even if the workdir's lock names another trainer "
                  "(only when you know it is gone; a lock whose process is gone or whose heartbeat is "
                  "over 10 minutes old is taken over without it).")
flags.DEFINE_bool("verbose", False, "Also show library INFO logs (orbax, clu, absl) and full tracebacks.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from diffraw_jax import logs

    logs.setup(FLAGS.verbose)
    import jax

    if FLAGS.coordinator_address or FLAGS.jax_distributed:
        jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                   num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
    logging.getLogger("diffraw_jax").info("JAX process %d / %d, local devices %s", jax.process_index(),
                                          jax.process_count(), jax.local_devices())
    config = FLAGS.config
    from diffraw_jax import workdir_lock

    one_line_errors = (ValueError, FileNotFoundError, FloatingPointError, workdir_lock.WorkdirLockedError)
    try:
        if FLAGS.mode == "train":
            from diffraw_jax import checkpointing, train

            one_line_errors += (checkpointing.CheckpointSaveError,)
            train.train_and_evaluate(config, FLAGS.workdir, break_lock=FLAGS.break_lock)
        else:
            from diffraw_jax import evaluate

            evaluate.evaluate(config, FLAGS.workdir)
    except one_line_errors as e:
        # Configuration, data, lock and save problems: one clear line, non-zero exit.
        if FLAGS.verbose:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)

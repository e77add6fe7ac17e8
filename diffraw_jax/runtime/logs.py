"""Logs a person reads: one setup for ``main.py`` and ``diffraw``.

By default the project's own loggers (``diffraw_jax.*``) print INFO lines as
``HH:MM:SS message`` on stderr, and library internals (absl, hence orbax and
clu; jax; TensorFlow) are shown only from WARNING up. ``verbose=True`` keeps
every library's INFO lines too (absl's format).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys

PROJECT_LOGGER = "diffraw_jax"


class _CurrentStderrHandler(logging.StreamHandler):
    """A StreamHandler on whatever ``sys.stderr`` is at each line (as ``logging.lastResort``):
    redirections made after ``setup`` (pytest's capture, a notebook) still get the lines."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; the property wins
        pass


def setup(verbose: bool = False) -> None:
    """Configures logging once per process (idempotent)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "2")
    if not verbose:  # TensorFlow (file I/O, TFDS, TensorBoard here) prints its oneDNN notice regardless
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    library_level = logging.INFO if verbose else logging.WARNING
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.INFO if verbose else absl.logging.WARNING)
    except ImportError:
        pass
    for name in ("absl", "jax", "orbax", "clu", "tensorflow", "etils"):
        logging.getLogger(name).setLevel(library_level)
    ours = logging.getLogger(PROJECT_LOGGER)
    ours.setLevel(logging.INFO)
    if not any(getattr(h, "_diffraw", False) for h in ours.handlers):
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        handler._diffraw = True
        ours.addHandler(handler)
    ours.propagate = False  # not twice through absl's handler


@contextlib.contextmanager
def quiet_libraries():
    """absl's logger (hence orbax) at ERROR for the duration, unless it is at DEBUG."""
    logger = logging.getLogger("absl")
    level = logger.level
    if level != logging.DEBUG:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def format_duration(seconds: float) -> str:
    """12 s, 3m05s, 2h14m."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"

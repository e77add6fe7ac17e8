"""Workdirs, data and output folders as ``etils.epath`` paths: local or ``gs://``.

Every path the trainer, the evaluator or the loader writes or reads a model
from goes through ``as_path``: a cloud URI (``gs://BUCKET/run``) stays a URI,
so on a pod every host reads and writes the same bucket (never its own disk);
a local path becomes absolute against the current directory, as
``os.path.abspath`` makes it. epath reaches ``gs://`` through TensorFlow's
``tf.io.gfile`` when TensorFlow is installed (training installs), else through
fsspec/gcsfs (``EPATH_USE_TF=false`` forces the latter; tests/test_gcs.py runs
that way against a local GCS emulator). Orbax reads and writes the arrays of
a checkpoint with tensorstore, which speaks GCS itself.
"""
from __future__ import annotations

import os

from etils import epath


def is_uri(path) -> bool:
    """``gs://...`` (or another ``scheme://``)."""
    return "://" in os.fspath(path)


def unreachable_reason(uri, timeout: float = 3.0):
    """Why the storage behind ``uri`` (``gs://``) cannot be reached from here, or None when its
    endpoint answers (or the scheme is not one we can check). The endpoint is
    ``STORAGE_EMULATOR_HOST`` when set (a local emulator), else storage.googleapis.com:443."""
    import socket
    from urllib.parse import urlparse

    if not os.fspath(uri).startswith("gs://"):
        return None
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
    if emulator:
        u = urlparse(emulator if "://" in emulator else f"http://{emulator}")
        host, port = u.hostname or "127.0.0.1", u.port or 80
    else:
        host, port = "storage.googleapis.com", 443
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        return f"{host}:{port} does not answer ({e.strerror or e})"
    return None


def as_path(path) -> epath.Path:
    """``path`` as an ``epath.Path``: a URI as it is, a local path made absolute."""
    s = os.fspath(path)
    return epath.Path(s if is_uri(s) else os.path.abspath(s))


"""Real I/O errors for subprocess tests: ``install()`` (from ``DIFFRAW_FAULT_EIO``) makes the
first N opens for reading of files whose path ends with a given suffix fail with
``OSError(EIO)``, as a failing disk or network file system answers. It wraps Python's
``open`` (``builtins.open``/``io.open``), the boundary through which orbax, etils and the
trainer read small files; nothing of the code under test is replaced.

    DIFFRAW_FAULT_EIO="checkpoints/6/state/_METADATA=1"
"""
import builtins
import errno
import io
import os


def install(spec=None):
    """Installs the wrapper for ``spec`` ("SUFFIX=N", default ``$DIFFRAW_FAULT_EIO``); returns a
    function that removes it (None when there is nothing to install)."""
    spec = spec if spec is not None else os.environ.get("DIFFRAW_FAULT_EIO", "")
    if not spec:
        return None
    suffix, count = spec.rsplit("=", 1)
    left = [int(count)]
    real = builtins.open

    def open_(file, mode="r", *args, **kwargs):
        if (left[0] > 0 and isinstance(file, (str, bytes, os.PathLike)) and not any(c in mode for c in "wax+")
                and os.fsdecode(os.fspath(file)).endswith(suffix)):
            left[0] -= 1
            print(f"fault_io: EIO on {os.fspath(file)}", flush=True)
            raise OSError(errno.EIO, os.strerror(errno.EIO), os.fspath(file))
        return real(file, mode, *args, **kwargs)

    builtins.open = io.open = open_

    def undo():
        builtins.open = io.open = real

    return undo

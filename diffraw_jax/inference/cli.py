"""The ``diffraw`` command: RAW -> sRGB on full frames, and portable weights.

    diffraw --checkpoint W --input PATH [PATH ...] --output DIR
        [--steps N] [--method dtdm|dtdm_ddim|ddpm] [--color calibrated|g|classic|IMAGE] [--seed S]
        [--tile T] [--overlap O] [--batch B] [--step N] [--overwrite] [--other-sampler]
        [--black 63] [--white 1020] [--cfa RGGB] [--format png|tiff|jpeg] [--quality 95]
        [--bits16] [--quiet]
    diffraw export-weights --checkpoint W --out DIR [--step N] [--method M] [--steps N] [--start s|auto]

(also ``python -m diffraw_jax.inference.cli ...``). ``W`` is a weights folder
(``export-weights``) or a training workdir (``config.json`` + ``checkpoints/``),
loaded read-only. The sampler is the one the model asks for (its objective,
``sample.method`` and ``sample.num_steps``) unless ``--method``/``--steps``
say otherwise; ``--method dtdm --steps 93`` is the paper's test setting
(s = 100). Inputs are files or folders (a folder expands to its image / RAW
files, not recursively):

* ``.png`` / ``.tif`` / ``.tiff``: a single-channel Bayer mosaic (ZRR style),
  read with ``--black`` / ``--white`` (a value, or 4 comma-separated values in
  canonical order R,Gr,Gb,B) and ``--cfa``; ZRR's 63 / 1020 / RGGB by default.
* anything else: a camera RAW read by LibRaw through rawpy (DNG, NEF, CR2,
  ARW, ...), with its own CFA, per-channel black levels and white level
  (``pipeline.frame_from_rawpy``).

Each input becomes ``DIR/<stem>.png``: 8-bit sRGB, or 16-bit with ``--bits16``
(``--format tiff``: ``<stem>.tif``, 16-bit; ``--format jpeg``: ``<stem>.jpg``, 8-bit, ``--quality``
1-100, default 95; every format with the sRGB ICC profile, the camera's EXIF and the colour
source: ``outputs``), covering the whole mosaic in every CFA layout, in the camera's orientation
(LibRaw ``sizes.flip``). It is written to a temporary file in DIR and then
renamed, so a crash never leaves a half-written output. An existing output is
kept and its input skipped unless ``--overwrite``, so rerunning an interrupted
batch finishes the rest (and says how many it skipped); the hidden temporary
files of a killed run (``.<name>.<pid>@<host>.<random>.tmp``: this host's whose
process is gone; another host's only once an hour old) are removed. The output
folder is checked (a folder, writable) before any sampling. Two inputs with one
output name (``a/x.png``, ``b/x.png``) refuse the run before any work.

On several hosts (``--coordinator_address HOST:PORT --num_processes N --process_id I``
on each, with the same inputs): process i renders every N-th input from the i-th;
the processes compare their input lists first (different lists refuse the run on
every process) and wait for each other at the end, however far apart their shares
finish, so all exit together (docs/pods-cli.md).

``--color``: default the model's own. ``calibrated`` (the default of a model
trained with ``model.condition = "calibrated"``, e.g. pretrained/demo) takes the
colour from each file's own calibration (DNG ColorMatrix/AsShotNeutral/
BaselineExposure, LibRaw's tables for other RAWs; gray world and no matrix for a
file without colour metadata) and logs one line per file naming that source.
``g`` (the default of a paper model) uses the trained colour network G named by the training
config's ``color_net.workdir`` (an error if there is none), ``classic`` the
classical ISP (as-shot white balance and camera matrix for camera RAWs, gray
world for PNGs), anything else is an sRGB image used as c: one file for every
input, or a folder holding ``<stem>.<png|jpg|tif...>`` per input; it must have
the output size and orientation.

Errors: one line per bad input on stderr, ``error: <file>: <reason>``; the
other inputs are still processed; a summary ``processed N, failed M`` ends the
run. Exit status 0 if no input failed (skipped inputs are not failures), 1 if
any failed, 2 for usage, checkpoint or output-folder errors, inputs with one output
name or processes with different inputs (nothing processed).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import re
import socket
import sys
import tempfile
import time
import warnings
from typing import List, Optional, Sequence, Tuple

import numpy as np

from diffraw_jax import dtdm, raw
from diffraw_jax.runtime import logs, processes
from diffraw_jax.inference import outputs
from diffraw_jax.inference.camera import read_bayer_image, read_camera_raw

# By name: run as ``python -m``, this module's __name__ is "__main__".
log = logging.getLogger("diffraw_jax.inference.cli")

IMAGE_EXTENSIONS = (".png", ".tif", ".tiff")
RAW_EXTENSIONS = (".dng", ".nef", ".nrw", ".cr2", ".cr3", ".crw", ".arw", ".srf", ".sr2",
                  ".raf", ".orf", ".rw2", ".rwl", ".pef", ".srw", ".x3f", ".3fr", ".fff",
                  ".iiq", ".erf", ".kdc", ".dcr", ".mrw", ".mos", ".mef", ".raw")


# ---------------------------------------------------------------------------
# Arguments.


def _levels(text: str):
    """'63' -> 63.0; '60,61,62,64' -> float32 [4] (canonical R, Gr, Gb, B)."""
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 4 comma-separated numbers, got {text!r}")
    if len(vals) == 1:
        return vals[0]
    if len(vals) != 4:
        raise argparse.ArgumentTypeError(f"expected 1 or 4 values, got {len(vals)}")
    return np.asarray(vals, np.float32)


def _cfa(text: str) -> str:
    try:
        return raw.check_pattern(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def _quality(text: str) -> int:
    try:
        return outputs.check_quality(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to 100, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="diffraw", description="DiffRAW: smartphone / camera RAW -> sRGB with a trained "
        "DTDM diffusion model, in overlapping tiles.")
    p.add_argument("--checkpoint", required=True, metavar="W",
                   help="weights folder (diffraw export-weights) or training workdir")
    p.add_argument("--input", required=True, nargs="+", metavar="PATH",
                   help="Bayer PNG/TIFF, camera RAW, or a folder of them")
    p.add_argument("--output", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--steps", type=int, default=None, metavar="N",
                   help="sampling steps (default: the model's; dtdm with N < s starts at step N, "
                   "the paper tests with 93 of s = 100)")
    p.add_argument("--method", default=None, choices=dtdm.METHODS,
                   help="dtdm: ancestral (Algorithm 2); dtdm_ddim: deterministic strided; ddpm: "
                   "for epsilon-objective models (default: what the model asks for)")
    p.add_argument("--other-sampler", action="store_true",
                   help="let a distilled student run another --method/--steps than the one it was "
                   "distilled for (it was not trained for it: expect a worse picture)")
    p.add_argument("--start", type=_start, default=None, metavar="T|auto",
                   help="dtdm_ddim: start sampling at step T < s (less noise added to the condition, more "
                   "of its detail and noise kept); auto: per file, from its measured noise "
                   "(docs/real-detail.md; calibrated models). Default: the model's (the shipped models: "
                   "auto; T = s: the paper's start)")
    p.add_argument("--step", type=int, default=None, metavar="N",
                   help="a workdir's checkpoint step (default: the latest)")
    p.add_argument("--color", default=None, metavar="calibrated|g|classic|IMAGE",
                   help="colour condition c (default: the model's own): the file's calibration, trained G, "
                   "classical ISP, or an sRGB image / folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eta", type=float, default=0.0, help="dtdm_ddim noise (0: deterministic)")
    p.add_argument("--tile", type=int, default=None,
                   help="tile side in output pixels (default: the training crop size; a multiple "
                   "of the U-Net's 2**(levels-1)); "
                   "0: the whole frame in one piece")
    p.add_argument("--overlap", type=int, default=None,
                   help="minimum tile overlap, even (default: min(64, tile / 4))")
    p.add_argument("--batch", type=int, default=4, help="tiles per sampler call")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--black", type=_levels, default=float(raw.ZRR_BLACK_LEVEL),
                   help="black level of PNG/TIFF mosaics (1 or 4 values R,Gr,Gb,B)")
    p.add_argument("--white", type=_levels, default=float(raw.ZRR_WHITE_LEVEL),
                   help="white level of PNG/TIFF mosaics (1 or 4 values)")
    p.add_argument("--cfa", type=_cfa, default=raw.ZRR_PATTERN,
                   help="CFA layout of PNG/TIFF mosaics: RGGB, BGGR, GRBG, GBRG")
    p.add_argument("--format", default="png", choices=outputs.FORMATS,
                   help="output files: png (8-bit, or 16-bit with --bits16), tiff (16-bit), jpeg (8-bit); "
                   "each with the sRGB ICC profile and the camera's EXIF")
    p.add_argument("--quality", type=_quality, default=None, metavar="1-100",
                   help=f"JPEG quality (--format jpeg; default {outputs.DEFAULT_QUALITY})")
    p.add_argument("--bits16", action="store_true", help="write 16-bit PNGs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--coordinator_address", default=None, metavar="HOST:PORT",
                   help="multi-host: process 0's address (with --num_processes, --process_id); the "
                   "inputs are split over the processes, each writes its own share")
    p.add_argument("--num_processes", type=int, default=None)
    p.add_argument("--process_id", type=int, default=None)
    p.add_argument("--verbose", action="store_true", help="library logs (orbax, absl) too")
    return p


# ---------------------------------------------------------------------------
# Inputs.


def _is_input_file(name: str) -> bool:
    """Image/RAW extension, not a hidden file (our temp files, macOS ``._*`` files)."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS + RAW_EXTENSIONS)


def expand_inputs(paths: Sequence[str], output_dir: str) -> Tuple[List[str], List[Tuple[str, str]]]:
    """(files, [(path, reason)]): folders expand to their image/RAW files (sorted,
    not recursive, skipping the output folder's own files); missing paths and
    folders with nothing to process are errors."""
    files, errors = [], []
    out_abs = os.path.abspath(output_dir)
    for path in paths:
        if os.path.isdir(path):
            if os.path.abspath(path) == out_abs:
                errors.append((path, "is the output folder"))
                continue
            found = sorted(os.path.join(path, n) for n in os.listdir(path)
                           if _is_input_file(n) and os.path.isfile(os.path.join(path, n)))
            if not found:
                errors.append((path, "folder has no image or RAW files"))
            files.extend(found)
        elif os.path.exists(path):
            files.append(path)
        else:
            errors.append((path, "no such file or directory"))
    return files, errors


def duplicate_outputs(files: Sequence[str], output_dir: str) -> List[Tuple[str, str]]:
    """[(path, reason)]: every input whose output (``output_path``) is also an earlier input's,
    e.g. ``a/x.png`` and ``b/x.png``. Checked over all the inputs, before they are split over
    the processes, so a run with one is refused before any work."""
    first, found = {}, []
    for path in files:
        out = output_path(output_dir, path)
        if out in first:
            found.append((path, f"output {out} is also the output of {first[out]}: nothing rendered "
                          "(rename one, or render them into separate folders)"))
        else:
            first[out] = path
    return found


def read_input(path: str, args):
    """BayerFrame for ``path``: PNG/TIFF mosaics by extension, everything else via rawpy."""
    if path.lower().endswith(IMAGE_EXTENSIONS):
        return read_bayer_image(path, args.black, args.white, args.cfa)
    return read_camera_raw(path)


# ---------------------------------------------------------------------------
# Outputs.


def host_id() -> str:
    """This machine in the names of ``write_atomic``'s temporaries: its host name (characters
    other than ``[A-Za-z0-9._-]`` as ``_``; a name over 32 characters shortened to 20 and 8 hex
    digits of its sha1) and, on Linux, ``+`` the inode of this process's pid namespace, so two
    containers with one host name but their own pids (``--network host``, a restarted pod) are
    two hosts. E.g. ``node-3+4026531836``."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "localhost"
    if len(name) > 32:
        name = f"{name[:20]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    try:
        namespace = re.sub(r"\D", "", os.readlink("/proc/self/ns/pid"))  # 'pid:[4026531836]'
    except OSError:  # not Linux
        namespace = ""
    return f"{name}+{namespace}" if namespace else name


def write_atomic(path: str, data: bytes, overwrite: bool) -> None:
    """Writes ``data`` to a temp file next to ``path``, fsyncs, then renames it into
    place. Without ``overwrite`` the final step is a hard link, which fails
    (FileExistsError) if ``path`` appeared meanwhile; the temp file never remains.
    The temp file is ``.<name>.<pid>@<host_id()>.<random>.tmp`` (any extension of ``path``),
    so ``remove_stale_temporaries`` can tell whose it is."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.{os.getpid()}@{host_id()}.",
                               suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise
            except OSError:  # no hard links on this filesystem
                if os.path.exists(path):
                    raise FileExistsError(path)
                os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def output_path(output_dir: str, src: str, fmt: str = "png") -> str:
    """``output_dir/<stem of src>.<png|tif|jpg>`` (``outputs.EXTENSIONS``)."""
    return os.path.join(output_dir, os.path.splitext(os.path.basename(src))[0] + outputs.EXTENSIONS[fmt])


# ``write_atomic``'s temporary files: .<name>.<pid>@<host>.<random>.tmp, whatever the output's
# extension (mkstemp's random part has no dot; a host id has no "@").
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9._+-]+)\.[a-z0-9_]+\.tmp$")
# Older releases: .<name>.png.<pid>.<random>.tmp and .<name>.png.<random>.tmp (whose host is unknown).
_OLD_TEMPORARY = re.compile(r"^\.(?P<name>.+\.png)\.(?:\d+\.)?[^.@]+\.tmp$")
# A temporary of another host (or of an older release) is stale once this old: a running
# ``write_atomic`` writes its file in one go and renames it at once.
FOREIGN_TEMPORARY_AGE_S = 3600.0


def _temporary_is_stale(name: str, path: str, here: str) -> bool:
    """Whether the file ``name`` (at ``path``) is a temporary of ``write_atomic`` that no running
    process will finish: one of this host (``here``: ``host_id()``) whose process is gone, or
    one of another host or an older release last written over ``FOREIGN_TEMPORARY_AGE_S`` ago."""
    m = _TEMPORARY.match(name)
    if m and m.group("host") == here:
        pid = int(m.group("pid"))
        return pid != os.getpid() and not processes.pid_alive(pid)
    if m or _OLD_TEMPORARY.match(name):
        return time.time() - os.stat(path).st_mtime > FOREIGN_TEMPORARY_AGE_S
    return False


def remove_stale_temporaries(output_dir: str) -> int:
    """Removes the temporary files that killed runs of ``diffraw`` left in ``output_dir``
    (``_temporary_is_stale``: this host's whose process is gone; another host's, whose
    processes this one cannot see, only once an hour old); returns how many. Never touches
    anything else, nor a file another host is still writing."""
    removed, here = 0, host_id()
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        try:
            if _temporary_is_stale(name, path, here) and os.path.isfile(path):
                os.unlink(path)
                removed += 1
        except OSError:
            continue
    return removed


def prepare_output_dir(output_dir: str) -> Optional[str]:
    """Creates ``output_dir`` and checks it takes a file; returns the reason it cannot, or None."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        return "not a folder (--output names an existing file)"
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as e:
        return f"cannot create the output folder ({e.strerror or e})"
    try:
        fd, probe = tempfile.mkstemp(dir=output_dir, prefix=f".diffraw-write-check.{os.getpid()}.",
                                     suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return f"the output folder is not writable ({e.strerror or e})"
    return None


# ---------------------------------------------------------------------------
# Main.


def _err(path: str, reason) -> None:
    text = str(reason).strip() or type(reason).__name__
    if text.startswith(f"{path}: "):  # the reason names the path already
        text = text[len(path) + 2:]
    print(f"error: {path}: {' '.join(text.split())}", file=sys.stderr, flush=True)


CACHE_ENV = "DIFFRAW_CACHE_DIR"
# The cache's size bound: at start, the least recently used programs beyond it are deleted
# (``prune_compilation_cache``) down to 3/4 of it. Not JAX's own LRU bound
# (``jax_compilation_cache_max_size``): it needs ``filelock`` and fails on every write in a
# cache folder written without it (its ``-atime`` files missing).
CACHE_MAX_BYTES = 2 << 30


def enable_compilation_cache() -> Optional[str]:
    """Turns on JAX's persistent compilation cache, so a second run compiles nothing: in
    ``$DIFFRAW_CACHE_DIR`` or ``~/.cache/diffraw-jax/jax`` (JAX's own ``JAX_COMPILATION_CACHE_DIR``
    wins when set; ``DIFFRAW_CACHE_DIR=off`` turns it off). Every program is cached, however
    fast it compiled, unless JAX's own thresholds are set in the environment. The folder is
    kept under ``CACHE_MAX_BYTES`` (``prune_compilation_cache``). Returns the folder."""
    import jax

    folder = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.environ.get(CACHE_ENV) or os.path.join(
        os.path.expanduser("~"), ".cache", "diffraw-jax", "jax")
    if folder == "off":
        return None
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        log.warning("no compilation cache (%s: %s)", folder, e.strerror or e)
        return None
    jax.config.update("jax_compilation_cache_dir", folder)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES" not in os.environ:
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    removed = prune_compilation_cache(folder, CACHE_MAX_BYTES)
    if removed:
        log.info("compilation cache %s: removed %d least recently used programs (bound %.1f GiB)",
                 folder, removed, CACHE_MAX_BYTES / 2**30)
    return folder


def prune_compilation_cache(folder: str, max_bytes: int) -> int:
    """Deletes the least recently used files of ``folder`` (by access time, then modification
    time) until what is left is at most 3/4 of ``max_bytes``, when it holds more than
    ``max_bytes``. Files another process removes meanwhile are skipped. Returns how many it
    deleted."""
    entries = []
    with os.scandir(folder) as it:
        for e in it:
            try:
                if e.is_file(follow_symlinks=False):
                    st = e.stat(follow_symlinks=False)
                    entries.append((max(st.st_atime, st.st_mtime), st.st_size, e.path))
            except OSError:
                continue
    total = sum(size for _, size, _ in entries)
    if total <= max_bytes:
        return 0
    removed = 0
    for _, size, path in sorted(entries):
        if total <= max_bytes * 3 // 4:
            break
        try:
            os.unlink(path)
        except OSError:
            continue
        total -= size
        removed += 1
    return removed


class CompileStats:
    """Counts XLA compilations while it is installed: ``compiled`` (built from scratch), ``cached``
    (read from the persistent cache) and ``seconds`` (both), from JAX's monitoring events."""

    HIT = "/jax/compilation_cache/cache_hits"
    COMPILE = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.cached = self.programs = 0
        self.seconds = 0.0

    @property
    def compiled(self) -> int:
        return self.programs - self.cached

    def _event(self, event, **_):
        if event == self.HIT:
            self.cached += 1

    def _duration(self, event, duration, **_):
        if event == self.COMPILE:
            self.programs += 1
            self.seconds += float(duration)

    def __enter__(self):
        import jax.monitoring as m

        m.register_event_listener(self._event)
        m.register_event_duration_secs_listener(self._duration)
        return self

    def __exit__(self, *exc):
        import jax.monitoring as m

        m.unregister_event_listener(self._event)
        m.unregister_event_duration_listener(self._duration)


# ---------------------------------------------------------------------------
# Several processes (--coordinator_address ...): every host runs ``diffraw`` with the same
# arguments; jax.distributed connects them.

# JAX's shutdown timeout in seconds (default: JAX's, 300): for tests, which show that a host
# finishing long before the others no longer meets it (``wait_for_every_process``).
SHUTDOWN_TIMEOUT_ENV = "DIFFRAW_SHUTDOWN_TIMEOUT_S"
# The end-of-run wait for the other hosts: longer than any share takes. A host that dies ends
# it sooner (JAX's heartbeats, 100 s, fail the wait of every other host).
END_WAIT_S = 7 * 24 * 3600


def start_processes(args) -> Optional[str]:
    """``jax.distributed.initialize`` from --coordinator_address/--num_processes/--process_id
    (before any other use of JAX); returns why it failed, or None."""
    import jax

    timeout = os.environ.get(SHUTDOWN_TIMEOUT_ENV)
    try:
        jax.distributed.initialize(
            coordinator_address=args.coordinator_address, num_processes=args.num_processes,
            process_id=args.process_id, **({"shutdown_timeout_seconds": int(timeout)} if timeout else {}))
    except (RuntimeError, ValueError, TypeError) as e:
        return f"cannot join the other processes ({e})"
    return None


def inputs_differ(files: Sequence[str]) -> Optional[str]:
    """None when every process has the same input list (the same file names in the same order:
    each renders its share of it, ``share_of_this_process``), else why not; compared through
    jax.distributed's key-value store (``parallel.process_values``), so every process learns
    it. One process: None."""
    import jax

    from diffraw_jax import parallel

    n, i = jax.process_count(), jax.process_index()
    if n == 1:
        return None
    names = [os.path.basename(f) for f in files]
    mine = f"{len(names)} {hashlib.sha256(chr(0).join(names).encode()).hexdigest()[:16]}"
    try:
        theirs = parallel.process_values(mine)
    except RuntimeError as e:
        return str(e)
    other = next((j for j in range(n) if theirs[j] != mine), None)
    if other is None:
        return None
    count = theirs[other].split()[0]
    return (f"process {i} has {len(names)} input file{'s' * (len(names) != 1)}, process {other} has {count}"
            f"{' (other names or order)' * (count == str(len(names)))}: "
            "give every process the same --input")


def wait_for_every_process() -> Optional[str]:
    """The end of a run on several processes: waits until every process has come here (up to
    ``END_WAIT_S``; JAX's own shutdown barrier gives up after 300 s and aborts every process,
    however far its share got), then leaves jax.distributed, whose shutdown then finds all at
    once. Returns why the wait failed (another process died), or None."""
    import jax

    from diffraw_jax import parallel

    try:
        parallel.coordination_client().wait_at_barrier("diffraw/end", END_WAIT_S * 1000)
        jax.distributed.shutdown()
    except Exception as e:  # noqa: BLE001 -- jaxlib's errors
        return " ".join(str(e).split())[:300]
    return None


def share_of_this_process(files: List[str], failures: list) -> Tuple[List[str], list]:
    """The inputs this process renders: every ``process_count``-th file from its index (all of
    them in a single process), so no two processes write the same output; input errors are
    reported by process 0 only."""
    import jax

    n, i = jax.process_count(), jax.process_index()
    if n == 1:
        return files, failures
    mine = files[i::n]
    log.info("process %d of %d: %d of the %d inputs", i, n, len(mine), len(files))
    return mine, (failures if i == 0 else [])


def _start(text: str):
    """--start: "auto" or a positive int (argparse type)."""
    if text == "auto":
        return text
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a step (a positive integer) or 'auto', got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _load_pipeline(args):
    from diffraw_jax.inference.pipeline import DiffRAWPipeline

    color = args.color if args.color in (None, "g", "classic", "calibrated") else "image"
    return DiffRAWPipeline.from_checkpoint(
        args.checkpoint, method=args.method, num_steps=args.steps, color=color,
        tile="train" if args.tile is None else args.tile, overlap=args.overlap, batch=args.batch,
        eta=args.eta, step=args.step, other_sampler=args.other_sampler, start=args.start)


def process_file(pipe, path: str, out: str, args) -> int:
    """One input -> ``out`` (raises on any problem); returns the output's pixel count."""
    from diffraw_jax.inference import camera

    with warnings.catch_warnings(record=True) as caught:  # guessed colour, unapplied opcodes: one line each
        warnings.simplefilter("always")
        frame = read_input(path, args)
        prepared = camera.prepare_frame(frame)
        pipe.plan(2 * prepared.planes.shape[0], 2 * prepared.planes.shape[1])  # "smaller than a tile" first
        color_image = None
        if pipe.color == "image":
            color_image = camera.read_color_image(args.color, path, prepared)
        planes, cond = pipe.inputs(prepared, frame, color_image)
    for w in caught:
        log.warning("warning: %s: %s", os.path.basename(path), w.message)
    if pipe.calibrated_model:
        log.info("%s: colour from %s; exposure %+.2f EV", os.path.basename(path), frame.color_source,
                 pipe.last_exposure)
    if pipe.auto_start:
        log.info("%s: condition noise %.4f at mid-grey -> sampler %s", os.path.basename(path),
                 pipe.last_noise, pipe.label)
    img = pipe.sample_planes(planes, cond, seed=args.seed, progress=not args.quiet)
    meta = outputs.Metadata(
        outputs.describe_colour(pipe.color, frame.color_source, args.color, pipe.calibrated_model),
        exif=outputs.CameraExif() if path.lower().endswith(IMAGE_EXTENSIONS) else outputs.read_camera_exif(path))
    data = outputs.encode(camera.finish(img, prepared), args.format, meta, bits16=args.bits16,
                          quality=outputs.DEFAULT_QUALITY if args.quality is None else args.quality)
    write_atomic(out, data, args.overwrite)
    return int(prepared.height) * int(prepared.width)


def export_weights_main(argv: Sequence[str]) -> int:
    """``diffraw export-weights``: a training workdir -> a portable weights folder."""
    from diffraw_jax.checkpoints import weights

    p = argparse.ArgumentParser(
        prog="diffraw export-weights", description="Write a self-contained weights folder (config, "
        "EMA parameters of f and G, manifest with sha256) from a training workdir.")
    p.add_argument("--checkpoint", required=True, metavar="W", help="training workdir")
    p.add_argument("--out", required=True, metavar="DIR", help="new folder (must not exist)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--method", default=None, choices=dtdm.METHODS,
                   help="the sampler the weights ask for (default: the training config's)")
    p.add_argument("--steps", type=int, default=None, help="its step count (default: the config's)")
    p.add_argument("--start", default=None, choices=("s", "auto"),
                   help="where it starts: s (the paper) or auto, per file from its noise (calibrated "
                   "models; docs/real-detail.md). Default: the config's")
    p.add_argument("--start-noise-factor", type=float, default=None, metavar="K",
                   help="auto start: the start noise covers K times the file's noise (default: the config's)")
    p.add_argument("--start-switch", type=int, default=None, metavar="T",
                   help="auto start: from a noise-matched start T on, the sampler from s (default: the config's)")
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    logs.setup(False)
    try:
        manifest = weights.export_weights(args.checkpoint, args.out, step=args.step,
                                          sample_method=args.method, sample_num_steps=args.steps,
                                          sample_start=None if args.start is None else
                                          ("" if args.start == "s" else args.start),
                                          start_noise_factor=args.start_noise_factor,
                                          start_switch=args.start_switch)
    except FileExistsError:
        _err(args.out, "exists; choose a new folder (weights are never overwritten)")
        return 2
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        _err(args.checkpoint, e)
        return 2
    g = manifest.get("color_net")
    print(f"wrote {args.out}: f step {manifest['step']} ({manifest['num_params']:,} parameters"
          + (f"), G step {g['step']} ({g['num_params']:,} parameters" if g else "; no G")
          + f"), {weights.folder_bytes(args.out) / 2**20:.1f} MiB, sampler {manifest['sampler']['label']}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the CLI; returns the exit status (0 ok, 1 some inputs failed, 2 usage/checkpoint)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["export-weights"]:
        return export_weights_main(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed the usage error
        return int(e.code or 0)
    # --method/--steps: checked with the model's s by factory.sampler_settings (the one check).
    for flag, value, lo in (("--batch", args.batch, 1), ("--tile", args.tile, 0),
                            ("--overlap", args.overlap, 0)):
        if value is not None and value < lo:
            parser.print_usage(sys.stderr)
            print(f"diffraw: error: {flag} must be >= {lo}", file=sys.stderr)
            return 2
    for misplaced, problem in ((args.quality is not None and args.format != "jpeg",
                                "--quality is for --format jpeg only"),
                               (args.bits16 and args.format == "jpeg",
                                "--bits16 is for PNG: JPEG is 8-bit (and TIFF always 16-bit)")):
        if misplaced:
            parser.print_usage(sys.stderr)
            print(f"diffraw: error: {problem}", file=sys.stderr)
            return 2
    if not 0 <= args.seed < 2**32:
        parser.print_usage(sys.stderr)
        print("diffraw: error: --seed must be in [0, 2**32)", file=sys.stderr)
        return 2
    if args.color not in (None, "g", "classic", "calibrated") and not os.path.exists(args.color):
        print(f"error: {args.color}: --color must be calibrated, g, classic, or an existing image/folder",
              file=sys.stderr)
        return 2
    logs.setup(args.verbose)
    created = not os.path.exists(args.output)
    problem = prepare_output_dir(args.output)  # before the model loads: nothing is sampled in vain
    if problem:
        _err(args.output, problem)
        return 2
    several = bool(args.coordinator_address)
    if several:
        problem = start_processes(args)
        if problem:
            _err(args.coordinator_address, problem)
            _remove_if_created(args.output, created)
            return 2
    try:
        status = _checked_run(args, created)
    except KeyboardInterrupt:
        raise
    except BaseException:
        if several:  # the others are not left waiting for this one
            wait_for_every_process()
        raise
    if several:
        problem = wait_for_every_process()
        if problem:
            import jax

            _err(f"process {jax.process_index()}", f"the other processes did not finish ({problem})")
            status = max(status, 1)
    return status


def _remove_if_created(output_dir: str, created: bool) -> None:
    """Leaves no empty folder behind for a run that did nothing."""
    if created:
        with contextlib.suppress(OSError):
            os.rmdir(output_dir)


def _checked_run(args, created: bool) -> int:
    """Expands the inputs and refuses, before any work, a run whose processes were given
    different inputs or whose inputs share an output name (exit 2); then ``_run``."""
    enable_compilation_cache()
    files, failures = expand_inputs(args.input, args.output)
    differ = inputs_differ(files) if args.coordinator_address else None
    refusals = ([("--input", differ)] if differ else []) + duplicate_outputs(files, args.output)
    if refusals:
        for path, reason in refusals:
            _err(path, reason)
        _remove_if_created(args.output, created)
        return 2
    with CompileStats() as stats:
        return _run(args, files, failures, created, stats)


def _run(args, files: List[str], failures: list, created: bool, stats: "CompileStats") -> int:
    """Loads the model and renders this process's share of ``files`` (no two with one output);
    the last log line gives the time per megapixel."""
    t0 = time.perf_counter()
    try:
        pipe = _load_pipeline(args)
    except (OSError, ValueError, RuntimeError, KeyError, AttributeError) as e:
        _err(args.checkpoint, e)
        _remove_if_created(args.output, created)
        return 2
    if "(student of " in pipe.label:
        log.warning("warning: --other-sampler: running %s, which this student was not distilled for",
                    pipe.label)
    log.info(
        "sampler %s: %d network evaluations per tile", pipe.label, pipe.num_evaluations)
    removed = remove_stale_temporaries(args.output)
    if removed:
        log.info("removed %d temporary file%s left by an interrupted run in %s", removed,
                 "s" * (removed > 1), args.output)
    files, failures = share_of_this_process(files, failures)
    for path, reason in failures:
        _err(path, reason)
    out_paths = {path: output_path(args.output, path, args.format) for path in files}
    existing = [p for p in files if os.path.exists(out_paths[p])] if not args.overwrite else []
    if existing:
        log.info("skipping %d input%s whose output exists (--overwrite replaces them)", len(existing),
                 "s" * (len(existing) > 1))
    failed, done, pixels = len(failures), 0, 0
    for path in files:
        out = out_paths[path]
        if path in existing:
            continue
        try:
            pixels += process_file(pipe, path, out, args) or 0
        except FileExistsError:
            failed += 1
            _err(path, f"output {out} exists (use --overwrite to replace it)")
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 -- report, go on with the other inputs
            failed += 1
            _err(path, e)
        else:
            done += 1
            print(f"wrote {out}", flush=True)
    skipped = f", skipped {len(existing)} (outputs exist; --overwrite replaces them)" if existing else ""
    print(f"processed {done}, failed {failed}{skipped}", flush=True)
    seconds = time.perf_counter() - t0
    compiling = (f"compiled {stats.compiled} program{'s' * (stats.compiled != 1)}, {stats.cached} from the cache, "
                 f"{stats.seconds:.1f} s")
    if pixels:
        log.info("%.1f s for %.3g MP: %.3g s per megapixel (%s)", seconds, pixels / 1e6, seconds / (pixels / 1e6),
                 compiling)
    else:
        log.info("%.1f s, nothing rendered (%s)", seconds, compiling)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

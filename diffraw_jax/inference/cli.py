"""The ``diffraw`` command: RAW -> sRGB on full frames, and portable weights.

    diffraw --checkpoint W --input PATH [PATH ...] --output DIR
        [--steps N] [--method dtdm|dtdm_ddim|ddpm] [--color calibrated|g|classic|IMAGE] [--seed S]
        [--tile T] [--overlap O] [--batch B] [--step N] [--overwrite] [--other-sampler]
        [--black 63] [--white 1020] [--cfa RGGB] [--bits16] [--quiet]
    diffraw export-weights --checkpoint W --out DIR [--step N] [--method M] [--steps N]

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

Each input becomes ``DIR/<stem>.png``: 8-bit sRGB, or 16-bit with ``--bits16``,
covering the whole mosaic in every CFA layout, in the camera's orientation
(LibRaw ``sizes.flip``). It is written to a temporary file in DIR and then
renamed, so a crash never leaves a half-written output. An existing output is
kept and its input skipped unless ``--overwrite``, so rerunning an interrupted
batch finishes the rest (and says how many it skipped); the hidden temporary
files of a killed run (``.<name>.png.<pid>.<random>.tmp``, their process gone)
are removed. The output folder is checked (a folder, writable) before any
sampling.

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
any failed, 2 for usage, checkpoint or output-folder errors (nothing processed).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import re
import struct
import sys
import tempfile
import time
import zlib
from typing import List, Optional, Sequence, Tuple

import numpy as np

from diffraw_jax import dtdm, raw
from diffraw_jax.runtime import logs, processes
from diffraw_jax.inference.camera import (COLOR_IMAGE_EXTENSIONS, InputError, read_bayer_image,
                                          read_camera_raw)

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
                   "(docs/real-detail.md; calibrated models). Default: s")
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


def read_input(path: str, args):
    """BayerFrame for ``path``: PNG/TIFF mosaics by extension, everything else via rawpy."""
    if path.lower().endswith(IMAGE_EXTENSIONS):
        return read_bayer_image(path, args.black, args.white, args.cfa)
    return read_camera_raw(path)


# ---------------------------------------------------------------------------
# Outputs.


# zlib level of the PNGs: 1 encodes a 9 MP frame ~4x faster than the usual 6 for files
# ~10-25% larger (benchmarks/cli_profile.py); the pixels are the same.
PNG_ZLIB_LEVEL = 1


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def encode_png16(rgb: np.ndarray) -> bytes:
    """uint16 [H, W, 3] -> 16-bit RGB PNG bytes (filter 0, zlib level ``PNG_ZLIB_LEVEL``)."""
    h, w, _ = rgb.shape
    rows = np.ascontiguousarray(rgb.astype(">u2")).view(np.uint8).reshape(h, w * 6)
    scan = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(scan, PNG_ZLIB_LEVEL)) + _png_chunk(b"IEND", b""))


def encode_png(img01: np.ndarray, bits16: bool = False) -> bytes:
    """sRGB float [H, W, 3] in [0, 1] -> PNG bytes, 8-bit (or 16-bit)."""
    x = np.clip(np.asarray(img01, np.float64), 0.0, 1.0)
    if bits16:
        return encode_png16(np.round(x * 65535.0).astype(np.uint16))
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.round(x * 255.0).astype(np.uint8), "RGB").save(buf, format="PNG",
                                                                    compress_level=PNG_ZLIB_LEVEL)
    return buf.getvalue()


def write_atomic(path: str, data: bytes, overwrite: bool) -> None:
    """Writes ``data`` to a temp file next to ``path``, fsyncs, then renames it into
    place. Without ``overwrite`` the final step is a hard link, which fails
    (FileExistsError) if ``path`` appeared meanwhile; the temp file never remains."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.{os.getpid()}.",
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


def output_path(output_dir: str, src: str) -> str:
    return os.path.join(output_dir, os.path.splitext(os.path.basename(src))[0] + ".png")


# ``write_atomic``'s temporary files: .<name>.png.<pid>.<random>.tmp (older releases: no pid).
_TEMPORARY = re.compile(r"^\.(?P<name>.+\.png)\.(?:(?P<pid>\d+)\.)?[^.]+\.tmp$")
_OLD_TEMPORARY_AGE_S = 60.0


def remove_stale_temporaries(output_dir: str) -> int:
    """Removes the temporary files that killed runs of ``diffraw`` left in ``output_dir``
    (their process is gone; pid-less ones from older releases once a minute old);
    returns how many. Never touches anything else."""
    removed = 0
    for name in os.listdir(output_dir):
        m = _TEMPORARY.match(name)
        if not m:
            continue
        path = os.path.join(output_dir, name)
        try:
            if m.group("pid") is not None:
                stale = int(m.group("pid")) != os.getpid() and not processes.pid_alive(int(m.group("pid")))
            else:
                stale = time.time() - os.stat(path).st_mtime > _OLD_TEMPORARY_AGE_S
            if stale and os.path.isfile(path):
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


def enable_compilation_cache() -> Optional[str]:
    """Turns on JAX's persistent compilation cache, so a second run compiles nothing: in
    ``$DIFFRAW_CACHE_DIR`` or ``~/.cache/diffraw-jax/jax`` (JAX's own ``JAX_COMPILATION_CACHE_DIR``
    wins when set; ``DIFFRAW_CACHE_DIR=off`` turns it off). Every program is cached, however
    fast it compiled, unless JAX's own thresholds are set in the environment. Returns the folder."""
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
    return folder


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

    frame = read_input(path, args)
    prepared = camera.prepare_frame(frame)
    pipe.plan(2 * prepared.planes.shape[0], 2 * prepared.planes.shape[1])  # "smaller than a tile" first
    color_image = None
    if pipe.color == "image":
        color_image = camera.read_color_image(args.color, path, prepared)
    planes, cond = pipe.inputs(prepared, frame, color_image)
    if pipe.calibrated_model:
        ev = pipe.last_exposure
        asked = float(frame.baseline_exposure or 0.0)
        note = (f"{ev:+.2f} EV" if abs(ev - asked) < 1e-6 else
                f"{ev:+.2f} EV (the file asks {asked:+.2f} EV, which would clip more than 1% of the pixels)")
        log.info("%s: colour from %s; exposure %s", os.path.basename(path), frame.color_source, note)
    if pipe.auto_start:
        log.info("%s: condition noise %.4f at mid-grey -> sampler %s", os.path.basename(path),
                 pipe.last_noise, pipe.label)
    img = pipe.sample_planes(planes, cond, seed=args.seed, progress=not args.quiet)
    write_atomic(out, encode_png(camera.finish(img, prepared), args.bits16), args.overwrite)
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
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    logs.setup(False)
    try:
        manifest = weights.export_weights(args.checkpoint, args.out, step=args.step,
                                          sample_method=args.method, sample_num_steps=args.steps)
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
    if args.coordinator_address:
        import jax

        jax.distributed.initialize(coordinator_address=args.coordinator_address,
                                   num_processes=args.num_processes, process_id=args.process_id)
    enable_compilation_cache()
    with CompileStats() as stats:
        return _run(args, created, stats)


def _run(args, created: bool, stats: "CompileStats") -> int:
    """Loads the model and renders every input; the last log line gives the time per megapixel."""
    t0 = time.perf_counter()
    try:
        pipe = _load_pipeline(args)
    except (OSError, ValueError, RuntimeError, KeyError, AttributeError) as e:
        _err(args.checkpoint, e)
        if created:  # leave no empty folder behind for a run that did nothing
            with contextlib.suppress(OSError):
                os.rmdir(args.output)
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
    files, failures = expand_inputs(args.input, args.output)
    files, failures = share_of_this_process(files, failures)
    for path, reason in failures:
        _err(path, reason)
    outputs = {path: output_path(args.output, path) for path in files}
    existing = [p for p in files if os.path.exists(outputs[p])] if not args.overwrite else []
    if existing:
        log.info("skipping %d input%s whose output exists (--overwrite replaces them)", len(existing),
                 "s" * (len(existing) > 1))
    failed, done, claimed, pixels = len(failures), 0, {}, 0
    for path in files:
        out = outputs[path]
        try:
            if out in claimed:
                raise InputError(f"output {out} is also the output of {claimed[out]}")
            claimed[out] = path
            if path in existing:
                continue
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

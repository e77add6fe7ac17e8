"""A real camera file through ``diffraw``, against LibRaw's calibrated rendering of it (issue 21).

    python scripts/real_camera.py --input DNG --checkpoint MODEL [--crop 768x512] \
        [--out results/real_camera] [-- extra diffraw args]

Renders the RAW file two ways:

* **diffraw**, as a user runs it. Whole frame (no ``--crop``): the ``diffraw`` command in a
  subprocess, ``diffraw --checkpoint MODEL --input DNG --output TMP --bits16 --quiet`` plus the
  arguments after ``--`` (the model's own defaults otherwise; ``--bits16`` only keeps the
  statistics free of 8-bit rounding). With ``--crop WxH``: the centre W x H of the mosaic, its
  offsets even so the CFA phase is kept, through the Python API
  (``DiffRAWPipeline.from_checkpoint(MODEL)``, the model's defaults) -- seconds instead of
  minutes on a CPU; the extra arguments may then be ``--method``, ``--steps``, ``--color
  g|classic``, ``--seed``, ``--tile``, ``--other-sampler`` (as diffraw's).
* **LibRaw's calibrated rendering** (the reference): rawpy ``postprocess(use_camera_wb=True,
  output_bps=16, no_auto_bright=True, gamma=(2.4, 12.92))``: the file's as-shot white balance,
  AHD demosaic, the file's colour matrix to sRGB, the sRGB curve, no automatic brightening;
  plus ``exp_shift = 2 ** EV`` with the EV diffraw renders the file at (its BaselineExposure
  + BaselineExposureOffset: ``baseline_exposure``; clamped to LibRaw's usable 0.25..8) and
  ``exp_preserve_highlights=1.0``: LibRaw's highlight roll-off, the one diffraw applies
  (``calibration.highlight_rolloff``). Whole frame: LibRaw's picture cut to the DNG's
  DefaultCrop (rawpy's ``sizes.crop_*``), which diffraw's output is. With ``--crop`` the same
  region is cut from it (in sensor layout, before the orientation).

Scores (``diffraw_jax.evaluation.metrics.real_camera``): the low-pass colour difference of the diffraw
output against the reference (CIEDE2000 after Gaussian low-passes of ``--sigma`` px and one
exposure gain: mean, median, p95), the 16-px lattice statistic of both and their ratio, and the
100%-view statistics of issue 28 (``detail_statistics``: chroma noise, luma noise, detail energy,
detail correlation against LibRaw AHD after registration and matched tone curves). With
``--references`` the 100%-view table also scores the model's own condition c and LibRaw's DHT
demosaic (another classical rendering) against the same reference. With ``--crop`` the extra
arguments may also be ``--start T`` (a dtdm_ddim sampler started at step T; docs/real-detail.md).

Writes ``OUT/summary.json``, ``OUT/summary.md`` (the numbers, the wall time of the diffraw
rendering, the commands, the date and the machine) and ``OUT/side_by_side.jpg`` (diffraw |
LibRaw, downscaled to at most ``--jpeg_width`` px wide).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from diffraw_jax.evaluation.metrics import real_camera  # noqa: E402

# gamma=(2.4, 12.92): the sRGB curve (LibRaw's default is BT.709's 2.222/4.5), so that both
# images are linearised exactly by the inverse sRGB curve the colour statistic applies.
LIBRAW_ARGS = dict(use_camera_wb=True, output_bps=16, no_auto_bright=True, gamma=(2.4, 12.92))


def parse_crop(text: str):
    """'WxH' -> (W, H), both positive and even (whole 2x2 Bayer cells); ValueError otherwise."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--crop must be WIDTHxHEIGHT, e.g. 768x512, got {text!r}") from None
    if w <= 0 or h <= 0 or w % 2 or h % 2:
        raise ValueError(f"--crop sides must be positive and even (whole Bayer cells), got {text!r}")
    return w, h


def crop_box(height: int, width: int, crop):
    """(top, left, h, w) of the centre crop (w, h) of a [height, width] mosaic, top and left even
    (the CFA phase kept). ValueError when the crop is larger than the mosaic."""
    cw, ch = crop
    if cw > width or ch > height:
        raise ValueError(f"--crop {cw}x{ch} is larger than the mosaic ({width}x{height})")
    return (height - ch) // 4 * 2, (width - cw) // 4 * 2, ch, cw


def baseline_exposure(path: str):
    """(the file's exposure, the EV diffraw renders it with), both floats (EV): the DNG's
    BaselineExposure + BaselineExposureOffset (0 for other RAWs), read by
    ``diffraw_jax.inference.camera.read_camera_raw``; diffraw applies it as the file asks (with
    LibRaw's highlight roll-off), so the two are the same."""
    from diffraw_jax.inference import camera

    asked = float(camera.read_camera_raw(path).baseline_exposure or 0.0)
    return asked, asked


def libraw_reference(path: str, *, exp_shift=None, oriented: bool = True, demosaic=None) -> np.ndarray:
    """LibRaw's rendering (``LIBRAW_ARGS``, ``exp_shift`` if given) as float32 [H, W, 3] in [0, 1];
    ``oriented=False``: in sensor layout (``user_flip=0``); ``demosaic``: a
    ``rawpy.DemosaicAlgorithm`` other than LibRaw's default AHD."""
    import rawpy

    kw = dict(LIBRAW_ARGS)
    if demosaic is not None:
        kw["demosaic_algorithm"] = demosaic
    if exp_shift is not None:
        kw["exp_shift"] = float(exp_shift)
        kw["exp_preserve_highlights"] = 1.0
    if not oriented:
        kw["user_flip"] = 0
    with rawpy.imread(path) as r:
        img = r.postprocess(**kw)
        s = r.sizes
        if oriented and s.crop_width and s.crop_height and (s.crop_width, s.crop_height) != (s.width, s.height):
            from diffraw_jax.inference import camera  # the DNG's DefaultCrop, as diffraw applies it

            img = camera.unorient(img, s.flip)
            img = img[s.crop_top_margin:s.crop_top_margin + s.crop_height,
                      s.crop_left_margin:s.crop_left_margin + s.crop_width]
            img = camera.orient(img, s.flip)
    return img.astype(np.float32) / 65535.0


def read_png16(path: str) -> np.ndarray:
    """diffraw's 16-bit (``--bits16``) RGB PNG -> float32 [H, W, 3] in [0, 1] (OpenCV: PIL reads
    16-bit RGB as 8 bits)."""
    import cv2

    a = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if a is None or a.ndim != 3:
        raise RuntimeError(f"diffraw wrote no RGB image at {path}")
    scale = 65535.0 if a.dtype == np.uint16 else 255.0
    return a[..., 2::-1].astype(np.float32) / scale  # BGR -> RGB


def render_cli(dng: str, checkpoint: str, extra) -> tuple:
    """diffraw in a subprocess -> (sRGB float32 [H, W, 3], wall seconds, the command)."""
    with tempfile.TemporaryDirectory(prefix="real_camera_") as tmp:
        cmd = ["diffraw", "--checkpoint", checkpoint, "--input", dng, "--output", tmp,
               "--bits16", "--quiet", *extra]
        exe = os.path.join(os.path.dirname(sys.executable), "diffraw")
        run = [exe if os.path.exists(exe) else "diffraw", *cmd[1:]]
        t0 = time.perf_counter()
        r = subprocess.run(run, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            raise RuntimeError(f"diffraw failed (exit {r.returncode}): {(r.stderr or r.stdout).strip()[-2000:]}")
        out = os.path.join(tmp, os.path.splitext(os.path.basename(dng))[0] + ".png")
        shown = [("TMP" if c == tmp else c) for c in cmd]
        return read_png16(out), wall, " ".join(shlex.quote(c) for c in shown)


def _pipeline_args(extra):
    p = argparse.ArgumentParser(prog="real_camera.py ... --crop WxH --", add_help=False)
    p.add_argument("--method")
    p.add_argument("--steps", type=int)
    p.add_argument("--color", default=None, choices=["calibrated", "g", "classic"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tile", type=int)
    p.add_argument("--other-sampler", action="store_true")
    p.add_argument("--start", type=lambda v: v if v == "auto" else int(v))
    p.add_argument("--start-noise-factor", type=float)
    p.add_argument("--start-switch", type=int)
    a, unknown = p.parse_known_args(extra)
    if unknown:
        raise ValueError(f"with --crop the diffraw arguments may be --method, --steps, --color, --seed, "
                         f"--tile, --other-sampler, --start, --start-noise-factor, --start-switch; not {' '.join(unknown)}")
    return a


def crop_frame(dng: str, crop, exposure: float):
    """(the centre crop of the file's mosaic as a BayerFrame in sensor layout (flip 0) rendered at
    ``exposure`` EV, (top, left, h, w), the file's LibRaw flip code); ``crop`` None: the whole
    mosaic (still at ``exposure``, still flip 0) with the file's DefaultCrop, whose box is
    returned (what diffraw's whole-frame output covers)."""
    import dataclasses

    from diffraw_jax.inference import camera

    frame = camera.read_camera_raw(dng)
    if crop is None:
        top, left, h, w = frame.crop if frame.crop is not None else (0, 0) + frame.mosaic.shape
        return (dataclasses.replace(frame, flip=0, baseline_exposure=exposure), (top, left, h, w),
                frame.flip)
    else:
        top, left, h, w = crop_box(*frame.mosaic.shape, crop)
    sub = camera.BayerFrame(mosaic=frame.mosaic[top:top + h, left:left + w], cfa=frame.cfa,
                            black_level=frame.black_level, white_level=frame.white_level,
                            wb_gains=frame.wb_gains, ccm=frame.ccm, flip=0,
                            baseline_exposure=exposure,  # the whole frame's (``baseline_exposure``)
                            color_source=frame.color_source)
    return sub, (top, left, h, w), frame.flip


def render_crop(dng: str, checkpoint: str, crop, extra, exposure: float) -> tuple:
    """The centre crop of the mosaic through DiffRAWPipeline -> (sRGB float32 [h, w, 3] in sensor
    layout, wall seconds, a description of the call, (top, left, h, w), LibRaw's flip code)."""
    from diffraw_jax.inference import DiffRAWPipeline

    a = _pipeline_args(extra)
    sub, (top, left, h, w), flip = crop_frame(dng, crop, exposure)
    kw = dict(method=a.method, num_steps=a.steps, color=a.color, other_sampler=a.other_sampler, start=a.start,
              start_noise_factor=a.start_noise_factor, start_switch=a.start_switch)
    if a.tile is not None:
        kw["tile"] = a.tile or None
    t0 = time.perf_counter()
    pipe = DiffRAWPipeline.from_checkpoint(checkpoint, **kw)
    out = pipe.process(sub, seed=a.seed)
    wall = time.perf_counter() - t0
    if pipe.auto_start:
        kw["start"] = f"auto: t={pipe.settings.start or pipe.settings.num_steps or pipe.settings.s}, condition noise {pipe.last_noise:.4f}"
    desc = (f"DiffRAWPipeline.from_checkpoint({checkpoint!r}, "
            + ", ".join(f"{k}={v!r}" for k, v in kw.items() if v not in (None, False)) + ")"
            + f".process(centre crop {w}x{h} of the mosaic at row {top}, column {left}, seed={a.seed})")
    return out, wall, desc, (top, left, h, w), flip


def reference_renderings(dng: str, checkpoint: str, crop, exposure: float, exp_shift: float) -> dict:
    """The two other renderings the 100%-view table compares, of the crop (``crop`` None: the whole
    mosaic), oriented like LibRaw's output, sRGB float32 [H, W, 3] in [0, 1]:

    * ``condition``: the model's own condition c (no network runs): for a calibrated model the
      classical ISP with the file's calibration at ``exposure`` EV (``DiffRAWPipeline.inputs``);
    * ``libraw_dht``: LibRaw with ``LIBRAW_ARGS`` and ``exp_shift`` but the DHT demosaic."""
    import rawpy

    from diffraw_jax.inference import DiffRAWPipeline, camera

    sub, (top, left, h, w), flip = crop_frame(dng, crop, exposure)
    pipe = DiffRAWPipeline.from_checkpoint(checkpoint)
    prepared = camera.prepare_frame(sub)
    _, cond = pipe.inputs(prepared, sub)
    cond = camera.finish(cond, prepared)  # sensor layout (the frame's flip is 0)
    dht = libraw_reference(dng, exp_shift=exp_shift, oriented=False,
                           demosaic=rawpy.DemosaicAlgorithm.DHT)[top:top + h, left:left + w]
    return {"condition": camera.orient(cond, flip), "libraw_dht": camera.orient(dht, flip)}


def detail_rows(out: np.ndarray, ref: np.ndarray, references: dict) -> dict:
    """The 100%-view statistics (``real_camera.detail_statistics``) of diffraw's ``out`` and of each
    of ``references`` (name -> sRGB image of the same region) against LibRaw's ``ref``."""
    rows = {"diffraw": real_camera.detail_statistics(out, ref)}
    for name, img in references.items():
        rows[name] = real_camera.detail_statistics(img, ref)
    return rows


def side_by_side(left: np.ndarray, right: np.ndarray, path: str, max_width: int = 1600, gap: int = 8) -> None:
    """Writes ``left | right`` (sRGB [H, W, 3] in [0, 1], one shape) as a JPEG at most ``max_width`` wide."""
    from PIL import Image

    h, w = left.shape[:2]
    scale = min(1.0, (max_width - gap) / (2 * w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    tiles = [Image.fromarray(np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)).resize(size, Image.LANCZOS)
             for x in (left, right)]
    canvas = Image.new("RGB", (2 * size[0] + gap, size[1]), (255, 255, 255))
    canvas.paste(tiles[0], (0, 0))
    canvas.paste(tiles[1], (size[0] + gap, 0))
    canvas.save(path, quality=90)


def machine() -> dict:
    info = {"node": platform.node(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "python": platform.python_version()}
    try:
        import jax

        info["jax_devices"] = [str(d) for d in jax.devices()]
    except Exception as e:  # noqa: BLE001 (informational only)
        info["jax_devices"] = f"unavailable: {e}"
    return info


def evaluate(out01: np.ndarray, ref01: np.ndarray, sigma: float, period: int, references=None) -> dict:
    """The statistics of issues 21 and 28 of ``out01`` against LibRaw's ``ref01`` (both [H, W, 3] in
    [0, 1]): colour, lattice, and the 100%-view ``detail`` rows (diffraw and each of ``references``,
    name -> image)."""
    if out01.shape != ref01.shape:
        raise ValueError(f"diffraw's output {out01.shape} and LibRaw's rendering {ref01.shape} differ in size")
    lat_out = real_camera.lattice_statistic(out01, period)
    lat_ref = real_camera.lattice_statistic(ref01, period)
    return {"color_delta_e2000": real_camera.low_pass_color_difference(out01, ref01, sigma),
            "lowpass_sigma_px": sigma, "lattice_period_px": period,
            "lattice_diffraw": lat_out, "lattice_libraw": lat_ref,
            "lattice_ratio": lat_out / lat_ref if lat_ref > 0 else float("inf"),
            "detail": detail_rows(out01, ref01, references or {})}


#: Row names of the 100%-view table in summary.md.
ROW_NAMES = {"diffraw": "diffraw", "condition": "the model's condition c", "libraw_dht": "LibRaw DHT demosaic"}


def write_summary(out_dir: str, summary: dict) -> None:
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    s, de = summary["scores"], summary["scores"]["color_delta_e2000"]
    lines = [
        f"# {os.path.basename(summary['input'])} through diffraw, against LibRaw",
        "",
        f"Model `{summary['checkpoint']}`; {summary['region']}; {summary['date']} on {summary['machine']['node']} "
        f"({summary['machine']['cpu_count']} CPUs, {', '.join(summary['machine'].get('jax_devices') or []) if isinstance(summary['machine'].get('jax_devices'), list) else summary['machine'].get('jax_devices')}).",
        "",
        "| statistic | value |",
        "|---|---|",
        f"| low-pass colour, CIEDE2000 mean / median / p95 (sigma {s['lowpass_sigma_px']:g} px, one exposure gain "
        f"{de['gain']:.3f}) | {de['mean']:.2f} / {de['median']:.2f} / {de['p95']:.2f} |",
        f"| lattice statistic at {s['lattice_period_px']} px: diffraw | {s['lattice_diffraw']:.2f} |",
        f"| lattice statistic: LibRaw | {s['lattice_libraw']:.2f} |",
        f"| lattice ratio diffraw / LibRaw | {s['lattice_ratio']:.1f} |",
        f"| diffraw wall time | {summary['wall_s']:.1f} s |",
        "",
        "100%-view statistics against LibRaw AHD (ratios after registration and matched tone curves; "
        "`real_camera.detail_statistics`):",
        "",
        "| rendering | chroma noise | luma noise | detail energy | detail correlation |",
        "|---|---|---|---|---|",
        *[f"| {ROW_NAMES.get(k, k)} | {d['chroma_noise']:.2f} | {d['luma_noise']:.2f} | {d['detail_energy']:.2f} "
          f"| {d['detail_correlation']:.3f} |" for k, d in s["detail"].items()],
        "",
        f"- diffraw: `{summary['diffraw_command']}`",
        f"- LibRaw: `{summary['libraw_command']}`",
        f"- BaselineExposure: {summary['baseline_exposure']:+.2f} EV; rendered at {summary['exposure_used']:+.2f} EV "
        "(with LibRaw's highlight roll-off, as the reference)",
        "- Definitions: `diffraw_jax/evaluation/metrics/real_camera.py` (low_pass_color_difference, lattice_statistic).",
        "",
        "![diffraw | LibRaw](side_by_side.jpg)",
        "",
    ]
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write("\n".join(lines))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, help="a camera RAW (DNG) file")
    p.add_argument("--checkpoint", required=True, help="a weights folder or training workdir")
    p.add_argument("--crop", help="WxH: the centre of the mosaic only, through the Python API")
    p.add_argument("--out", default="results/real_camera")
    p.add_argument("--sigma", type=float, default=real_camera.LOWPASS_SIGMA, help="low-pass sigma, px")
    p.add_argument("--period", type=int, default=16, help="lattice period, px")
    p.add_argument("--jpeg_width", type=int, default=1600)
    p.add_argument("--references", action="store_true",
                   help="also score the model's condition c and LibRaw's DHT demosaic against LibRaw AHD")
    a = p.parse_args(argv)
    try:
        if not os.path.isfile(a.input):
            raise ValueError(f"no such file: {a.input}")
        crop = parse_crop(a.crop) if a.crop else None
        if crop is not None:
            real_camera.check_lattice_size(crop[1], crop[0], a.period)
        ev, ev_used = baseline_exposure(a.input)
        exp_shift = float(np.clip(2.0 ** ev_used, 0.25, 8.0))
        libraw_cmd = (f"rawpy.imread({a.input!r}).postprocess("
                      + ", ".join(f"{k}={v!r}" for k, v in LIBRAW_ARGS.items())
                      + (f", exp_shift={exp_shift:.4g}, exp_preserve_highlights=1.0" if exp_shift is not None else "") + ")")
        from diffraw_jax.inference import camera

        references = {}
        if crop is None:
            out, wall, cmd = render_cli(a.input, a.checkpoint, extra)
            ref = libraw_reference(a.input, exp_shift=exp_shift)
            region = f"whole frame {out.shape[1]}x{out.shape[0]}"
            box, flip = (0, 0) + ref.shape[:2], None
        else:
            out, wall, cmd, box, flip = render_crop(a.input, a.checkpoint, crop, extra, ev_used)
            top, left, h, w = box
            ref = libraw_reference(a.input, exp_shift=exp_shift, oriented=False)[top:top + h, left:left + w]
            out, ref = camera.orient(out, flip), camera.orient(ref, flip)
            libraw_cmd += " (user_flip=0), the same crop, then oriented"
            region = f"centre crop {w}x{h} of the mosaic (row {top}, column {left})"
        if a.references:
            references = reference_renderings(a.input, a.checkpoint, crop, ev_used, exp_shift)
        scores = evaluate(out, ref, a.sigma, a.period, references)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"real_camera.py: error: {e}", file=sys.stderr)
        return 2
    os.makedirs(a.out, exist_ok=True)
    summary = {"input": a.input, "checkpoint": a.checkpoint, "region": region, "scores": scores,
               "wall_s": wall, "diffraw_command": cmd, "libraw_command": libraw_cmd,
               "baseline_exposure": ev, "exposure_used": ev_used, "exp_shift": exp_shift,
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": machine()}
    write_summary(a.out, summary)
    side_by_side(out, ref, os.path.join(a.out, "side_by_side.jpg"), a.jpeg_width)
    de = scores["color_delta_e2000"]
    print(f"colour dE2000 mean {de['mean']:.2f} (median {de['median']:.2f}, p95 {de['p95']:.2f}); lattice "
          f"{scores['lattice_diffraw']:.2f} vs LibRaw {scores['lattice_libraw']:.2f}; {wall:.1f} s -> {a.out}")
    for k, d in scores["detail"].items():
        print(f"{ROW_NAMES.get(k, k)}: chroma noise {d['chroma_noise']:.2f}, luma noise {d['luma_noise']:.2f}, "
              f"detail energy {d['detail_energy']:.2f}, correlation {d['detail_correlation']:.3f} (vs LibRaw AHD)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

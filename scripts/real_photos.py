"""Real-photo check of a trained DiffRAW model: photographs shipped inside installed packages,
unprocessed to RAW with another camera's calibration, rendered three ways and scored.

    python scripts/real_photos.py --model PATH [--out results/real_photos] \
        [--method dtdm_ddim --steps 10] [--size 256] [--photos astronaut,coffee,...] [--synthetic 6]

The photographs (no download): scikit-image's ``astronaut``, ``chelsea``, ``coffee``,
``rocket``, ``motorcycle_left`` and matplotlib's ``grace_hopper`` (``PHOTOS``; a path
to any RGB image works too). Each is centre-cropped to ``--size`` px and unprocessed
with the project's own generator, ``diffraw_jax.data.synthetic_zrr.unprocess``, but with a camera
the training data never shows (``CAMERA``):

* colour matrix: the Canon EOS 5D Mark III's, built from dcraw's ``adobe_coeff``
  table the way dcraw (and ``diffraw_jax.inference.camera``) does,
  ``diffraw_jax.color.srgb_matrix_from_cam_xyz``. Its entries differ from
  ``synthetic_zrr.BASE_CCM`` by up to 0.52 and from each of the generator's other base
  matrices (``synthetic_zrr.CAMERA_CCMS``) by at least 0.45 in some entry; training perturbs
  BASE_CCM by N(0, 0.1) per entry and the others by N(0, 0.04) (``synthetic_zrr.random_ccm``);
* white balance gains (1.4, 1, 2.5) (a warm, tungsten-like light): inside the training
  ranges since issue #21 (R ~ U(1.3, 2.8), B ~ U(1.2, 2.8): daylight to tungsten), so the
  camera's colour matrix is what is new;
* no misalignment warp (the photo stays the pixel-aligned reference), optics blur
  sigma 1.0 px, exposure 0.75, noise shot 0.8 / read 1.5 codes (all inside the
  training ranges: only the camera's colour is new).

The renderings: (a) the classical ISP given the TRUE calibration (white balance
``gains / exposure``, i.e. the exposure given back as a digital gain, and the true
matrix): an oracle ISP; (b) the model's colour condition c: G(w) for a paper model, the
calibrated classical ISP for a calibrated model (``model.condition = "calibrated"``,
given the camera's true calibration as a DNG would carry it); (c) DiffRAW run as
users run it, ``DiffRAWPipeline.from_checkpoint(PATH, method, num_steps)`` (the model's own colour)
with the training crop as tile. Each is scored against the photo crop with the
project's metrics (8-bit PSNR / SSIM, LPIPS-Alex; ``metrics.compute_metrics``,
"original" protocol) plus diagnostics that say where a gap comes from (``diagnostics``):

* colour: the mean CIE76 Delta E between Gaussian (sigma 16 px) low-passes of the
  output and the photo, the share of the squared error in that low band, and the
  PSNR after the best affine colour map per photo (least squares, 3x3 + offset);
* detail and noise: the high-frequency energy ratio (mean squared Laplacian of the
  luma, output / photo: < 1 smoother, > 1 noisier) and the correlation of the two
  Laplacians (low correlation with a high ratio: noise or invented texture).

Beside them (each gap taken against the classical ISP of the same condition, so the
content's difficulty cancels): the same photos through the TRAINING camera
(``TRAINING_CAMERA``: BASE_CCM, gains at the centre of the training ranges; skip with
``--no_control``), whose difference to the unseen camera is the cost of the camera's
colour; and ``--synthetic N`` (default 6) synthetic scenes (those of
``make_pair(0, "test", i, size)``, calibration, blur, exposure and noise drawn as in
training, the misalignment warp off as for the photos), whose difference to the
control is the cost of real content.

Writes ``OUT/summary.md``, ``OUT/summary.json`` and ``OUT/grid.jpg`` (rows: photos;
columns: classical ISP | c | DiffRAW | original).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffraw_jax import color  # noqa: E402  (numpy only until given JAX arrays)

# name -> (package, file inside the package folder)
PHOTOS = {
    "astronaut": ("skimage", "data/astronaut.png"),
    "chelsea": ("skimage", "data/chelsea.png"),
    "coffee": ("skimage", "data/coffee.png"),
    "rocket": ("skimage", "data/rocket.jpg"),
    "motorcycle_left": ("skimage", "data/motorcycle_left.png"),
    "motorcycle_right": ("skimage", "data/motorcycle_right.png"),
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
}
DEFAULT_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "grace_hopper")

# dcraw's adobe_coeff for the Canon EOS 5D Mark III: XYZ (D65) -> camera RGB, x 10000.
CANON_5D3_CAM_XYZ = np.array([[6722, -635, -963], [-4287, 12460, 2028], [-908, 2162, 5668]]) / 10000.0


CAMERA = {
    "name": "Canon EOS 5D Mark III colour matrix (dcraw adobe_coeff), tungsten-like white balance",
    "ccm": color.srgb_matrix_from_cam_xyz(CANON_5D3_CAM_XYZ),
    "gains": np.array([1.4, 1.0, 2.5]),
    "blur_sigma": 1.0,
    "exposure": 0.75,
    "shot": 0.8,
    "read": 1.5,
}
# The control: the same photos and degradations through the training camera (BASE_CCM,
# the centres of the training gain ranges), to split the gap into camera colour and content.
TRAINING_CAMERA = dict(CAMERA, name="training camera (synthetic_zrr.BASE_CCM, gains at the centre of the training "
                                    "ranges)", ccm=None, gains=np.array([2.0, 1.0, 1.7]))
LOWPASS_SIGMA = 16.0
METHODS = ("Classical ISP (true calibration)", "c", "DiffRAW")
SCORES = ("psnr", "ssim", "lpips")
DIAGNOSTICS = ("lowpass_delta_e", "lowband_share", "psnr_color_fixed", "hf_ratio", "hf_corr")


# ------------------------------------------------------------------ photographs

def photo_path(name: str) -> str:
    """The file of a shipped photo (``PHOTOS``) or ``name`` itself if it is a file."""
    if os.path.isfile(name):
        return name
    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; known: {', '.join(PHOTOS)} (or a path to an RGB image)")
    package, rel = PHOTOS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"photo {name!r} ships with {package}, which is not installed")
    path = os.path.join(list(spec.submodule_search_locations)[0], rel)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"photo {name!r}: no {path}")
    return path


def load_photo(name: str, size: int) -> np.ndarray:
    """Centre ``size`` x ``size`` crop (even offsets) of a photo, float64 sRGB in [0, 1]."""
    from PIL import Image

    with Image.open(photo_path(name)) as im:
        img = np.asarray(im.convert("RGB"), np.float64) / 255.0
    h, w = img.shape[:2]
    if size > min(h, w):
        raise ValueError(f"photo {name!r} is {w}x{h}, smaller than --size {size}")
    top, left = ((h - size) // 2) & ~1, ((w - size) // 2) & ~1
    return img[top:top + size, left:left + size]


def unprocess_photo(photo01: np.ndarray, index: int, seed: int = 0, camera: dict = CAMERA):
    """The photo as a RAW of ``camera`` (no warp): (raw uint16 [H, W], info)."""
    from diffraw_jax.data import synthetic_zrr

    rng = np.random.default_rng([seed, 7, index])  # only the noise is random
    params = {k: camera[k] for k in ("ccm", "gains", "blur_sigma", "exposure", "shot", "read")}
    if params["ccm"] is None:
        params["ccm"] = synthetic_zrr.BASE_CCM
    return synthetic_zrr.unprocess(photo01, rng, warp=False, **params)


def synthetic_scene_pair(index: int, size: int, seed: int = 0):
    """Synthetic test pair ``index`` at ``size`` without the misalignment warp: (raw, dslr01, info).

    The scene is ``make_pair(seed, "test", index, size)``'s; the calibration, blur,
    exposure and noise are drawn from the training distribution (``unprocess``
    defaults); only the warp is off, so the reference is aligned as for the photos.
    """
    from diffraw_jax.data import synthetic_zrr

    rng = np.random.default_rng([seed, synthetic_zrr.SPLIT_IDS["test"], index])
    margin = 8
    scene = synthetic_zrr.render_scene(rng, size + 2 * margin)
    raw, info = synthetic_zrr.unprocess(scene, rng, margin=margin, warp=False)
    dslr = np.round(scene[margin:margin + size, margin:margin + size] * 255) / 255.0
    return raw, dslr, info


# ----------------------------------------------------------------- diagnostics

def _gauss_blur(img, sigma):
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(np.asarray(img, np.float64), sigma=(sigma, sigma, 0), mode="reflect")


def color_fixed_psnr(out01, gt01) -> float:
    """PSNR after the least-squares affine colour map (3x3 + offset) from output to reference."""
    o = np.asarray(out01, np.float64).reshape(-1, 3)
    g = np.asarray(gt01, np.float64).reshape(-1, 3)
    a = np.concatenate([o, np.ones((len(o), 1))], 1)
    m, *_ = np.linalg.lstsq(a, g, rcond=None)
    fixed = np.clip(a @ m, 0.0, 1.0)
    return float(10 * np.log10(1.0 / max(np.mean((fixed - g) ** 2), 1e-12)))


def diagnostics(out01, gt01, sigma: float = LOWPASS_SIGMA) -> dict:
    """Where the error of ``out01`` against ``gt01`` ([H, W, 3] in [0, 1]) lies (module docstring)."""
    o, g = np.asarray(out01, np.float64), np.asarray(gt01, np.float64)
    lo, lg = _gauss_blur(o, sigma), _gauss_blur(g, sigma)
    mse = np.mean((o - g) ** 2)
    lap_o, lap_g = color.luma_laplacian(o), color.luma_laplacian(g)
    e_g = np.mean(lap_g ** 2)
    corr = np.corrcoef(lap_o.ravel(), lap_g.ravel())[0, 1] if lap_o.std() > 0 and lap_g.std() > 0 else 0.0
    return {
        "lowpass_delta_e": float(np.mean(color.delta_e76(color.srgb_to_lab(lo), color.srgb_to_lab(lg)))),
        "lowband_share": float(np.mean((lo - lg) ** 2) / mse) if mse > 0 else 0.0,
        "psnr_color_fixed": color_fixed_psnr(o, g),
        "hf_ratio": float(np.mean(lap_o ** 2) / e_g) if e_g > 0 else float("nan"),
        "hf_corr": float(corr),
    }


def score(out01, gt01, metrics=SCORES) -> dict:
    """The project's full-reference scores ("original" protocol, 8-bit) plus ``diagnostics``, one image."""
    from diffraw_jax.evaluation.metrics import image, registry

    row = registry.mean_scores(registry.compute_metrics(out01, gt01, metrics=metrics))  # one image
    row.update(diagnostics(image.quantize(np.asarray(out01, np.float32)),
                           image.quantize(np.asarray(gt01, np.float32))))
    return row


def mean_rows(rows) -> dict:
    """Per-method means of ``{image: {method: {metric: value}}}``; a metric any image lacks a number for stays a string."""
    out = {}
    for method in next(iter(rows.values())):
        vals = {}
        for row in rows.values():
            for k, v in row[method].items():
                vals.setdefault(k, []).append(v)
        out[method] = {k: (float(np.mean(v)) if all(not isinstance(x, str) for x in v)
                           else next(x for x in v if isinstance(x, str))) for k, v in vals.items()}
    return out


# --------------------------------------------------------------------- analysis

def _num(v):
    return None if isinstance(v, str) or v is None else float(v)


def analysis(mean: dict, control_mean: dict | None = None, synthetic_mean: dict | None = None) -> list[str]:
    """Sentences on where the gap of c (G or the calibrated ISP) and DiffRAW to the classical ISP comes from.

    ``mean``: the per-method means on the photos through the unseen camera; ``control_mean``:
    the same photos through the training camera; ``synthetic_mean``: synthetic scenes
    through training-distribution cameras. Gaps are taken against the classical ISP of the
    same condition, so that the content's difficulty cancels: (photos, unseen camera) -
    (photos, training camera) is the camera colour's share, (photos, training camera) -
    (synthetic) the content's.
    """
    isp, lines = mean[METHODS[0]], []
    gap = lambda m, name: m[name]["psnr"] - m[METHODS[0]]["psnr"]  # noqa: E731
    for name in METHODS[1:]:
        r = mean.get(name)
        if r is None:
            continue
        s = (f"**{name}**: PSNR {r['psnr']:.2f} dB, {gap(mean, name):+.2f} dB against the classical ISP. "
             f"{100 * r['lowband_share']:.0f}% of its squared error lies in the low band (colour, white balance, "
             f"tone); low-pass Delta E {r['lowpass_delta_e']:.1f} (classical ISP {isp['lowpass_delta_e']:.1f}); "
             f"one affine colour map per photo would give {r['psnr_color_fixed']:.2f} dB (classical ISP "
             f"{isp['psnr_color_fixed']:.2f} dB). High-frequency energy {r['hf_ratio']:.2f}x the photo's "
             f"(classical ISP {isp['hf_ratio']:.2f}x), Laplacian correlation {r['hf_corr']:.2f} "
             f"(classical ISP {isp['hf_corr']:.2f}).")
        if control_mean and name in control_mean:
            c = control_mean[name]
            s += (f" Through the training camera the same photos give {c['psnr']:.2f} dB "
                  f"({gap(control_mean, name):+.2f} dB against its classical ISP), Delta E {c['lowpass_delta_e']:.1f}: "
                  f"the unseen camera's colour costs {gap(control_mean, name) - gap(mean, name):.2f} dB of the gap.")
            if synthetic_mean and name in synthetic_mean:
                y = synthetic_mean[name]
                s += (f" On synthetic scenes the gap is {gap(synthetic_mean, name):+.2f} dB ({y['psnr']:.2f} dB, "
                      f"Delta E {y['lowpass_delta_e']:.1f}): real content costs "
                      f"{gap(synthetic_mean, name) - gap(control_mean, name):.2f} dB.")
        causes = []
        if r["lowpass_delta_e"] > isp["lowpass_delta_e"] + 2 or r["lowband_share"] > 0.5:
            causes.append("colour")
        if r["psnr_color_fixed"] < isp["psnr_color_fixed"] - 0.5:
            if r["hf_ratio"] < 0.8 * isp["hf_ratio"]:
                causes.append("detail (smoother than the classical ISP)")
            elif r["hf_ratio"] > 1.25 * isp["hf_ratio"] and r["hf_corr"] < isp["hf_corr"]:
                causes.append("noise or invented texture (more high-frequency energy, less correlated)")
            else:
                causes.append("structure beyond colour (lower PSNR even after the colour fit)")
        if causes:
            s += " Main sources: " + "; ".join(causes) + "."
        lines.append(s)
    d = mean.get("DiffRAW")
    if d is not None and _num(d.get("lpips")) is not None and _num(isp.get("lpips")) is not None:
        beats = d["psnr"] > isp["psnr"] and d["lpips"] < isp["lpips"]
        lines.append(f"**Ship check** (DiffRAW beats the classical ISP given the true calibration on both PSNR and "
                     f"LPIPS, photos through the unseen camera): {'PASS' if beats else 'FAIL'} (PSNR "
                     f"{d['psnr']:.2f} vs {isp['psnr']:.2f} dB, LPIPS {d['lpips']:.4f} vs {isp['lpips']:.4f}).")
    return lines


def _f(v, digits):
    return v if isinstance(v, str) else f"{v:.{digits}f}"


SHORT = {METHODS[0]: "ISP", "c": "c", "DiffRAW": "DiffRAW"}


def _table(rows: dict, methods, first_col="Photo"):
    keys = (("psnr", "PSNR", 2), ("ssim", "SSIM", 4), ("lpips", "LPIPS", 4))
    lines = ["| " + first_col + " | " + " | ".join(f"{SHORT.get(m, m)} {lab}" for m in methods for _, lab, _ in keys)
             + " |", "|---" * (1 + len(methods) * len(keys)) + "|"]
    for name, row in rows.items():
        cells = [_f(row[m][k], d) if m in row else "-" for m in methods for k, _, d in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _camera_text(cam):
    ccm = "synthetic_zrr.BASE_CCM" if cam.get("ccm") is None else str(np.round(np.asarray(cam["ccm"]), 3).tolist())
    return (f"{cam['name']}: matrix {ccm}, gains {np.round(np.asarray(cam['gains'], float), 3).tolist()}, "
            f"no warp, blur sigma {cam['blur_sigma']} px, exposure {cam['exposure']}, noise shot "
            f"{cam['shot']} / read {cam['read']} codes")


def write_summary(summary: dict, out_dir: str) -> str:
    """``summary.md`` from the summary dict; returns its text."""
    methods = [m for m in METHODS if m in summary["mean"]]
    conds = {"photos, unseen camera": summary["mean"]}
    if summary.get("control"):
        conds["photos, training camera"] = summary["control"]["mean"]
    if summary.get("synthetic"):
        conds[f"synthetic scenes ({len(summary['synthetic']['rows'])}), training cameras"] = \
            summary["synthetic"]["mean"]
    lines = [f"# Real-photo check: {len(summary['photos'])} photographs, {summary['size']} px centre crops", "",
             f"Model: `{summary['model']}` (step {summary['checkpoint_step']}); DiffRAW through "
             f"`DiffRAWPipeline.from_checkpoint`, sampler {summary['sampler']}, c = {summary.get('condition', 'G(w)')}, tile "
             f"{summary['tile']} px. Scores against the photo crop: 8-bit PSNR (dB), SSIM, LPIPS-Alex "
             "(`diffraw_jax.evaluation.metrics.compute_metrics`, original protocol). \"ISP\" is the classical ISP "
             "given the true calibration (white balance gains / exposure, the true matrix).", "",
             f"RAW by `diffraw_jax.data.synthetic_zrr.unprocess` through a camera unseen in training: "
             f"{_camera_text(summary['camera'])}. Training: BASE_CCM + N(0, 0.1) or a real-camera-like "
             "matrix + N(0, 0.04) per entry, R gain in [1.3, 2.8], B gain in [1.2, 2.8].", "",
             "## Photos through the unseen camera", ""]
    rows = dict(summary["photos"])
    rows["**mean**"] = summary["mean"]
    lines += _table(rows, methods)
    if len(conds) > 1:
        lines += ["", "## Beside the synthetic numbers (means, same size, sampler and scoring)", "",
                  "Control: " + _camera_text(summary["control"]["camera"]) + "." if summary.get("control") else "",
                  "",
                  "Synthetic: the scenes of `make_pair(0, \"test\", i)`, calibration, blur, exposure and noise "
                  "drawn as in training, without the misalignment warp (the evaluation's numbers include it).", ""]
        lines += _table(conds, methods, first_col="Data")
    lines += ["", "## Where the gap comes from", "",
              f"Means. `dE`: CIE76 Delta E between Gaussian (sigma {LOWPASS_SIGMA:g} px) low-passes of the output "
              "and the reference; `low share`: share of the squared error in that low band; `PSNR cfix`: PSNR "
              "after the best affine colour map (3x3 + offset) per image; `HF ratio`: mean squared Laplacian of "
              "the luma, output / reference; `HF corr`: correlation of the two Laplacians.", "",
              "| Data | Method | dE | low share | PSNR | PSNR cfix | HF ratio | HF corr |", "|---" * 8 + "|"]
    for data, m_ in conds.items():
        for m in methods:
            r = m_[m]
            lines.append(f"| {data} | {SHORT.get(m, m)} | {r['lowpass_delta_e']:.2f} | {r['lowband_share']:.2f} | "
                         f"{r['psnr']:.2f} | {r['psnr_color_fixed']:.2f} | {r['hf_ratio']:.2f} | {r['hf_corr']:.2f} |")
    lines += [""] + [f"- {x}" for x in summary["analysis"]]
    lines += ["", f"Grid: `grid.jpg` (rows: {', '.join(summary['photos'])}; columns: classical ISP (true "
                  f"calibration) | c | DiffRAW | original; the unseen camera). {summary['seconds']:.0f} s."]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(text)
    return text


def save_grid(path: str, rows, labels) -> None:
    """Grid like ``evaluate.grid_png`` (a header line of labels), saved as quality-90 JPEG."""
    import tempfile

    from PIL import Image

    from diffraw_jax.evaluation import evaluate

    with tempfile.TemporaryDirectory() as tmp:
        png = os.path.join(tmp, "grid.png")
        evaluate.grid_png(png, rows, labels)
        with Image.open(png) as im:
            im.convert("RGB").save(path, quality=90)


# ------------------------------------------------------------------------- main

def render_all(pipe, raw, info, seed):
    """(classical ISP with the true calibration, c, DiffRAW) of a RAW, each [H, W, 3] in [0, 1].

    c is the model's colour condition: G(w) for a paper model; for a calibrated model the
    classical ISP of the planes balanced by the camera's true calibration, which is also what
    DiffRAW is given (as a DNG written with that calibration would give it)."""
    true_gains, true_ccm = info["gains"] / info["exposure"], info["ccm"]
    import jax.numpy as jnp

    from diffraw_jax import sampling
    from diffraw_jax.inference import camera

    frame = camera.BayerFrame(np.asarray(raw), black_level=63, white_level=1020)
    prepared = camera.prepare_frame(frame)
    isp_fn = sampling.make_color_condition()
    isp = sampling.to_unit_range(isp_fn(jnp.asarray(prepared.planes)[None], jnp.asarray(true_gains, jnp.float32),
                                        jnp.asarray(true_ccm, jnp.float32)))
    isp = camera.finish(np.asarray(isp)[0], prepared)
    if pipe.calibrated_model:
        frame = camera.BayerFrame(np.asarray(raw), black_level=63, white_level=1020,
                                  wb_gains=np.asarray(info["gains"], np.float32),
                                  ccm=np.asarray(info["ccm"], np.float32),
                                  baseline_exposure=-float(np.log2(info["exposure"])))
        g = camera.finish(pipe.calibrated_inputs(prepared, frame)[1], prepared)
        diffraw = pipe.process(frame, seed=seed)
    else:
        g = camera.finish(pipe.condition(prepared), prepared)
        diffraw = pipe(np.asarray(raw), black_level=63, white_level=1020, cfa="RGGB", seed=seed)
    return {METHODS[0]: isp, METHODS[1]: g, METHODS[2]: diffraw}


def run_items(pipe, items, seed: int):
    """items: (name, reference01, raw, info) -> ({name: {method: scores}}, grid rows)."""
    rows, grid = {}, []
    for name, ref, raw, info in items:
        outs = render_all(pipe, raw, info, seed)
        rows[name] = {m: score(o, ref) for m, o in outs.items()}
        grid.append([outs[m] for m in METHODS] + [ref])
        print(f"  {name}: " + "; ".join(f"{SHORT[m]} {r['psnr']:.2f} dB / {_f(r['lpips'], 4)}"
                                        for m, r in rows[name].items()), flush=True)
    return rows, grid


def _c_label(calibrated: bool) -> str:
    return "the calibrated ISP (true calibration)" if calibrated else "G(w)"


def _jsonable(cam):
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in cam.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a weights folder (diffraw export-weights) or a training workdir")
    p.add_argument("--out", default="results/real_photos")
    p.add_argument("--method", default="dtdm_ddim", help="dtdm | dtdm_ddim | ddpm")
    p.add_argument("--steps", type=int, default=10, help="sampling steps (0: the model's own; ddpm needs 0)")
    p.add_argument("--size", type=int, default=256, help="centre crop side (a multiple of 16)")
    p.add_argument("--photos", default=",".join(DEFAULT_PHOTOS),
                   help=f"comma-separated names ({', '.join(PHOTOS)}) or image paths")
    p.add_argument("--synthetic", type=int, default=6, help="also score this many synthetic scenes (0: none)")
    p.add_argument("--no_control", action="store_true", help="skip the photos through the training camera")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", default=None, metavar="SHOT,READ",
                   help=f"the cameras' sensor noise in 10-bit codes (default {CAMERA['shot']},{CAMERA['read']}: "
                   "ISO-800-like; e.g. 0.03,0.15 for a base-ISO file like ../shared's DNG)")
    p.add_argument("--start", default=None, metavar="T|auto",
                   help="the sampler's start step (dtdm_ddim; docs/real-detail.md); default the model's")
    p.add_argument("--start_noise_factor", type=float, default=None, metavar="K",
                   help="auto start: the start noise in multiples of the file's (default the model's)")
    p.add_argument("--start_switch", type=int, default=None, metavar="T",
                   help="auto start: from this noise-matched start on, the sampler from s (default the model's)")
    a = p.parse_args(argv)
    if a.synthetic < 0:
        p.error(f"--synthetic must be >= 0, got {a.synthetic}")
    if a.size % 16 or a.size < 32:
        p.error(f"--size must be a multiple of 16 and >= 32, got {a.size}")
    names = [n.strip() for n in a.photos.split(",") if n.strip()]
    if not names:
        p.error("--photos is empty")
    photos = {os.path.splitext(os.path.basename(n))[0]: load_photo(n, a.size) for n in names}

    from diffraw_jax.inference import DiffRAWPipeline

    t0 = time.time()
    if a.noise:
        try:
            shot, read = (float(v) for v in a.noise.split(","))
        except ValueError:
            p.error(f"--noise must be SHOT,READ (two numbers), got {a.noise!r}")
        if shot < 0 or read < 0:
            p.error(f"--noise values must be >= 0, got {a.noise!r}")
        CAMERA.update(shot=shot, read=read)
        TRAINING_CAMERA.update(shot=shot, read=read)
    start = None if a.start is None else (a.start if a.start == "auto" else int(a.start))
    pipe = DiffRAWPipeline.from_checkpoint(a.model, method=a.method, num_steps=a.steps if a.steps > 0 else None,
                                           tile="train", start=start, start_noise_factor=a.start_noise_factor,
                                           start_switch=a.start_switch)
    if pipe.tile is not None and a.size < max(pipe.tile):
        p.error(f"--size {a.size} is smaller than the model's tile (its training crop, {max(pipe.tile)} px)")
    os.makedirs(a.out, exist_ok=True)

    def photo_items(cam):
        for i, (name, photo) in enumerate(photos.items()):
            yield (name, photo, *unprocess_photo(photo, i, a.seed, cam))

    print("photos through the unseen camera", flush=True)
    rows, grid = run_items(pipe, photo_items(CAMERA), a.seed)
    summary = {
        "model": os.path.abspath(a.model), "checkpoint_step": pipe.step,
        "sampler": f"{pipe.label} ({pipe.method}, {pipe.num_evaluations} steps)", "tile": pipe.tile[0],
        "condition": _c_label(pipe.calibrated_model),
        "size": a.size, "seed": a.seed, "camera": _jsonable(CAMERA),
        "sources": {os.path.splitext(os.path.basename(n))[0]: photo_path(n) for n in names},
        "photos": rows, "mean": mean_rows(rows), "control": None, "synthetic": None,
    }
    if not a.no_control:
        print("photos through the training camera (control)", flush=True)
        c_rows, _ = run_items(pipe, photo_items(TRAINING_CAMERA), a.seed)
        summary["control"] = {"camera": _jsonable(TRAINING_CAMERA), "rows": c_rows, "mean": mean_rows(c_rows)}
    if a.synthetic > 0:
        print("synthetic scenes", flush=True)
        items = ((f"test/{i}", dslr, raw, info)
                 for i in range(a.synthetic) for raw, dslr, info in [synthetic_scene_pair(i, a.size)])
        s_rows, _ = run_items(pipe, items, a.seed)
        summary["synthetic"] = {"rows": s_rows, "mean": mean_rows(s_rows)}
    summary["analysis"] = analysis(summary["mean"], (summary["control"] or {}).get("mean"),
                                   (summary["synthetic"] or {}).get("mean"))
    summary["seconds"] = round(time.time() - t0, 1)
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    text = write_summary(summary, a.out)
    save_grid(os.path.join(a.out, "grid.jpg"), grid,
              ["classical ISP (true calibration)", "c = " + _c_label(pipe.calibrated_model), f"DiffRAW {pipe.label}",
               "original"])
    print(text)
    print(f"wrote {a.out}/summary.md, summary.json, grid.jpg")
    return 0


if __name__ == "__main__":
    sys.exit(main())

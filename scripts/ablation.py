"""The paper's ablations at CPU scale, on the synthetic data.

    python scripts/ablation.py --train_steps 1000 --dtdm_workdir pretrained/paper-demo \
        --color_workdir pretrained/paper-demo/color_net --num_images 16 --out results/ablation

1. Steps (Fig. 4): quality against the number of sampling steps for DDPM from noised x
   (a network trained on the plain epsilon target, started from x noised to step k,
   k up to 1500), DTDM ancestral (started at step n <= s, the paper's test-time
   setting) and DTDM-DDIM (ours). The DTDM curves use ``--dtdm_workdir`` (a longer-
   trained model or weights folder, e.g. the shipped pretrained/paper-demo) when given;
   a DTDM-DDIM-10 row of the model trained as long as the DDPM baseline is added.
2. Conditions (Fig. 3): no condition, w, and w + c, each trained the same way.

Every trained variant is the ``--config`` setting (default `configs/pretrained.py`,
the shipped model's: demo U-Net, 64 px crops, batch 8, 1,024 synthetic training
pairs) for ``--train_steps`` steps; missing models are trained first (resumable).
Metrics on ``--num_images`` test images, centre ``--crop`` px (``input_pipeline.first_images``):
PSNR, SSIM, LPIPS-Alex (``metrics.compute_metrics``, on 8-bit images), and
the high-frequency energy ratio (Laplacian energy of the output / of the DSLR; 1 is
DSLR-like detail). NIQE needs >= 192 px images, so it is not reported here. Writes
JSON, a Markdown table and PNG plots.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def laplacian_energy(img01):
    """Mean squared Laplacian of the luma, per image. img01: [B, H, W, 3] in [0, 1]."""
    from diffraw_jax import color

    return (color.luma_laplacian(np.asarray(img01)) ** 2).mean(axis=(1, 2))


def variant_config(config_name, data_dir, color_workdir, train_steps, **changes):
    import importlib

    c = importlib.import_module(f"configs.{config_name}").get_config()
    if data_dir:
        c.data.data_dir = data_dir
    if color_workdir:
        c.color_net.workdir = color_workdir
    c.train.num_train_steps = train_steps
    for k, v in changes.items():
        section, field = k.split(".")
        c[section][field] = v
    return c


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="pretrained",
                   help="configs/<name>.py that every variant starts from (pretrained: the shipped model's setting)")
    p.add_argument("--data_dir", default="", help="default: the config's")
    p.add_argument("--workdir", default="workdir/ablation")
    p.add_argument("--color_workdir", default="", help="G; default: the config's")
    p.add_argument("--dtdm_workdir", default="",
                   help="a longer-trained DTDM (w + c) model or weights folder for the step curves, "
                        "e.g. pretrained/demo; default: the variant trained here")
    p.add_argument("--out", default="results/ablation")
    p.add_argument("--train_steps", type=int, default=300)
    p.add_argument("--num_images", type=int, default=8)
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--ddpm_steps", default="100,500,1500")
    p.add_argument("--dtdm_steps", default="10,25,50,100")
    p.add_argument("--ddim_steps", default="5,10,25,50,100")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train_only", action="store_true", help="only train the missing models")
    a = p.parse_args(argv)
    from diffraw_jax.runtime import logs

    logs.setup()

    import jax

    from diffraw_jax.evaluation import evaluate, metrics
    from diffraw_jax.data import input_pipeline
    from diffraw_jax import sampling
    from diffraw_jax.training import train
    from diffraw_jax.checkpoints import weights
    from diffraw_jax.models import factory

    os.makedirs(a.out, exist_ok=True)
    t_start = time.time()
    variants = {
        "dtdm_w_c": dict(),
        "ddpm_w_c": {"diffusion.objective": "ddpm"},
        "dtdm_none": {"model.use_w": False, "model.use_c": False},
        "dtdm_w": {"model.use_c": False},
    }
    workdirs, configs = {}, {}
    for name, changes in variants.items():
        cfg = variant_config(a.config, a.data_dir, a.color_workdir, a.train_steps, **changes)
        wd = os.path.join(a.workdir, name)
        configs[name], workdirs[name] = cfg, wd
        print(f"[ablation] training {name} in {wd} ({a.train_steps} steps; resumes/skips if done)", flush=True)
        train.train_and_evaluate(cfg, wd)
    if a.train_only:
        return 0
    # The step curves use the longer-trained model when one is given.
    workdirs["dtdm_long"] = a.dtdm_workdir or workdirs["dtdm_w_c"]

    base = configs["dtdm_w_c"]
    w, y01, n = input_pipeline.first_images(base, a.num_images, a.crop)
    g = weights.find_color_net(base, workdirs["dtdm_w_c"])
    x = sampling.color_condition(g)(w)
    ref_hf = laplacian_energy(y01)

    def score(out01):
        out01 = np.asarray(out01)
        m = metrics.mean_scores(metrics.compute_metrics(out01, y01, metrics=("psnr", "ssim", "lpips")))
        return {k.upper(): v for k, v in m.items()} | {
            "HF ratio": float(np.mean(laplacian_energy(out01) / ref_hf))}

    key = jax.random.key(a.seed)
    sched = factory.create_schedule(base)
    results = {"setting": vars(a), "x = G(w)": score(sampling.to_unit_range(x)), "steps": {}, "conditions": {}}

    def run(name, method, s, num_steps=None):
        loaded = weights.load_inference(workdirs[name], color_net=False)
        model, params = loaded.model, loaded.params
        settings = factory.SamplerSettings(method=method, num_steps=num_steps, s=s, label=method)
        fn = sampling.make_sampler(model, sched, settings)
        t0 = time.time()
        out = sampling.to_unit_range(fn(params, w, x, x, key))
        r = score(out)
        r["seconds"] = round(time.time() - t0, 1)
        print(f"[ablation] {name} {method} s={s} steps={num_steps or s}: {r}", flush=True)
        return r, np.asarray(out)

    s = base.diffusion.s
    curves = {"DDPM from noised x": {}, "DTDM (ancestral)": {}, "DTDM-DDIM": {}}
    for k in [int(v) for v in a.dtdm_steps.split(",")]:
        curves["DTDM (ancestral)"][k] = run("dtdm_long", "dtdm", s, k)[0]
    for k in [int(v) for v in a.ddim_steps.split(",")]:
        curves["DTDM-DDIM"][k] = run("dtdm_long", "dtdm_ddim", s, k)[0]
    for k in [int(v) for v in a.ddpm_steps.split(",")]:
        curves["DDPM from noised x"][k] = run("ddpm_w_c", "ddpm", k)[0]
    results["steps"] = curves
    # DTDM-DDIM-10 on the model trained as long as the DDPM baseline, for a like-for-like row.
    results["equal_training"] = {"DTDM-DDIM-10": run("dtdm_w_c", "dtdm_ddim", s, 10)[0]}
    results["trained_steps"] = {name: weights.load_inference(wd, color_net=False).step
                                for name, wd in workdirs.items()}
    grids = {}
    for name, label in (("dtdm_none", "no condition"), ("dtdm_w", "w"), ("dtdm_w_c", "w + c")):
        results["conditions"][label], grids[label] = run(name, "dtdm", s)
    results["seconds"] = round(time.time() - t_start, 1)

    with open(os.path.join(a.out, "ablation.json"), "w") as f:
        json.dump(results, f, indent=1)
    plot(results, a.out)
    evaluate.grid_png(os.path.join(a.out, "conditions.png"),
                      [[grids["no condition"][i], grids["w"][i], grids["w + c"][i], np.asarray(sampling.to_unit_range(x[i])), y01[i]]
                       for i in range(min(4, n))],
                      ["no condition", "w", "w + c", "x = G(w)", "DSLR"])
    write_table(results, a.out)
    print(f"[ablation] wrote {a.out} in {results['seconds']} s")
    return 0


def plot(results, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["PSNR", "LPIPS", "HF ratio"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4))
    for ax, m in zip(axes, metrics):
        for label, curve in results["steps"].items():
            ks = sorted(curve, key=int)
            ax.plot([int(k) for k in ks], [curve[k][m] for k in ks], marker="o", label=label)
        ax.set_xscale("log")
        if m == "HF ratio":
            ax.set_yscale("log")
            ax.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax.set_xlabel("sampling steps")
        ax.set_title(m + (" (1 = DSLR detail)" if m == "HF ratio" else ""))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "steps.png"), dpi=110)


def write_table(results, out):
    lines = ["# Ablations (synthetic data, CPU scale)", "",
             "Command: `python scripts/ablation.py --train_steps {train_steps} --dtdm_workdir {dtdm_workdir} "
             "--color_workdir {color_workdir} --num_images {num_images} --out {out}`".format(**results["setting"]),
             "",
             "Models (training steps): " + ", ".join(f"{k} {v}" for k, v in results["trained_steps"].items())
             + ".", "",
             f"Setting: `{json.dumps(results['setting'])}`", "",
             "## Quality against sampling steps (Fig. 4)", "",
             "| sampler | steps | PSNR | SSIM | LPIPS | HF ratio | seconds |", "|---|---|---|---|---|---|---|"]
    for label, curve in results["steps"].items():
        for k in sorted(curve, key=int):
            r = curve[k]
            lines.append(f"| {label} | {k} | {r['PSNR']:.2f} | {r['SSIM']:.4f} | {r['LPIPS']:.4f} | "
                         f"{r['HF ratio']:.3f} | {r['seconds']} |")
    lines += ["", "## Conditions (Fig. 3), DTDM ancestral", "",
              "| condition | PSNR | SSIM | LPIPS | HF ratio |", "|---|---|---|---|---|"]
    for label, r in results["conditions"].items():
        lines.append(f"| {label} | {r['PSNR']:.2f} | {r['SSIM']:.4f} | {r['LPIPS']:.4f} | {r['HF ratio']:.3f} |")
    for label, r in results.get("equal_training", {}).items():
        lines += ["", f"{label} of the w + c model trained as long as the DDPM baseline: PSNR {r['PSNR']:.2f}, "
                  f"SSIM {r['SSIM']:.4f}, LPIPS {r['LPIPS']:.4f}, HF ratio {r['HF ratio']:.3f}."]
    r = results["x = G(w)"]
    lines += ["", f"x = G(w) itself: PSNR {r['PSNR']:.2f}, SSIM {r['SSIM']:.4f}, LPIPS {r['LPIPS']:.4f}, "
              f"HF ratio {r['HF ratio']:.3f}.", f"Total time {results['seconds']} s."]
    with open(os.path.join(out, "ablation.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())

"""Few-step DiffRAW, measured: distilled students against their teacher (issue #16).

    python scripts/distill_report.py --out results/distill

Samples the test split (centre crops of ``--crop`` px, ``--num_images`` images, one
batch) with the teacher's DTDM-100 (the paper's ancestral sampler), the teacher's
DTDM-DDIM at 1, 2, 4, 8 and 16 steps, and each distilled student at its own step
count, all from the same start point x_s. Scores PSNR / SSIM / LPIPS (AlexNet) / NIQE
against the DSLR image and times every sampler after compiling it (seconds per
image and per megapixel, the batch's wall time divided out). Writes
``distill.json``, ``distill.md`` (the table and the issue's goals), ``quality_vs_steps.png``
and ``samples.jpg`` to ``--out``. Reads the models, never writes them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="pretrained/demo", help="the teacher (weights folder or workdir)")
    p.add_argument("--students", default="workdir/distill/student-{n}",
                   help="each student's weights folder or workdir; {n} is its step count")
    p.add_argument("--student_steps", default="8,4,2,1")
    p.add_argument("--ddim_steps", default="1,2,4,8,16")
    p.add_argument("--data_dir", default="data/tfds_pretrain")
    p.add_argument("--num_images", type=int, default=16)
    p.add_argument("--crop", type=int, default=192, help="centre crop, sRGB pixels")
    p.add_argument("--out", default="results/distill")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    from diffraw_jax.runtime import logs

    logs.setup()
    import jax

    from configs import pretrained
    from diffraw_jax.evaluation import evaluate, metrics
    from diffraw_jax.data import input_pipeline
    from diffraw_jax import sampling
    from diffraw_jax.checkpoints import weights

    student_steps = [int(v) for v in a.student_steps.split(",") if v]
    paths = {n: a.students.format(n=n) for n in student_steps}
    missing = [path for path in [a.teacher, *paths.values()] if not os.path.exists(path)]
    if missing:
        print(f"error: not found: {', '.join(missing)} (train them with `make distill`)", file=sys.stderr)
        return 2
    os.makedirs(a.out, exist_ok=True)

    teacher = weights.load_inference(a.teacher)  # with its G
    cfg = pretrained.get_config()
    cfg.data.data_dir = a.data_dir
    w, y01, n_img = input_pipeline.first_images(cfg, a.num_images, a.crop)
    x = sampling.color_condition(teacher.color_net)(w)
    megapixels = n_img * y01.shape[1] * y01.shape[2] / 1e6
    key = jax.random.key(a.seed)

    def score(out01):
        m = metrics.compute_metrics(np.asarray(out01), y01, metrics=("psnr", "ssim", "lpips", "niqe"))
        return {k.upper(): v for k, v in metrics.mean_scores(m).items()}

    rows, images = [], {}

    def run(name, loaded, method, steps, kind):
        fn = sampling.make_sampler(loaded.model, loaded.schedule, loaded.sampler_settings(method, steps))
        compiled = fn.lower(loaded.params, w, x, x, key).compile()
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(loaded.params, w, x, x, key))
        seconds = time.perf_counter() - t0
        out01 = np.asarray(sampling.to_unit_range(out))
        row = {"sampler": name, "kind": kind, "network evaluations": steps, **score(out01),
               "s / image": seconds / n_img, "s / megapixel": seconds / megapixels}
        rows.append(row)
        images[name] = out01
        print(f"[distill] {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()
                                               if isinstance(v, float)), flush=True)

    s = teacher.sampler_settings().s
    rows.append({"sampler": "x = G(w)", "kind": "condition", "network evaluations": 0,
                 **score(sampling.to_unit_range(x)), "s / image": float("nan"), "s / megapixel": float("nan")})
    run("teacher DTDM-100", teacher, "dtdm", s, "teacher")
    for k in [int(v) for v in a.ddim_steps.split(",") if v]:
        run(f"teacher DTDM-DDIM-{k}", teacher, "dtdm_ddim", k, "teacher DDIM")
    trained = {}
    for n in student_steps:
        student = weights.load_inference(paths[n], color_net=False)
        settings = student.sampler_settings()
        if (settings.method, settings.num_steps) != ("dtdm_ddim", n):
            raise ValueError(f"{paths[n]} samples with {settings.label}, not a {n}-step student")
        trained[n] = {"path": paths[n], "step": student.step,
                      "teacher": student.config.distill.teacher, "teacher_steps": student.config.distill.teacher_steps}
        run(f"student {n}", student, "dtdm_ddim", n, "student")

    by = {r["sampler"]: r for r in rows}
    goals = goal_lines(by, student_steps)
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": _commit(),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__}",
              "command": "python scripts/distill_report.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "setting": vars(a), "images": n_img, "crop": int(y01.shape[1]), "students": trained,
              "rows": rows, "goals": goals}
    with open(os.path.join(a.out, "distill.json"), "w") as f:
        json.dump(report, f, indent=1)
    write_markdown(report, os.path.join(a.out, "distill.md"))
    plot(rows, s, os.path.join(a.out, "quality_vs_steps.png"))
    names = ["x = G(w)", "teacher DTDM-100", "teacher DTDM-DDIM-1"] + [f"student {n}" for n in sorted(student_steps)]
    images["x = G(w)"] = np.asarray(sampling.to_unit_range(x))
    names = [k for k in names if k in images]
    evaluate.grid_png(os.path.join(a.out, "samples.jpg"),
                      [[images[k][i] for k in names] + [y01[i]] for i in range(min(4, n_img))], names + ["DSLR"])
    print(open(os.path.join(a.out, "distill.md")).read())
    return 0


def goal_lines(by: dict, student_steps) -> list[str]:
    """The issue's goals, checked against the table (a plain-language line each)."""
    ref = by["teacher DTDM-100"]
    out = []
    for n, tol in ((4, 0.01), (1, 0.03)):
        r = by.get(f"student {n}")
        if r is None:
            continue
        d = r["LPIPS"] - ref["LPIPS"]
        ok = d <= tol and (n != 4 or r["PSNR"] >= ref["PSNR"])
        extra = f", PSNR {r['PSNR']:.2f} vs {ref['PSNR']:.2f} dB" if n == 4 else ""
        out.append(f"{n}-step student within {tol} LPIPS of DTDM-100{' with PSNR not below it' if n == 4 else ''}: "
                   f"{'met' if ok else 'missed'} (LPIPS {r['LPIPS']:.4f} vs {ref['LPIPS']:.4f}, "
                   f"difference {d:+.4f}{extra})")
    equal = [by[f"student {n}"] for n in sorted(student_steps)
             if f"student {n}" in by and by[f"student {n}"]["LPIPS"] <= ref["LPIPS"] + 0.01]
    if equal:
        r = equal[0]
        speed = ref["s / megapixel"] / r["s / megapixel"]
        out.append(f"wall time per megapixel at equal LPIPS (within 0.01) at least 20x below DTDM-100: "
                   f"{'met' if speed >= 20 else 'missed'} ({r['sampler']}: {r['s / megapixel']:.1f} s/MP "
                   f"against {ref['s / megapixel']:.1f}, {speed:.0f}x)")
    else:
        out.append("wall time at equal LPIPS: no student comes within 0.01 LPIPS of DTDM-100")
    return out


def write_markdown(report, path):
    cols = ["sampler", "network evaluations", "PSNR", "SSIM", "LPIPS", "NIQE", "s / image", "s / megapixel"]
    lines = ["# Few-step DiffRAW: distilled students (synthetic test split)", "",
             f"- date: {report['date']}; machine: {report['machine']}; commit {report['commit']}",
             f"- command: `{report['command']}`",
             f"- {report['images']} test images, {report['crop']} px centre crops, one batch; every sampler "
             "starts from the same x_s (same key); times exclude compilation", "",
             "Students (`make distill`: each from the next larger one, the 8-step student from the teacher's 16 DTDM-DDIM steps):", ""]
    for n, st in sorted(report["students"].items(), key=lambda kv: -int(kv[0])):
        lines.append(f"- {n} step(s): `{st['path']}`, {st['step']} training steps, teacher `{st['teacher']}` "
                     f"(DTDM-DDIM-{st['teacher_steps']})")
    lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in report["rows"]:
        cells = []
        for c in cols:
            v = r[c]
            if isinstance(v, float):
                v = "-" if np.isnan(v) else f"{v:.4f}" if c in ("SSIM", "LPIPS") else f"{v:.2f}"
            cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Goals (issue #16)", ""] + [f"- {g}" for g in report["goals"]]
    lines += ["", "![quality against steps](quality_vs_steps.png)", "", "![samples](samples.jpg)", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def plot(rows, s, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, metric in zip(axes, ("LPIPS", "PSNR", "NIQE")):
        for kind, style in (("teacher DDIM", "o--"), ("student", "s-")):
            pts = sorted((r["network evaluations"], r[metric]) for r in rows if r["kind"] == kind)
            if pts:
                ax.plot(*zip(*pts), style, label="teacher DTDM-DDIM" if kind == "teacher DDIM" else "distilled student")
        ref = next(r for r in rows if r["sampler"] == "teacher DTDM-100")
        ax.axhline(ref[metric], color="k", lw=0.8, ls=":", label=f"teacher DTDM-{s} (ancestral)")
        g = next(r for r in rows if r["kind"] == "condition")
        ax.axhline(g[metric], color="tab:gray", lw=0.8, ls="-.", label="x = G(w)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("network evaluations")
        ax.set_title(metric + (" (lower is better)" if metric != "PSNR" else " (dB)"))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())

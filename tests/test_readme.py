"""Every command in README.md and docs/*.md is exercised: run here, by `make demo`, or by CI.

The commands are read from the pages themselves (```bash blocks, continuation
lines joined, comments dropped; ```python blocks; `python -m ...` / `make ...`
quoted inline), placeholders (ZRR_ROOT, DATA_DIR, W, ...) are replaced by
temporary paths, and the training commands get tiny-model overrides appended.
A README command that no rule here knows fails `test_every_readme_command_is_known`,
so the README cannot grow an untested command.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np

from tests.helpers import REPO, write_dng
from tests.readme_commands import (TINY, all_commands, classify, documentation_files, documentation_text,
                                   find_commands, python_blocks, readme_text, substitute)

BIN = os.path.dirname(sys.executable)


# What runs each kind of command. "workflow": test_readme_workflow below runs it;
# "demo": the Makefile's demo recipe runs it verbatim (checked below); the others
# name the test that runs it.
RULES = {
    "make demo": "Makefile target, run by hand (README 'Demo results' were produced by it)",
    "make test": ".ci/run",
    "make demo-train": "Makefile target, run by hand (its commands are checked against the README below)",
    "make pretrained": "Makefile target, run by hand (made pretrained/demo; pretrained/demo/TRAINING.md)",
    "make install": ".ci/run (make test installs first)",
    "python -m diffraw_jax.data.synthetic_zrr": "workflow",
    "python -m diffraw_jax.data.photos": "tests/test_photos.py::test_fake_package_to_pairs",  # a fake .deb: no network
    "python -m tfds_zrr.build": "workflow",
    "python -m tfds_zrr.calibrate": "tests/test_calibrate.py::test_estimates_the_shared_ccm_and_each_pairs_gains_and_exposure",
    "tfds build": "workflow",
    "main.py configs/zrr.py train": "workflow",
    "main.py configs/isp_zrr.py train": "workflow",
    "main.py configs/zrr.py eval": "workflow",
    "main.py configs/synthetic.py eval": "demo",
    "main.py configs/pretrained.py eval": "demo",
    "gcloud": "workflow",
    "diffraw": "workflow",
    "diffraw export-weights": "workflow",
    "diffraw shipped": "tests/test_pretrained.py::test_diffraw_runs_the_shipped_model_on_a_dng",
    "python -c": "tests/test_readme.py::test_outputs_page_commands",
    "python -m benchmarks.run": "tests/test_benchmarks.py::test_benchmark_run_quick_tiny",
    "python -m benchmarks.infer_bench": "workflow",
    "python -m diffraw_jax.data.dng_writer": "tests/test_pretrained.py::test_diffraw_runs_the_shipped_model_on_a_dng",
    "python -m benchmarks.profile_step": "tests/test_benchmarks.py::test_profile_step_attributes_the_time_to_op_kinds",
    "python -m benchmarks.loop_bench": "tests/test_benchmarks.py::test_loop_bench_times_the_loop_and_the_bare_step",
    "make distill-rounds": "Makefile target, run by hand (made results/distill and the students before #28)",
    "make photos": "Makefile target, run by hand (the data of pretrained/demo/TRAINING.md)",
    "make student": "Makefile target, run by hand (made pretrained/distill-1; pretrained/distill-1/TRAINING.md)",
    "make pretrained-synthetic": "Makefile target, run by hand (made pretrained/synthetic)",
    "main.py configs/distill.py:8 train": "tests/test_distill.py::test_distill_config_chains_the_rounds_and_trains",
    "main.py configs/distill.py:4 train": "tests/test_distill.py::test_distill_config_chains_the_rounds_and_trains",
    "main.py configs/distill.py:2 train": "tests/test_distill.py::test_distill_config_chains_the_rounds_and_trains",
    "main.py configs/distill.py:1 train": "tests/test_distill.py::test_distill_config_chains_the_rounds_and_trains",
    "python -m benchmarks.plan": "tests/test_plan.py::test_plan_rows_are_consistent",
    "make device-check": "tests/test_device_check.py::test_makefile_runs_the_device_check",
    "python -m benchmarks.device_check": "tests/test_device_check.py::test_smoke_mode_reports_every_stage_with_numbers",
}


def test_every_readme_command_is_known():
    cmds = all_commands()
    assert len(cmds) >= 10, cmds  # the parser found the README's commands
    unknown = [c for c in cmds if classify(c) not in RULES]
    assert not unknown, f"README commands no test exercises (add a rule in {__file__}): {unknown}"
    for c in cmds:
        rule = RULES[classify(c)]
        if "::" in rule:
            path, name = rule.split("::")
            with open(os.path.join(REPO, path)) as f:
                assert f"def {name}(" in f.read(), f"{rule} (for README command {c!r}) does not exist"


def _makefile_demo_commands() -> list[list[str]]:
    with open(os.path.join(REPO, "Makefile")) as f:
        text = f.read()
    recipe = "".join(re.search(rf"^{target}:.*?\n((?:\t.*\n|\n)+)", text, flags=re.M).group(1)
                     for target in ("demo", "demo-train"))
    recipe = re.sub(r"\\\n\s*", " ", recipe)
    subst = {"$(BIN)/python": "python", "$(BIN)/diffraw": "diffraw", "$(DEMO_TFDS)": "data/tfds",
             "$(DEMO_WORK)": "workdir", "$(DEMO_DATA)": "data/synthetic_zrr", "$(TEST_TFDS)": "data/tfds_photo_test",
             "$(TEST_DATA)": "data/synthetic_photo_test", "$(PRETRAINED)": "pretrained/demo"}
    out = []
    for line in recipe.splitlines():
        line = line.strip()
        for k, v in subst.items():
            line = line.replace(k, v)
        if line.startswith("python"):
            out.append(shlex.split(line))
    return out


def test_demo_commands_are_in_the_makefile_demo_recipe():
    demo = _makefile_demo_commands()
    assert len(demo) >= 4
    for c in all_commands():
        if RULES.get(classify(c)) == "demo":
            assert shlex.split(c) in demo, f"README command {c!r} is not run by `make demo`: {demo}"


# ---------------------------------------------------------------------------
# Running the README's commands.

# Values for the README's optional "[--flag VALUE|OTHER]" groups (every group must have one).
OPTIONAL_VALUES = {"--size": "448", "--seed": "1", "--method": "dtdm_ddim", "--steps": "2",
                   "--color": "classic", "--tile": "32", "--overlap": "8", "--batch": "2",
                   "--step": "2", "--bits16": None, "--overwrite": None}


def expand_optional(cmd: str) -> str:
    def repl(m):
        flag = m.group(1).split()[0]
        assert flag in OPTIONAL_VALUES, f"no test value for the README option {m.group(0)!r}"
        v = OPTIONAL_VALUES[flag]
        return flag if v is None else f"{flag} {v}"
    return re.sub(r"\[(--[^\]]+)\]", repl, cmd)


def _run(argv: list[str], env=None, timeout=600):
    if argv[0] == "python":
        argv = [sys.executable] + argv[1:]
    elif argv[0] in ("tfds", "diffraw"):
        argv = [os.path.join(BIN, argv[0])] + argv[1:]
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=env, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(argv)}\nexit {r.returncode}\n{r.stderr[-3000:]}"
    return r


def test_readme_workflow(tmp_path):
    """Data -> TFDS (both ways) -> G -> DiffRAW -> eval -> multi-host form -> diffraw CLI -> Python API."""
    zrr, data, cli_data = tmp_path / "zrr", tmp_path / "tfds", tmp_path / "tfds_cli"
    w, wg, run = tmp_path / "w", tmp_path / "wg", tmp_path / "run"
    mapping = {"DIR": str(zrr), "N": "4", "M": "2", "ZRR_ROOT": str(zrr), "DATA_DIR": str(data),
               "W": str(w), "W_G": str(wg), "gs://BUCKET/run": str(run), "gs://BUCKET/tfds": str(data)}

    (synth,) = find_commands("python -m diffraw_jax.data.synthetic_zrr")
    _run(substitute(shlex.split(expand_optional(synth)), mapping))
    assert len(os.listdir(zrr / "train" / "huawei_raw")) == 4 and len(os.listdir(zrr / "test" / "canon")) == 2

    build = find_commands("python -m tfds_zrr.build")[0]  # the command block; the prose quotes it again
    _run(substitute(shlex.split(build), mapping))
    (cli,) = find_commands("tfds build")
    _run(substitute(shlex.split(cli), dict(mapping, DATA_DIR=str(cli_data))))
    for d in (data, cli_data):
        assert any(f.startswith("zrr-train.array_record") for f in os.listdir(d / "zrr" / "patches" / "1.0.0"))

    (isp,) = find_commands("main.py configs/isp_zrr.py train")
    _run(substitute(shlex.split(isp), mapping) + TINY)
    (train_cmd,) = find_commands("main.py configs/zrr.py train")
    _run(substitute(shlex.split(train_cmd), mapping) + TINY)
    assert (w / "checkpoints" / "2").is_dir() and (wg / "checkpoints" / "2").is_dir()
    (eval_cmd,) = find_commands("main.py configs/zrr.py eval")
    _run(substitute(shlex.split(eval_cmd), mapping) + TINY)
    assert (w / "eval" / "test" / "summary.md").is_file()

    # The pod-slice command: the quoted command each host runs, with --jax_distributed;
    # a one-process SLURM environment stands in for Cloud TPU's auto-detection. Its
    # gs:// paths are local folders here; tests/test_gcs.py runs the same command on
    # gs:// paths against a GCS emulator (with TensorBoard's writer swapped out: it
    # writes through TensorFlow's GCS client, which cannot be pointed at an emulator).
    (gcloud,) = find_commands("gcloud")
    remote = shlex.split(gcloud)[-1]
    assert remote.startswith("cd diffraw-jax && ")
    host_cmd = substitute(shlex.split(remote.split("&&", 1)[1]), mapping)
    assert "--jax_distributed" in host_cmd
    env = dict(os.environ, SLURM_JOB_ID="4242", SLURM_STEP_NODELIST="localhost", SLURM_NODELIST="localhost",
               SLURM_NTASKS="1", SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_STEP_NUM_NODES="1")
    r = _run(host_cmd + TINY + ["--config.train.num_train_steps=1", "--config.train.checkpoint_every_steps=1"],
             env=env)
    assert (run / "checkpoints" / "1").is_dir()
    assert "JAX process 0 / 1" in r.stderr

    # diffraw on a DNG and a folder of ZRR PNGs.
    from PIL import Image

    rng = np.random.default_rng(0)
    raws = tmp_path / "raws"
    (raws / "more_raws").mkdir(parents=True)
    mosaic = rng.integers(100, 900, (64, 96)).astype(np.uint16)
    dng = write_dng(raws / "photo.dng", mosaic)
    shutil.copy(zrr / "test" / "huawei_raw" / "0.png", raws / "more_raws" / "0.png")
    (infer,) = find_commands("diffraw")
    out = raws / "out"
    argv = substitute(shlex.split(expand_optional(infer)), {"workdir/demo": str(w), "photo.dng": str(dng),
                                                            "more_raws/": str(raws / "more_raws"),
                                                            "out/": str(out)})
    _run(argv + ["--quiet"])
    outs = sorted(os.listdir(out))
    assert outs == ["0.png", "photo.png"], outs
    img = np.asarray(Image.open(out / "photo.png"))
    assert img.shape == (64, 96, 3) and img.std() > 0
    with open(out / "photo.png", "rb") as f:
        head = f.read(26)
    assert head[12:16] == b"IHDR" and head[24] == 16, "--bits16 wrote no 16-bit PNG"

    # export-weights, then the same diffraw command on the weights folder gives the same image.
    (export,) = find_commands("diffraw export-weights")
    release = tmp_path / "release" / "demo"
    _run(substitute(shlex.split(export), {"workdir/demo": str(w), "release/demo": str(release)}))
    assert sorted(os.listdir(release)) == ["color_net", "config.json", "manifest.json", "params.npz"]
    out2 = raws / "out2"
    argv2 = substitute(argv, {str(w): str(release), str(out): str(out2)})
    i = argv2.index("--step")  # a weights folder holds one step
    del argv2[i:i + 2]
    _run(argv2 + ["--quiet"])
    assert (out2 / "photo.png").read_bytes() == (out / "photo.png").read_bytes()

    # The inference benchmark on this run's checkpoint (a 64-px frame, 2 DDIM steps).
    bench = find_commands("python -m benchmarks.infer_bench")[0]  # the --size 256 one
    r = _run(substitute(shlex.split(bench), {"256": "64"}) + [
        "--checkpoint", str(w), "--tile", "32", "--overlap", "8", "--runs", "dtdm_ddim:2"])
    assert "dtdm_ddim-2" in r.stdout and "s/MP" in r.stdout

    # The Python API block, with the README's names bound to this run's files.
    (api,) = [b for b in python_blocks(documentation_text()) if "DiffRAWPipeline" in b]
    code = (api.replace('"workdir/demo"', repr(str(w))).replace('"photo.dng"', repr(str(dng)))
            .replace('"sampler.jaxexp"', repr(str(tmp_path / "sampler.jaxexp"))).replace("(448, 448)", "(32, 32)"))
    assert "import DiffRAWPipeline" in code and "export_sampler(" in code
    env_code = ("import os; os.environ.setdefault('JAX_PLATFORMS', 'cpu')\nimport numpy as np, rawpy\n"
                "mosaic = np.random.default_rng(0).integers(63, 1020, (64, 64)).astype(np.uint16)\n"
                + code + "\nassert srgb.shape == (64, 96, 3) and 0 <= srgb.min() and srgb.max() <= 1\n"
                "assert os.path.getsize(" + repr(str(tmp_path / "sampler.jaxexp")) + ") > 0\nprint('ok')\n")
    r = _run(["python", "-c", env_code])
    assert r.stdout.strip().endswith("ok")


def test_readme_dtdm_api_block():
    """The DTDM API snippet runs as written and gives Algorithm 2's chain.

    ``model`` is bound to a stand-in whose output depends on m, c and t
    (f = 0.3 m - 0.2 c + t / 1000), and the chain is recomputed here in float64
    from the schedule's closed form and the README's corrected eq. 24 (mean =
    [k_f] f + [1/sqrt(a_t) - lambda_t/sqrt(ab_t)] m_t + lambda_t x, variance
    beta_t (1-ab_{t-1})/(1-ab_t), no noise at t = 1), with the same normal draws.
    """
    import jax
    import jax.numpy as jnp

    class StandIn:
        @staticmethod
        def apply(params, m, w, c, t):
            return 0.3 * m - 0.2 * c + t[:, None, None, None] / 1000.0

    (block,) = [b for b in python_blocks(documentation_text()) if "dtdm.sample(" in b]
    rng = np.random.default_rng(0)
    c = rng.uniform(-1, 1, (1, 8, 8, 3))
    scope = dict(model=StandIn(), params=None, w=jnp.zeros((1, 4, 4, 4)), c=jnp.asarray(c, jnp.float32))
    scope["x"] = scope["c"]
    exec(compile(block, "README.md", "exec"), scope)
    y = np.asarray(scope["y_hat"], np.float64)
    assert y.shape == (1, 8, 8, 3)

    # The independent chain: T = 2000 linear betas 1e-6..1e-2, s = 100.
    betas = np.linspace(1e-6, 1e-2, 2000, dtype=np.float64)
    ab = np.concatenate([[1.0], np.cumprod(1.0 - betas)])
    s, x = 100, c
    gamma = np.sqrt(ab[s]) / np.sqrt(1 - ab[s])
    key_start, key_loop = jax.random.split(jax.random.PRNGKey(0))
    m = np.sqrt(ab[s]) * x + np.sqrt(1 - ab[s]) * np.asarray(jax.random.normal(key_start, x.shape), np.float64)
    for t in range(s, 0, -1):
        a = 1.0 - betas[t - 1]
        lam = np.sqrt(1 - ab[t - 1]) * (1 - np.sqrt(a) * np.sqrt(1 - ab[t - 1]) / np.sqrt(1 - ab[t])) * gamma
        f = 0.3 * m - 0.2 * c + t / 1000.0
        mean = ((np.sqrt(1 - ab[t]) / np.sqrt(ab[t]) * lam - (1 - a) / (np.sqrt(a) * np.sqrt(1 - ab[t]))) * f
                + (1 / np.sqrt(a) - lam / np.sqrt(ab[t])) * m + lam * x)
        var = betas[t - 1] * (1 - ab[t - 1]) / (1 - ab[t])
        z = np.asarray(jax.random.normal(jax.random.fold_in(key_loop, t), x.shape, jnp.float32), np.float64)
        m = mean + (np.sqrt(var) * z if t > 1 else 0.0)
    np.testing.assert_allclose(y, m, atol=2e-4)
    assert np.abs(y - x).max() > 0.05  # the stand-in moved the sample away from x


def _architecture_text() -> str:
    with open(os.path.join(REPO, "docs", "architecture.md")) as f:
        return f.read()


def _layout_entries() -> list[str]:
    """The paths docs/architecture.md's Project layout names (first word of each indented entry line)."""
    text = _architecture_text()
    block = text[text.index("## Project layout"):]
    entries = []
    for line in block.splitlines():
        if line.startswith("    ") and not line.startswith("     ") and line.strip():
            entries.append(line.split()[0])
    return entries


def test_readme_project_layout_matches_the_tree():
    """Every path the layout names exists, every module of the package, the builder, the scripts
    and the benchmarks is named (or lies in a named folder or glob), and configs/ lists every config."""
    import fnmatch
    import glob

    entries = _layout_entries()
    assert len(entries) > 20
    for e in entries:
        assert glob.glob(os.path.join(REPO, e)), f"the README's Project layout names {e}, which does not exist"
    folders = [e for e in entries if e.endswith("/")]
    files = [e for e in entries if not e.endswith("/")]

    def named(rel: str) -> bool:
        return any(fnmatch.fnmatch(rel, f) for f in files) or any(rel.startswith(d) for d in folders)

    modules = []
    for root in ("diffraw_jax", "tfds_zrr", "scripts", "benchmarks"):
        for path in sorted(glob.glob(os.path.join(REPO, root, "**", "*.py"), recursive=True)):
            rel = os.path.relpath(path, REPO)
            if os.path.basename(rel) != "__init__.py":
                modules.append(rel)
    missing = [m for m in modules if not named(m)]
    assert not missing, f"the README's Project layout leaves out {missing}"
    # configs/: the listed names are exactly the config files.
    line = next(ln for ln in _architecture_text().splitlines() if ln.strip().startswith("configs/ "))
    listed = {n.strip() for n in line.split("configs/", 1)[1].split(",")}
    have = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "configs", "*.py"))} - {"__init__"}
    assert listed == have, (sorted(listed), sorted(have))


# ---------------------------------------------------------------------------
# The README is a front page; the manual is docs/.


def test_readme_is_a_front_page_that_links_every_docs_page():
    """README.md: at most 250 lines, the two quick-start commands, and a link to every docs/ page
    (at least 5); every relative link of every page points at a file that exists."""
    text = readme_text()
    assert len(text.splitlines()) <= 250, len(text.splitlines())
    quick = text[text.index("## Quick start"):]
    assert quick.index("make demo") < quick.index("make test") < quick.index("\n## ", 3)
    pages = [p for p in documentation_files() if os.path.dirname(p).endswith("docs")]
    assert len(pages) >= 5
    for p in pages:
        assert f"](docs/{os.path.basename(p)})" in text, f"README.md does not link {p}"
    for p in documentation_files():
        with open(p) as f:
            page = f.read()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page):
            if target.startswith(("http://", "https://")):
                continue
            path = os.path.normpath(os.path.join(os.path.dirname(p), target))
            assert os.path.exists(path), f"{os.path.relpath(p, REPO)} links {target}, which does not exist"


def test_anchor_links_name_headings_that_exist():
    """Every ``page.md#anchor`` (and ``#anchor``) link of the documentation names a heading of that page
    (GitHub's anchor rule: lower case, punctuation dropped, spaces to hyphens)."""
    def anchors(path):
        with open(path) as f:
            page = re.sub(r"^```.*?^```", "", f.read(), flags=re.S | re.M)
        heads = re.findall(r"^#+ (.+)$", page, flags=re.M)
        return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}

    for p in documentation_files():
        with open(p) as f:
            page = f.read()
        for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", page):
            path = os.path.normpath(os.path.join(os.path.dirname(p), target)) if target else p
            assert anchor in anchors(path), f"{os.path.relpath(p, REPO)}: #{anchor} is no heading of {target or 'itself'}"


def test_outputs_page_commands(tmp_path):
    """docs/outputs.md's commands as written, in a fresh folder: a DNG, its TIFF and JPEG renders
    with the shipped student, and the one-liner that prints the JPEG's EXIF and ICC profile."""
    with open(os.path.join(REPO, "docs", "outputs.md")) as f:
        from tests.readme_commands import shell_commands
        cmds = shell_commands(f.read())
    assert [shlex.split(c)[0] for c in cmds] == ["python", "diffraw", "diffraw", "python"], cmds
    outs = []
    for c in cmds:
        argv = substitute(shlex.split(c), {"pretrained/distill-1": os.path.join(REPO, "pretrained", "distill-1")})
        argv = [sys.executable] + argv[1:] if argv[0] == "python" else [os.path.join(BIN, argv[0])] + argv[1:]
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        r = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, f"{c}\nexit {r.returncode}\n{r.stderr[-2000:]}"
        outs.append(r.stdout)
    assert sorted(os.listdir(tmp_path / "renders")) == ["synthetic_0.jpg", "synthetic_0.tif"]
    assert "sRGB" in outs[-1] and "274: 1" in outs[-1]  # the profile's description, Orientation 1


def test_documented_scripts_run_as_written(tmp_path):
    """Every ```sh block of the documentation runs whole with bash from the repository (paths
    under /tmp/ moved into a temporary folder) and exits 0. docs/pods-cli.md's: two diffraw
    processes on loopback render 4 mosaics, each written once."""
    from tests.readme_commands import script_blocks

    scripts = script_blocks(documentation_text())
    assert scripts, "the documentation has no ```sh script any more"
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ["PATH"])
    for i, script in enumerate(scripts):
        tmp = tmp_path / str(i)
        tmp.mkdir()
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", script.replace("/tmp/", f"{tmp}/")], cwd=REPO,
                           capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, f"{script}\nexit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        if "pods" in script:
            assert sorted(os.listdir(tmp / "pods" / "out")) == [f"m{k}.png" for k in range(4)]
            assert r.stdout.count("wrote ") == 4, r.stdout

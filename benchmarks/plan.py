"""Memory and FLOPs of the real training and sampling steps on any mesh, without the hardware.

    python -m benchmarks.plan --config=configs/zrr.py --devices 8 --fsdp 4
        [--remat none,full,...] [--batch B] [--crop N] [--sweep] [--no-sample]
        [--out results/plan] [--name zrr] [--overwrite] [--platform cpu|default]
        [--config.model.x=y ...]

For every variant (device count, FSDP axis size, remat policy) it AOT-lowers and
compiles, on N devices and from abstract inputs only (``jax.ShapeDtypeStruct``
with NamedShardings: no parameter is ever materialised):

* ``train``: the trainer's own jitted step, ``diffraw_jax.training.train.make_train_step``
  (normalising the uint16 / uint8 codes the trainer's loader yields, per-example
  t and m_t, D2 on device when the config enables it, forward, backward,
  clipping, Adam, EMA, the non-finite guard), with the state laid out as
  ``train.create_train_state`` lays it out (parameters, EMA and Adam moments
  sharded over "fsdp" by the model's logical annotations; the batch over every
  device);
* ``sample``: one step of ``diffraw_jax.sampling.make_sampler`` (the config's
  sampler, one network evaluation) on ``--sample_batch`` images of the crop size,
  parameters sharded as in training. Its memory does not depend on the number
  of steps (one ``lax.scan``); XLA's cost analysis counts a loop body once, so
  its FLOPs are per network evaluation.

It reports, per device, what XLA's ``compiled.memory_analysis()`` assigns:
argument, output, aliased (donated state reused for the new state) and
temporary bytes, XLA total = arguments + outputs - aliased + temporaries, and
the FLOPs per step from ``compiled.cost_analysis()``. For the train step also
the residuals, the bytes the forward keeps for the backward (the distinct
arrays among ``jax.vjp``'s residuals for one device's batch, from a trace: what
a remat policy changes, whatever the compiler), the floor = arguments +
outputs - aliased + residuals (what stays allocated from the forward to the
backward), the largest block (temporaries + gradients of the one res /
attention block whose forward + backward, compiled alone, needs most) and the
estimate = floor + largest block: a device that runs the blocks' backward
passes one after another, as remat intends. Then which accelerators the XLA
total and the estimate fit (<= ``HEADROOM`` of their memory, leaving room for
the runtime and fragmentation).
Writes ``<out>/<name>.json`` and ``<out>/<name>.md`` (refusing, as
``benchmarks.run`` does, to replace files git tracks unless ``--overwrite``;
``--render JSON`` rewrites the Markdown of a report).

``--platform cpu`` (default) compiles for N virtual CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``, with XLA:CPU's
memory-minimising scheduler, ``CPU_SCHEDULER_FLAG``); ``--platform default``
uses JAX's own devices (an accelerator host with at least N of them), where the
numbers are the accelerator compiler's own. Every variant runs in its own
subprocess (``--child``), so compile memory and a failure stay with it.

``--sweep`` adds the reference layouts for ``--devices N`` (1 device; N devices
data-parallel; N with ``--fsdp``; N all-FSDP), each with every ``--remat``
policy (default: none and full).

Caveat, stated in every report (``CAVEAT``): XLA:CPU's buffer assignment only
approximates an accelerator's. The CPU compiler fuses and schedules differently
(TPU and GPU compilers also rematerialise to fit), keeps float32 copies around
bfloat16 convolutions, removes the optimisation barriers early and then
recomputes several rematerialised blocks at once (its live set at the peak,
``--xla_dump_to``'s ``*-live-range.txt``, shows the recomputations of a whole
decoder level alive together), and has no flash attention. So with remat the
XLA:CPU total is a pessimistic figure and the estimate the one to plan with;
without remat the XLA total is the better one (the residuals count arrays XLA's
fusion drops). Either is to be confirmed on the hardware.

Supersedes nothing in ``benchmarks/profile_step.py`` (time per XLA op kind of a
real run) or ``benchmarks/run.py`` (measured speed and peak RSS); it reuses the
latter's FLOP reader and its guard against replacing committed results.
"""
from __future__ import annotations

import argparse
import ast
import datetime
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time

from benchmarks.run import OutputError, output_paths

RESULT_PREFIX = "PLAN_RESULT "
GIB = 2 ** 30
# Memory per chip in GiB (nominal; what the runtime can hand out is a little less:
# hence HEADROOM). Sources: NVIDIA A100/H100/H200 data sheets, Google Cloud TPU
# system architecture pages.
ACCELERATORS = {
    "TPU v5e": 16,
    "TPU v4": 32,
    "TPU v6e": 32,
    "A100 40GB": 40,
    "A100 80GB": 80,
    "H100 80GB": 80,
    "TPU v5p": 95,
    "H200 141GB": 141,
}
HEADROOM = 0.9
# XLA:CPU schedules for thread concurrency by default, which keeps more buffers alive;
# accelerator compilers schedule for memory. The memory-minimising CPU scheduler is the
# closer stand-in (on the zrr U-Net's gradient at 224 px, batch 4: 5.2 instead of 7.3 GiB
# of temporaries).
CPU_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
CAVEAT = ("XLA:CPU's memory analysis only approximates an accelerator's: the CPU compiler fuses, "
          "schedules and lays out buffers differently (TPU/GPU compilers also rematerialise to fit), "
          "keeps float32 copies around bfloat16 convolutions and layout transposes for their "
          "gradients, drops the optimisation barriers that order rematerialised blocks and so "
          "recomputes several blocks at once (remat saves far less here than on an accelerator), "
          "and has no flash attention. With remat the XLA:CPU total is therefore pessimistic, and the "
          "estimate (state + the residuals the forward keeps for the backward, from jax.vjp, "
          "compiler-independent, + the largest single block's forward and backward) is the figure "
          "to plan with; without remat the XLA total is the better one (the residuals count arrays "
          "XLA's fusion drops). Confirm on the hardware.")


# ------------------------------------------------------------------ the config

def load_config(path: str, overrides: list[str] = ()):
    """``get_config()`` of a config file (e.g. configs/zrr.py) with ``a.b=value`` overrides.

    Values are Python literals (ints, floats, True/False, "true"/"false") or else
    strings, as ``--config.model.remat_policy=full`` on ``main.py``.
    """
    spec = importlib.util.spec_from_file_location("_plan_config", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot load config file {path!r}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"config override must be key=value, got {item!r}")
        lowered = text.strip().lower()
        if lowered in ("true", "false"):
            value = lowered == "true"
        else:
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        if isinstance(node[leaf], float) and isinstance(value, int):
            value = float(value)
        node[leaf] = value
    return config


def variant_config(config_dict: dict, remat: str, batch: int, crop: int):
    """The ConfigDict of one variant: ``config_dict`` with the remat policy, global batch
    and crop set (``model.remat`` cleared: ``model.remat_policy`` says it all)."""
    import ml_collections

    config = ml_collections.ConfigDict(config_dict)
    config.model.remat = False
    config.model.remat_policy = remat
    config.data.global_batch_size = batch
    config.data.crop_size = crop
    return config


# ------------------------------------------------------------ abstract inputs

def abstract_train_state(config, model, tx, mesh):
    """The ``TrainState`` of ``train.create_train_state`` as ``jax.ShapeDtypeStruct`` leaves
    with the NamedShardings that function gives them; nothing is allocated.

    Shapes and dtypes come from ``jax.eval_shape`` of ``create_train_state`` itself;
    the shardings from ``train.train_state_shardings``, which it uses too. ``tests/test_plan.py`` checks them against a
    real ``create_train_state``.
    """
    import jax

    from diffraw_jax.training import train

    key = jax.random.key(int(config.seed))
    shapes = jax.eval_shape(lambda k: train.create_train_state(config, model, tx, mesh, k), key)
    shardings = train.train_state_shardings(config, model, tx, mesh, shapes.opt_state)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def abstract_images(batch: int, crop: int, sharding, codes: bool = False) -> dict:
    """{"raw": [B, crop/2, crop/2, 4], "dslr": [B, crop, crop, 3]} ShapeDtypeStructs split by
    ``sharding``. ``codes``: what the trainer's loader yields
    (``input_pipeline.create_train_loader(as_codes=True)``, normalised inside the step):
    raw uint16 packed codes, dslr uint8 0..255; else float32, raw in [0, 1] and dslr
    in [-1, 1]."""
    import jax
    import jax.numpy as jnp

    raw, dslr = (jnp.uint16, jnp.uint8) if codes else (jnp.float32, jnp.float32)
    return {"raw": jax.ShapeDtypeStruct((batch, crop // 2, crop // 2, 4), raw, sharding=sharding),
            "dslr": jax.ShapeDtypeStruct((batch, crop, crop, 3), dslr, sharding=sharding)}


def abstract_key(sharding):
    """A PRNG key (the default impl) as a ShapeDtypeStruct."""
    import jax

    k = jax.random.key(0)
    return jax.ShapeDtypeStruct(k.shape, k.dtype, sharding=sharding)


# ------------------------------------------------------------------ compiling

def compiled_stats(compiled) -> dict:
    """Per-device bytes from ``compiled.memory_analysis()`` and FLOPs from its cost analysis.

    total_bytes = arguments + outputs - aliased + temporaries (XLA's accounting:
    a donated argument buffer reused for an output is counted once).
    """
    from benchmarks.run import _flops

    m = compiled.memory_analysis()
    out = dict(argument_bytes=int(m.argument_size_in_bytes), output_bytes=int(m.output_size_in_bytes),
               alias_bytes=int(m.alias_size_in_bytes), temp_bytes=int(m.temp_size_in_bytes),
               generated_code_bytes=int(m.generated_code_size_in_bytes))
    out["total_bytes"] = out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] + out["temp_bytes"]
    peak = getattr(m, "peak_memory_in_bytes", 0)
    out["peak_memory_bytes"] = int(peak) if peak else None
    out["flops"] = _flops(compiled)
    return out


def residual_bytes(config, model, batch: int, crop: int) -> int:
    """Bytes the U-Net's training forward keeps for its backward pass on ``batch`` images
    of ``crop`` pixels: the distinct arrays among ``jax.vjp``'s residuals (what a remat
    policy decides), from a trace alone, nothing compiled or allocated. Arrays kept more
    than once count once; the parameters themselves (already in the train state) and
    constants not at all; their compute-dtype copies do. Independent of any compiler's
    scheduling, and before XLA's fusion (which can drop elementwise residuals: without
    remat this is an overestimate).
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.extend import core as jex_core

    from diffraw_jax.models import factory

    def loss(p, m_t, w, c, t):
        f = model.apply({"params": p}, m_t, w, c, t, train=True, rngs={"dropout": jax.random.key(0)})
        return jnp.mean(f ** 2)

    inputs = factory.model_inputs(model, batch, crop)
    closed = jax.make_jaxpr(lambda p, *a: jax.vjp(lambda q: loss(q, *a), p)[1])(
        factory.abstract_params(model), *inputs)
    seen = set(closed.jaxpr.invars)
    total = 0
    for v in closed.jaxpr.outvars:
        if isinstance(v, jex_core.Literal) or v in seen:
            continue
        seen.add(v)
        total += int(np.prod(v.aval.shape)) * v.aval.dtype.itemsize
    return total


def _block_calls(config, model, batch: int, crop: int) -> dict:
    """{key: (block class, its fields, abstract call arguments)} for every distinct res /
    attention block call of the U-Net's training forward on ``batch`` images (a trace,
    through ``flax.linen.intercept_methods``; rematerialised blocks count as their
    plain class)."""
    import flax.linen as nn
    import jax

    from diffraw_jax.models import factory
    from diffraw_jax.models import unet as unet_lib

    calls = {}

    def intercept(next_fun, args, kwargs, context):
        mod = context.module
        base = next((c for c in (unet_lib.ResBlock, unet_lib.AttentionBlock) if isinstance(mod, c)), None)
        if base is not None and context.method_name == "__call__":
            fields = tuple((f, getattr(mod, f)) for f in base.__dataclass_fields__ if f not in ("parent", "name"))
            shapes = tuple((a.shape, str(a.dtype)) if hasattr(a, "shape") else a for a in args)
            abstract = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) if hasattr(a, "shape") else a for a in args)
            calls.setdefault((base.__name__, fields, shapes), (base, dict(fields), abstract))
        return next_fun(*args, **kwargs)

    def forward(p, *a):
        return model.apply({"params": p}, *a, train=True, rngs={"dropout": jax.random.key(0)})

    params = factory.abstract_params(model)  # (its own trace: at another size)
    with nn.intercept_methods(intercept):
        jax.eval_shape(forward, params, *factory.model_inputs(model, batch, crop))
    return calls


def block_working_set(config, model, batch: int, crop: int) -> tuple[int, str]:
    """(bytes, description) of the largest working set of one res / attention block's
    forward + backward on ``batch`` images: XLA's temporaries + outputs (the gradients)
    of that block's gradient alone, compiled for this backend. With remat a device runs
    the blocks' backward passes one at a time, so the train step needs about the floor
    (``residual_bytes`` + state) plus this.
    """
    import jax

    best = (0, "")
    for (name, _, shapes), (base, fields, args) in _block_calls(config, model, batch, crop).items():
        block = base(**fields)
        arrays = [i for i, a in enumerate(args) if isinstance(a, jax.ShapeDtypeStruct)]

        def call_args(arr, args=args, arrays=arrays):  # the recorded call with these arrays
            full = list(args)
            for i, a in zip(arrays, arr):
                full[i] = a
            return full

        params = jax.eval_shape(lambda k, *arr: block.init(k, *call_args(arr)), jax.random.key(0),
                                *[args[i] for i in arrays])["params"]

        def grads(p, cotangent, *arr, block=block, call_args=call_args):
            f = lambda p, *a: block.apply({"params": p}, *call_args(a), rngs={"dropout": jax.random.key(1)})
            _, vjp = jax.vjp(f, p, *arr)
            return vjp(cotangent)  # an input, not constant ones: XLA would constant-fold that backward

        out = jax.eval_shape(lambda p, *arr: block.apply({"params": p}, *call_args(arr),
                                                         rngs={"dropout": jax.random.key(1)}),
                             params, *[args[i] for i in arrays])
        m = jax.jit(grads).lower(params, out, *[args[i] for i in arrays]).compile().memory_analysis()
        size = int(m.temp_size_in_bytes) + int(m.output_size_in_bytes)
        if size > best[0]:
            best = (size, f"{name} on {list(shapes[0][0])}")
    return best


def plan_train(config, devices, estimate: bool = True) -> dict:
    """Compiles ``train.make_train_step`` for ``config`` on ``devices``; returns its stats
    (``estimate``: also the residuals, the largest block and the estimate, which compile
    every block once more; off, only XLA's analysis of the whole step)."""
    import jax

    from diffraw_jax import parallel
    from diffraw_jax.training import train
    from diffraw_jax.models import factory

    mesh = parallel.create_mesh(int(config.mesh.fsdp), devices)
    model = factory.create_model(config)
    tx = train.create_optimizer(config)
    schedule = factory.create_schedule(config)
    state = abstract_train_state(config, model, tx, mesh)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    step = train.make_train_step(config, model, tx, schedule, mesh, shardings)
    batch = abstract_images(int(config.data.global_batch_size), int(config.data.crop_size),
                            parallel.batch_sharding(mesh), codes=True)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch, abstract_key(parallel.replicated(mesh))).compile()
    out = dict(compile_s=time.perf_counter() - t0, params=factory.count_params(state.params))
    out.update(compiled_stats(compiled))
    if not estimate:
        return out
    per_device = int(config.data.global_batch_size) // len(devices)
    out["residual_bytes"] = residual_bytes(config, model, per_device, int(config.data.crop_size))
    out["floor_bytes"] = (out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"]
                          + out["residual_bytes"])
    out["block_bytes"], out["largest_block"] = block_working_set(config, model, per_device,
                                                                 int(config.data.crop_size))
    out["estimate_bytes"] = out["floor_bytes"] + out["block_bytes"]
    return out


def plan_sample(config, devices, batch: int) -> dict:
    """Compiles one step of ``sampling.make_sampler`` (the config's method, one network
    evaluation; "ddpm" has no shorter form and runs its s steps) on ``batch`` images of
    ``data.crop_size`` with FSDP-sharded parameters; returns its stats."""
    import jax
    import jax.numpy as jnp

    from diffraw_jax import parallel, sampling
    from diffraw_jax.models import factory

    mesh = parallel.create_mesh(int(config.mesh.fsdp), devices)
    model = factory.create_model(config)
    method = factory.sampler_settings(config).method
    one_step = factory.sampler_settings(config, method, None if method == "ddpm" else 1)
    fn = sampling.make_sampler(model, factory.create_schedule(config), one_step, jit=False)
    param_sh = factory.param_shardings(model, mesh)
    params = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          factory.abstract_params(model), param_sh)
    data, rep = parallel.batch_sharding(mesh), parallel.replicated(mesh)
    crop = int(config.data.crop_size)
    img = jax.ShapeDtypeStruct((batch, crop, crop, 3), jnp.float32, sharding=data)
    w = abstract_images(batch, crop, data)["raw"]
    jitted = jax.jit(fn, in_shardings=(param_sh, data, data, data, rep), out_shardings=data)
    t0 = time.perf_counter()
    compiled = jitted.lower(params, w, img, img, abstract_key(rep)).compile()
    out = dict(compile_s=time.perf_counter() - t0, params=factory.count_params(params),
               sampler=one_step.method, sampler_steps=one_step.num_steps or one_step.s)
    out.update(compiled_stats(compiled))
    return out


def run_child(spec: dict) -> dict:
    """One variant in this process (``--child``): spec has config (a dict), what
    ("train" | "sample"), devices, fsdp, remat, batch, crop, sample_batch, and optionally
    estimate (default true: see ``plan_train``)."""
    import jax

    config = variant_config(spec["config"], spec["remat"], spec["batch"], spec["crop"])
    config.mesh.fsdp = spec["fsdp"]
    devices = jax.devices()
    if len(devices) < spec["devices"]:
        raise ValueError(f"{spec['devices']} devices asked for, JAX sees {len(devices)} "
                         f"({jax.default_backend()})")
    devices = devices[:spec["devices"]]
    if spec["what"] == "train":
        out = plan_train(config, devices, spec.get("estimate", True))
    else:
        out = plan_sample(config, devices, spec["sample_batch"])
    out.update(backend=jax.default_backend(), device_kind=devices[0].device_kind)
    return out


# --------------------------------------------------------------------- variants

def layouts(devices: int, fsdps: list[int], sweep: bool) -> list[tuple[int, int]]:
    """(devices, fsdp) meshes to plan: N devices with each fsdp size, and with ``sweep``
    also 1 device, N data-parallel and N all-FSDP (duplicates dropped, order kept)."""
    out = [(devices, f) for f in fsdps]
    if sweep:
        out = [(1, 1), (devices, 1)] + out + [(devices, devices)]
    return list(dict.fromkeys(out))


def child_env(devices: int, platform_name: str) -> dict:
    """The environment of a child: N virtual CPU devices for ``--platform cpu``."""
    env = dict(os.environ)
    if platform_name == "cpu":
        flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
        flags.append(f"--xla_force_host_platform_device_count={devices}")
        if not any("xla_cpu_enable_concurrency_optimized_scheduler" in f for f in flags):
            flags.append(CPU_SCHEDULER_FLAG)
        env["XLA_FLAGS"] = " ".join(flags)
        env["JAX_PLATFORMS"] = "cpu"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH", "")]))
    return env


def run_variant(spec: dict, platform_name: str, timeout: float) -> dict:
    """Runs one variant in a subprocess; returns the spec's row with its stats or "error"."""
    row = {k: v for k, v in spec.items() if k != "config"}
    row["data"] = spec["devices"] // spec["fsdp"]
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-m", "benchmarks.plan", "--child"], input=json.dumps(spec),
                           capture_output=True, text=True, timeout=timeout,
                           env=child_env(spec["devices"], platform_name))
    except subprocess.TimeoutExpired:
        row["error"] = f"timed out after {timeout:.0f} s"
        return row
    row["wall_s"] = time.perf_counter() - t0
    lines = [x for x in r.stdout.splitlines() if x.startswith(RESULT_PREFIX)]
    if r.returncode != 0 or not lines:
        tail = (r.stderr or r.stdout).strip().splitlines()
        row["error"] = (tail[-1] if tail else f"exit {r.returncode}")[:500]
        return row
    row.update(json.loads(lines[-1][len(RESULT_PREFIX):]))
    row["fits"] = fits(row["total_bytes"])
    if "estimate_bytes" in row:
        row["fits_estimate"] = fits(row["estimate_bytes"])
    return row


def fits(total_bytes: int, headroom: float = HEADROOM) -> dict[str, bool]:
    """{accelerator: total_bytes <= headroom * its memory} for ``ACCELERATORS``."""
    return {name: total_bytes <= headroom * gib * GIB for name, gib in ACCELERATORS.items()}


# ----------------------------------------------------------------------- report

def _gib(x) -> str:
    """Bytes as GiB with 2 decimals (3 significant digits of MiB below 0.01 GiB)."""
    if x is None:
        return "-"
    return f"{x / GIB:.2f}" if x >= 0.01 * GIB else f"{x / GIB:.2g}"


def _tflop(x) -> str:
    if x is None:
        return "-"
    return f"{x / 1e12:.2f}" if x >= 1e10 else f"{x / 1e12:.2g}"


def _layout(r: dict) -> str:
    return f"{r['devices']} ({r['data']} x {r['fsdp']})"


def goals(rows: list[dict]) -> list[dict]:
    """The issue's two goals, where the rows have them: the train step at the config's
    batch fits 8 x TPU v5e with FSDP and remat, and one 80 GB GPU with remat. Each goal
    names the index of its qualifying row with the smallest estimate and whether the
    XLA:CPU total and the estimate fit."""
    out = []
    train = [r for r in rows if r["what"] == "train" and "error" not in r and r["remat"] != "none"]
    for goal, chip, pick in (
            ("8 x TPU v5e (16 GiB) with FSDP + remat", "TPU v5e", lambda r: r["devices"] == 8 and r["fsdp"] > 1),
            ("one 80 GB GPU (H100 / A100 80GB) with remat", "H100 80GB", lambda r: r["devices"] == 1)):
        cands = [r for r in train if pick(r)]
        if cands:
            best = min(cands, key=lambda r: r.get("estimate_bytes", r["total_bytes"]))
            out.append(dict(goal=goal, row=rows.index(best), chip=chip, met_total=best["fits"][chip],
                            met_estimate=best.get("fits_estimate", {}).get(chip)))
    return out


def _chips(fit: dict[str, bool]) -> str:
    """The chips that fit: "all", "none", or their names."""
    names = [k for k, v in fit.items() if v]
    return "all" if fit and len(names) == len(fit) else (", ".join(names) or "none")


def _bold(text: str) -> str:
    return text if text == "-" else f"**{text}**"


def _yes(x) -> str:
    return "-" if x is None else ("yes" if x else "no")


def markdown(report: dict) -> str:
    m = report["meta"]
    L = [f"# Memory and FLOP plan: {m['name']}", "",
         f"- date: {m['date']}", f"- machine: {m['machine']}", f"- jax {m['jax']}, commit {m['commit']}",
         f"- command: `{m['command']}`",
         f"- model: `{m['model']}` U-Net, {m['params']}, compute dtype {m['dtype']}, crop {m['crop']}, "
         f"global train batch {m['batch']}, sampler batch {m['sample_batch']}", "",
         f"**Caveat.** {m.get('caveat', CAVEAT)} Compiled for {m['platform_note']}.", "",
         "All numbers per device, in GiB (2^30 bytes).",
         "",
         "- *XLA total* = arguments + outputs - aliased (the donated train state) + temporaries, from "
         "`compiled.memory_analysis()` of the whole step.",
         "- *residuals*: what the training forward keeps for the backward (the distinct arrays among "
         "`jax.vjp`'s residuals for the per-device batch, before XLA's fusion); *floor* = arguments + "
         "outputs - aliased + residuals.",
         "- *largest block*: XLA's temporaries + gradients of the one res / attention block whose "
         "forward + backward alone needs most (compiled on its own); *estimate* = floor + largest block, "
         "the memory of a device that runs the blocks' backward passes one after another, as remat intends.",
         "- *TFLOP* per step per device from XLA's cost analysis, which counts a loop body once: the "
         "sampler's figure is per network evaluation, and chunked attention (the default above 1,024 "
         "positions) counts one chunk (for the zrr U-Net at 448 px that leaves out ~1.5% of a forward pass).",
         f"- *fits*: <= {HEADROOM:.0%} of the chip's memory.", "",
         "| step | devices (data x fsdp) | remat | batch / device | arguments | outputs | aliased | "
         "temporaries | XLA total | residuals | floor | largest block | estimate | TFLOP / device | "
         "fits (XLA total) | fits (estimate) |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        remat = r["remat"] if r["what"] == "train" else "-"
        batch = r["batch"] if r["what"] == "train" else r["sample_batch"]
        per = f"{batch // r['devices']}" if batch % r["devices"] == 0 else f"{batch / r['devices']:.2f}"
        if "error" in r:
            L.append(f"| {r['what']} | {_layout(r)} | {remat} | {per} | error: {r['error']} |||||||||||")
            continue
        L.append(f"| {r['what']} | {_layout(r)} | {remat} | {per} | {_gib(r['argument_bytes'])} | "
                 f"{_gib(r['output_bytes'])} | {_gib(r['alias_bytes'])} | {_gib(r['temp_bytes'])} | "
                 f"**{_gib(r['total_bytes'])}** | {_gib(r.get('residual_bytes'))} | "
                 f"{_gib(r.get('floor_bytes'))} | {_gib(r.get('block_bytes'))} | "
                 f"{_bold(_gib(r.get('estimate_bytes')))} | {_tflop(r['flops'])} | {_chips(r['fits'])} | "
                 f"{_chips(r['fits_estimate']) if 'fits_estimate' in r else '-'} |")
    blocks = sorted({r["largest_block"] for r in report["rows"] if r.get("largest_block")})
    if blocks:
        L += ["", "Largest block: " + "; ".join(blocks) + "."]
    L += ["", "Accelerators (GiB per chip): " + ", ".join(f"{k} {v}" for k, v in ACCELERATORS.items()) + ".", ""]
    g = report.get("goals") or []
    if g:
        L += ["## Goals", "", "| goal | row | XLA total | fits | estimate | fits |", "|---|---|---|---|---|---|"]
        for x in g:
            r = report["rows"][x["row"]]
            L.append(f"| {x['goal']} | {r['what']}, {_layout(r)}, remat {r['remat']} | "
                     f"{_gib(r['total_bytes'])} | {_yes(x['met_total'])} | {_gib(r.get('estimate_bytes'))} | "
                     f"{_yes(x['met_estimate'])} |")
        L.append("")
    return "\n".join(L)


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    mem = ""
    try:
        mem = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GIB:.0f} GiB RAM"
    except (ValueError, OSError, AttributeError):
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}, {platform.system()} {platform.release()}"


def _commit() -> str:
    """HEAD's short hash, "-dirty" when the working tree has changes ("unknown" without git)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=here).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=here).stdout.strip()
    except OSError:
        return "unknown"
    return (head + "-dirty" if dirty else head) if head else "unknown"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--child"]:
        spec = json.loads(sys.stdin.read())
        print(RESULT_PREFIX + json.dumps(run_child(spec)), flush=True)
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="a config file, e.g. configs/zrr.py (required)")
    p.add_argument("--devices", type=int, default=8, help="devices of the mesh (N)")
    p.add_argument("--fsdp", default=None,
                   help="fsdp axis size, or several comma-separated (default: the config's mesh.fsdp)")
    p.add_argument("--remat", default=None,
                   help="comma-separated remat policies (none, full, dots_saveable, ...); "
                        "default: the config's, or none,full with --sweep")
    p.add_argument("--batch", type=int, default=None, help="global train batch (default: the config's)")
    p.add_argument("--crop", type=int, default=None, help="crop size (default: the config's data.crop_size)")
    p.add_argument("--sample_batch", type=int, default=None,
                   help="sampler batch (default: data.eval_batch_size rounded up to a multiple of N)")
    p.add_argument("--no-sample", dest="sample", action="store_false", help="skip the sampler step")
    p.add_argument("--sweep", action="store_true",
                   help="plan 1 device, N data-parallel, N with --fsdp and N all-FSDP, each with every remat")
    p.add_argument("--platform", choices=("cpu", "default"), default="cpu",
                   help="cpu: N virtual CPU devices; default: JAX's own devices (needs N of them)")
    p.add_argument("--out", default="", help="folder for <name>.json and <name>.md (default: print only)")
    p.add_argument("--name", default=None, help="file stem (default: the config file's)")
    p.add_argument("--overwrite", action="store_true", help="allow replacing files git tracks")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per compiled variant")
    p.add_argument("--render", default=None, metavar="JSON",
                   help="only rewrite the Markdown next to an existing report JSON")
    a, rest = p.parse_known_args(argv)
    if a.render:
        with open(a.render) as f:
            report = json.load(f)
        with open(os.path.splitext(a.render)[0] + ".md", "w") as f:
            f.write(markdown(report) + "\n")
        return 0
    if not a.config:
        p.error("--config is required")
    overrides = []
    for x in rest:
        if not x.startswith("--config."):
            p.error(f"unrecognized argument {x!r}")
        overrides.append(x[len("--config."):])
    from diffraw_jax.models import unet as unet_lib

    config = load_config(a.config, overrides)
    from diffraw_jax.models import factory

    own = factory.remat_policy(config)
    remats = (a.remat.split(",") if a.remat else (["none", "full"] if a.sweep else [own]))
    bad = [r for r in remats if r not in unet_lib.REMAT_CHOICES]
    if bad:
        p.error(f"--remat: unknown {bad}; choose from {unet_lib.REMAT_CHOICES}")
    n = a.devices
    fsdps = [int(f) for f in a.fsdp.split(",")] if a.fsdp else [int(config.mesh.fsdp)]
    batch = a.batch or int(config.data.global_batch_size)
    crop = a.crop or int(config.data.crop_size)
    eval_batch = int(config.data.eval_batch_size)
    sample_batch = a.sample_batch or -(-eval_batch // n) * n
    if n < 1 or any(f < 1 or n % f for f in fsdps):
        p.error(f"every --fsdp ({a.fsdp}) must divide --devices {n}")
    name = a.name or os.path.splitext(os.path.basename(a.config))[0]
    paths = None
    if a.out:
        try:
            paths = output_paths(a.out, name, a.overwrite)
        except OutputError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    specs = []
    for devices, f in layouts(n, fsdps, a.sweep):
        base = dict(config=config.to_dict(), devices=devices, fsdp=f, batch=batch, crop=crop,
                    sample_batch=sample_batch if devices == n else -(-eval_batch // devices) * devices)
        specs += [dict(base, what="train", remat=r) for r in remats]
        if a.sample:
            specs.append(dict(base, what="sample", remat=own))
    rows = []
    for i, spec in enumerate(specs, 1):
        label = f"{spec['what']} on {spec['devices']} devices (fsdp {spec['fsdp']}), remat {spec['remat']}"
        print(f"[{i}/{len(specs)}] {label} ...", end=" ", flush=True)
        row = run_variant(spec, a.platform, a.timeout)
        rows.append(row)
        print("error: " + row["error"] if "error" in row else
              f"total {row['total_bytes'] / GIB:.2f} GiB, {(row['flops'] or 0) / 1e12:.2f} TFLOP, "
              f"{row['wall_s']:.0f} s", flush=True)
    ok = [r for r in rows if "error" not in r]
    params = f"{ok[0]['params']:,} parameters" if ok else "parameters unknown"
    platform_note = (f"up to {n} virtual CPU devices (XLA:CPU)" if a.platform == "cpu" else
                     f"JAX's own devices ({ok[0]['device_kind'] if ok else '?'})")
    meta = dict(name=name, date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                machine=_machine(), jax=_jax_version(), commit=_commit(),
                command=" ".join(["python -m benchmarks.plan"] + list(argv)), model=config.model.name,
                params=params, dtype=config.model.dtype, crop=crop, batch=batch, sample_batch=sample_batch,
                platform=a.platform, platform_note=platform_note, caveat=CAVEAT, headroom=HEADROOM,
                accelerators_gib=ACCELERATORS)
    report = dict(meta=meta, rows=rows)
    report["goals"] = goals(rows)
    md = markdown(report)
    print()
    print(md)
    if paths:
        os.makedirs(a.out, exist_ok=True)
        with open(paths[0], "w") as f:
            json.dump(report, f, indent=1)
        with open(paths[1], "w") as f:
            f.write(md + "\n")
        print(f"wrote {paths[0]} and {os.path.basename(paths[1])}")
    return 1 if len(ok) < len(rows) else 0


def _jax_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("jax")
    except metadata.PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())

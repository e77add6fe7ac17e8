"""diffraw-jax benchmarks: train step, sampling, a PyTorch reference, the input pipeline.

    python -m benchmarks.run [--quick] [--device] [--out results/benchmarks]
        [--only train,forward,sample,torch,conv,input] [--model tiny|demo|zrr]
        [--crop N] [--batch B] [--tag NAME] [--overwrite]

Writes ``<out>/<tag>.json`` and ``<out>/<tag>.md`` (tag: "cpu", or the
accelerator's kind with ``--device``; ``--quick`` adds "-quick", e.g.
"cpu-quick", so a smoke run never lands on the full results) and prints the
Markdown. It refuses (exit 2, before running anything) to replace a file that
git tracks, such as the committed ``results/benchmarks/cpu.json``, unless
``--overwrite`` is given.

Without ``--device`` everything runs on the CPU (JAX_PLATFORMS=cpu) with
CPU-sized workloads; ``--device`` runs on JAX's default accelerator with the
paper-sized ones (the zrr U-Net at 448x448 crops). ``--quick`` keeps a few
cases and few timed steps (a smoke run, ~5 min on 2 CPU cores).

Every case runs in its own subprocess (``--case JSON``), so compile caches,
peak memory and a failure (out of memory, a timeout) stay with that case.

What is measured
----------------
* ``train``: ``diffraw_jax.training.train.make_train_step`` (the real jitted step:
  per-example DTDM sampling of t and m_t, forward, backward, global-norm clip,
  Adam, EMA, the non-finite guard; D2 off, it is measured on its own under
  ``input``) on random data: compile seconds (lower + compile), steps/s and
  images/s over the timed steps, peak memory (device ``peak_bytes_in_use`` on
  an accelerator, the process's peak RSS on CPU, compile included), FLOPs per
  step from XLA's cost analysis of the compiled step, achieved FLOP/s and, on a
  known accelerator, the MFU against its dense peak for the compute dtype.
* ``forward``: one jitted eval-mode U-Net forward (``model.apply``), the same
  numbers.
* ``sample``: ``diffraw_jax.sampling.make_sampler`` (one ``lax.scan``) for
  DTDM-100 and DTDM-DDIM-10: images/s, ms per step, the ratio of ms per step to
  one forward pass of the same batch measured in the same process (goal
  <= 1.05), and a compile-once check (a second call with new inputs and key
  hits the cache, and the denoiser was traced once).
* ``torch``: ``benchmarks/torch_unet.py``, the same U-Net in PyTorch (same
  layers, shapes and parameter count, checked here), forward and train step
  (same loss, global-norm clip, Adam, EMA) at the same shapes, with
  ``torch.set_num_threads(os.cpu_count())``. PyTorch is not a dependency of the
  package (the ``bench`` extra: ``pip install torch==2.13.0``); without it the
  rows say "skipped" and the conv3x3 case times JAX alone.
* ``input``: the Grain host pipeline (examples/s at the train crops, needs the
  ``[train]`` extra: tfds and grain; skipped without them; synthetic pairs are
  written to a temporary folder, or kept in ``$DIFFRAW_BENCH_DATA``) and D2 on the device
  (images/s), each against the images/s the train step consumes at that crop
  (goal >= 4x).

The benchmark itself imports only jax, flax, optax, numpy and the project's core
modules (and torch / tfds / grain inside the cases that need them), so it runs
on a bare accelerator machine.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

RESULT_PREFIX = "BENCH_RESULT "
TORCH_MISSING = "torch is not installed (the bench extra: pip install torch==2.13.0)"

# Dense peak FLOP/s per chip, (bfloat16, float32). float32 convolutions and
# matmuls on NVIDIA Ampere+ run as TF32 under JAX's default precision, so the
# float32 peak is the TF32 tensor-core peak. Sources: NVIDIA H100/H200/A100 data
# sheets (dense, without sparsity), Google Cloud TPU system architecture pages.
PEAK_FLOPS = {
    "H100 PCIe": (756e12, 378e12),
    "H100": (989.4e12, 494.7e12),   # SXM5 (also "H100 80GB HBM3")
    "H200": (989.4e12, 494.7e12),
    "A100": (312e12, 156e12),
    "TPU v4": (275e12, 275e12 / 2),
    "TPU v5 lite": (197e12, 197e12 / 2),
    "TPU v5e": (197e12, 197e12 / 2),
    "TPU v5p": (459e12, 459e12 / 2),
    "TPU v6 lite": (918e12, 918e12 / 2),
    "TPU v6e": (918e12, 918e12 / 2),
}


def peak_flops(device_kind: str, dtype: str) -> float | None:
    """Dense peak FLOP/s of one chip for ``dtype`` ("bfloat16"/"float32"), or None."""
    for name, (bf16, f32) in PEAK_FLOPS.items():  # most specific names first
        if name.lower() in device_kind.lower():
            return bf16 if dtype == "bfloat16" else f32
    return None


# ----------------------------------------------------------------- the cases

def case_list(quick: bool, device: bool) -> list[dict]:
    """The cases of one run (each a dict with a "kind")."""
    cases: list[dict] = []
    if device:
        train_shapes = [("demo", 64, 64), ("zrr", 448, 8)] if not quick else [("zrr", 448, 8)]
        dtypes = ["float32", "bfloat16"]
        steps = 5 if quick else 20
        sample_shapes = [("zrr", 448, 1), ("demo", 64, 8)] if not quick else [("zrr", 448, 1)]
    else:
        train_shapes = [("demo", 64, 8), ("zrr", 64, 2)] if not quick else [("demo", 64, 8)]
        dtypes = ["float32", "bfloat16"] if not quick else ["float32"]
        steps = 3 if quick else 8
        sample_shapes = [("demo", 64, 8), ("demo", 448, 1)] if not quick else [("demo", 64, 8)]
    for model, crop, batch in train_shapes:
        for dt in dtypes:
            cases.append(dict(kind="train", model=model, crop=crop, batch=batch, dtype=dt,
                              steps=steps))
            cases.append(dict(kind="forward", model=model, crop=crop, batch=batch, dtype=dt,
                              steps=steps))
    for model, crop, batch in sample_shapes:
        runs = [("dtdm", 100), ("dtdm_ddim", 10)]
        if quick:
            runs = [("dtdm", 10), ("dtdm_ddim", 10)] if not device else runs
        for method, n in runs:
            cases.append(dict(kind="sample", model=model, crop=crop, batch=batch,
                              dtype="float32", method=method, num_steps=n))
    for model, crop, batch in train_shapes:
        # PyTorch's bfloat16 autocast on CPU is ~10x slower than its float32 (the demo
        # U-Net: measured once, results/benchmarks/cpu.json); the zrr one would take ~20 min.
        for dt in (dtypes if device or model == "demo" else ["float32"]):
            cases.append(dict(kind="torch", model=model, crop=crop, batch=batch, steps=steps, dtype=dt,
                              device="cuda" if device else "cpu"))
    conv_shapes = [(8, 64, 16, 16), (8, 32, 32, 32), (8, 16, 64, 64), (8, 8, 128, 128)]
    if device:
        conv_shapes = [(8, 448, 64, 64), (8, 224, 128, 128), (8, 112, 256, 256), (8, 56, 512, 512)]
    cases.append(dict(kind="conv", shapes=conv_shapes[:2] if quick else conv_shapes,
                      steps=5 if quick else 20))
    crops = sorted({crop for _, crop, _ in train_shapes} | ({64, 448} if not quick else set()))
    cases.append(dict(kind="input", crops=crops, batch=8, quick=quick))
    return cases


def _sync(tree):
    import jax
    return jax.block_until_ready(tree)


def _best_of(call, sync, steps: int, windows: int = 3) -> float:
    """Seconds per call: two warm-up calls, then the fastest of ``windows`` windows of
    ``steps`` calls (the minimum filters out other load on a shared machine)."""
    sync = sync or (lambda: None)
    for _ in range(2):
        call()
    sync()
    best = float("inf")
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(steps):
            call()
        sync()
        best = min(best, (time.perf_counter() - t0) / steps)
    return best


def _peak_memory_bytes() -> tuple[int | None, str]:
    """(peak bytes, what it is): device peak_bytes_in_use, else the process's peak RSS."""
    import jax
    dev = jax.local_devices()[0]
    stats = dev.memory_stats() if dev.platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
    import resource
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process peak RSS"


def _flops(compiled) -> float | None:
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else None
    flops = (ca or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


class _AttrDict(dict):
    """Attribute access over a dict: all that configs/default.py needs of ml_collections.ConfigDict."""

    __getattr__ = dict.__getitem__
    __setattr__ = dict.__setitem__


def _config(model: str, crop: int, batch: int, dtype: str):
    """configs/default.py's config for one case. On a bare accelerator machine without
    ml_collections (only jax, flax, optax, numpy), a plain attribute dict stands in for
    ConfigDict in this case's process."""
    try:
        import ml_collections  # noqa: F401
    except ImportError:
        import types
        sys.modules["ml_collections"] = types.SimpleNamespace(ConfigDict=_AttrDict)
    from configs import default

    cfg = default.get_config()
    cfg.model.name = model
    cfg.model.dtype = dtype
    cfg.data.crop_size = crop
    cfg.data.global_batch_size = batch
    cfg.degradation.enabled = False
    cfg.optim.warmup_steps = 1
    return cfg


def _random_batch(batch: int, crop: int, seed: int = 0) -> dict:
    import numpy as np
    rng = np.random.default_rng(seed)
    return {"raw": rng.uniform(0, 1, (batch, crop // 2, crop // 2, 4)).astype(np.float32),
            "dslr": rng.uniform(-1, 1, (batch, crop, crop, 3)).astype(np.float32)}


def _rates(out: dict, seconds_per_call: float, images_per_call: int, flops: float | None,
           device_kind: str, dtype: str):
    out["ms_per_call"] = 1e3 * seconds_per_call
    out["calls_per_s"] = 1.0 / seconds_per_call
    out["images_per_s"] = images_per_call / seconds_per_call
    out["gflop_per_call"] = None if flops is None else flops / 1e9
    out["achieved_tflop_s"] = None if flops is None else flops / seconds_per_call / 1e12
    peak = peak_flops(device_kind, dtype)
    out["mfu"] = None if (flops is None or peak is None) else flops / seconds_per_call / peak


def run_train(c: dict) -> dict:
    import jax
    from diffraw_jax import parallel
    from diffraw_jax.training import train
    from diffraw_jax.models import factory

    cfg = _config(c["model"], c["crop"], c["batch"], c["dtype"])
    mesh = parallel.create_mesh(1)
    model = factory.create_model(cfg)
    tx = train.create_optimizer(cfg)
    schedule = factory.create_schedule(cfg)
    state = train.create_train_state(cfg, model, tx, mesh, jax.random.key(0))
    shardings = jax.tree.map(lambda x: x.sharding, state)
    step = train.make_train_step(cfg, model, tx, schedule, mesh, shardings)
    batch = jax.device_put(_random_batch(c["batch"], c["crop"]), parallel.batch_sharding(mesh))
    key = jax.random.key(1)
    t = time.perf_counter()
    compiled = step.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - t
    box = {"state": state}

    def call():
        box["state"], box["metrics"] = compiled(box["state"], batch, key)

    dt = _best_of(call, lambda: _sync(box), c["steps"])
    state, metrics = box["state"], box["metrics"]
    if not bool(metrics["finite"]):
        raise FloatingPointError("non-finite loss in the benchmark train step")
    out = dict(compile_s=compile_s, devices=len(mesh.devices.flat),
               params=int(sum(x.size for x in jax.tree.leaves(state.params))))
    _rates(out, dt, c["batch"], _flops(compiled), jax.devices()[0].device_kind, c["dtype"])
    out["peak_memory_bytes"], out["peak_memory_kind"] = _peak_memory_bytes()
    return out


def _unet_and_params(model_name: str, crop: int, dtype: str, perturb: bool = True):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from diffraw_jax.models import factory
    from diffraw_jax.models import unet as unet_lib

    dt = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
    model = unet_lib.make_unet(model_name, dtype=dt)
    params = nn.unbox(factory.init_variables(model, jax.random.key(0), crop)["params"])
    if perturb:  # zero-initialised layers would make the output identically 0
        import numpy as np
        rng = np.random.default_rng(2)  # numpy: threefry draws compile slowly on CPU
        params = jax.tree.map(lambda p: p + jnp.asarray(0.02 * rng.standard_normal(p.shape), p.dtype),
                              params)
    return model, params


def _model_inputs(batch: int, crop: int, seed: int = 0):
    import jax.numpy as jnp
    import numpy as np
    rng = np.random.default_rng(seed)
    m_t = jnp.asarray(rng.standard_normal((batch, crop, crop, 3)), jnp.float32)
    w = jnp.asarray(rng.uniform(0, 1, (batch, crop // 2, crop // 2, 4)), jnp.float32)
    c = jnp.asarray(rng.uniform(-1, 1, (batch, crop, crop, 3)), jnp.float32)
    t = jnp.asarray(rng.integers(1, 101, (batch,)), jnp.int32)
    return m_t, w, c, t


def _time_forward(model, params, inputs, steps: int):
    """(compiled forward, compile s, seconds per call)."""
    import jax

    fwd = jax.jit(lambda p, m, w, c, t: model.apply({"params": p}, m, w, c, t, train=False))
    t0 = time.perf_counter()
    compiled = fwd.lower(params, *inputs).compile()
    compile_s = time.perf_counter() - t0
    box = {}

    def call():
        box["out"] = compiled(params, *inputs)

    return compiled, compile_s, _best_of(call, lambda: _sync(box), steps)


def run_forward(c: dict) -> dict:
    import jax

    model, params = _unet_and_params(c["model"], c["crop"], c["dtype"])
    inputs = _model_inputs(c["batch"], c["crop"])
    compiled, compile_s, dt = _time_forward(model, params, inputs, c["steps"])
    out = dict(compile_s=compile_s)
    _rates(out, dt, c["batch"], _flops(compiled), jax.devices()[0].device_kind, c["dtype"])
    out["peak_memory_bytes"], out["peak_memory_kind"] = _peak_memory_bytes()
    return out


def run_sample(c: dict) -> dict:
    import jax
    import jax.numpy as jnp
    from diffraw_jax import dtdm, sampling
    from diffraw_jax.models import factory

    model, params = _unet_and_params(c["model"], c["crop"], c["dtype"])
    m_t, w, cond, _ = _model_inputs(c["batch"], c["crop"])
    schedule = dtdm.make_schedule(2000, 1e-6, 1e-2, "linear")
    traces = []

    class Counting:
        """Counts how often the sampler traces the denoiser."""

        def apply(self, *a, **k):
            traces.append(1)
            return model.apply(*a, **k)

    settings = factory.SamplerSettings(method=c["method"], num_steps=c["num_steps"], s=100,
                                       label=f"{c['method']}-{c['num_steps'] or 100}")
    sampler = sampling.make_sampler(Counting(), schedule, settings)
    t0 = time.perf_counter()
    sampler.lower(params, w, cond, cond, jax.random.key(0)).compile()  # AOT: leaves the jit cache empty
    compile_s = time.perf_counter() - t0
    _sync(sampler(params, w, cond, cond, jax.random.key(0)))
    # A second call: new inputs and key, same shapes: must not recompile.
    t0 = time.perf_counter()
    _sync(sampler(params, w * 0.5, cond * 0.5, cond * 0.5, jax.random.key(1)))
    dt = time.perf_counter() - t0
    repeats = 1 if dt > 20 else 2
    if repeats > 1:
        t0 = time.perf_counter()
        for i in range(repeats):
            y = sampler(params, w, cond, cond, jax.random.key(2 + i))
        _sync(y)
        dt = (time.perf_counter() - t0) / repeats
    cache = sampler._cache_size()
    # One forward pass of the same batch, in the same process.
    fwd_steps = max(3, min(20, int(5.0 / max(dt / c["num_steps"], 1e-4))))
    _, _, fwd_s = _time_forward(model, params, (m_t, w, cond, jnp.full((c["batch"],), 50, jnp.int32)),
                                fwd_steps)
    per_step = dt / c["num_steps"]
    return dict(compile_s=compile_s, seconds_per_call=dt,
                images_per_s=c["batch"] / dt, ms_per_step=1e3 * per_step,
                forward_ms=1e3 * fwd_s, step_over_forward=per_step / fwd_s,
                compiled_once=bool(cache == 1 and len(traces) == 1),
                jit_cache_size=int(cache), denoiser_traces=len(traces))


def run_torch(c: dict) -> dict:
    try:
        import torch
    except ImportError:
        return dict(skipped=TORCH_MISSING)
    import numpy as np
    from benchmarks import torch_unet
    from diffraw_jax.models import unet as unet_lib

    dev = c.get("device", "cpu")
    if dev == "cuda" and not torch.cuda.is_available():
        return dict(skipped="torch has no CUDA device here")
    dtype = c.get("dtype", "float32")
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    cfg = unet_lib.unet_config(c["model"])
    b, s = c["batch"], c["crop"]
    gen = np.random.default_rng(0)
    host = [gen.standard_normal((b, 3, s, s)), gen.uniform(0, 1, (b, 4, s // 2, s // 2)),
            gen.uniform(-1, 1, (b, 3, s, s)), gen.standard_normal((b, 3, s, s))]
    t = torch.from_numpy(gen.integers(1, 101, (b,))).to(dev)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    # bfloat16 as PyTorch users run it: float32 weights, autocast compute.
    autocast = (torch.autocast(dev, dtype=torch.bfloat16) if dtype == "bfloat16"
                else torch.autocast(dev, enabled=False))
    out = dict(threads=torch.get_num_threads(), torch_version=torch.__version__, dtype=dtype, layouts={})
    for layout in ("contiguous", "channels_last"):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        net = torch_unet.TorchUNet(**cfg).to(dev).to(memory_format=fmt)
        n_params = torch_unet.count_params(net)
        if n_params != unet_lib.PARAM_COUNTS[c["model"]]:
            raise AssertionError(f"PyTorch U-Net has {n_params} parameters, "
                                 f"JAX {unet_lib.PARAM_COUNTS[c['model']]}")
        m_t, w, cond, target = (torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(dev)
                                .contiguous(memory_format=fmt) for a in host)
        net.eval()

        def forward():
            with torch.no_grad(), autocast:
                net(m_t, w, cond, t)

        fwd_s = _best_of(forward, sync, c["steps"])
        net.train()
        opt = torch.optim.Adam(net.parameters(), lr=1e-4, betas=(0.9, 0.999))
        ema = [p.detach().clone() for p in net.parameters()]
        losses = []

        def step():
            opt.zero_grad(set_to_none=True)
            with autocast:
                f = net(m_t, w, cond, t)
            loss = torch.mean((f.float() - target) ** 2)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in net.parameters()], 1.0 - 0.9999)
            losses.append(loss)

        train_s = _best_of(step, sync, c["steps"])
        if not torch.isfinite(losses[-1]):
            raise FloatingPointError("non-finite loss in the PyTorch train step")
        out["layouts"][layout] = dict(forward_ms=1e3 * fwd_s, train_ms=1e3 * train_s)
        out["params"] = n_params
    best = min(out["layouts"], key=lambda k: out["layouts"][k]["train_ms"])
    out.update(best_layout=best, forward_ms=min(v["forward_ms"] for v in out["layouts"].values()),
               train_ms=out["layouts"][best]["train_ms"])
    out["train_images_per_s"] = 1e3 * b / out["train_ms"]
    if dev == "cuda":
        out["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated())
        out["peak_memory_kind"] = "torch.cuda.max_memory_allocated"
    else:
        import resource
        out["peak_memory_bytes"] = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
        out["peak_memory_kind"] = "process peak RSS"
    return out


def run_conv(c: dict) -> dict:
    """One conv3x3 (bias-free, padding 1) in JAX (XLA) and PyTorch, forward and forward+backward."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rows = []
    try:
        import torch
        torch.set_num_threads(os.cpu_count() or 1)
    except ImportError:
        torch = None
    for b, size, cin, cout in c["shapes"]:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((b, size, size, cin)).astype(np.float32)
        k = (0.1 * rng.standard_normal((3, 3, cin, cout))).astype(np.float32)
        conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)),
                                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        fwd = jax.jit(conv)
        grad = jax.jit(jax.grad(lambda x, k: jnp.sum(conv(x, k) ** 2), argnums=(0, 1)))
        xj, kj = jnp.asarray(x), jnp.asarray(k)
        row = dict(batch=b, size=size, cin=cin, cout=cout,
                   gflop=2 * b * size * size * cin * cout * 9 / 1e9,
                   jax_forward_ms=1e3 * _best_of(lambda: fwd(xj, kj).block_until_ready(), None, c["steps"]),
                   jax_fwd_bwd_ms=1e3 * _best_of(lambda: jax.block_until_ready(grad(xj, kj)), None, c["steps"]))
        if torch is not None:
            xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
            kt = torch.from_numpy(k.transpose(3, 2, 0, 1).copy()).requires_grad_(True)

            def tf():
                with torch.no_grad():
                    torch.nn.functional.conv2d(xt, kt, padding=1)

            def tg():
                xt.grad = kt.grad = None
                (torch.nn.functional.conv2d(xt, kt, padding=1) ** 2).sum().backward()

            row.update(torch_forward_ms=1e3 * _best_of(tf, None, c["steps"]),
                       torch_fwd_bwd_ms=1e3 * _best_of(tg, None, c["steps"]))
        rows.append(row)
    return dict(rows=rows, torch=torch is not None)


def run_input(c: dict) -> dict:
    from benchmarks import degradation_bench

    out: dict = {"d2": [], "grain": []}
    for crop in c["crops"]:
        _, images_per_s = degradation_bench.bench(crop, c["batch"], iters=10 if crop <= 128 else 2)
        out["d2"].append(dict(crop=crop, images_per_s=images_per_s))
    try:
        import grain  # noqa: F401
        import tensorflow_datasets  # noqa: F401
    except ImportError as e:
        out["grain_skipped"] = f"needs the [train] extra ({e.name} is missing)"
        return out
    import tempfile

    from benchmarks import input_pipeline_bench as ipb

    with tempfile.TemporaryDirectory(prefix="zrr_bench_") as tmp:
        source = ipb.build_dataset(os.environ.get("DIFFRAW_BENCH_DATA") or tmp, 16 if c["quick"] else 32)
        for crop in c["crops"]:
            first, eps = ipb.time_loader(source, crop, 0, c["batch"], 10 if c["quick"] else 30)
            out["grain"].append(dict(crop=crop, workers=0, images_per_s=eps, first_batch_s=first))
    return out


RUNNERS = {"train": run_train, "forward": run_forward, "sample": run_sample,
           "torch": run_torch, "conv": run_conv, "input": run_input}


def _run_case_here(case: dict, runners: dict | None = None) -> None:
    """Child process: run one case (``runners``: kind -> function, default ``RUNNERS``),
    print one RESULT line."""
    try:
        res = (runners or RUNNERS)[case["kind"]](case)
    except Exception as e:  # reported as the case's error, the run goes on
        res = dict(error=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
    print(RESULT_PREFIX + json.dumps(res), flush=True)


def run_case(case: dict, device: bool, timeout: float, module: str = "benchmarks.run") -> dict:
    """Runs ``case`` in a subprocess (``python -m <module> --case JSON``); returns the case
    with its results, or with "error" (a failure, or "timed out after N s")."""
    env = dict(os.environ)
    if not device:
        env["JAX_PLATFORMS"] = "cpu"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", module, "--case", json.dumps(case)],
                              cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(case, error=f"timed out after {timeout:.0f} s", wall_s=timeout)
    res = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            res = json.loads(line[len(RESULT_PREFIX):])
    if res is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        res = dict(error=f"exit {proc.returncode}: " + " | ".join(tail)[-400:])
    return dict(case, **res, wall_s=time.perf_counter() - t0)


# ------------------------------------------------------------------- report

def _fmt(x, spec=".2f", none="-"):
    if x is None:
        return none
    return format(x, spec)


def _mb(x):
    return None if x is None else x / 2**20


def summarize(results: list[dict], device: bool = False) -> dict:
    """Derived comparisons and goal checks (``device``: the run was on an accelerator)."""
    by = {}
    for r in results:
        by.setdefault(r["kind"], []).append(r)
    ratios, goals = [], []
    for tr in by.get("torch", []):
        if "error" in tr or "skipped" in tr:
            continue
        for kind, key_j, key_t in (("train", "ms_per_call", "train_ms"),
                                   ("forward", "ms_per_call", "forward_ms")):
            for j in by.get(kind, []):
                if (j["model"], j["crop"], j["batch"], j["dtype"]) == (
                        tr["model"], tr["crop"], tr["batch"], tr.get("dtype", "float32")) and "error" not in j:
                    ratios.append(dict(what=kind, model=j["model"], crop=j["crop"], batch=j["batch"],
                                       dtype=j["dtype"],
                                       jax_ms=j[key_j], torch_ms=tr[key_t],
                                       jax_over_torch=j[key_j] / tr[key_t]))
    for s in by.get("sample", []):
        if "error" not in s:
            goals.append(dict(goal="sampler ms/step <= 1.05x one forward",
                              case=f"{s['model']} {s['crop']}px b{s['batch']} {s['method']}-{s['num_steps']}",
                              value=s["step_over_forward"], met=s["step_over_forward"] <= 1.05))
            goals.append(dict(goal="sampler compiles once", case=f"{s['method']}-{s['num_steps']}",
                              value=s["jit_cache_size"], met=s["compiled_once"]))
    train_ips = {}
    for j in by.get("train", []):
        if "error" not in j and j["dtype"] == "float32":
            train_ips[j["crop"]] = max(train_ips.get(j["crop"], 0), j["images_per_s"])
    for inp in by.get("input", []):
        for src in ("grain", "d2"):
            for row in inp.get(src, []):
                need = train_ips.get(row["crop"])
                if need:
                    row["over_train_step"] = row["images_per_s"] / need
                    goals.append(dict(goal=f"{'Grain pipeline' if src == 'grain' else 'D2 on device'}"
                                      f" >= 4x the train step's images/s",
                                      case=f"crop {row['crop']} (fastest f32 train step: {need:.2f} img/s)",
                                      value=row["over_train_step"], met=row["over_train_step"] >= 4))
    for j in by.get("train", []):
        if j.get("mfu") is not None and j["model"] == "zrr" and j["dtype"] == "bfloat16" and j["crop"] == 448:
            goals.append(dict(goal="bf16 train MFU >= 45% (zrr, 448)", case=f"batch {j['batch']}",
                              value=j["mfu"], met=j["mfu"] >= 0.45))
    for r in ratios:
        if r["what"] == "train" and device and r["model"] == "zrr":
            goals.append(dict(goal="JAX >= 1.3x faster than PyTorch per train step (GPU)",
                              case=f"{r['model']} {r['crop']}px", value=1 / r["jax_over_torch"],
                              met=1 / r["jax_over_torch"] >= 1.3))
    return dict(jax_vs_torch=ratios, goals=goals)


def markdown(report: dict) -> str:
    m = report["meta"]
    res = report["results"]
    L = [f"# diffraw-jax benchmarks: {m['tag']}", "",
         f"`{m['command']}` on {m['device_kind']} ({m['backend']}, {m['num_devices']} device(s)), "
         f"{m['cpu_count']} CPU core(s), jax {m['jax']}, flax {m['flax']}, {m['date']}, commit {m['commit']}.",
         ""] + [f"Note: {n}" for n in m.get("notes", [])] + ([""] if m.get("notes") else [])
    tr = [r for r in res if r["kind"] in ("train", "forward")]
    if tr:
        L += ["## Train step and forward pass (JAX)", "",
              "| what | model | crop | batch | dtype | compile s | ms/step | steps/s | images/s | GFLOP/step "
              "| TFLOP/s | MFU | peak memory MiB |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in tr:
            if "error" in r:
                L.append(f"| {r['kind']} | {r['model']} | {r['crop']} | {r['batch']} | {r['dtype']} | "
                         f"error: {r['error']} |||||||")
                continue
            L.append(f"| {r['kind']} | {r['model']} | {r['crop']} | {r['batch']} | {r['dtype']} | "
                     f"{_fmt(r['compile_s'], '.1f')} | {_fmt(r['ms_per_call'], '.1f')} | "
                     f"{_fmt(r['calls_per_s'], '.3f')} | {_fmt(r['images_per_s'], '.2f')} | "
                     f"{_fmt(r['gflop_per_call'], '.1f')} | {_fmt(r['achieved_tflop_s'], '.3f')} | "
                     f"{_fmt(None if r['mfu'] is None else 100 * r['mfu'], '.1f')}{'%' if r['mfu'] else ''} | "
                     f"{_fmt(_mb(r['peak_memory_bytes']), '.0f')} |")
        L += ["", "Peak memory: " + ", ".join(sorted({r.get('peak_memory_kind', '') for r in tr
                                                       if r.get('peak_memory_kind')})) +
              " (on CPU the whole process: compilation included). FLOPs: XLA cost analysis of the "
              "compiled step. MFU only where the chip's dense peak is known.", ""]
    sm = [r for r in res if r["kind"] == "sample"]
    if sm:
        L += ["## Sampling (one `lax.scan`)", "",
              "| model | crop | batch | sampler | compile s | s/call | images/s | ms/step | forward ms "
              "| step / forward | compiled once |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sm:
            name = f"{'DTDM' if r['method'] == 'dtdm' else 'DTDM-DDIM'}-{r['num_steps']}"
            if "error" in r:
                L.append(f"| {r['model']} | {r['crop']} | {r['batch']} | {name} | error: {r['error']} ||||||")
                continue
            L.append(f"| {r['model']} | {r['crop']} | {r['batch']} | {name} | {r['compile_s']:.1f} | "
                     f"{r['seconds_per_call']:.2f} | {r['images_per_s']:.3f} | {r['ms_per_step']:.1f} | "
                     f"{r['forward_ms']:.1f} | {r['step_over_forward']:.3f} | "
                     f"{'yes' if r['compiled_once'] else 'NO'} |")
        L.append("")
    to = [r for r in res if r["kind"] == "torch"]
    if to:
        L += ["## PyTorch reference (benchmarks/torch_unet.py)", "",
              "Same layers, shapes and parameter count (checked in the run); the same step: MSE, "
              "global-norm clip, Adam, EMA. Both memory layouts; the faster one is compared.", "",
              "| model | crop | batch | dtype | device | params | forward ms (NCHW / channels_last) "
              "| train ms/step (NCHW / channels_last) | images/s (best) | peak memory MiB |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for r in to:
            head = f"| {r['model']} | {r['crop']} | {r['batch']} | {r.get('dtype', 'float32')} | {r['device']} |"
            if "error" in r or "skipped" in r:
                L.append(f"{head} {r.get('error') or 'skipped: ' + r['skipped']} |||||")
                continue
            lay = r["layouts"]
            L.append(f"{head} {r['params']:,} | {lay['contiguous']['forward_ms']:.1f} / "
                     f"{lay['channels_last']['forward_ms']:.1f} | {lay['contiguous']['train_ms']:.1f} / "
                     f"{lay['channels_last']['train_ms']:.1f} | {r['train_images_per_s']:.2f} | "
                     f"{_mb(r['peak_memory_bytes']):.0f} |")
        ran = [r for r in to if "torch_version" in r]
        L += [""] + ([f"torch {ran[0]['torch_version']}, {ran[0].get('threads', '?')} threads.", ""] if ran else [])
    ratios = report["summary"]["jax_vs_torch"]
    if ratios:
        L += ["## JAX / PyTorch (> 1 means JAX is slower)", "",
              "| what | model | crop | batch | dtype | JAX ms | PyTorch ms (best layout) | JAX / PyTorch |",
              "|---|---|---|---|---|---|---|---|"]
        for r in ratios:
            L.append(f"| {r['what']} | {r['model']} | {r['crop']} | {r['batch']} | {r['dtype']} | "
                     f"{r['jax_ms']:.1f} | {r['torch_ms']:.1f} | {r['jax_over_torch']:.2f} |")
        L.append("")
    for r in (r for r in res if r["kind"] == "conv"):
        L += ["## One conv3x3 layer, JAX (XLA) against PyTorch", ""]
        if "error" in r:
            L += [f"error: {r['error']}", ""]
            continue
        L += ["| input (NHWC) | channels | GFLOP | JAX fwd ms | PyTorch fwd ms | ratio | JAX fwd+bwd ms "
              "| PyTorch fwd+bwd ms | ratio |", "|---|---|---|---|---|---|---|---|---|"]
        for q in r["rows"]:
            tf, tg = q.get("torch_forward_ms"), q.get("torch_fwd_bwd_ms")
            L.append(f"| {q['batch']}x{q['size']}x{q['size']} | {q['cin']} -> {q['cout']} | {q['gflop']:.2f} | "
                     f"{q['jax_forward_ms']:.2f} | {_fmt(tf)} | {_fmt(tf and q['jax_forward_ms'] / tf)} | "
                     f"{q['jax_fwd_bwd_ms']:.2f} | {_fmt(tg)} | {_fmt(tg and q['jax_fwd_bwd_ms'] / tg)} |")
        L += ["", f"No PyTorch columns: {TORCH_MISSING}.", ""] if not r.get("torch") else [""]
    inp = [r for r in res if r["kind"] == "input"]
    for r in inp:
        L += ["## Input pipeline", ""]
        if "error" in r:
            L += [f"error: {r['error']}", ""]
            continue
        L += ["| source | crop | images/s | / train step's images/s |", "|---|---|---|---|"]
        for src, label in (("grain", "Grain host pipeline (0 workers, batch 8)"), ("d2", "D2 on device (batch 8)")):
            for row in r.get(src, []):
                L.append(f"| {label} | {row['crop']} | {row['images_per_s']:.1f} | "
                         f"{_fmt(row.get('over_train_step'), '.1f')} |")
        if r.get("grain_skipped"):
            L.append(f"| Grain host pipeline | - | skipped: {r['grain_skipped']} | |")
        L.append("")
    goals = report["summary"]["goals"]
    if goals:
        L += ["## Goals", "", "| goal | case | value | met |", "|---|---|---|---|"]
        for g in goals:
            v = g["value"]
            L.append(f"| {g['goal']} | {g['case']} | {v:.3g} | {'yes' if g['met'] else 'no'} |")
        L.append("")
    return "\n".join(L)


def _meta(args, device: bool) -> dict:
    env = dict(os.environ)
    if not device:
        env["JAX_PLATFORMS"] = "cpu"
    probe = subprocess.run(
        [sys.executable, "-c", "import jax, flax, json; d = jax.devices(); print(json.dumps(dict("
         "backend=jax.default_backend(), device_kind=d[0].device_kind, num_devices=len(d), "
         "jax=jax.__version__, flax=flax.__version__)))"],
        env=env, capture_output=True, text=True, check=True)
    meta = json.loads(probe.stdout.strip().splitlines()[-1])
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    meta.update(cpu_count=os.cpu_count(), python=platform.python_version(), commit=commit,
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                command=" ".join(["python -m benchmarks.run"] + list(args)))
    return meta


# ------------------------------------------------------------ output files

class OutputError(ValueError):
    """The run would write where it must not (a file git tracks, a bad tag)."""


def default_tag(quick: bool, device: bool, device_kind: str = "cpu") -> str:
    """The file stem without ``--tag``: "cpu" or the accelerator's kind, plus "-quick"
    for ``--quick``, so a smoke run never replaces the full run's results."""
    tag = device_kind.lower().replace(" ", "-") if device else "cpu"
    return tag + "-quick" if quick else tag


def git_tracked(path: str) -> bool:
    """Whether git tracks ``path`` (False outside a work tree or without git)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return False
    try:
        r = subprocess.run(["git", "-c", "safe.directory=*", "ls-files", "--error-unmatch", "--",
                            os.path.basename(path)], cwd=folder, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


def output_paths(out: str, tag: str, overwrite: bool = False) -> tuple[str, str]:
    """(``<out>/<tag>.json``, ``<out>/<tag>.md``); raises OutputError if the tag is not a
    plain file stem, or if either file is tracked by git (committed results) and not
    ``overwrite``."""
    if not tag or tag in (".", "..") or "/" in tag or os.sep in tag:
        raise OutputError(f"--tag must be a plain file name stem, got {tag!r}")
    paths = (os.path.join(out, tag + ".json"), os.path.join(out, tag + ".md"))
    tracked = [q for q in paths if os.path.exists(q) and git_tracked(q)]
    if tracked and not overwrite:
        raise OutputError(f"{' and '.join(tracked)} {'is' if len(tracked) == 1 else 'are'} tracked by git "
                          f"(committed results); pass --overwrite to replace, or choose another --tag/--out")
    return paths


def write_report(report: dict, md: str, json_path: str, md_path: str) -> None:
    """Writes ``report`` as JSON and ``md`` (its Markdown) to the two paths (making their
    folder), then prints the Markdown and where both went."""
    os.makedirs(os.path.dirname(json_path) or ".", exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(report, f, indent=1)
    with open(md_path, "w") as f:
        f.write(md + "\n")
    print()
    print(md)
    print(f"wrote {json_path} and {os.path.basename(md_path)}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few cases and steps (a smoke run)")
    p.add_argument("--device", action="store_true",
                   help="run on JAX's default accelerator with paper-sized workloads")
    p.add_argument("--out", default="results/benchmarks", help="folder for <tag>.json and <tag>.md")
    p.add_argument("--tag", default=None,
                   help="file name stem (default: cpu / the device kind, plus -quick with --quick)")
    p.add_argument("--overwrite", action="store_true",
                   help="allow replacing <out>/<tag>.json/.md even if git tracks them (committed results)")
    p.add_argument("--only", default="", help="comma-separated kinds: train,forward,sample,torch,conv,input")
    p.add_argument("--model", default=None,
                   help="use this U-Net config (tiny | demo | zrr) in every case instead of the defaults")
    p.add_argument("--crop", type=int, default=None, help="crop size for every case (default: per case)")
    p.add_argument("--batch", type=int, default=None, help="batch size for every case (default: per case)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per case")
    p.add_argument("--render", default=None, metavar="JSON",
                   help="only rewrite the Markdown next to an existing report JSON")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.render is not None:
        with open(a.render) as f:
            report = json.load(f)
        report["summary"] = summarize(report["results"], device=report["meta"]["backend"] != "cpu")
        with open(a.render, "w") as f:
            json.dump(report, f, indent=1)
        with open(os.path.splitext(a.render)[0] + ".md", "w") as f:
            f.write(markdown(report) + "\n")
        return 0
    if a.case is not None:
        _run_case_here(json.loads(a.case))
        return 0
    kinds = set(filter(None, a.only.split(",")))
    bad = kinds - set(RUNNERS)
    if bad:
        p.error(f"--only: unknown kinds {sorted(bad)}; choose from {sorted(RUNNERS)}")
    meta = _meta(argv, a.device)
    if a.device and meta["backend"] == "cpu":
        print("error: --device given but JAX sees no accelerator (backend cpu)", file=sys.stderr)
        return 2
    tag = a.tag or default_tag(a.quick, a.device, meta["device_kind"])
    try:
        json_path, md_path = output_paths(a.out, tag, a.overwrite)
    except OutputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    meta["tag"] = tag
    cases = [c for c in case_list(a.quick, a.device) if not kinds or c["kind"] in kinds]
    if a.model:
        from diffraw_jax.models.unet import UNET_CONFIGS

        if a.model not in UNET_CONFIGS:
            p.error(f"--model must be one of {sorted(UNET_CONFIGS)}, got {a.model!r}")
        cases = [dict(c, model=a.model) if "model" in c else c for c in cases]
    for flag in ("crop", "batch"):
        value = getattr(a, flag)
        if value is not None:
            if value < 1 or (flag == "crop" and value % 16):
                p.error(f"--{flag} must be >= 1 (crop: a multiple of 16), got {value}")
            cases = [dict(c, **{flag: value}) if flag in c else c for c in cases]
            if flag == "crop":
                cases = [dict(c, crops=[value]) if c["kind"] == "input" else c for c in cases]
    cases = [c for i, c in enumerate(cases) if c not in cases[:i]]  # drop duplicates
    print(f"{len(cases)} cases on {meta['device_kind']} ({meta['backend']})", flush=True)
    results = []
    for i, case in enumerate(cases, 1):
        label = " ".join(f"{k}={v}" for k, v in case.items() if k != "kind")
        print(f"[{i}/{len(cases)}] {case['kind']} {label} ...", end=" ", flush=True)
        r = run_case(case, a.device, a.timeout)
        results.append(r)
        print("error: " + r["error"] if "error" in r else f"done in {r['wall_s']:.0f} s", flush=True)
    report = dict(meta=meta, results=results)
    report["summary"] = summarize(results, device=a.device)
    write_report(report, markdown(report), json_path, md_path)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())

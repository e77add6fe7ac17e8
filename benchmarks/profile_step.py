"""Where a U-Net gradient step spends its time, by XLA operation kind.

    python -m benchmarks.profile_step [--model demo] [--crop 64] [--batch 8] [--iters 5]
        [--forward] [--top 15]

Runs ``jax.grad`` of the U-Net's MSE (train mode, dropout on; ``--forward``: the
eval forward pass instead) under ``jax.profiler.trace`` with a Perfetto trace,
then attributes every executed XLA fusion to a kind by the operations inside
its fused computation (convolution > dot > reduce > concatenate > transpose/copy
> elementwise) and prints milliseconds per iteration per kind and the slowest
non-convolution fusions. This is how the JAX / PyTorch gap in
``results/benchmarks/`` was profiled. Times include the profiler's overhead
(a few %). Fusion names and trace events are XLA internals: the script reads
what this jax version emits and may need adjusting for another one.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile


def fusion_kinds(hlo_text: str) -> dict[str, str]:
    """Instruction name of every fusion / call in the optimised HLO -> its kind."""
    called = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = .*?\b(?:fusion|call)\(.*?(?:calls|to_apply)=%?([\w.\-]+)", line)
        if m:
            called[m.group(1)] = m.group(2)
    ops: dict[str, list[str]] = {}
    current = None
    for line in hlo_text.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            current = line.split()[0].lstrip("%")
            ops[current] = []
        elif current is not None:
            k = re.search(r"= \S+ ([a-z][\w\-]*)\(", line)
            if k:
                ops[current].append(k.group(1))
    kinds = {}
    for inst, comp in called.items():
        inside = set(ops.get(comp, []))
        for kind, keys in (("convolution", {"convolution"}), ("dot", {"dot"}), ("reduce", {"reduce"}),
                           ("concatenate", {"concatenate"}), ("transpose/copy", {"transpose", "copy"})):
            if inside & keys:
                kinds[inst] = kind
                break
        else:
            kinds[inst] = "elementwise"
    return kinds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--forward", action="store_true", help="profile the eval forward pass instead")
    p.add_argument("--top", type=int, default=15)
    a = p.parse_args(argv)

    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np

    from diffraw_jax.models import factory, unet

    model = unet.make_unet(a.model)
    b, s = a.batch, a.crop
    rng = np.random.default_rng(0)
    m = jnp.asarray(rng.standard_normal((b, s, s, 3)), jnp.float32)
    w = jnp.asarray(rng.uniform(0, 1, (b, s // 2, s // 2, 4)), jnp.float32)
    c = jnp.asarray(rng.uniform(-1, 1, (b, s, s, 3)), jnp.float32)
    t = jnp.arange(1, b + 1, dtype=jnp.int32)
    params = nn.unbox(factory.init_variables(model, jax.random.key(0), s)["params"])
    if a.forward:
        fn = jax.jit(lambda p: model.apply({"params": p}, m, w, c, t))
    else:
        key = jax.random.key(1)
        fn = jax.jit(jax.grad(lambda p: jnp.mean(
            model.apply({"params": p}, m, w, c, t, train=True, rngs={"dropout": key}) ** 2)))
    kinds = fusion_kinds(fn.lower(params).compile().as_text())
    for _ in range(2):
        jax.block_until_ready(fn(params))
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(a.iters):
                jax.block_until_ready(fn(params))
        files = glob.glob(f"{d}/**/*.json.gz", recursive=True)
        if not files:
            raise SystemExit("error: the profiler wrote no Perfetto trace")
        with gzip.open(files[0]) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    per_kind, per_op = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in kinds:
            per_kind[kinds[e["name"]]] += e.get("dur", 0)
            per_op[e["name"]] += e.get("dur", 0)
    total = sum(per_kind.values())
    what = "forward" if a.forward else "gradient"
    print(f"{a.model} U-Net {what}, batch {b}, {s}x{s}, {jax.devices()[0].device_kind}: "
          f"{total / a.iters / 1e3:.1f} ms per iteration in XLA fusions")
    for kind, us in per_kind.most_common():
        print(f"  {kind:<15} {us / a.iters / 1e3:8.1f} ms  {100 * us / total:5.1f}%")
    print("slowest non-convolution fusions:")
    rows = [(us, op) for op, us in per_op.items() if kinds[op] != "convolution"]
    for us, op in sorted(rows, reverse=True)[:a.top]:
        print(f"  {us / a.iters / 1e3:7.2f} ms  {kinds[op]:<15} {op}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""benchmarks/torch_unet.py: the PyTorch twin of the Flax U-Net.

Same parameter counts as the JAX model, and the same outputs once Flax weights
are ported with ``load_flax_params``. torch is optional (not a package
dependency): the module is skipped without it.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip(
    "torch", reason="torch is not installed: the PyTorch reference is the `bench` extra "
    "(.venv/bin/python -m pip install torch==2.13.0; .ci/run installs it)")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import torch_unet as TU  # noqa: E402
from diffraw_jax import raw  # noqa: E402
from diffraw_jax.models import factory  # noqa: E402
from diffraw_jax.models import unet as U  # noqa: E402


def _n_params(name: str, **overrides) -> int:
    return factory.count_params(factory.abstract_params(U.make_unet(name, **overrides)))


def _perturbed_params(model: U.UNet, seed: int = 0, sigma: float = 0.05, init: bool = True):
    """Flax parameters plus N(0, sigma) noise on every leaf (the zero-initialised
    layers would otherwise make the output exactly 0). ``init``: start from
    ``factory.init_variables`` (a real Flax init); otherwise fill the eval_shape'd
    tree on the host (kernels U(-1, 1) / sqrt(fan_in), biases 0, GroupNorm
    scales 1): no init compile, which keeps the variant tests fast."""
    rng = np.random.default_rng(seed)
    if init:
        params = nn.unbox(factory.init_variables(model, jax.random.key(seed), 32))["params"]
    else:
        abstract = factory.abstract_params(model, 32)
        params = jax.tree_util.tree_map_with_path(
            lambda path, s: np.full(s.shape, 1.0 if path[-1].key == "scale" else 0.0, np.float32)
            + (rng.uniform(-1, 1, s.shape) / np.sqrt(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 0.0),
            abstract,
        )
    return jax.tree_util.tree_map(
        lambda p: (np.asarray(p) + sigma * rng.standard_normal(p.shape)).astype(np.float32), params
    )


def _inputs(b=2, h=32, w=32, seed=0):
    r = np.random.default_rng(seed)
    m_t = r.standard_normal((b, h, w, 3)).astype(np.float32)
    planes = r.uniform(-1, 1, (b, h // 2, w // 2, 4)).astype(np.float32)
    c = r.uniform(-1, 1, (b, h, w, 3)).astype(np.float32)
    t = np.array([3, 57], np.int32)[:b]
    return m_t, planes, c, t


def _nchw(x):
    return None if x is None else torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _max_diff(name: str, init: bool = True, **overrides) -> float:
    cfg = U.unet_config(name, **overrides)
    model = U.UNet(**cfg)
    params = _perturbed_params(model, init=init)
    m_t, planes, c, t = _inputs()
    planes = planes if model.use_w else None
    c = c if model.use_c else None
    apply = jax.jit(lambda p, *a: model.apply({"params": p}, *a, train=False))
    ref = np.asarray(apply(params, m_t, planes, c, jnp.asarray(t)))

    tmodel = TU.load_flax_params(TU.make_torch_unet(cfg).eval(), params)
    with torch.no_grad():
        out = tmodel(_nchw(m_t), _nchw(planes), _nchw(c), torch.from_numpy(t))
    out = out.numpy().transpose(0, 2, 3, 1)
    assert out.shape == ref.shape
    assert np.abs(ref).max() > 0.1  # a non-trivial output
    diff = float(np.abs(out - ref).max())
    print(f"{name} {overrides}: max |torch - jax| = {diff:.3g} (max |out| = {np.abs(ref).max():.3g})")
    return diff


@pytest.mark.parametrize("name", ["tiny", "demo", "zrr"])
def test_param_counts_match_jax(name):
    with torch.device("meta"):  # shapes only, nothing allocated
        tmodel = TU.make_torch_unet(U.unet_config(name))
    n = TU.count_params(tmodel)
    assert n == U.PARAM_COUNTS[name]
    assert n == _n_params(name)


@pytest.mark.parametrize("overrides", [dict(use_c=False), dict(use_w=False, downsample="avgpool")])
def test_param_counts_match_jax_variants(overrides):
    with torch.device("meta"):
        tmodel = TU.make_torch_unet("tiny", **overrides)
    assert TU.count_params(tmodel) == _n_params("tiny", **overrides)


def test_depth_to_space_matches_raw():
    x = np.arange(2 * 3 * 5 * 16, dtype=np.float32).reshape(2, 3, 5, 16)  # NHWC, k = 4
    ref = np.asarray(raw.depth_to_space(x, 2))
    out = TU.depth_to_space(_nchw(x), 2).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("name", ["tiny", "demo"])
def test_ported_weights_give_same_outputs(name):
    assert _max_diff(name) < 1e-4


@pytest.mark.parametrize("overrides", [dict(use_c=False), dict(use_w=False, downsample="avgpool")])
def test_ported_weights_give_same_outputs_variants(overrides):
    assert _max_diff("tiny", init=False, **overrides) < 1e-4


def test_fresh_torch_model_outputs_zero():
    tmodel = TU.make_torch_unet(U.unet_config("tiny")).eval()
    m_t, planes, c, t = _inputs(h=16, w=16)
    with torch.no_grad():
        out = tmodel(_nchw(m_t), _nchw(planes), _nchw(c), torch.from_numpy(t))
    assert out.shape == (2, 3, 16, 16)
    assert torch.count_nonzero(out) == 0


def test_load_flax_params_rejects_bad_trees():
    cfg = U.unet_config("tiny")
    abstract = factory.abstract_params(U.UNet(**cfg), 16)
    params = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, np.float32), abstract)
    tmodel = TU.make_torch_unet(cfg)
    TU.load_flax_params(tmodel, params)  # a complete tree loads

    missing = {k: v for k, v in params.items() if k != "mid_attn"}
    with pytest.raises(ValueError, match="missing.*mid_attn/qkv/kernel"):
        TU.load_flax_params(tmodel, missing)
    extra = dict(params, extra_layer={"kernel": np.zeros((2, 2), np.float32)})
    with pytest.raises(ValueError, match="unused.*extra_layer/kernel"):
        TU.load_flax_params(tmodel, extra)
    wrong = dict(params, conv_out={"conv": {"kernel": np.zeros((3, 3, 8, 4), np.float32),
                                            "bias": np.zeros((3,), np.float32)}})
    with pytest.raises(ValueError, match="shape mismatch.*conv_out/conv/kernel"):
        TU.load_flax_params(tmodel, wrong)

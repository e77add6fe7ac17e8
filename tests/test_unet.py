"""Tests for diffraw_jax.models.unet (the conditional U-Net f(m_t, w, c, t)).

Parameter initialisation through jax.random is slow to compile on a small CPU,
so most tests fill the eval_shape'd variable tree with host-side random values
(``_rand_params``), which also makes the zero-initialised convs non-zero (a
fresh network outputs exactly 0). Only ``test_real_init`` runs ``model.init``.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffraw_jax import parallel
from diffraw_jax.models import factory
from diffraw_jax.models import unet as U
from diffraw_jax.models.unet import (
    LOGICAL_AXES,
    PARAM_COUNTS,
    SubPixelStem,
    UNet,
    default_logical_axis_rules,
    depth_to_space,
    make_unet,
    space_to_depth,
    timestep_embedding,
    unet_config,
)

PSpec = jax.sharding.PartitionSpec
abstract_variables = factory.abstract_variables


def count_params(name, image_size=64, **overrides):
    """Parameters of the named U-Net, shape-evaluated at ``image_size`` (H or (H, W))."""
    return factory.count_params(factory.abstract_params(make_unet(name, **overrides), image_size))


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------
def _rand_params(model: UNet, seed: int = 0, image=(16, 16)):
    """Unboxed variables with the model's shapes: lecun-ish kernels, GroupNorm
    scales ~ 1, every bias / zero-init kernel non-zero."""
    rng = np.random.default_rng(seed)
    abstract = nn.unbox(abstract_variables(model, image))

    def fill(path, s):
        name = getattr(path[-1], "key", "")
        if name == "scale":
            v = 1.0 + 0.1 * rng.standard_normal(s.shape)
        elif len(s.shape) == 1:
            v = 0.1 * rng.standard_normal(s.shape)
        else:
            fan_in = int(np.prod(s.shape[:-1]))
            v = rng.standard_normal(s.shape) / np.sqrt(fan_in)
        return jnp.asarray(v, s.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def _inputs(b, h, w, seed=0, t=None):
    r = np.random.default_rng(seed)
    m_t = jnp.asarray(r.standard_normal((b, h, w, 3)), jnp.float32)
    raw = jnp.asarray(r.uniform(-1, 1, (b, h // 2, w // 2, 4)), jnp.float32)
    c = jnp.asarray(r.uniform(-1, 1, (b, h, w, 3)), jnp.float32)
    t = jnp.asarray(r.integers(1, 100, (b,)) if t is None else t, jnp.int32)
    return m_t, raw, c, t


@pytest.fixture(scope="module")
def tiny():
    model = make_unet("tiny")
    return model, _rand_params(model)


class _CountingForward:
    """jit(model.apply) that counts its traces."""

    def __init__(self, model):
        self.traces = 0

        def f(params, m_t, raw, c, t):
            self.traces += 1
            return model.apply(params, m_t, raw, c, t)

        self.jitted = jax.jit(f)

    def __call__(self, *args):
        return self.jitted(*args)


@pytest.fixture(scope="module")
def tiny_fwd(tiny):
    return _CountingForward(tiny[0])


# tiny with dropout, shared by the conditioning, dropout and remat tests
@pytest.fixture(scope="module")
def tiny_drop():
    model = make_unet("tiny", dropout=0.2)
    return model, _rand_params(model, seed=11)


_DROP_RNG = 3


def _loss_and_grads(model, params, m_t, proj):
    """value_and_grad of sum(f * proj) w.r.t. (params, w, c, float t), train=True."""

    def loss(p, raw, c, tf):
        out = model.apply(p, m_t, raw, c, tf, train=True, rngs={"dropout": jax.random.key(_DROP_RNG)})
        return jnp.sum(out * proj)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))


@pytest.fixture(scope="module")
def grad_inputs():
    m_t, raw, c, t = _inputs(2, 16, 16, seed=2)
    proj = jnp.asarray(np.random.default_rng(3).standard_normal((2, 16, 16, 3)), jnp.float32)
    return m_t, raw, c, t, proj


@pytest.fixture(scope="module")
def plain_grads(tiny_drop, grad_inputs):
    model, params = tiny_drop
    m_t, raw, c, t, proj = grad_inputs
    return _loss_and_grads(model, params, m_t, proj)(params, raw, c, t.astype(jnp.float32))


# ----------------------------------------------------------------------------
# layout helpers
# ----------------------------------------------------------------------------
def test_depth_to_space_rebuilds_rggb_mosaic():
    w = np.zeros((1, 2, 3, 4), np.float32)
    for s in range(4):  # plane s = R, G_r, G_b, B
        w[..., s] = 10 * s + np.arange(6).reshape(2, 3)
    mosaic = np.asarray(depth_to_space(jnp.asarray(w), 2))[0, ..., 0]
    assert mosaic.shape == (4, 6)
    np.testing.assert_array_equal(mosaic[0::2, 0::2], w[0, ..., 0])  # R
    np.testing.assert_array_equal(mosaic[0::2, 1::2], w[0, ..., 1])  # G_r
    np.testing.assert_array_equal(mosaic[1::2, 0::2], w[0, ..., 2])  # G_b
    np.testing.assert_array_equal(mosaic[1::2, 1::2], w[0, ..., 3])  # B
    np.testing.assert_array_equal(np.asarray(space_to_depth(depth_to_space(jnp.asarray(w)))), w)


def test_timestep_embedding():
    e = np.asarray(timestep_embedding(jnp.array([0, 1, 7]), 16))
    assert e.shape == (3, 16) and e.dtype == np.float32
    np.testing.assert_allclose(e[0], np.r_[np.ones(8), np.zeros(8)], atol=1e-7)
    assert np.abs(e[1] - e[2]).max() > 0.5
    with pytest.raises(ValueError, match="even"):
        timestep_embedding(jnp.array([1]), 7)


# ----------------------------------------------------------------------------
# configs and parameter counts
# ----------------------------------------------------------------------------
def test_param_counts():
    tiny_n, demo_n, zrr_n = (count_params(n, 32) for n in ("tiny", "demo", "zrr"))
    assert (tiny_n, demo_n, zrr_n) == (PARAM_COUNTS["tiny"], PARAM_COUNTS["demo"], PARAM_COUNTS["zrr"])
    assert tiny_n == 49_787 and tiny_n < 100_000
    assert demo_n == 2_756_723 and 2_000_000 <= demo_n <= 4_000_000
    assert zrr_n == 58_096_259 and 40e6 <= zrr_n <= 80e6
    assert abs(zrr_n / 62.6e6 - 1) < 0.1  # Palette's ~62.6M (res-block up/downsampling, no RAW stem)
    # Convolutional + attention: the count does not depend on the crop size;
    # dropping the RAW stem removes exactly its conv (3*3*4*128 + 128) and the
    # stem's 32 input channels of conv_in (3*3*32*64).
    assert count_params("tiny", (64, 96)) == tiny_n
    assert zrr_n - count_params("zrr", 64, use_w=False) == (9 * 4 * 128 + 128) + 9 * 32 * 64


def test_named_configs():
    z = unet_config("zrr")
    assert z["base_channels"] == 64 and tuple(z["channel_mults"]) == (1, 2, 4, 8)
    assert z["num_res_blocks"] == 2 and z["dropout"] == 0.2 and z["num_groups"] == 32
    assert tuple(z["attention_levels"]) == () and z["mid_attention"] and z["head_channels"] == 32
    assert unet_config("tiny", dropout=0.5)["dropout"] == 0.5
    assert U.UNET_CONFIGS["tiny"]["dropout"] == 0.0  # overrides do not leak
    with pytest.raises(ValueError, match="unknown UNet config"):
        unet_config("huge")
    with pytest.raises(ValueError, match="unknown UNet fields"):
        unet_config("tiny", chanels=3)


# ----------------------------------------------------------------------------
# real initialisation
# ----------------------------------------------------------------------------
def test_real_init_zero_output_and_annotations():
    model = make_unet("tiny")
    m_t, raw, c, t = _inputs(2, 16, 16)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "fsdp"))
    variables = factory.init_variables(model, jax.random.key(0), (16, 16))
    # laid out on the mesh as the trainer does (factory.param_shardings): draw, then reshard
    shardings = parallel.logical_shardings(factory.abstract_variables(model), mesh, default_logical_axis_rules())
    laid_out = jax.device_put(nn.unbox(variables), shardings)
    k = laid_out["params"]["down_0_res_0"]["conv1"]["conv"]["kernel"]
    assert k.sharding == jax.sharding.NamedSharding(mesh, PSpec(None, None, None, "fsdp"))
    params = variables["params"]
    # boxed with logical names
    assert isinstance(params["conv_in"]["conv"]["kernel"], nn.LogicallyPartitioned)
    unboxed = nn.unbox(variables)
    p = unboxed["params"]
    for leaf in jax.tree_util.tree_leaves(p):
        assert leaf.dtype == jnp.float32
    # zero-initialised final conv and last conv of every res block
    assert not np.any(np.asarray(p["conv_out"]["conv"]["kernel"]))
    res_blocks = [k for k in p if "_res_" in k]
    assert len(res_blocks) == 2 + 2 + 4  # encoder 2 levels x 1, middle 2, decoder 2 levels x 2
    for k in res_blocks:
        assert not np.any(np.asarray(p[k]["conv2"]["conv"]["kernel"])), k
        assert np.any(np.asarray(p[k]["conv1"]["conv"]["kernel"])), k
    out = jax.jit(model.apply)(variables, m_t, raw, c, t)  # boxed variables apply too
    assert out.shape == (2, 16, 16, 3) and out.dtype == jnp.float32
    assert not np.any(np.asarray(out))


# ----------------------------------------------------------------------------
# shapes, dtypes, errors
# ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides,b,h,w",
    [
        ({}, 1, 16, 16),
        # three levels, non-square, no attention, avg-pool downsampling
        (dict(channel_mults=(1, 2, 2), attention_levels=(), mid_attention=False, downsample="avgpool"), 3, 16, 24),
        # no conditions at all; mults not starting at 1; head_channels
        (dict(use_w=False, use_c=False, channel_mults=(2, 1), head_channels=4, attention_levels=(0, 1)), 2, 8, 12),
        # w only, two res blocks per level
        (dict(use_c=False, num_res_blocks=2), 1, 12, 20),
    ],
)
def test_shapes_and_dtype(overrides, b, h, w):
    model = make_unet("tiny", **overrides)
    params = _rand_params(model, image=(h, w))
    m_t, raw, c, t = _inputs(b, h, w)
    args = (params, m_t, raw if model.use_w else None, c if model.use_c else None, t)
    out = jax.eval_shape(model.apply, *args)
    assert out.shape == (b, h, w, 3) and out.dtype == jnp.float32


def test_forward_odd_config():
    """A real forward on a three-level, non-square, attention-free, batch-3 net."""
    model = make_unet("tiny", channel_mults=(1, 2, 2), attention_levels=(), mid_attention=False, downsample="avgpool")
    params = _rand_params(model, image=(16, 24))
    out = np.asarray(jax.jit(model.apply)(params, *_inputs(3, 16, 24)))
    assert out.shape == (3, 16, 24, 3) and out.dtype == np.float32
    assert np.all(np.isfinite(out)) and np.abs(out).max() > 0.1
    assert np.abs(out[0] - out[1]).max() > 1e-3


def test_scalar_t_is_broadcast(tiny, tiny_fwd):
    model, params = tiny
    m_t, raw, c, _ = _inputs(2, 16, 16)
    a = tiny_fwd(params, m_t, raw, c, jnp.array([7, 7], jnp.int32))
    b = jax.jit(model.apply)(params, m_t, raw, c, jnp.int32(7))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def _init_shape(model, m_shape, w_shape, c_shape=None, t_shape=None):
    b = m_shape[0]
    mk = lambda s: None if s is None else jax.ShapeDtypeStruct(s, jnp.float32)
    t = jax.ShapeDtypeStruct(t_shape or (b,), jnp.int32)
    c_shape = m_shape if c_shape is None else c_shape
    return jax.eval_shape(model.init, jax.random.key(0), mk(m_shape), mk(w_shape), mk(c_shape), t)


def test_errors():
    tiny = make_unet("tiny")
    three = make_unet("tiny", channel_mults=(1, 2, 2))
    ok = _init_shape(tiny, (1, 16, 16, 3), (1, 8, 8, 4))
    assert "params" in ok
    with pytest.raises(ValueError, match="divisible by 2"):  # odd H with 2 levels
        _init_shape(tiny, (1, 15, 16, 3), (1, 7, 8, 4))
    with pytest.raises(ValueError, match=r"divisible by 4 \(2\*\*\(levels-1\) = 4"):
        _init_shape(three, (1, 16, 18, 3), (1, 8, 9, 4))
    with pytest.raises(ValueError, match="divisible by 2 .*packed RAW"):
        _init_shape(make_unet("tiny", channel_mults=(1,), attention_levels=()), (1, 9, 8, 3), (1, 4, 4, 4))
    # one level, no w: any size works
    _init_shape(make_unet("tiny", channel_mults=(1,), attention_levels=(), use_w=False), (1, 9, 7, 3), None)
    with pytest.raises(ValueError, match=r"w must be the packed RAW planes \[B, H/2, W/2, 4\]"):
        _init_shape(tiny, (1, 16, 16, 3), (1, 16, 16, 4))
    with pytest.raises(ValueError, match=r"w must be the packed RAW planes"):
        _init_shape(tiny, (1, 16, 16, 3), (1, 8, 8, 3))
    with pytest.raises(ValueError, match=r"w must be the packed RAW planes"):
        _init_shape(tiny, (2, 16, 16, 3), (1, 8, 8, 4))
    with pytest.raises(ValueError, match="use_w=True but w is None"):
        _init_shape(tiny, (1, 16, 16, 3), None)
    with pytest.raises(ValueError, match="c must be"):
        _init_shape(tiny, (1, 16, 16, 3), (1, 8, 8, 4), c_shape=(1, 8, 8, 3))
    with pytest.raises(ValueError, match="t must be"):
        _init_shape(tiny, (2, 16, 16, 3), (2, 8, 8, 4), t_shape=(3,))
    with pytest.raises(ValueError, match=r"num_groups=3 must divide every GroupNorm channel count; it does not divide \[8, 16"):
        _init_shape(make_unet("tiny", num_groups=3), (1, 16, 16, 3), (1, 8, 8, 4))
    with pytest.raises(ValueError, match="num_groups=16 must divide.*does not divide \\[8, 24\\]"):
        _init_shape(make_unet("tiny", num_groups=16, base_channels=8, channel_mults=(2, 4)), (1, 16, 16, 3), (1, 8, 8, 4))
    with pytest.raises(ValueError, match="head_channels=3"):
        _init_shape(make_unet("tiny", head_channels=3), (1, 16, 16, 3), (1, 8, 8, 4))
    with pytest.raises(ValueError, match="attention_levels"):
        _init_shape(make_unet("tiny", attention_levels=(2,)), (1, 16, 16, 3), (1, 8, 8, 4))
    with pytest.raises(ValueError, match="downsample"):
        _init_shape(make_unet("tiny", downsample="maxpool"), (1, 16, 16, 3), (1, 8, 8, 4))


# ----------------------------------------------------------------------------
# precision
# ----------------------------------------------------------------------------
def test_bf16_forward_close_to_f32(tiny, tiny_fwd):
    model, params = tiny
    m_t, raw, c, t = _inputs(2, 16, 16, seed=1)
    ref = np.asarray(tiny_fwd(params, m_t, raw, c, t))
    bf = make_unet("tiny", dtype=jnp.bfloat16)
    out = jax.jit(bf.apply)(params, m_t, raw, c, t)
    assert out.dtype == jnp.float32
    out = np.asarray(out)
    err = np.abs(out - ref).max() / np.abs(ref).max()
    assert np.abs(ref).max() > 0.1
    assert err < 0.05, err
    assert np.abs(out - ref).max() > 0  # bf16 really was used
    # parameters stay float32 (param_dtype) even with bf16 compute
    abstract = nn.unbox(abstract_variables(bf, 16))
    assert {x.dtype for x in jax.tree_util.tree_leaves(abstract)} == {jnp.dtype(jnp.float32)}


# ----------------------------------------------------------------------------
# conditioning
# ----------------------------------------------------------------------------
def test_output_depends_on_w_c_t(tiny, tiny_fwd, plain_grads, grad_inputs):
    _, (g_p, g_w, g_c, g_t) = plain_grads
    for g in (g_w, g_c, g_t):
        g = np.asarray(g)
        assert np.all(np.isfinite(g)) and np.abs(g).max() > 1e-4
    assert np.all(np.abs(np.asarray(g_t)) > 1e-6)  # each example's own t matters
    # every Bayer plane reaches the output
    assert np.all(np.abs(np.asarray(g_w)).reshape(-1, 4).max(0) > 1e-4)
    # finite difference in the integer step (no dropout, eval mode)
    model, params = tiny
    m_t, raw, c, _, _ = grad_inputs
    a = tiny_fwd(params, m_t, raw, c, jnp.array([1, 1], jnp.int32))
    b = tiny_fwd(params, m_t, raw, c, jnp.array([50, 50], jnp.int32))
    assert np.abs(np.asarray(a - b)).max() > 1e-3


def test_disabled_conditions_are_not_used():
    m_t, raw, c, t = _inputs(1, 16, 16, seed=4)
    raw2 = raw + 0.5
    c2 = -c
    no_w = make_unet("tiny", use_w=False)
    p = _rand_params(no_w)
    assert "w_stem" not in p["params"]
    f = jax.jit(no_w.apply)
    o1 = f(p, m_t, raw, c, t)
    np.testing.assert_array_equal(np.asarray(o1), np.asarray(f(p, m_t, raw2, c, t)))
    assert np.abs(np.asarray(f(p, m_t, raw, c2, t) - o1)).max() > 1e-4  # c still used
    # w may be None (and then is not even traced)
    assert jax.eval_shape(no_w.apply, p, m_t, None, c, t).shape == o1.shape
    # the jaxpr does not read w at all
    jaxpr = jax.make_jaxpr(lambda raw: no_w.apply(p, m_t, raw, c, t))(raw)
    w_var = jaxpr.jaxpr.invars[0]
    assert not any(v is w_var for e in jaxpr.jaxpr.eqns for v in e.invars)
    assert not any(v is w_var for v in jaxpr.jaxpr.outvars)

    no_c = make_unet("tiny", use_c=False)
    p = _rand_params(no_c)
    f = jax.jit(no_c.apply)
    o1 = f(p, m_t, raw, c, t)
    np.testing.assert_array_equal(np.asarray(o1), np.asarray(f(p, m_t, raw, c2, t)))
    assert np.abs(np.asarray(f(p, m_t, raw2, c, t) - o1)).max() > 1e-4  # w still used
    assert jax.eval_shape(no_c.apply, p, m_t, raw, None, t).shape == o1.shape

    # input conv widths: m_t (3) + c (3) + stem (4 channels in tiny)
    widths = {
        (uw, uc): nn.unbox(abstract_variables(make_unet("tiny", use_w=uw, use_c=uc), 16))["params"]["conv_in"]["conv"][
            "kernel"
        ].shape[2]
        for uw in (False, True)
        for uc in (False, True)
    }
    assert widths == {(False, False): 3, (False, True): 6, (True, False): 7, (True, True): 10}


def test_subpixel_stem_keeps_bayer_site_identity():
    k = 4
    stem = SubPixelStem(k)
    abstract = nn.unbox(jax.eval_shape(stem.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 4, 4, 4), jnp.float32)))
    params = _fill_like(abstract, seed=5)
    kernel = np.asarray(params["params"]["conv"]["conv"]["kernel"])  # [3, 3, 4, 4k]
    bias = np.asarray(params["params"]["conv"]["conv"]["bias"])

    # 1) A uniform grey mosaic (all planes equal): a plain conv on the mosaic
    #    would give the same output at every interior pixel; the stem gives
    #    a different output at each of the 4 sites of a cell (site-specific filters).
    grey = jnp.full((1, 6, 6, 4), 0.3, jnp.float32)
    out = np.asarray(stem.apply(params, grey))[0]
    assert out.shape == (12, 12, k)
    interior = out[4:8, 4:8]  # away from the zero padding
    for dy in range(2):
        for dx in range(2):
            site = interior[dy::2, dx::2]
            assert np.allclose(site, site[0, 0], atol=1e-6)  # periodic with the cell
    sites = [interior[dy, dx] for dy in range(2) for dx in range(2)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(sites[i] - sites[j]).max() > 1e-3
    # ... and equals the per-site filters: sum of the site's 3x3x4 kernel block * 0.3 + bias
    for s in range(4):
        expect = 0.3 * kernel[..., s * k:(s + 1) * k].sum(axis=(0, 1, 2)) + bias[s * k:(s + 1) * k]
        np.testing.assert_allclose(sites[s], expect, rtol=1e-5, atol=1e-6)

    # 2) Changing only the R plane vs only the B plane by the same amount
    #    changes the stem output differently.
    base = jnp.asarray(np.random.default_rng(6).uniform(-1, 1, (1, 6, 6, 4)), jnp.float32)
    o0 = stem.apply(params, base)
    d_r = np.asarray(stem.apply(params, base.at[..., 0].add(0.2)) - o0)
    d_b = np.asarray(stem.apply(params, base.at[..., 3].add(0.2)) - o0)
    assert np.abs(d_r).max() > 1e-3 and np.abs(d_b).max() > 1e-3
    assert np.abs(d_r - d_b).max() > 1e-3

    # 3) The stem is conv-then-depth-to-space: site (dy, dx) of cell (i, j)
    #    reads channel block 2*dy + dx of the half-resolution conv.
    half = np.asarray(
        nn.Conv(4 * k, (3, 3), padding=((1, 1), (1, 1))).apply({"params": params["params"]["conv"]["conv"]}, base)
    )[0]
    full = np.asarray(o0)[0]
    for dy in range(2):
        for dx in range(2):
            s = 2 * dy + dx
            np.testing.assert_allclose(full[dy::2, dx::2], half[..., s * k:(s + 1) * k], rtol=1e-5, atol=1e-6)


def _fill_like(abstract, seed):
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.standard_normal(s.shape) * 0.3, s.dtype), abstract)


# ----------------------------------------------------------------------------
# dropout and remat
# ----------------------------------------------------------------------------
def test_dropout_only_in_training(tiny_drop):
    model, params = tiny_drop
    m_t, raw, c, t = _inputs(2, 16, 16, seed=7)

    @jax.jit
    def run(params, k1, k2):
        train = lambda k: model.apply(params, m_t, raw, c, t, train=True, rngs={"dropout": k})
        ev = lambda k: model.apply(params, m_t, raw, c, t, train=False, rngs={"dropout": k})
        return train(k1), train(k2), ev(k1), ev(k2)

    a, b, e1, e2 = map(np.asarray, run(params, jax.random.key(1), jax.random.key(2)))
    assert np.abs(a - b).max() > 1e-3  # train: depends on the dropout rng
    np.testing.assert_array_equal(e1, e2)  # eval: does not
    assert np.abs(a - e1).max() > 1e-3
    # eval without any rng equals eval with one (tiny_drop params, same inputs)
    e0 = np.asarray(jax.jit(model.apply)(params, m_t, raw, c, t))
    np.testing.assert_allclose(e1, e0, atol=1e-5)
    with pytest.raises(Exception, match="dropout"):  # train=True needs the "dropout" rng
        jax.eval_shape(lambda p: model.apply(p, m_t, raw, c, t, train=True), params)


def test_remat_same_output_and_gradients(tiny_drop, grad_inputs, plain_grads):
    _, params = tiny_drop
    remat = make_unet("tiny", dropout=0.2, remat=True)
    m_t, raw, c, t, proj = grad_inputs
    f = _loss_and_grads(remat, params, m_t, proj)
    l1, g1 = f(params, raw, c, t.astype(jnp.float32))
    l0, g0 = plain_grads
    assert abs(float(l0)) > 1e-3
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
    flat0, tree0 = jax.tree_util.tree_flatten(g0)
    flat1, tree1 = jax.tree_util.tree_flatten(g1)
    assert tree0 == tree1 and len(flat0) > 50
    for x, y in zip(flat0, flat1):
        x, y = np.asarray(x), np.asarray(y)
        assert np.abs(y - x).max() <= 1e-4 * max(np.abs(x).max(), 1.0), np.abs(y - x).max()
    # remat really is in the graph (checkpoint / remat primitive in the jaxpr)
    jaxpr = str(jax.make_jaxpr(lambda p: remat.apply(p, m_t, raw, c, t))(params))
    assert "checkpoint" in jaxpr or "remat" in jaxpr
    assert "checkpoint" not in str(jax.make_jaxpr(lambda p: tiny_drop[0].apply(p, m_t, raw, c, t))(params))


# ----------------------------------------------------------------------------
# partitioning
# ----------------------------------------------------------------------------
def _spec_leaves(tree):
    return jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, PSpec))


def test_logical_partitioning_annotations():
    for name in ("tiny", "zrr"):
        abstract = abstract_variables(make_unet(name), 32)
        specs = nn.get_partition_spec(abstract)
        shapes = nn.unbox(abstract)
        spec_paths = jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: isinstance(x, PSpec))[0]
        shape_leaves = jax.tree_util.tree_leaves(shapes)
        assert len(spec_paths) == len(shape_leaves)
        used = set()
        for (path, spec), shape in zip(spec_paths, shape_leaves):
            assert isinstance(spec, PSpec), path
            assert len(spec) == len(shape.shape), (path, spec, shape.shape)
            names = [n for n in spec if n is not None]
            assert names, f"{jax.tree_util.keystr(path)} is not annotated"
            used |= set(names)
            if len(shape.shape) == 4:
                assert spec[:2] == (None, None) and spec[2] == "conv_in", path
                assert spec[3] in ("conv_out", "image"), path
            elif len(shape.shape) == 1:
                assert spec == PSpec("norm"), path
            else:
                assert tuple(spec) in (("conv_in", "conv_out"), ("embed", "mlp")), path
        assert used <= set(LOGICAL_AXES)
        assert used == set(LOGICAL_AXES)  # the vocabulary is exactly what is used


def test_default_rules_and_fsdp_divisibility():
    rules = dict(default_logical_axis_rules())
    assert rules["conv_out"] == "fsdp" and rules["mlp"] == "fsdp"
    for n in ("conv_in", "embed", "image", "norm"):
        assert rules[n] is None
    assert rules["batch"] == ("data", "fsdp")
    assert set(rules) == set(LOGICAL_AXES) | {"batch"}
    # Every sharded axis of every named config divides by fsdp = 8.
    rule_list = default_logical_axis_rules()
    for name in ("tiny", "demo", "zrr"):
        abstract = abstract_variables(make_unet(name), 32)
        specs = _spec_leaves(nn.get_partition_spec(abstract))
        for spec, shape in zip(specs, jax.tree_util.tree_leaves(nn.unbox(abstract))):
            mesh_axes = nn.logical_to_mesh_axes(tuple(spec), rule_list)
            for dim, ax in zip(shape.shape, mesh_axes):
                if ax is not None:
                    assert ax == "fsdp" and dim % 8 == 0, (name, spec, shape.shape)
    # NamedShardings on a real (1 x 1) mesh
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "fsdp"))
    shardings = parallel.logical_shardings(abstract_variables(make_unet("tiny"), 16), mesh, rule_list)
    leaves = jax.tree_util.tree_leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding))
    assert leaves and all(isinstance(s, jax.sharding.NamedSharding) for s in leaves)
    k = shardings["params"]["down_0_res_0"]["conv1"]["conv"]["kernel"]
    assert k.spec == PSpec(None, None, None, "fsdp")


# ----------------------------------------------------------------------------
# jit
# ----------------------------------------------------------------------------
def test_jit_compiles_once(tiny, tiny_fwd):
    _, params = tiny
    tiny_fwd(params, *_inputs(2, 16, 16, seed=0))  # compiled (possibly already, by other tests)
    n = tiny_fwd.traces
    outs = [np.asarray(tiny_fwd(params, *_inputs(2, 16, 16, seed=seed))) for seed in range(1, 4)]
    assert tiny_fwd.traces == n
    assert tiny_fwd.jitted._cache_size() == 1
    assert np.abs(outs[0] - outs[1]).max() > 0
    # a new shape traces again (checked without compiling)
    tiny_fwd.jitted.trace(params, *_inputs(2, 16, 32))
    assert tiny_fwd.traces == n + 1


def test_group_norm_matches_flax_and_autodiff():
    """U.group_norm (hand-written backward) == flax.linen.GroupNorm, values and gradients."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(0.7, 2.0, (3, 5, 6, 12)), jnp.float32)
    scale = jnp.asarray(rng.normal(1.0, 0.3, (12,)), jnp.float32)
    bias = jnp.asarray(rng.normal(0.0, 0.3, (12,)), jnp.float32)
    probe = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    ref_mod = nn.GroupNorm(num_groups=4, epsilon=1e-5)

    def ref(x, s, b):
        return ref_mod.apply({"params": {"scale": s, "bias": b}}, x)

    def ours(x, s, b):
        return U.group_norm(x, s, b, 4, 1e-5)

    np.testing.assert_allclose(ours(x, scale, bias), ref(x, scale, bias), atol=2e-5, rtol=1e-5)
    # Per (example, group): mean 0, variance 1 before the affine part.
    y = np.asarray(U.group_norm(x, jnp.ones(12), jnp.zeros(12), 4)).reshape(3, 30, 4, 3)
    np.testing.assert_allclose(y.mean(axis=(1, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=(1, 3)), 1, atol=1e-3)
    g_ref = jax.grad(lambda *a: jnp.sum(ref(*a) * probe), argnums=(0, 1, 2))(x, scale, bias)
    g_ours = jax.grad(lambda *a: jnp.sum(ours(*a) * probe), argnums=(0, 1, 2))(x, scale, bias)
    for a, b in zip(g_ours, g_ref):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    # Finite differences of the input gradient along a random direction.
    d = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    f = lambda x: jnp.sum(ours(x, scale, bias) * probe)
    eps = 1e-2
    fd = (f(x + eps * d) - f(x - eps * d)) / (2 * eps)
    np.testing.assert_allclose(jnp.vdot(g_ours[0], d), fd, rtol=2e-2)


# ----------------------------------------------------------------------------
# attention, remat policies, the zrr preset's layout
# ----------------------------------------------------------------------------
def _np_group_norm(x, scale, bias, groups, eps=1e-5):
    b, c = x.shape[0], x.shape[-1]
    g = x.reshape(b, -1, groups, c // groups)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = g.var(axis=(1, 3), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * scale + bias


def _np_attention_block(p, x, heads, groups):
    """GroupNorm -> per-head softmax(q k^T / sqrt(d)) v -> proj, + x; float64 numpy."""
    x = np.asarray(x, np.float64)
    b, hh, ww, c = x.shape
    d = c // heads
    h = _np_group_norm(x, p["norm"]["scale"], p["norm"]["bias"], groups).reshape(b, hh * ww, c)
    qkv = (h @ p["qkv"]["kernel"] + p["qkv"]["bias"]).reshape(b, hh * ww, 3, heads, d)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]              # [B, N, heads, d]
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, hh * ww, c)
    out = out @ p["proj"]["kernel"] + p["proj"]["bias"]
    return x + out.reshape(x.shape)


def test_attention_block_matches_numpy():
    """AttentionBlock (jax.nn.dot_product_attention) == an independent numpy softmax attention
    on the same parameters; the parameter layout is the one the shipped weights have."""
    heads, groups, c = 2, 4, 8
    block = U.AttentionBlock(heads, groups)
    x = jnp.asarray(np.random.default_rng(0).normal(0.3, 1.5, (2, 4, 6, c)), jnp.float32)
    abstract = jax.eval_shape(block.init, jax.random.key(0), x)["params"]
    shapes = jax.tree.map(lambda s: s.shape, nn.unbox(abstract))
    assert shapes == {"norm": {"scale": (c,), "bias": (c,)}, "qkv": {"kernel": (c, 3 * c), "bias": (3 * c,)},
                      "proj": {"kernel": (c, c), "bias": (c,)}}
    rng = np.random.default_rng(1)
    p = jax.tree.map(lambda s: rng.normal(0, 0.5, s.shape).astype(np.float32), nn.unbox(abstract))
    ref = _np_attention_block(p, x, heads, groups)
    out = np.asarray(jax.jit(block.apply)({"params": p}, x))
    assert np.abs(ref - x).max() > 0.1  # attention changed something
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-5)
    for impl in ("xla", "auto", "chunked"):  # 24 positions <= ATTENTION_CHUNK: one chunk
        out = U.AttentionBlock(heads, groups, implementation=impl).apply({"params": p}, x)
        np.testing.assert_allclose(np.asarray(out), ref, atol=2e-5, rtol=1e-5)
    bf = U.AttentionBlock(heads, groups, dtype=jnp.bfloat16).apply({"params": p}, x)
    assert bf.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(bf, np.float32), ref, atol=0.1, rtol=0.05)
    with pytest.raises(ValueError, match="attention implementation"):
        U.dot_product_attention(x, x, x, "flash")


def test_chunked_attention_is_exact(monkeypatch):
    """"chunked" (and "auto" above ATTENTION_CHUNK positions): queries in chunks, the last
    one zero-padded; the same outputs and gradients as whole-sequence attention."""
    monkeypatch.setattr(U, "ATTENTION_CHUNK", 10)  # 25 positions: 3 chunks of 9, 2 padded rows
    heads, groups, c = 2, 4, 8
    x = jnp.asarray(np.random.default_rng(2).normal(0.3, 1.5, (2, 5, 5, c)), jnp.float32)
    abstract = nn.unbox(jax.eval_shape(U.AttentionBlock(heads, groups).init, jax.random.key(0), x))["params"]
    rng = np.random.default_rng(3)
    p = jax.tree.map(lambda s: rng.normal(0, 0.5, s.shape).astype(np.float32), abstract)
    ref = _np_attention_block(p, x, heads, groups)
    probe = jnp.asarray(rng.normal(size=x.shape), jnp.float32)

    def loss_and_grads(impl):
        block = U.AttentionBlock(heads, groups, implementation=impl)
        loss = lambda p, x: jnp.sum(block.apply({"params": p}, x) * probe)
        return block.apply({"params": p}, x), jax.grad(loss, argnums=(0, 1))(p, x)

    out_x, g_x = loss_and_grads("xla")
    for impl in ("chunked", "auto"):
        out, g = loss_and_grads(impl)
        np.testing.assert_allclose(np.asarray(out), ref, atol=2e-5, rtol=1e-5)
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_x)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4, rtol=1e-4)
    jaxpr = str(jax.make_jaxpr(lambda x: U.dot_product_attention(x, x, x, "chunked"))(
        jnp.zeros((1, 25, 2, 4))))
    assert "scan" in jaxpr and ("checkpoint" in jaxpr or "remat" in jaxpr)


@pytest.mark.parametrize("remat", ["dots_saveable", "dots_with_no_batch_dims_saveable"])  # "full": above
def test_remat_policies_same_output_and_gradients(remat, tiny_drop, grad_inputs, plain_grads):
    _, params = tiny_drop
    model = make_unet("tiny", dropout=0.2, remat=remat)
    m_t, raw, c, t, proj = grad_inputs
    l1, g1 = _loss_and_grads(model, params, m_t, proj)(params, raw, c, t.astype(jnp.float32))
    l0, g0 = plain_grads
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
    flat0, tree0 = jax.tree_util.tree_flatten(g0)
    flat1, tree1 = jax.tree_util.tree_flatten(g1)
    assert tree0 == tree1
    for x, y in zip(flat0, flat1):
        x, y = np.asarray(x), np.asarray(y)
        assert np.abs(y - x).max() <= 1e-4 * max(np.abs(x).max(), 1.0), np.abs(y - x).max()
    jaxpr = str(jax.make_jaxpr(lambda p: model.apply(p, m_t, raw, c, t))(params))
    assert "checkpoint" in jaxpr or "remat" in jaxpr


def test_remat_and_attention_settings():
    assert [U.remat_name(x) for x in (False, True, "none", "full", "dots_saveable")] == [
        "none", "full", "none", "full", "dots_saveable"]
    assert set(U.REMAT_CHOICES) == {"none"} | set(U.REMAT_POLICIES)
    for name, policy in U.REMAT_POLICIES.items():
        assert policy is None or callable(policy), name
    with pytest.raises(ValueError, match="remat must be"):
        _init_shape(make_unet("tiny", remat="everything"), (1, 16, 16, 3), (1, 8, 8, 4))
    with pytest.raises(ValueError, match="attention_impl"):
        _init_shape(make_unet("tiny", attention_impl="flash"), (1, 16, 16, 3), (1, 8, 8, 4))
    # the config: model.remat_policy, or the older boolean model.remat (configs saved before it)
    from configs import default

    cfg = default.get_config()
    assert factory.remat_policy(cfg) == "none" and factory.create_model(cfg).remat == "none"
    cfg.model.remat = True
    assert factory.remat_policy(cfg) == "full"
    cfg.model.remat_policy = "dots_with_no_batch_dims_saveable"
    assert factory.create_model(cfg).remat == "dots_with_no_batch_dims_saveable"
    old = cfg.to_dict()
    del old["model"]["remat_policy"], old["model"]["attention_impl"]
    import ml_collections

    from diffraw_jax.runtime import configuration

    old = configuration.upgrade(ml_collections.ConfigDict(old))  # what weights.load_config does
    assert factory.remat_policy(old) == "full" and factory.create_model(old).attention_impl == "auto"
    cfg.model.remat_policy = "some"
    with pytest.raises(ValueError, match="remat must be"):
        factory.remat_policy(cfg)


def test_zrr_attention_only_in_the_middle_block():
    """The zrr preset attends only in the middle block, at H/8 x W/8 (the lowest
    resolution): checked on the abstract parameter tree and the abstract activations."""
    model = make_unet("zrr")
    abstract = nn.unbox(abstract_variables(model, 64))["params"]
    attn = sorted(k for k in abstract if "attn" in k)
    assert attn == ["mid_attn"], attn
    assert abstract["mid_attn"]["qkv"]["kernel"].shape == (512, 1536)
    assert model._heads(512) == 16
    # the middle block's input at 448 px: [1, 56, 56, 512] = 3,136 positions
    args = factory.model_inputs(model, 1, 448)
    _, inter = jax.eval_shape(
        lambda p, *a: model.apply({"params": p}, *a, capture_intermediates=lambda m, _: m.name == "mid_attn",
                                  mutable=["intermediates"]), abstract, *args)
    assert inter["intermediates"]["mid_attn"]["__call__"][0].shape == (1, 56, 56, 512)

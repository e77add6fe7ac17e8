"""Tests for the colour network G (diffraw_jax/models/color_net.py).

Parameters are drawn with ``diffraw_jax.models.factory.init_variables`` (jitted
``model.init`` seeded through the "rbg" PRNG: compiling threefry for every
shape costs tens of seconds on a CPU-only machine). The default (~9M) network
is only ever shape-evaluated.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffraw_jax.models import factory
from diffraw_jax.models.color_net import (
    ChannelAttention,
    ColorNet,
    color_net_config,
    coordinate_map,
    haar_dwt,
    haar_idwt,
    pixel_shuffle,
)

DEFAULT_PARAMS = 8_978_051  # documented in the color_net.py docstring
TINY_PARAMS = 71_587
LITEISPNET_PARAMS = 9.04e6
N_STEPS, LEARN_FACTOR = 100, 4.0  # measured: 0.621 -> 0.064 (9.8x)


def _compile(fn, *args):
    """jit + compile with XLA's backend optimisation off: halves CPU compile time,
    which dominates these tests (the programs run in milliseconds)."""
    return jax.jit(fn).lower(*args).compile(compiler_options={"xla_backend_optimization_level": 0})


def _init_params(net, input_shape, seed=0):
    """Initial ``params`` of ``net`` from the project's init path (packed input [B, h, w, 4])."""
    _, h, w, _ = input_shape
    return factory.init_variables(net, jax.random.key(seed), (2 * h, 2 * w))["params"]


def count_params(name, image_size, **overrides):
    """Trainable parameters of the named ColorNet, shape-evaluated at ``image_size`` (H or (H, W))."""
    net = ColorNet(**color_net_config(name, **overrides))
    return factory.count_params(factory.abstract_params(net, image_size))


def _rand(shape, seed=0, lo=0.0, hi=1.0):
    return np.random.default_rng(seed).uniform(lo, hi, size=shape).astype(np.float32)


# ---------------------------------------------------------------------------
# Haar DWT / IDWT and pixel shuffle
# ---------------------------------------------------------------------------
def test_haar_roundtrip_exact():
    x = _rand((2, 8, 12, 3), seed=1, lo=-2.0, hi=3.0)
    y = haar_dwt(jnp.asarray(x))
    assert y.shape == (2, 4, 6, 12)
    np.testing.assert_allclose(np.asarray(haar_idwt(y)), x, rtol=0, atol=1e-6)
    # and the other way round (the transform is a bijection)
    z = _rand((1, 3, 5, 8), seed=2, lo=-1.0, hi=1.0)
    np.testing.assert_allclose(np.asarray(haar_dwt(haar_idwt(jnp.asarray(z)))), z, atol=1e-6)


def test_haar_constant_image_energy_in_ll():
    v = 0.37
    x = jnp.full((1, 6, 4, 2), v, jnp.float32)
    y = np.asarray(haar_dwt(x))
    c = 2
    # +-0.5 filters: LL = (4 v) / 2 = 2 v; detail bands exactly 0
    np.testing.assert_allclose(y[..., :c], 2 * v, rtol=1e-6)
    np.testing.assert_array_equal(y[..., c:], 0.0)


def test_haar_orthonormal_and_band_layout():
    # Matrix of the transform on one 2x2 block: columns = images of basis vectors
    cols = []
    for k in range(4):
        e = np.zeros((1, 2, 2, 1), np.float32)
        e[0, k // 2, k % 2, 0] = 1.0
        cols.append(np.asarray(haar_dwt(jnp.asarray(e))).reshape(4))
    m = np.stack(cols, axis=1)  # rows: LL, HL, LH, HH; columns: x00, x01, x10, x11
    np.testing.assert_allclose(m @ m.T, np.eye(4), atol=1e-7)
    expected = 0.5 * np.array([[1, 1, 1, 1],    # LL
                               [-1, 1, -1, 1],  # HL: column difference
                               [-1, -1, 1, 1],  # LH: row difference
                               [1, -1, -1, 1]])  # HH
    np.testing.assert_allclose(m, expected, atol=0)
    # band-major channels: out[..., k*C + c]
    x = _rand((1, 4, 4, 3), seed=3)
    y = np.asarray(haar_dwt(jnp.asarray(x)))
    for c in range(3):
        np.testing.assert_allclose(y[..., c], np.asarray(haar_dwt(jnp.asarray(x[..., c:c + 1])))[..., 0],
                                   atol=1e-6)
        np.testing.assert_allclose(y[..., 9 + c], 0.5 * (x[0, 0::2, 0::2, c] - x[0, 0::2, 1::2, c]
                                                         - x[0, 1::2, 0::2, c] + x[0, 1::2, 1::2, c])[None],
                                   atol=1e-6)
    # energy preservation on random data
    x = _rand((2, 16, 16, 5), seed=4, lo=-1.0, hi=1.0)
    y = np.asarray(haar_dwt(jnp.asarray(x)))
    np.testing.assert_allclose(np.sum(y.astype(np.float64) ** 2), np.sum(x.astype(np.float64) ** 2), rtol=1e-5)


def test_haar_rejects_bad_shapes():
    with pytest.raises(ValueError):
        haar_dwt(jnp.zeros((1, 5, 4, 1)))
    with pytest.raises(ValueError):
        haar_idwt(jnp.zeros((1, 2, 2, 6)))


def _torch_pixel_shuffle_nchw(x, r):
    """Independent reference: out[c, h*r+i, w*r+j] = in[c*r*r + i*r + j, h, w]."""
    b, crr, h, w = x.shape
    c = crr // (r * r)
    out = np.zeros((b, c, h * r, w * r), x.dtype)
    for ch in range(c):
        for i in range(r):
            for j in range(r):
                out[:, ch, i::r, j::r] = x[:, ch * r * r + i * r + j]
    return out


@pytest.mark.parametrize("r,c", [(2, 3), (3, 2)])
def test_pixel_shuffle_matches_pytorch_ordering(r, c):
    x_nhwc = _rand((2, 3, 4, c * r * r), seed=5)
    ours = np.asarray(pixel_shuffle(jnp.asarray(x_nhwc), r))
    ref = _torch_pixel_shuffle_nchw(x_nhwc.transpose(0, 3, 1, 2), r).transpose(0, 2, 3, 1)
    assert ours.shape == (2, 3 * r, 4 * r, c)
    np.testing.assert_array_equal(ours, ref)
    # spot check of the formula in NHWC: out[b, h*r+i, w*r+j, ch] = x[b, h, w, ch*r*r + i*r + j]
    assert ours[1, 2 * r + 1, 3 * r + (r - 1), c - 1] == x_nhwc[1, 2, 3, (c - 1) * r * r + 1 * r + (r - 1)]


# ---------------------------------------------------------------------------
# Channel attention
# ---------------------------------------------------------------------------
def test_channel_attention_gates():
    c, red = 32, 16
    ca = ChannelAttention(reduction=red)
    x = _rand((2, 5, 6, c), seed=6, lo=-1.0, hi=2.0)
    x[1] = x[1] ** 2  # different per-channel means in the two examples
    shapes = jax.eval_shape(ca.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct(x.shape, jnp.float32))
    assert shapes["params"]["down"]["kernel"].shape == (c, c // red)
    assert shapes["params"]["up"]["kernel"].shape == (c // red, c)
    rng = np.random.default_rng(7)
    p = {"down": {"kernel": np.abs(rng.normal(0, 0.1, (c, 2))).astype(np.float32),
                  "bias": np.ones((2,), np.float32)},  # hidden units active
         "up": {"kernel": rng.normal(0, 0.5, (2, c)).astype(np.float32),
                "bias": rng.normal(0, 0.5, (c,)).astype(np.float32)}}
    out, state = ca.apply({"params": p}, jnp.asarray(x), mutable=["intermediates"])
    out = np.asarray(out)

    pooled = x.mean(axis=(1, 2))  # [B, C]
    z = np.maximum(pooled @ p["down"]["kernel"] + p["down"]["bias"], 0) @ p["up"]["kernel"] + p["up"]["bias"]
    gate = 1.0 / (1.0 + np.exp(-z))  # [B, C]
    np.testing.assert_allclose(out, x * gate[:, None, None, :], rtol=1e-5, atol=1e-6)
    sown = np.asarray(state["intermediates"]["gate"][0]).reshape(2, c)
    np.testing.assert_allclose(sown, gate, rtol=1e-5, atol=1e-6)
    assert np.all((sown > 0) & (sown < 1))
    # it really modulates: gates are far from constant and differ between examples
    assert sown.max() - sown.min() > 0.3
    assert np.abs(sown[0] - sown[1]).max() > 1e-3
    # saturated biases switch channels off / pass them through
    for b2, expect in [(-40.0, 0.0 * x), (40.0, x)]:
        q = {"down": p["down"], "up": {"kernel": 0 * p["up"]["kernel"], "bias": np.full((c,), b2, np.float32)}}
        np.testing.assert_allclose(np.asarray(ca.apply({"params": q}, jnp.asarray(x))), expect, atol=1e-6)


# ---------------------------------------------------------------------------
# ColorNet
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    net = ColorNet(**color_net_config("tiny"))
    params = _init_params(net, (1, 16, 16, 4), seed=0)
    cache = {}

    def fwd(p, w):  # compiled once per input shape
        if w.shape not in cache:
            cache[w.shape] = _compile(lambda p_, w_: net.apply({"params": p_}, w_), p, w)
        return cache[w.shape](p, w)

    return net, params, fwd


def test_param_counts():
    n_default = count_params("default", 448)
    assert n_default == DEFAULT_PARAMS
    assert abs(n_default - LITEISPNET_PARAMS) / LITEISPNET_PARAMS < 0.10
    assert count_params("default", (64, 96)) == DEFAULT_PARAMS  # size independent
    assert count_params("default", 64, use_coords=True) == DEFAULT_PARAMS + 2 * 9 * 64
    assert count_params("tiny", 32) == TINY_PARAMS


def test_default_shapes_via_eval_shape():
    net = ColorNet(**color_net_config("default"))
    w = jax.ShapeDtypeStruct((2, 32, 48, 4), jnp.float32)
    out = jax.eval_shape(lambda k, x: net.init_with_output(k, x)[0], jax.random.PRNGKey(0), w)
    assert out.shape == (2, 64, 96, 3) and out.dtype == jnp.float32


def test_tiny_init_distribution(tiny):
    """Flax init: kernels U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's default), biases 0."""
    _, params, _ = tiny
    leaves = jax.tree_util.tree_leaves_with_path(params)
    assert leaves
    for path, leaf in leaves:
        name = jax.tree_util.keystr(path)
        x = np.asarray(leaf)
        assert x.dtype == np.float32, name
        if name.endswith("['bias']"):
            assert not np.any(x), name
            continue
        assert name.endswith("['kernel']"), name
        bound = 1.0 / np.sqrt(np.prod(x.shape[:-1]))
        assert np.abs(x).max() <= bound, name
        if x.size >= 500:  # uniform: std = bound / sqrt(3)
            assert abs(x.std() * np.sqrt(3) / bound - 1.0) < 0.15, name
            assert abs(x.mean()) < 0.15 * bound, name


def test_tiny_forward_shapes_and_values(tiny):
    net, params, fwd = tiny
    assert sum(a.size for a in jax.tree_util.tree_leaves(params)) == TINY_PARAMS
    for shape in [(2, 16, 16, 4), (1, 8, 24, 4)]:
        w = jnp.asarray(_rand(shape, seed=8))
        y = fwd(params, w)
        assert y.shape == (shape[0], 2 * shape[1], 2 * shape[2], 3)
        assert y.dtype == jnp.float32
        y = np.asarray(y)
        assert np.all(np.isfinite(y)) and y.std() > 1e-4
    # train flag accepted (and a no-op: same traced program)
    w = jax.ShapeDtypeStruct((1, 8, 24, 4), jnp.float32)
    assert (str(jax.make_jaxpr(lambda p, x: net.apply({"params": p}, x, train=True))(params, w))
            == str(jax.make_jaxpr(lambda p, x: net.apply({"params": p}, x))(params, w)))
    # negative inputs are clipped to 0 before the 1/2.2 gamma
    w_neg = _rand((1, 8, 24, 4), seed=10, lo=-0.5, hi=1.0)
    np.testing.assert_array_equal(np.asarray(fwd(params, jnp.asarray(w_neg))),
                                  np.asarray(fwd(params, jnp.asarray(np.maximum(w_neg, 0)))))


def test_tiny_rejects_bad_inputs(tiny):
    net, params, _ = tiny
    with pytest.raises(ValueError, match="divisible by 8"):
        net.apply({"params": params}, jnp.zeros((1, 12, 16, 4)))
    with pytest.raises(ValueError, match="divisible by 8"):
        net.apply({"params": params}, jnp.zeros((1, 16, 20, 4)))
    with pytest.raises(ValueError, match="4 packed RAW planes"):
        net.apply({"params": params}, jnp.zeros((1, 16, 16, 3)))
    with pytest.raises(ValueError):
        net.apply({"params": params}, jnp.zeros((16, 16, 4)))
    with pytest.raises(ValueError):
        color_net_config("huge")


def test_coords_flag():
    net = ColorNet(**color_net_config("tiny", use_coords=True))
    params = _init_params(net, (1, 8, 8, 4))
    assert params["head"]["kernel"].shape == (3, 3, 6, 8)
    w = jnp.asarray(_rand((1, 8, 8, 4), seed=11))
    # default coordinate map (pixel centres in [-1, 1]) when coords is omitted
    assert jax.eval_shape(lambda p, x: net.apply({"params": p}, x), params, w).shape == (1, 16, 16, 3)
    grid = np.asarray(coordinate_map(1, 8, 8))
    np.testing.assert_allclose(grid[0, 0, 0], [-7 / 8, -7 / 8])
    np.testing.assert_allclose(grid[0, 2, 7], [7 / 8, -3 / 8])  # channel 0 = x (column), 1 = y (row)
    fwd = _compile(lambda p, x, c: net.apply({"params": p}, x, coords=c), params, w, jnp.asarray(grid))
    y0 = np.asarray(fwd(params, w, jnp.asarray(grid)))
    y1 = np.asarray(fwd(params, w, jnp.zeros((1, 8, 8, 2))))
    assert np.abs(y0 - y1).max() > 1e-4  # the coordinate channels are used
    with pytest.raises(ValueError, match="coords"):
        jax.eval_shape(lambda p, x: net.apply({"params": p}, x, coords=jnp.zeros((1, 4, 4, 2))), params, w)
    plain = ColorNet(**color_net_config("tiny"))
    with pytest.raises(ValueError, match="use_coords"):
        jax.eval_shape(lambda k, x: plain.init(k, x, coords=jnp.zeros((1, 8, 8, 2))), jax.random.PRNGKey(0), w)


def test_bf16_compute_close_to_f32(tiny):
    _, params, fwd32 = tiny
    net16 = ColorNet(**color_net_config("tiny", dtype=jnp.bfloat16))
    w = jnp.asarray(_rand((2, 16, 16, 4), seed=12))
    y32 = np.asarray(fwd32(params, w))
    y16 = _compile(lambda p, x: net16.apply({"params": p}, x), params, w)(params, w)
    assert y16.dtype == jnp.float32  # output always float32; params stay float32
    y16 = np.asarray(y16)
    scale = np.abs(y32).max()
    err = np.abs(y16 - y32)
    assert err.max() < 0.05 * scale, (err.max(), scale)
    assert err.mean() < 0.01 * scale, (err.mean(), scale)
    assert np.corrcoef(y16.ravel(), y32.ravel())[0, 1] > 0.999


def test_tiny_net_learns_colour_transform(tiny):
    """Adam on a fixed batch: fit a colour matrix + gamma of the demosaiced planes."""
    net, params, _ = tiny
    b, s = 4, 16  # 32x32 RAW -> 16x16 packed
    rng = np.random.default_rng(13)
    coarse = rng.uniform(0.0, 1.0, (b, 4, 4, 4)).astype(np.float32)
    w = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)  # piecewise-constant planes
    ccm = np.array([[1.6, -0.4, -0.2], [-0.3, 1.5, -0.2], [-0.1, -0.5, 1.6]], np.float32)
    rgb = np.stack([w[..., 0], 0.5 * (w[..., 1] + w[..., 2]), w[..., 3]], axis=-1)
    target = np.clip(rgb @ ccm.T, 0.0, 1.0) ** (1 / 2.2)
    target = np.repeat(np.repeat(target, 2, axis=1), 2, axis=2)  # [b, 32, 32, 3]

    opt = optax.adam(3e-3)

    def loss_fn(p):
        return jnp.mean(jnp.abs(net.apply({"params": p}, w) - target))

    def step(p, st):
        loss, g = jax.value_and_grad(loss_fn)(p)
        upd, st = opt.update(g, st, p)
        return optax.apply_updates(p, upd), st, loss

    p, st = params, opt.init(params)
    step = _compile(step, p, st)
    losses = []
    for _ in range(N_STEPS + 1):  # the last call only evaluates the final loss
        p, st, loss = step(p, st)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    print("L1 loss", losses[0], "->", losses[-1])
    assert losses[0] > LEARN_FACTOR * losses[-1], np.round(losses, 3)


def test_remove_detail_means_leaves_ll_and_no_constant_detail():
    from diffraw_jax.models.color_net import remove_detail_means

    rng = np.random.default_rng(0)
    y = jnp.asarray(rng.normal(size=(2, 6, 5, 12)) + rng.normal(size=(2, 1, 1, 12)), jnp.float32)
    z = remove_detail_means(y)
    np.testing.assert_array_equal(np.asarray(z[..., :3]), np.asarray(y[..., :3]))  # LL untouched
    np.testing.assert_allclose(np.asarray(z[..., 3:]).mean(axis=(1, 2)), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(z[..., 3:] - y[..., 3:]).std(axis=(1, 2)), 0.0, atol=1e-6)
    # what it removes: a constant detail band synthesises to a pattern of period 2
    const = jnp.zeros((1, 4, 4, 4)).at[..., 1].set(1.0)  # HL = 1 everywhere
    img = np.asarray(haar_idwt(const))[0, ..., 0]
    np.testing.assert_allclose(img, np.tile([[-0.5, 0.5]], (8, 4)))
    np.testing.assert_array_equal(np.asarray(haar_idwt(remove_detail_means(const))), 0.0)


def test_zero_mean_details_draws_no_lattice_on_a_flat_frame():
    """A flat input: the default G's interior carries a fixed 16/8/4-px pattern (its deepest
    Haar synthesis of constant detail bands); with ``zero_mean_details`` the interior is ~flat.
    Both use the same parameters (the option adds none). Interior: 64 px (128 output px) from
    any border, beyond the zero padding's reach."""
    cfg = color_net_config("tiny")
    plain, zmd = ColorNet(**cfg), ColorNet(**cfg, zero_mean_details=True)
    params = _init_params(plain, (1, 256, 256, 4), seed=1)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
        _init_params(zmd, (1, 256, 256, 4), seed=1))
    flat = jnp.full((1, 256, 256, 4), 0.3, jnp.float32)
    centre = slice(192, 320)  # output px
    # 2x2 means: the pixel shuffle's period of 2 px (one Bayer cell) is the demosaic's, not a lattice
    cells = lambda x: x.reshape(64, 2, 64, 2, 3).mean(axis=(1, 3))  # noqa: E731
    a = cells(np.asarray(jax.jit(plain.apply)({"params": params}, flat))[0, centre, centre])
    b = cells(np.asarray(jax.jit(zmd.apply)({"params": params}, flat))[0, centre, centre])
    sa, sb = a.std(axis=(0, 1)).max(), b.std(axis=(0, 1)).max()
    assert sa > 2e-3  # the lattice (measured 0.0079)
    # ~flat: what is left comes from the borders, whose cells enter the mean (measured 0.0003)
    assert sb < sa / 10, (sa, sb)

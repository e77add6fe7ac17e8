"""DTDM math against closed forms, an independent float64 derivation and Monte Carlo."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from diffraw_jax import dtdm

PAPER = dtdm.make_schedule()  # T=2000, linear 1e-6..1e-2
S = 100
# A coarse schedule where alpha_t and alpha_bar_t differ a lot, so that any
# alpha / alpha-bar mix-up shows in a Monte Carlo test at once.
COARSE = dtdm.make_schedule(20, 1e-3, 0.2)
S_COARSE = 15


def np_schedule(sched):
    """float64 copies: betas [T], alpha_bars [T+1] by an explicit product loop."""
    betas = np.asarray(sched.betas, np.float64)
    ab = [1.0]
    for b in betas:
        ab.append(ab[-1] * (1.0 - b))
    return betas, np.array(ab)


def pair(shape, seed=0, offset=0.3):
    """A target y and a degraded x with a one-signed difference (so biases show in means)."""
    rng = np.random.default_rng(seed)
    y = rng.uniform(-0.8, 0.6, shape).astype(np.float32)
    x = (y + offset + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    return jnp.asarray(y), jnp.asarray(x)


def standardized(sched, m, y, x, t, s):
    """(m_t - E[m_t | x, y]) / std using eq. 17 written out from eq. 14 in float64."""
    _, ab = np_schedule(sched)
    g = np.sqrt(ab[s]) / np.sqrt(1 - ab[s])
    m0t = np.asarray(y, np.float64) + np.sqrt(1 - ab[t]) / np.sqrt(ab[t]) * g * (
        np.asarray(x, np.float64) - np.asarray(y, np.float64))
    return (np.asarray(m, np.float64) - np.sqrt(ab[t]) * m0t) / np.sqrt(1 - ab[t])


def assert_standard_normal(z, what=""):
    z = np.asarray(z).ravel()
    n = z.size
    assert n >= 100_000
    assert abs(z.mean()) < 5 / np.sqrt(n), f"{what}: mean {z.mean():.4g}"
    assert abs(z.var() - 1) < 5 * np.sqrt(2 / n), f"{what}: var {z.var():.4g}"


def oracle(sched, y):
    """f computed from the true y: (m_t - sqrt(ab_t) y) / sqrt(1 - ab_t)."""
    def f(m, t):
        sab = jnp.sqrt(sched.alpha_bars[t])[:, None, None, None]
        s1m = jnp.sqrt(sched.one_minus_alpha_bars[t])[:, None, None, None]
        return (m - sab * y) / s1m
    return f


# --------------------------------------------------------------------- schedule

@pytest.mark.parametrize("T,b0,b1", [(2000, 1e-6, 1e-2), (1000, 1e-4, 0.02), (20, 1e-3, 0.2)])
def test_linear_schedule_matches_closed_form(T, b0, b1):
    sched = dtdm.make_schedule(T, b0, b1)
    betas = b0 + (b1 - b0) * np.arange(T) / (T - 1)
    ab = np.concatenate([[1.0], np.cumprod(1 - betas)])
    assert sched.betas.shape == (T,) and sched.alphas.shape == (T,) and sched.alpha_bars.shape == (T + 1,)
    assert sched.num_timesteps == T
    np.testing.assert_allclose(sched.betas, betas, rtol=1e-6)
    np.testing.assert_allclose(sched.alphas, 1 - betas, rtol=1e-7)
    assert float(sched.alpha_bars[0]) == 1.0 and float(sched.one_minus_alpha_bars[0]) == 0.0
    np.testing.assert_allclose(sched.alpha_bars, ab, rtol=1e-6)
    np.testing.assert_allclose(sched.one_minus_alpha_bars[1:], 1 - ab[1:], rtol=1e-5)
    assert np.all(np.diff(np.asarray(sched.alpha_bars)) < 0)


def test_paper_schedule_numbers():
    # Reference facts: with SR3/Palette's schedule, sqrt(ab_100) = 0.988,
    # sqrt(1 - ab_100) = 0.157, gamma_100 = 6.30.
    assert float(jnp.sqrt(PAPER.alpha_bars[100])) == pytest.approx(0.988, abs=5e-4)
    assert float(jnp.sqrt(PAPER.one_minus_alpha_bars[100])) == pytest.approx(0.157, abs=5e-4)
    assert float(dtdm.gamma_s(PAPER, 100)) == pytest.approx(6.30, abs=5e-3)
    # 1 - ab_1 = beta_1 = 1e-6 keeps full relative precision.
    assert float(PAPER.one_minus_alpha_bars[1]) == pytest.approx(1e-6, rel=1e-5)


def test_cosine_schedule():
    T = 1000
    sched = dtdm.make_schedule(T, kind="cosine")
    f = np.cos((np.arange(T + 1) / T + 0.008) / 1.008 * np.pi / 2) ** 2
    ab = f / f[0]
    # Betas are clipped at 0.999 only at the very end.
    np.testing.assert_allclose(sched.alpha_bars[: T - 5], ab[: T - 5], rtol=2e-5, atol=1e-7)
    assert float(sched.betas.max()) == pytest.approx(0.999, rel=1e-6)
    with pytest.raises(ValueError, match="unknown schedule kind"):
        dtdm.make_schedule(10, kind="quadratic")
    with pytest.raises(ValueError):
        dtdm.make_schedule(10, 0.1, 0.01)


# ------------------------------------------------------------- coefficient math

@pytest.mark.parametrize("sched,s", [(PAPER, 100), (PAPER, 1500), (COARSE, S_COARSE)])
def test_gamma_and_lambda_against_printed_eq25(sched, s):
    betas, ab = np_schedule(sched)
    g = np.sqrt(ab[s]) / np.sqrt(1 - ab[s])
    assert float(dtdm.gamma_s(sched, s)) == pytest.approx(g, rel=1e-5)
    t = np.arange(1, s + 1)
    a = 1 - betas[t - 1]
    lam = np.sqrt(1 - ab[t - 1]) * (1 - np.sqrt(a) * np.sqrt(1 - ab[t - 1]) / np.sqrt(1 - ab[t])) * g
    got = np.asarray(dtdm.lambda_t(sched, jnp.asarray(t), s))
    np.testing.assert_allclose(got, lam, rtol=2e-4, atol=1e-9)
    assert got[0] == 0.0  # lambda_1 = 0 because ab_0 = 1


def test_q_sample_endpoints_and_eq18():
    y, x = pair((2, 8, 8, 3))
    eps = jax.random.normal(jax.random.PRNGKey(1), y.shape)
    np.testing.assert_array_equal(dtdm.q_sample(PAPER, y, x, 0, eps, S), y)  # m_0 = y
    ms = dtdm.q_sample(PAPER, y, x, S, eps, S)
    xs = jnp.sqrt(PAPER.alpha_bars[S]) * x + jnp.sqrt(1 - PAPER.alpha_bars[S]) * eps
    np.testing.assert_allclose(ms, xs, atol=2e-6)  # m_s = x_s: the point of gamma_s
    # Per-example t and the training target (eqs. 18-19).
    t = jnp.array([3, 77], jnp.int32)
    m = dtdm.q_sample(PAPER, y, x, t, eps, S)
    target = dtdm.training_target(PAPER, y, x, eps, S)
    _, ab = np_schedule(PAPER)
    want = np.sqrt(ab[np.array([3, 77])])[:, None, None, None] * np.asarray(y) + np.sqrt(
        1 - ab[np.array([3, 77])])[:, None, None, None] * np.asarray(target)
    np.testing.assert_allclose(m, want, atol=1e-5)
    # eq. 21 inverts eq. 18 given the true target.
    np.testing.assert_allclose(dtdm.predict_y(PAPER, m, target, t), y, atol=1e-4)


def test_vmap_over_examples_matches_batched():
    y, x = pair((4, 6, 6, 3))
    eps = jax.random.normal(jax.random.PRNGKey(2), y.shape)
    t = jnp.array([1, 10, 50, 100], jnp.int32)
    batched = dtdm.q_sample(PAPER, y, x, t, eps, S)
    per = jax.vmap(lambda yy, xx, tt, ee: dtdm.q_sample(PAPER, yy, xx, tt, ee, S))(y, x, t, eps)
    np.testing.assert_allclose(batched, per, rtol=1e-6, atol=1e-7)
    f = jax.random.normal(jax.random.PRNGKey(3), y.shape)
    mb, vb = dtdm.posterior_mean_variance(PAPER, batched, f, x, t, S)
    mp, vp = jax.vmap(lambda m, ff, xx, tt: dtdm.posterior_mean_variance(PAPER, m, ff, xx, tt, S))(batched, f, x, t)
    np.testing.assert_allclose(mb, mp, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vb, vp, rtol=1e-6)


def test_training_example_algorithm1():
    y, x = pair((4096, 2, 2, 3))
    keys = jax.random.split(jax.random.PRNGKey(0), y.shape[0])  # one key per example, as the trainer
    m, t, target = jax.jit(jax.vmap(lambda yy, xx, k: dtdm.training_example(PAPER, yy, xx, k, S)))(y, x, keys)
    t = np.asarray(t)
    assert t.dtype == np.int32 and t.min() >= 1 and t.max() <= S
    counts = np.bincount(t, minlength=S + 1)[1:]
    # Uniform on {1..s}: chi-square with 99 dof, p ~ 1e-6 bound.
    chi2 = ((counts - 4096 / S) ** 2 / (4096 / S)).sum()
    assert chi2 < 180, chi2
    # m_t is eq. 18 with the noise implied by the target.
    noise = np.asarray(target) - float(dtdm.gamma_s(PAPER, S)) * (np.asarray(x) - np.asarray(y))
    np.testing.assert_allclose(m, dtdm.q_sample(PAPER, y, x, jnp.asarray(t), jnp.asarray(noise), S), atol=1e-5)
    assert abs(noise.mean()) < 0.02 and abs(noise.std() - 1) < 0.02


# -------------------------------------------------------------- Monte Carlo: forward

@pytest.mark.parametrize("sched,s,ts", [(COARSE, S_COARSE, [1, 2, 7, 15]), (PAPER, S, [1, 50, 100])])
def test_forward_step_reproduces_marginal(sched, s, ts):
    y, x = pair((10, 64, 64, 3), seed=3)
    key = jax.random.PRNGKey(4)
    for t in ts:
        k1, k2, key = jax.random.split(key, 3)
        m_prev = dtdm.q_sample(sched, y, x, t - 1, jax.random.normal(k1, y.shape), s)
        m_t = dtdm.forward_step(sched, m_prev, y, x, t, jax.random.normal(k2, y.shape), s)
        assert_standard_normal(standardized(sched, m_t, y, x, t, s), f"forward t={t}")


def test_forward_chain_from_y_reaches_x_s():
    """s forward steps from m_0 = y give m_s ~ N(sqrt(ab_s) x, 1 - ab_s)."""
    y, x = pair((10, 64, 64, 3), seed=5)
    m = y
    key = jax.random.PRNGKey(5)
    for t in range(1, S_COARSE + 1):
        key, k = jax.random.split(key)
        m = dtdm.forward_step(COARSE, m, y, x, t, jax.random.normal(k, y.shape), S_COARSE)
    ab = float(COARSE.alpha_bars[S_COARSE])
    assert_standard_normal((np.asarray(m) - np.sqrt(ab) * np.asarray(x)) / np.sqrt(1 - ab), "chain")


def test_forward_chain_as_printed_fails():
    """Eq. 16 exactly as printed (sqrt(alpha_t), not sqrt(alpha-bar_t), on the
    m_0^t shift), chained from y over s steps, misses x_s; the corrected chain
    (test above) reaches it."""
    y, x = pair((10, 64, 64, 3), seed=5, offset=1.0)
    s = S_COARSE
    _, ab = np_schedule(COARSE)
    g = np.sqrt(ab[s] / (1 - ab[s]))
    yn, xn = np.asarray(y, np.float64), np.asarray(x, np.float64)
    m0 = lambda k: yn + np.sqrt((1 - ab[k]) / ab[k]) * g * (xn - yn)
    rng = np.random.default_rng(0)
    m = yn
    for t in range(1, s + 1):
        a = float(COARSE.alphas[t - 1])
        m = np.sqrt(a) * m + np.sqrt(a) * (m0(t) - m0(t - 1)) + np.sqrt(1 - a) * rng.standard_normal(m.shape)
    z = (m - np.sqrt(ab[s]) * xn) / np.sqrt(1 - ab[s])
    with pytest.raises(AssertionError, match="mean"):
        assert_standard_normal(z)


# ------------------------------------------------------- posterior vs numpy (float64)

def np_posterior(sched, m_t, y, x, t, s):
    """q(m_{t-1} | m_t, x, y) by Gaussian conditioning in precision form (float64),
    from eq. 17 (prior) and eqs. 15-16 with m_0^t from eq. 14 (likelihood)."""
    betas, ab = np_schedule(sched)
    y, x, m_t = (np.asarray(v, np.float64) for v in (y, x, m_t))
    g = np.sqrt(ab[s] / (1 - ab[s]))
    m0 = lambda k: y + np.sqrt((1 - ab[k]) / ab[k]) * g * (x - y)
    prior_mean, prior_var = np.sqrt(ab[t - 1]) * m0(t - 1), 1 - ab[t - 1]
    a, b = 1 - betas[t - 1], betas[t - 1]
    shift = np.sqrt(ab[t]) * (m0(t) - m0(t - 1))
    if t == 1:
        return y, 0.0
    prec = 1 / prior_var + a / b
    mean = (prior_mean / prior_var + np.sqrt(a) * (m_t - shift) / b) / prec
    return mean, 1 / prec


@pytest.mark.parametrize("sched,s", [(PAPER, 100), (PAPER, 800), (COARSE, S_COARSE)])
def test_posterior_matches_numpy_derivation(sched, s):
    y, x = pair((2, 5, 5, 3), seed=8)
    rng = np.random.default_rng(9)
    for t in sorted({1, 2, 3, s // 3, s // 2, s - 1, s}):
        m_t = dtdm.q_sample(sched, y, x, t, jnp.asarray(rng.standard_normal(y.shape), jnp.float32), s)
        # An arbitrary network output f: the mean must be the exact posterior
        # given y_hat(m_t, f) (eq. 21), whatever f is.
        f = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
        y_hat = dtdm.predict_y(sched, m_t, f, t)
        mean, var = dtdm.posterior_mean_variance(sched, m_t, f, x, t, s)
        want_mean, want_var = np_posterior(sched, m_t, y_hat, x, t, s)
        np.testing.assert_allclose(mean, want_mean, rtol=1e-4, atol=2e-4, err_msg=f"t={t}")
        assert float(var) == pytest.approx(want_var, rel=1e-4, abs=1e-12), t


# --------------------------------------------------- Monte Carlo: reverse with oracle

def run_reverse_chain(sched, s, y, x, stop_t, mean_fn, key):
    m = dtdm.q_sample(sched, y, x, s, jax.random.normal(key, y.shape), s)
    f = oracle(sched, y)
    for t in range(s, stop_t, -1):
        key, k = jax.random.split(key)
        tt = jnp.full((y.shape[0],), t, jnp.int32)
        mean, var = mean_fn(m, f(m, tt), tt)
        m = mean + jnp.sqrt(var)[:, None, None, None] * jax.random.normal(k, y.shape)
    return m


@pytest.mark.parametrize("sched,s,stops", [(PAPER, S, [50, 1]), (COARSE, S_COARSE, [7, 1])])
def test_oracle_reverse_chain_keeps_marginals(sched, s, stops):
    y, x = pair((10, 64, 64, 3), seed=10)
    mean_fn = jax.jit(lambda m, f, t: dtdm.posterior_mean_variance(sched, m, f, x, t, s))
    for stop in stops:
        m = run_reverse_chain(sched, s, y, x, stop, mean_fn, jax.random.PRNGKey(11))
        assert_standard_normal(standardized(sched, m, y, x, stop, s), f"reverse to t={stop}")


def eq24_as_printed(sched, m_t, f, x, t, s):
    """Eq. 24 / Algorithm 2 line 6 exactly as printed (m_t coefficient
    1/sqrt(ab_t) - lambda_t/sqrt(a_t)); variance = the exact posterior variance."""
    a = sched.alphas[t - 1][:, None, None, None]
    ab = sched.alpha_bars[t][:, None, None, None]
    lam = dtdm.lambda_t(sched, t, s)[:, None, None, None]
    cf = jnp.sqrt(1 - ab) / jnp.sqrt(ab) * lam - (1 - a) / (jnp.sqrt(a) * jnp.sqrt(1 - ab))
    cm = 1 / jnp.sqrt(ab) - lam / jnp.sqrt(a)
    return cf * f + cm * m_t + lam * x, dtdm.posterior_variance(sched, t)


@pytest.mark.parametrize("sched,s,stop", [(PAPER, S, 50), (COARSE, S_COARSE, 7)])
def test_printed_eq24_fails_the_same_check(sched, s, stop):
    y, x = pair((10, 64, 64, 3), seed=10)
    mean_fn = jax.jit(lambda m, f, t: eq24_as_printed(sched, m, f, x, t, s))
    m = run_reverse_chain(sched, s, y, x, stop, mean_fn, jax.random.PRNGKey(11))
    z = standardized(sched, m, y, x, stop, s)
    with pytest.raises(AssertionError):
        assert_standard_normal(z)
    # ...and not marginally: the printed form is far off.
    assert abs(z.mean()) > 0.5 or abs(z.var() - 1) > 0.5, (z.mean(), z.var())


def test_reverse_step_zero_noise_at_t1_and_exact_posterior_noise():
    y, x = pair((4, 64, 64, 3), seed=12)
    m = dtdm.q_sample(PAPER, y, x, 1, jax.random.normal(jax.random.PRNGKey(0), y.shape), S)
    f = jax.random.normal(jax.random.PRNGKey(1), y.shape)
    out = dtdm.reverse_step(PAPER, m, f, x, 1, S, jax.random.PRNGKey(2))
    mean, _ = dtdm.posterior_mean_variance(PAPER, m, f, x, 1, S)
    np.testing.assert_array_equal(out, mean)
    # At t = 60 the step's noise has exactly the posterior std.
    t = 60
    outs = jnp.stack([dtdm.reverse_step(PAPER, m, f, x, t, S, jax.random.PRNGKey(k)) for k in range(3)])
    mean, var = dtdm.posterior_mean_variance(PAPER, m, f, x, t, S)
    z = (outs - mean) / jnp.sqrt(var)
    assert_standard_normal(z, "reverse_step noise")


# ----------------------------------------------------------------------- DDIM

def test_ddim_eta1_single_step_equals_ancestral_step():
    y, x = pair((2, 8, 8, 3), seed=13)
    rng = np.random.default_rng(0)
    for t in [2, 30, 100]:
        m = dtdm.q_sample(PAPER, y, x, t, jnp.asarray(rng.standard_normal(y.shape), jnp.float32), S)
        f = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
        key = jax.random.PRNGKey(t)
        a = dtdm.reverse_step(PAPER, m, f, x, t, S, key)
        b = dtdm.ddim_step(PAPER, m, f, x, t, t - 1, S, key=key, eta=1.0)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=f"t={t}")


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_jump_keeps_marginals(eta):
    """The non-Markovian DTDM family preserves q(m_r | x, y) for a strided jump t -> r."""
    y, x = pair((10, 64, 64, 3), seed=14)
    t, r = 100, 37
    m_t = dtdm.q_sample(PAPER, y, x, t, jax.random.normal(jax.random.PRNGKey(1), y.shape), S)
    tt = jnp.full((10,), t, jnp.int32)
    m_r = dtdm.ddim_step(PAPER, m_t, oracle(PAPER, y)(m_t, tt), x, tt, r, S, key=jax.random.PRNGKey(2), eta=eta)
    assert_standard_normal(standardized(PAPER, m_r, y, x, r, S), f"ddim eta={eta}")


def test_sampling_timesteps():
    np.testing.assert_array_equal(dtdm.sampling_timesteps(100, 4), [100, 75, 50, 25, 0])
    ts = dtdm.sampling_timesteps(100, 100)
    np.testing.assert_array_equal(ts, np.arange(100, -1, -1))
    ts = dtdm.sampling_timesteps(100, 7)
    assert ts[0] == 100 and ts[-1] == 0 and len(ts) == 8 and np.all(np.diff(ts) < 0)
    with pytest.raises(ValueError):
        dtdm.sampling_timesteps(100, 0)
    with pytest.raises(ValueError):
        dtdm.sampling_timesteps(100, 101)


# --------------------------------------------------------------------- samplers

@pytest.mark.parametrize("method,s,num_steps", [
    ("dtdm", 100, None), ("dtdm", 100, 93), ("dtdm_ddim", 100, 10), ("dtdm_ddim", 100, None),
    ("ddpm", 100, None), ("ddpm", 1500, None),
])
def test_samplers_with_oracle_return_y_and_trace_once(method, s, num_steps):
    y, x = pair((2, 16, 16, 3), seed=15)
    traces = []

    def denoise(m, t):
        traces.append(1)
        assert t.shape == (2,) and t.dtype == jnp.int32
        return oracle(PAPER, y)(m, t)

    fn = jax.jit(lambda xx, key: dtdm.sample(denoise, PAPER, xx, s, key, method=method, num_steps=num_steps))
    out1 = fn(x, jax.random.PRNGKey(0))
    out2 = fn(x, jax.random.PRNGKey(1))
    assert len(traces) == 1, "the denoiser must be traced once, not once per step"
    assert fn._cache_size() == 1
    np.testing.assert_allclose(out1, y, atol=2e-5)
    np.testing.assert_allclose(out2, y, atol=2e-5)


def test_sampler_uses_the_network_and_is_stochastic():
    """A wrong (zero) denoiser must not return y; dtdm differs per key, dtdm_ddim with
    a fixed start differs only through the start noise."""
    y, x = pair((2, 16, 16, 3), seed=16)
    zero = lambda m, t: jnp.zeros_like(m)
    out = dtdm.sample(zero, PAPER, x, S, jax.random.PRNGKey(0))
    assert float(jnp.abs(out - y).mean()) > 0.05
    a = dtdm.sample(oracle(PAPER, y), PAPER, x, 50, jax.random.PRNGKey(0), method="ddpm")
    # ddpm with oracle: the start is x noised, but the result is still y.
    np.testing.assert_allclose(a, y, atol=2e-5)
    b1 = dtdm.sample(zero, PAPER, x, S, jax.random.PRNGKey(1))
    b2 = dtdm.sample(zero, PAPER, x, S, jax.random.PRNGKey(2))
    assert float(jnp.abs(b1 - b2).mean()) > 1e-3


def test_sample_rejects_bad_arguments():
    x = jnp.zeros((1, 4, 4, 3))
    f = lambda m, t: m
    with pytest.raises(ValueError, match="unknown method"):
        dtdm.sample(f, PAPER, x, S, jax.random.PRNGKey(0), method="euler")
    with pytest.raises(ValueError, match="num_steps"):
        dtdm.sample(f, PAPER, x, S, jax.random.PRNGKey(0), method="dtdm_ddim", num_steps=0)
    with pytest.raises(ValueError, match="num_steps"):
        dtdm.sample(f, PAPER, x, S, jax.random.PRNGKey(0), method="ddpm", num_steps=10)
    with pytest.raises(ValueError, match="s must be"):
        dtdm.sample(f, PAPER, x, 5000, jax.random.PRNGKey(0))
    with pytest.raises(TypeError, match="Python int"):
        dtdm.sample(f, PAPER, x, 10.5, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="needs a key"):
        dtdm.ddim_step(PAPER, x, x, x, 5, 2, S, eta=0.5)


def test_ddim_sampler_is_deterministic_given_the_start():
    """DTDM-DDIM with eta=0: the only randomness is the start noise; a near-identity
    denoiser gives an output that moves smoothly with the number of steps."""
    y, x = pair((1, 8, 8, 3), seed=17)
    f = oracle(PAPER, y)
    a = dtdm.sample(f, PAPER, x, S, jax.random.PRNGKey(3), method="dtdm_ddim", num_steps=5)
    b = dtdm.sample(f, PAPER, x, S, jax.random.PRNGKey(3), method="dtdm_ddim", num_steps=5)
    np.testing.assert_array_equal(a, b)


def test_import_is_light():
    import subprocess, sys
    code = ("import sys, diffraw_jax, diffraw_jax.dtdm, diffraw_jax.sampling, diffraw_jax.raw, "
            "diffraw_jax.isp_classic, diffraw_jax.degradation, diffraw_jax.models.unet, diffraw_jax.models.color_net, "
            "diffraw_jax.tiling, diffraw_jax.models.factory; "
            "bad = [m for m in ('tensorflow', 'tensorflow_datasets', 'clu', 'grain', 'orbax', 'PIL', 'rawpy', "
            "'scipy', 'dm_pix') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_ddim_start_step_adds_the_noise_of_that_step():
    """dtdm_ddim from ``start`` t0 with one step and a denoiser that returns 0: the start point is
    sqrt(ab_t0) x + sqrt(1 - ab_t0) z and the jump to 0 divides by sqrt(ab_t0), so the output is
    x + sqrt((1 - ab_t0) / ab_t0) z. ab from the paper's linear betas, computed here in float64."""
    betas = np.linspace(1e-6, 1e-2, 2000)
    x = jnp.zeros((1, 32, 32, 3), jnp.float32) + 0.25
    zero = lambda m, t: jnp.zeros_like(m)  # noqa: E731
    for t0 in (5, 25, 100):
        ab = np.prod(1.0 - betas[:t0])
        out = dtdm.sample(zero, PAPER, x, 100, jax.random.key(0), method="dtdm_ddim", num_steps=1, start=t0)
        dev = np.asarray(out - x)
        assert abs(dev.mean()) < 0.05 * np.sqrt((1 - ab) / ab)
        assert dev.std() == pytest.approx(np.sqrt((1 - ab) / ab), rel=0.05), t0
    full = dtdm.sample(zero, PAPER, x, 100, jax.random.key(0), method="dtdm_ddim", num_steps=4)
    same = dtdm.sample(zero, PAPER, x, 100, jax.random.key(0), method="dtdm_ddim", num_steps=4, start=100)
    np.testing.assert_array_equal(np.asarray(full), np.asarray(same))
    with pytest.raises(ValueError, match="must be <= start"):
        dtdm.sample(zero, PAPER, x, 100, jax.random.key(0), method="dtdm_ddim", num_steps=4, start=3)
    with pytest.raises(ValueError, match="start is a 'dtdm_ddim' option"):
        dtdm.sample(zero, PAPER, x, 100, jax.random.key(0), method="dtdm", num_steps=4, start=4)
    with pytest.raises(ValueError, match=r"start must be in \[1, 100\]"):
        dtdm.sample(zero, PAPER, x, 100, jax.random.key(0), method="dtdm_ddim", num_steps=1, start=101)

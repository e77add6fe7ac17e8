"""Domain Transform Diffusion Method (DTDM), DiffRAW eqs. 9-25, Algorithms 1-2.

Pure functions: jittable, vmappable, no Python control flow on traced values.

Conventions
-----------
* Images are float32 NHWC in [-1, 1] (any rank works: per-example coefficients
  broadcast over every axis after the first).
* ``t`` is int32, either a scalar or shape [B] (one per example), with the
  paper's 1-based indexing ``1 <= t <= s``. ``alpha_bars[0] == 1`` so that
  ``m_0 = y``.
* ``s`` (the DTDM length, 100 in the paper) is a Python int or int32 scalar.
* The paper writes alpha for alpha-bar in several places. Everything here uses
  the exact derivation (see docs/dtdm.md "Corrected equations"):

    m_0^t   = y + sqrt(1-ab_t)/sqrt(ab_t) * gamma_s (x - y)            (eq. 14)
    gamma_s = sqrt(ab_s) / sqrt(1-ab_s)                                 (eq. 14)
    q(m_t | m_{t-1}) = N(sqrt(a_t) m_{t-1} + sqrt(ab_t)(m_0^t - m_0^{t-1}),
                         (1-a_t) I)                                (eqs. 15-16)
    q(m_t | x, y)    = N(sqrt(ab_t) m_0^t, (1-ab_t) I)                 (eq. 17)
    m_t = sqrt(ab_t) y + sqrt(1-ab_t) [gamma_s (x-y) + eps]            (eq. 18)
    q(m_{t-1} | m_t, x, y) = N(mu, sigma_t^2 I),                    (eqs. 22-23)
      mu = [sqrt(1-ab_t)/sqrt(ab_t) lambda_t - (1-a_t)/(sqrt(a_t) sqrt(1-ab_t))] f
           + [1/sqrt(a_t) - lambda_t/sqrt(ab_t)] m_t + lambda_t x       (eq. 24*)
      sigma_t^2 = (1-a_t)(1-ab_{t-1})/(1-ab_t)
    lambda_t = sqrt(1-ab_{t-1}) [1 - sqrt(a_t) sqrt(1-ab_{t-1})/sqrt(1-ab_t)]
               * gamma_s                                               (eq. 25)

  (*) The printed eq. 24 / Algorithm 2 line 6 has the m_t coefficient as
  1/sqrt(ab_t) - lambda_t/sqrt(a_t); that is wrong (tests/test_dtdm.py shows
  the printed form drifts off the forward marginals).

Here a_t = alphas[t-1] = 1 - beta_t and ab_t = alpha_bars[t].
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

__all__ = [
    "Schedule",
    "make_schedule",
    "gamma_s",
    "lambda_t",
    "q_sample",
    "forward_step",
    "training_target",
    "predict_y",
    "training_example",
    "posterior_mean_variance",
    "reverse_step",
    "ddim_step",
    "ddpm_reverse_step",
    "sampling_timesteps",
    "start_for_noise",
    "own_start_example",
    "file_sampler",
    "sample",
    "METHODS",
    "OBJECTIVES",
]

METHODS = ("dtdm", "dtdm_ddim", "ddpm")
OBJECTIVES = ("dtdm", "ddpm")  # training targets: eq. 19, or the plain epsilon (the Fig. 4 baseline)


class Schedule(NamedTuple):
    """Noise schedule (a pytree of float32 arrays).

    Attributes:
      betas: [T] beta_t for t = 1..T (betas[t-1]).
      alphas: [T] alpha_t = 1 - beta_t (alphas[t-1]).
      alpha_bars: [T+1] alpha_bar_t = prod_{i<=t} alpha_i, alpha_bars[0] == 1.
      one_minus_alpha_bars: [T+1] 1 - alpha_bar_t, computed in float64 before
        the cast, so it keeps full relative precision where alpha_bar_t ~ 1
        (1 - float32(alpha_bar_1) would lose ~6% at beta_1 = 1e-6).
    """

    betas: Array
    alphas: Array
    alpha_bars: Array
    one_minus_alpha_bars: Array

    @property
    def num_timesteps(self) -> int:
        """T (static: read from the array shape)."""
        return self.betas.shape[0]


def _betas(num_timesteps: int, beta_start: float, beta_end: float, kind: str) -> np.ndarray:
    if kind == "linear":
        return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
    if kind == "cosine":
        # Nichol & Dhariwal (2021): alpha_bar(t) = cos^2(((t/T + s0)/(1 + s0)) pi/2),
        # betas clipped at 0.999. beta_start / beta_end are not used.
        s0 = 0.008
        steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
        f = np.cos((steps + s0) / (1 + s0) * math.pi / 2) ** 2
        return np.clip(1.0 - f[1:] / f[:-1], 0.0, 0.999)
    raise ValueError(f"unknown schedule kind {kind!r}; expected 'linear' or 'cosine'")


def make_schedule(
    num_timesteps: int = 2000,
    beta_start: float = 1e-6,
    beta_end: float = 1e-2,
    kind: str = "linear",
) -> Schedule:
    """Builds the schedule in float64 and stores it as float32.

    The paper gives T = 2000 but not the betas. The default (linear 1e-6..1e-2
    over 2000 steps) is SR3's and Palette's training schedule.
    """
    if not isinstance(num_timesteps, (int, np.integer)) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive int, got {num_timesteps!r}")
    if kind == "linear" and not (0.0 < beta_start <= beta_end < 1.0):
        raise ValueError(
            f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}"
        )
    betas = _betas(int(num_timesteps), beta_start, beta_end, kind)
    log_alpha_bars = np.concatenate([[0.0], np.cumsum(np.log1p(-betas))])
    alpha_bars = np.exp(log_alpha_bars)
    one_minus = -np.expm1(log_alpha_bars)
    f32 = lambda a: jnp.asarray(a, dtype=jnp.float32)
    return Schedule(f32(betas), f32(1.0 - betas), f32(alpha_bars), f32(one_minus))


# ---------------------------------------------------------------------------
# Small helpers.


def _bcast(coef: Array, like: Array) -> Array:
    """Reshapes a scalar or [B] coefficient so it broadcasts against ``like``."""
    coef = jnp.asarray(coef, dtype=jnp.float32)
    return coef.reshape(coef.shape + (1,) * (like.ndim - coef.ndim))


def _t(t) -> Array:
    return jnp.asarray(t, dtype=jnp.int32)


def _sqrt_ab(schedule: Schedule, t) -> Array:
    return jnp.sqrt(schedule.alpha_bars[_t(t)])


def _sqrt_1mab(schedule: Schedule, t) -> Array:
    return jnp.sqrt(schedule.one_minus_alpha_bars[_t(t)])


def gamma_s(schedule: Schedule, s) -> Array:
    """gamma_s = sqrt(ab_s) / sqrt(1 - ab_s) (eq. 14). Scalar float32."""
    return _sqrt_ab(schedule, s) / _sqrt_1mab(schedule, s)


def lambda_t(schedule: Schedule, t, s) -> Array:
    """lambda_t of eq. 25, shape of ``t``.

    lambda_t = sqrt(1-ab_{t-1}) [1 - sqrt(a_t) sqrt(1-ab_{t-1}) / sqrt(1-ab_t)] gamma_s.
    Evaluated without cancellation via the identity
    1 - sqrt(a_t (1-ab_{t-1})/(1-ab_t))
      = beta_t / (sqrt(1-ab_t) (sqrt(1-ab_t) + sqrt(a_t (1-ab_{t-1})))).
    lambda_1 = 0 (ab_0 = 1).
    """
    t = _t(t)
    beta = schedule.betas[t - 1]
    alpha = schedule.alphas[t - 1]
    omab_t = schedule.one_minus_alpha_bars[t]
    omab_prev = schedule.one_minus_alpha_bars[t - 1]
    sq_t = jnp.sqrt(omab_t)
    bracket = beta / (sq_t * (sq_t + jnp.sqrt(alpha * omab_prev)))
    return jnp.sqrt(omab_prev) * bracket * gamma_s(schedule, s)


# ---------------------------------------------------------------------------
# Forward process.


def q_sample(schedule: Schedule, y: Array, x: Array, t, noise: Array, s) -> Array:
    """m_t = sqrt(ab_t) y + sqrt(1-ab_t) [gamma_s (x - y) + noise] (eq. 18).

    Args:
      y: [B, H, W, C] clean target in [-1, 1].
      x: [B, H, W, C] low-quality image (D^2(y) in training, G(w) at test).
      t: int32 scalar or [B], 0 <= t <= s (t = 0 gives y, t = s gives x_s).
      noise: standard normal, shape of y.
    """
    sab = _bcast(_sqrt_ab(schedule, t), y)
    s1m = _bcast(_sqrt_1mab(schedule, t), y)
    return sab * y + s1m * (gamma_s(schedule, s) * (x - y) + noise)


def forward_step(schedule: Schedule, m_prev: Array, y: Array, x: Array, t, noise: Array, s) -> Array:
    """One forward step m_{t-1} -> m_t drawn from q(m_t | m_{t-1}, x, y) (eqs. 12-16).

    m_t = sqrt(a_t) m_{t-1} + sqrt(ab_t) (m_0^t - m_0^{t-1}) + sqrt(1 - a_t) noise,
    i.e. eq. 12 with sqrt(ab_{t-1}) (printed: sqrt(alpha_{t-1})) followed by eq. 13.
    The shift simplifies to [sqrt(1-ab_t) - sqrt(a_t) sqrt(1-ab_{t-1})] gamma_s (x-y).
    """
    t = _t(t)
    alpha = schedule.alphas[t - 1]
    shift = (_sqrt_1mab(schedule, t) - jnp.sqrt(alpha) * _sqrt_1mab(schedule, t - 1)) * gamma_s(schedule, s)
    return (
        _bcast(jnp.sqrt(alpha), m_prev) * m_prev
        + _bcast(shift, m_prev) * (x - y)
        + _bcast(jnp.sqrt(1.0 - alpha), m_prev) * noise
    )


def training_target(schedule: Schedule, y: Array, x: Array, noise: Array, s) -> Array:
    """The regression target gamma_s (x - y) + noise (eq. 19)."""
    return gamma_s(schedule, s) * (x - y) + noise


def predict_y(schedule: Schedule, m_t: Array, f: Array, t) -> Array:
    """y_hat = (m_t - sqrt(1-ab_t) f) / sqrt(ab_t) (eq. 21)."""
    return (m_t - _bcast(_sqrt_1mab(schedule, t), m_t) * f) / _bcast(_sqrt_ab(schedule, t), m_t)


def training_example(schedule: Schedule, y: Array, x: Array, key: Array, s, objective: str = "dtdm"):
    """Lines 5-7 of Algorithm 1 for one example: the trainer's example (``train.train_step``).

    Args:
      y: [H, W, C] the clean target in [-1, 1].
      x: the low-quality image, shape of y (D^2(y) in training, Algorithm 1 line 3).
      key: this example's PRNG key. t is drawn with ``fold_in(key, 1)`` and eps
        with ``fold_in(key, 2)`` (``fold_in(key, 0)`` is left to the trainer's D^2).
      s: the truncation step (Python int or int32 scalar).
      objective: "dtdm": t ~ U{1..s}, m_t from eq. 18 and target
        gamma_s (x - y) + eps (eq. 19). "ddpm" (the Fig. 4 baseline):
        t ~ U{1..T}, m_t = y_t = sqrt(ab_t) y + sqrt(1 - ab_t) eps, target eps.

    Returns:
      (m_t, t, target): t an int32 scalar, m_t and target float32 shaped like y.
      ``jax.vmap`` it over a batch with one key per example.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    k_t, k_eps = (jax.random.fold_in(key, i) for i in (1, 2))
    eps = jax.random.normal(k_eps, y.shape, jnp.float32)
    if objective == "dtdm":
        t = jax.random.randint(k_t, (), 1, s + 1, dtype=jnp.int32)
        return q_sample(schedule, y, x, t, eps, s), t, training_target(schedule, y, x, eps, s)
    t = jax.random.randint(k_t, (), 1, schedule.num_timesteps + 1, dtype=jnp.int32)
    return q_sample(schedule, y, y, t, eps, s), t, eps


def own_start_example(schedule: Schedule, y: Array, x: Array, key: Array, s):
    """An example at its own start (not in the paper; docs/real-detail.md "Exact late starts"):
    the state a sampler started at step t < s is in, taught exactly.

    A sampler that starts late, at t, begins from m_t = sqrt(ab_t) x + sqrt(1-ab_t) eps (y is
    unknown). Under the DTDM process of truncation s that is the marginal of eq. 18 only at
    t = s; at t < s the network, trained on eq. 18, expects just the share
    sqrt(ab_s) r_t / sqrt(ab_t) of x - y in it (r_t = sqrt(1-ab_t) / sqrt(1-ab_s)) and leaves the
    rest, the noise of x included, in its output. The same m_t is exactly the marginal of the
    DTDM process of truncation t at its own start (eq. 18 with s := t: gamma_t sqrt(1-ab_t) =
    sqrt(ab_t), the y terms cancel), whose target is f = gamma_t (x - y) + eps (eq. 19 with
    s := t); one DTDM-DDIM step t -> 0 with it lands on y. Trained beside the ordinary
    examples, these teach the network the late start; it tells them apart by m_t - sqrt(ab_t) x,
    white noise here, (1 - r_t)-scaled structure of y - x there.

    Args: as ``training_example`` (t ~ U{1..s} with ``fold_in(key, 3)``, eps ``fold_in(key, 4)``).
    Returns (m_t, t, target, weight): ``weight`` = SNR_s / SNR_t = (gamma_s / gamma_t)^2, the
    float32 scalar that puts this example's loss ||f - target||^2 = SNR_t ||y_hat - y||^2 on the
    scale of an ordinary example at t = s (without it the smallest t, SNR ~1e6, would dominate).
    """
    k_t, k_eps = (jax.random.fold_in(key, i) for i in (3, 4))
    eps = jax.random.normal(k_eps, y.shape, jnp.float32)
    t = jax.random.randint(k_t, (), 1, s + 1, dtype=jnp.int32)
    weight = (gamma_s(schedule, s) / gamma_s(schedule, t)) ** 2
    return q_sample(schedule, y, x, t, eps, t), t, training_target(schedule, y, x, eps, t), weight


# ---------------------------------------------------------------------------
# Reverse process.


def posterior_variance(schedule: Schedule, t) -> Array:
    """sigma_t^2 = beta_t (1-ab_{t-1}) / (1-ab_t): exact posterior variance; 0 at t = 1."""
    t = _t(t)
    return schedule.betas[t - 1] * schedule.one_minus_alpha_bars[t - 1] / schedule.one_minus_alpha_bars[t]


def posterior_mean_variance(schedule: Schedule, m_t: Array, f: Array, x: Array, t, s):
    """Mean and variance of p(m_{t-1} | m_t, x) (eqs. 22-24, corrected).

    f is the network's estimate of gamma_s (x - y) + eps. Returns (mean, variance)
    with mean shaped like m_t and variance scalar or [B] (broadcastable).
    """
    t = _t(t)
    alpha = schedule.alphas[t - 1]
    beta = schedule.betas[t - 1]
    sab = _sqrt_ab(schedule, t)
    s1m = _sqrt_1mab(schedule, t)
    lam = lambda_t(schedule, t, s)
    coef_f = s1m / sab * lam - beta / (jnp.sqrt(alpha) * s1m)
    coef_m = 1.0 / jnp.sqrt(alpha) - lam / sab
    mean = _bcast(coef_f, m_t) * f + _bcast(coef_m, m_t) * m_t + _bcast(lam, m_t) * x
    return mean, posterior_variance(schedule, t)


def is_key_batch(key: Array) -> bool:
    """True for one PRNG key per example ([B] typed keys or [B, 2] raw uint32 keys), False
    for a single key."""
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    return jnp.ndim(key) > (0 if typed else 1)


def normal(key: Array, shape) -> Array:
    """N(0, I) float32 of ``shape`` [B, ...]: ``jax.random.normal(key, shape)`` for a single
    key; for one key per example (``is_key_batch``), example i drawn from ``key[i]`` alone
    (so a draw does not depend on the batch it is in, nor on the device layout)."""
    if not is_key_batch(key):
        return jax.random.normal(key, shape, dtype=jnp.float32)
    return jax.vmap(lambda k: jax.random.normal(k, tuple(shape[1:]), dtype=jnp.float32))(key)


def _split(key: Array):
    """``jax.random.split(key)`` as two keys (two [B] key batches for a batch of keys)."""
    if not is_key_batch(key):
        return jax.random.split(key)
    pairs = jax.vmap(jax.random.split)(key)
    return pairs[:, 0], pairs[:, 1]


def _fold_in(key: Array, data) -> Array:
    """``jax.random.fold_in`` of one key or of every key of a batch."""
    if not is_key_batch(key):
        return jax.random.fold_in(key, data)
    return jax.vmap(lambda k: jax.random.fold_in(k, data))(key)


def reverse_step(schedule: Schedule, m_t: Array, f: Array, x: Array, t, s, key: Array) -> Array:
    """One ancestral DTDM step m_t -> m_{t-1} (eq. 23; Algorithm 2 lines 5-6).

    The noise is zero at t = 1, as in Algorithm 2 (the exact variance is 0 there too).
    """
    mean, var = posterior_mean_variance(schedule, m_t, f, x, t, s)
    z = normal(key, m_t.shape)
    std = jnp.where(_t(t) > 1, jnp.sqrt(var), 0.0)
    return mean + _bcast(std, m_t) * z


def ddim_step(schedule: Schedule, m_t: Array, f: Array, x: Array, t, t_next, s, key=None, eta: float = 0.0) -> Array:
    """A DDIM-style DTDM jump m_t -> m_{t_next}, 0 <= t_next < t (not in the paper).

    Derivation (docs/dtdm.md "DTDM-DDIM"): the non-Markovian family
      q(m_r | m_t, x, y) = N(sqrt(ab_r) y + sqrt(1-ab_r) d
                             + sqrt(1-ab_r-sig^2) (m_t - sqrt(ab_t) y - sqrt(1-ab_t) d)/sqrt(1-ab_t),
                             sig^2 I),   d = gamma_s (x - y),
    has the DTDM marginals q(m_r | x, y) = N(sqrt(ab_r) y + sqrt(1-ab_r) d, (1-ab_r) I)
    for every sig. Plugging y_hat (eq. 21), d_hat = gamma_s (x - y_hat),
    eps_hat = f - d_hat gives
      m_r = sqrt(ab_r) y_hat + sqrt(1-ab_r) d_hat + sqrt(1-ab_r-sig^2) eps_hat + sig z,
      sig = eta * sqrt((1-ab_r)/(1-ab_t) (1 - ab_t/ab_r)).
    With eta = 0 (deterministic) it reduces to m_r = sqrt(ab_r) y_hat + sqrt(1-ab_r) f.
    With eta = 1 and r = t-1 it equals the ancestral step (eq. 23).
    """
    t = _t(t)
    r = _t(t_next)
    y_hat = predict_y(schedule, m_t, f, t)
    d_hat = gamma_s(schedule, s) * (x - y_hat)
    eps_hat = f - d_hat
    ab_r = schedule.alpha_bars[r]
    om_t, om_r = schedule.one_minus_alpha_bars[t], schedule.one_minus_alpha_bars[r]
    # 1 - ab_t/ab_r = 1 - prod_{r<i<=t} a_i, computed from the 1-ab values to stay accurate.
    sig2 = (eta**2) * om_r / om_t * ((om_t - om_r) / ab_r)
    sig2 = jnp.clip(sig2, 0.0, om_r)
    out = (
        _bcast(jnp.sqrt(ab_r), m_t) * y_hat
        + _bcast(jnp.sqrt(om_r), m_t) * d_hat
        + _bcast(jnp.sqrt(om_r - sig2), m_t) * eps_hat
    )
    if eta == 0.0:
        return out
    if key is None:
        raise ValueError("ddim_step with eta > 0 needs a key")
    z = normal(key, m_t.shape)
    return out + _bcast(jnp.sqrt(sig2), m_t) * z


def ddpm_reverse_step(schedule: Schedule, y_t: Array, eps: Array, t, key: Array) -> Array:
    """Standard DDPM ancestral step y_t -> y_{t-1} (eqs. 4-5), eps-prediction network.

    mean = (y_t - beta_t / sqrt(1-ab_t) eps) / sqrt(a_t), std = sqrt(posterior variance),
    zero noise at t = 1.
    """
    t = _t(t)
    alpha = schedule.alphas[t - 1]
    beta = schedule.betas[t - 1]
    mean = (y_t - _bcast(beta / _sqrt_1mab(schedule, t), y_t) * eps) / _bcast(jnp.sqrt(alpha), y_t)
    z = normal(key, y_t.shape)
    std = jnp.where(t > 1, jnp.sqrt(posterior_variance(schedule, t)), 0.0)
    return mean + _bcast(std, y_t) * z


# ---------------------------------------------------------------------------
# Samplers.


def sampling_timesteps(s: int, num_steps: int) -> np.ndarray:
    """Strided visiting order for DTDM-DDIM: int32 [num_steps + 1], from s down to 0.

    Evenly spaced (rounded) in [0, s]; always starts at s and ends at 0, strictly
    decreasing, so num_steps network evaluations are made.
    """
    s, num_steps = int(s), int(num_steps)
    if not 1 <= num_steps <= s:
        raise ValueError(f"num_steps must be in [1, s={s}], got {num_steps}")
    ts = np.round(np.linspace(s, 0, num_steps + 1)).astype(np.int32)
    assert np.all(np.diff(ts) < 0), ts
    return ts


def start_for_noise(schedule: Schedule, s: int, sigma01: float) -> int:
    """The start step whose noise matches an input noise of std ``sigma01`` (sRGB units of [0, 1]):
    the smallest t in [1, s] with 0.5 * sqrt((1 - ab_t) / ab_t) >= sigma01, or s when none
    (or when ``sigma01`` is not finite). Not in the paper (docs/real-detail.md "The start step
    from the file's noise"): starting at m_t = sqrt(ab_t) x + sqrt(1 - ab_t) z and jumping to
    y_hat = m_t / sqrt(ab_t) - ..., the start adds noise of std sqrt((1 - ab_t) / ab_t) in the
    model's [-1, 1] range, half that in [0, 1]; at this t it just covers the input's own noise.
    Python int."""
    s = int(s)
    if not np.isfinite(sigma01):
        return s
    ab = np.asarray(schedule.alpha_bars, np.float64)[1:s + 1]
    om = np.asarray(schedule.one_minus_alpha_bars, np.float64)[1:s + 1]
    added = 0.5 * np.sqrt(om / ab)
    hits = np.nonzero(added >= float(sigma01))[0]
    return int(hits[0] + 1) if hits.size else s


def file_sampler(s: int, num_steps: int, t: int, switch: int) -> tuple[int, int]:
    """The file-dependent DTDM-DDIM sampler for a noise-matched start t (``start_for_noise``):
    (start, steps). Below ``switch``: one step from t, the exact late start a model trained with
    own-start examples (``own_start_example``) knows; from ``switch`` on: the model's sampler
    from s, ``num_steps`` steps (docs/real-detail.md "The file-dependent sampler"); ``switch`` 0:
    never (one step from t for every t < s). Python ints."""
    s, num_steps, t, switch = int(s), int(num_steps), int(t), int(switch)
    if not 1 <= t <= s:
        raise ValueError(f"start t must be in [1, s={s}], got {t}")
    if not 0 <= switch <= s:
        raise ValueError(f"the switch step must be in [0, s={s}] (0: never), got {switch}")
    return (t, 1) if t < (switch or s) else (s, num_steps)


def _check_static_int(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a Python int (it sets the loop length), got {type(value).__name__}")
    if not lo <= int(value) <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    return int(value)


def sample(
    denoise_fn: Callable[[Array, Array], Array],
    schedule: Schedule,
    x: Array,
    s: int,
    key: Array,
    *,
    method: str = "dtdm",
    num_steps: int | None = None,
    eta: float = 0.0,
    start: int | None = None,
) -> Array:
    """Draws y_hat from the reverse process, starting from x noised to step s.

    Args:
      denoise_fn: ``f = denoise_fn(m_t, t)``, m_t [B, ...] float32, t int32 [B].
        Any conditioning (w, c, parameters) is closed over by the caller.
      schedule: the training schedule.
      x: [B, H, W, C] low-quality estimate (G(w) at test time), in [-1, 1].
      s: Python int. For "dtdm"/"dtdm_ddim", the DTDM length used in training
        (gamma_s); for "ddpm", the step the start point is noised to.
      key: a PRNG key, or one key per example ([B] typed keys; ``is_key_batch``): then
        example i's start noise and step noise come from ``key[i]`` alone, so its sample
        does not depend on the batch size or the device layout. A single key draws the
        batch's noise at once (the original numbers).
      method:
        "dtdm": Algorithm 2, ancestral. Starts from m_n ~ N(sqrt(ab_n) x, (1-ab_n) I)
          with n = num_steps (default s) and runs n steps. n < s is the paper's
          test-time setting (93 of s = 100); it is exact only for n = s.
        "dtdm_ddim": deterministic DDIM-style DTDM (``ddim_step``) over
          ``num_steps`` (default s) strided steps from s to 0; ``eta`` > 0 adds noise.
        "ddpm": the Fig. 4 baseline: standard DDPM ancestral sampling from x noised
          to step s, for a network trained on the plain epsilon target. num_steps
          must be None or s.
      num_steps: see ``method``.
      start: "dtdm_ddim" only (not in the paper; docs/real-detail.md): the step the
        deterministic sampler starts from, 1 <= start <= s (default s). The start point is
        m_start ~ N(sqrt(ab_start) x, (1 - ab_start) I) -- eq. 18 with y replaced by x, exact
        only at start = s -- and ``num_steps`` (<= start) strided steps go from start to 0.
        A smaller start adds less noise to x, so more of x (its detail and its noise) stays.
        For "dtdm" the start is ``num_steps`` itself (Algorithm 2 from m_n).

    Returns:
      y_hat with the shape of x, float32. One ``lax.scan``: the denoiser is traced
      once and nothing runs in Python per step.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if start is not None and method != "dtdm_ddim":
        raise ValueError(f"start is a 'dtdm_ddim' option; method {method!r} starts at "
                         "num_steps ('dtdm') or s ('ddpm')")
    s = _check_static_int("s", s, 1, schedule.num_timesteps)
    n = s if num_steps is None else _check_static_int("num_steps", num_steps, 1, s)
    x = jnp.asarray(x, jnp.float32)
    batch = x.shape[0]
    key_start, key_loop = _split(key)

    def call(m, t):
        f = denoise_fn(m, jnp.full((batch,), t, dtype=jnp.int32))
        return jnp.asarray(f, jnp.float32)

    if method == "ddpm":
        if n != s:
            raise ValueError("method='ddpm' runs s ancestral steps; num_steps must be None or s")
        start = q_sample(schedule, x, x, s, normal(key_start, x.shape), s)

        def body(m, t):
            eps = call(m, t)
            return ddpm_reverse_step(schedule, m, eps, t, _fold_in(key_loop, t)), None

        out, _ = jax.lax.scan(body, start, jnp.arange(s, 0, -1, dtype=jnp.int32))
        return out

    if method == "dtdm":
        # m_n ~ N(sqrt(ab_n) x, (1 - ab_n) I): q_sample with y = x.
        start = q_sample(schedule, x, x, n, normal(key_start, x.shape), s)

        def body(m, t):
            f = call(m, t)
            return reverse_step(schedule, m, f, x, t, s, _fold_in(key_loop, t)), None

        out, _ = jax.lax.scan(body, start, jnp.arange(n, 0, -1, dtype=jnp.int32))
        return out

    # dtdm_ddim
    t0 = s if start is None else _check_static_int("start", start, 1, s)
    if n > t0:
        raise ValueError(f"num_steps ({n}) must be <= start ({t0})")
    ts = sampling_timesteps(t0, n)
    start = q_sample(schedule, x, x, t0, normal(key_start, x.shape), s)
    stochastic = eta != 0.0

    def body(m, tt):
        t, r = tt[0], tt[1]
        f = call(m, t)
        k = _fold_in(key_loop, t) if stochastic else None
        return ddim_step(schedule, m, f, x, t, r, s, key=k, eta=eta), None

    pairs = jnp.stack([jnp.asarray(ts[:-1]), jnp.asarray(ts[1:])], axis=1)
    out, _ = jax.lax.scan(body, start, pairs)
    return out

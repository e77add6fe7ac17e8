"""Progressive distillation of the deterministic DTDM sampler (DTDM-DDIM, eta = 0).

Pure functions (jax + numpy + ``dtdm``); the trainer (``train.py``, ``distill.teacher``
set) uses them. Derivation (docs/dtdm.md "Few-step DiffRAW: progressive distillation"):

The deterministic DTDM-DDIM step from t to r < t with the network output f is
(``dtdm.ddim_step``, eta = 0)

    y_hat = (m_t - sqrt(1-ab_t) f) / sqrt(ab_t)                              (eq. 21)
    m_r   = sqrt(ab_r) y_hat + sqrt(1-ab_r) f
          = sqrt(ab_r / ab_t) m_t + [sqrt(1-ab_r) - sqrt(ab_r / ab_t) sqrt(1-ab_t)] f,

an affine map of f with the non-zero slope

    c(t, r) = sqrt(1-ab_r) - sqrt(ab_r / ab_t) sqrt(1-ab_t)   (< 0 for r < t).

A teacher sampling on the grid s = t_0 > t_1 > ... > t_N = 0 makes two steps
t_{2i} -> t_{2i+1} -> t_{2i+2}; the student (the same network, initialised from the
teacher) is to make them in one, on the grid t_0 > t_2 > t_4 > ... . Its target is
the one f that lands the single step where the teacher's two land:

    f* = (m_r^teacher - sqrt(ab_r / ab_t) m_t) / c(t, r),          r = t_{2i+2}.

m_t comes from the DTDM forward marginal q(m_t | x, y) (eq. 18) at a student grid
point; at t = s this is exactly the sampler's start point
x_s = sqrt(ab_s) x + sqrt(1-ab_s) eps (the y terms cancel: gamma_s sqrt(1-ab_s) =
sqrt(ab_s)). The loss is ||f_student - f*||^2, the teacher's own loss space (eq. 20).
Since ||f error||^2 = SNR_t ||y_hat error||^2 with SNR_t = ab_t/(1-ab_t) >= 39 for
t <= s = 100, this is Salimans & Ho's "truncated SNR" weighting max(SNR_t, 1) of the
y_hat error; f-prediction is well conditioned here because DTDM never reaches low
SNR (their reason to leave epsilon-prediction does not arise).

A student for the file-dependent sampler (``distill.start = "any"``, docs/real-detail.md "The
student"): the sampler starts at a noise-matched step t0 chosen per file and runs
``dtdm.file_sampler(s, n, t0, switch)``: one step from t0 below the switch, the teacher's n
steps from s above. The one-step student learns, for t0 ~ U{1..s}, the teacher's whole sampler
from that start: m is the sampler's own start point sqrt(ab_T) x + sqrt(1-ab_T) eps (T the
start; eq. 18 with y replaced by x, as ``dtdm.sample`` starts), the teacher's K DDIM steps on
``dtdm.sampling_timesteps(T, K)`` land at y_hat, and the target is the f* that lands one step
T -> 0 there (``student_target`` with r = 0). One round; the teacher's K <= n steps are
unrolled (Luhman & Luhman's direct distillation of a deterministic sampler).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffraw_jax import dtdm

Array = jax.Array

__all__ = ["ddim_slope", "student_target", "teacher_two_steps", "grids", "distillation_example",
           "any_start_grids", "any_start_example"]


def ddim_slope(schedule: dtdm.Schedule, t, r) -> Array:
    """c(t, r) = sqrt(1-ab_r) - sqrt(ab_r/ab_t) sqrt(1-ab_t): d m_r / d f of the deterministic
    DTDM-DDIM step t -> r (r < t); negative. Shape of ``t``."""
    t, r = jnp.asarray(t, jnp.int32), jnp.asarray(r, jnp.int32)
    ab_t, ab_r = schedule.alpha_bars[t], schedule.alpha_bars[r]
    return jnp.sqrt(schedule.one_minus_alpha_bars[r]) - jnp.sqrt(ab_r / ab_t) * jnp.sqrt(
        schedule.one_minus_alpha_bars[t])


def student_target(schedule: dtdm.Schedule, m_t: Array, m_r: Array, t, r) -> Array:
    """f* such that ``dtdm.ddim_step(schedule, m_t, f*, x, t, r, s)`` (eta = 0) equals ``m_r``.

    m_t, m_r: [B, H, W, C] float32; t, r: int32 [B] (or scalars), 0 <= r < t.
    """
    ratio = dtdm._bcast(jnp.sqrt(schedule.alpha_bars[jnp.asarray(r)] / schedule.alpha_bars[jnp.asarray(t)]), m_t)
    return (m_r - ratio * m_t) / dtdm._bcast(ddim_slope(schedule, t, r), m_t)


def teacher_two_steps(schedule: dtdm.Schedule, teacher_fn: Callable[[Array, Array], Array], m_t: Array,
                      x: Array, t, t_mid, r, s: int) -> Array:
    """The teacher's two deterministic DTDM-DDIM steps t -> t_mid -> r.

    ``teacher_fn(m, t) -> f`` ([B, ...] float32, t int32 [B]), conditions closed over.
    """
    m_mid = dtdm.ddim_step(schedule, m_t, teacher_fn(m_t, t), x, t, t_mid, s)
    return dtdm.ddim_step(schedule, m_mid, teacher_fn(m_mid, t_mid), x, t_mid, r, s)


def grids(s: int, teacher_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(teacher grid [teacher_steps + 1], student grid [teacher_steps / 2 + 1]), int32, s .. 0.

    The teacher samples on ``dtdm.sampling_timesteps(s, teacher_steps)``; the student on
    every other point of it, which must be ``dtdm.sampling_timesteps(s, teacher_steps // 2)``
    so that the student is sampled by the ordinary DTDM-DDIM sampler with half the steps
    (true for s = 100 and teacher_steps 2, 4, ..., 64; ValueError otherwise).
    """
    teacher_steps = int(teacher_steps)
    if teacher_steps < 2 or teacher_steps % 2:
        raise ValueError(f"distill.teacher_steps must be even and >= 2, got {teacher_steps}")
    teacher = dtdm.sampling_timesteps(s, teacher_steps)
    student = dtdm.sampling_timesteps(s, teacher_steps // 2)
    if not np.array_equal(teacher[::2], student):
        raise ValueError(
            f"the DTDM-DDIM grid of {teacher_steps // 2} steps {student.tolist()} is not every other point "
            f"of the {teacher_steps}-step grid {teacher.tolist()} (s={s}); choose teacher_steps so that "
            f"s / teacher_steps rounds consistently, e.g. a power of two for s = 100")
    return teacher, student


def distillation_example(schedule: dtdm.Schedule, teacher_fn: Callable[[Array, Array], Array],
                         y: Array, x: Array, keys: Array, s: int, teacher_grid: np.ndarray):
    """A batch of student examples: (m_t, t, target), all [B, ...] (t int32 [B]).

    y: [B, H, W, C] target in [-1, 1]; x: the low-quality estimate (D2(y) in training);
    keys: [B] PRNG keys, one per example (results do not depend on the batch split).
    Per example: i ~ U{0 .. N/2 - 1} (N = len(teacher_grid) - 1), t = grid[2i],
    t_mid = grid[2i+1], r = grid[2i+2]; m_t ~ q(m_t | x, y) (eq. 18); target =
    ``student_target`` of the teacher's two steps from m_t.
    """
    grid = jnp.asarray(teacher_grid, jnp.int32)
    half = (int(grid.shape[0]) - 1) // 2

    def draw(k):
        k_i, k_n = jax.random.split(k)
        return (jax.random.randint(k_i, (), 0, half, dtype=jnp.int32),
                jax.random.normal(k_n, y.shape[1:], jnp.float32))

    i, noise = jax.vmap(draw)(keys)
    t, t_mid, r = grid[2 * i], grid[2 * i + 1], grid[2 * i + 2]
    m_t = dtdm.q_sample(schedule, y, x, t, noise, s)
    m_r = jax.lax.stop_gradient(teacher_two_steps(schedule, teacher_fn, m_t, x, t, t_mid, r, s))
    return m_t, t, student_target(schedule, m_t, m_r, t, r)


def any_start_grids(s: int, teacher_steps: int, switch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts int32 [s + 1], counts int32 [s + 1], grids int32 [s + 1, teacher_steps + 1]): for
    each noise-matched start t0 in 1..s the file-dependent sampler's start T and step count K
    (``dtdm.file_sampler``) and its DTDM-DDIM grid ``dtdm.sampling_timesteps(T, K)``,
    zero-padded; row 0 is unused."""
    s, teacher_steps = int(s), int(teacher_steps)
    if teacher_steps < 1:
        raise ValueError(f"distill.teacher_steps must be >= 1, got {teacher_steps}")
    starts = np.zeros((s + 1,), np.int32)
    counts = np.zeros((s + 1,), np.int32)
    table = np.zeros((s + 1, teacher_steps + 1), np.int32)
    for t0 in range(1, s + 1):
        start, k = dtdm.file_sampler(s, teacher_steps, t0, switch)
        starts[t0], counts[t0] = start, k
        table[t0, :k + 1] = dtdm.sampling_timesteps(start, k)
    return starts, counts, table


def any_start_example(schedule: dtdm.Schedule, teacher_fn: Callable[[Array, Array], Array],
                      x: Array, keys: Array, s: int, teacher_steps: int, switch: int):
    """A batch of one-step student examples for the file-dependent sampler: (m_T, T, target).

    x: [B, H, W, C] the condition in [-1, 1]; keys: [B] PRNG keys, one per example. Per example
    t0 ~ U{1..s}, (T, K) = ``dtdm.file_sampler(s, teacher_steps, t0, switch)``, m_T = sqrt(ab_T)
    x + sqrt(1-ab_T) eps (the sampler's start point), the teacher's K DTDM-DDIM steps from m_T
    to y_hat (``teacher_fn(m, t) -> f``; a batch of mixed step counts runs ``teacher_steps``
    evaluations, the finished examples held), target = ``student_target(m_T, y_hat, T, 0)``.
    """
    starts, counts, table = (jnp.asarray(a) for a in any_start_grids(s, teacher_steps, switch))

    def draw(k):
        k_t, k_n = jax.random.split(k)
        return (jax.random.randint(k_t, (), 1, s + 1, dtype=jnp.int32),
                jax.random.normal(k_n, x.shape[1:], jnp.float32))

    t0, noise = jax.vmap(draw)(keys)
    start, steps, grid = starts[t0], counts[t0], table[t0]
    m_t = dtdm.q_sample(schedule, x, x, start, noise, s)
    m = m_t
    for k in range(int(teacher_steps)):
        active = k < steps
        t, r = jnp.where(active, grid[:, k], 1), jnp.where(active, grid[:, k + 1], 0)
        stepped = dtdm.ddim_step(schedule, m, teacher_fn(m, t), x, t, r, s)
        m = jnp.where(active.reshape(active.shape + (1,) * (m.ndim - 1)), stepped, m)
    y_hat = jax.lax.stop_gradient(m)
    return m_t, start, student_target(schedule, m_t, y_hat, start, jnp.zeros_like(start))

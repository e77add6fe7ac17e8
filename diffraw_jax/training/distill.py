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
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffraw_jax import dtdm

Array = jax.Array

__all__ = ["ddim_slope", "student_target", "teacher_two_steps", "grids", "distillation_example"]


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

"""Progressive distillation (diffraw_jax/training/distill.py and the trainer's distillation mode).

The math is checked where it has a closed form: Gaussian data, for which the ideal
DTDM denoiser E[f | m_t, x] is known (derived below, independently of the code),
so the ideal teacher's DTDM-DDIM sampler is an exact affine map of (m_s, x):
  * the student target lands one DDIM step exactly where the teacher's two land;
  * a student fitted by least squares to ``distillation_example``'s targets (the
    minimiser of the distillation loss in an affine family that contains the ideal
    student) reproduces the teacher's sampler with half the steps, and four rounds
    take a 16-step teacher to 1 step;
  * the student's examples at t = s are the sampler's start point x_s.
Then the trainer: a tiny teacher distilled for a few steps (starts as the teacher,
resumes exactly, refuses a mismatched teacher or sampler), exported weights whose
manifest makes the pipeline sample the student's step count without options.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffraw_jax.training import distill
from diffraw_jax import dtdm
from tests.helpers import tiny_source

S = 100
with jax.ensure_compile_time_eval():
    SCHED = dtdm.make_schedule(2000, 1e-6, 1e-2, "linear")
# Joint Gaussian per pixel: y ~ N(MU_Y, VAR_Y); x = A_X y + B_X + SD_X n (x: G(w)'s stand-in).
MU_Y, VAR_Y, A_X, B_X, SD_X = 0.2, 0.09, 0.7, 0.1, 0.2


def posterior_y_given_x(x):
    """Mean and variance of y | x for the joint Gaussian above."""
    var_x = A_X**2 * VAR_Y + SD_X**2
    mean = MU_Y + A_X * VAR_Y / var_x * (x - (A_X * MU_Y + B_X))
    return mean, VAR_Y - (A_X * VAR_Y) ** 2 / var_x


def ideal_f(m, x, t, xp=np):
    """E[gamma_s (x - y) + eps | m_t, x]: with g = gamma_s, m_t = A y + B x + sd eps where
    A = sqrt(ab_t) - sqrt(1-ab_t) g, B = sqrt(1-ab_t) g, sd = sqrt(1-ab_t) (eq. 18), so
    E[y | m_t, x] is the Gaussian posterior mean, and f = (m_t - sqrt(ab_t) y)/sqrt(1-ab_t).
    ``xp``: numpy (float64, the reference) or jax.numpy (inside the samplers' scan)."""
    ab_all = xp.asarray(np.asarray(SCHED.alpha_bars, np.float64))
    om_all = xp.asarray(np.asarray(SCHED.one_minus_alpha_bars, np.float64))
    g = np.sqrt(np.asarray(SCHED.alpha_bars, np.float64)[S] / np.asarray(SCHED.one_minus_alpha_bars, np.float64)[S])
    ab, om = ab_all[t], om_all[t]
    a, b, sd2 = xp.sqrt(ab) - xp.sqrt(om) * g, xp.sqrt(om) * g, om
    mu, v = posterior_y_given_x(x)
    shape = (-1,) + (1,) * (m.ndim - 1)
    a, b, sd2, ab, om = (xp.reshape(z, shape) if xp.ndim(z) else z for z in (a, b, sd2, ab, om))
    ey = mu + v * a * (m - a * mu - b * x) / (a**2 * v + sd2)
    return (m - xp.sqrt(ab) * ey) / xp.sqrt(om)


def draw(n, seed):
    rng = np.random.default_rng(seed)
    y = MU_Y + np.sqrt(VAR_Y) * rng.standard_normal((n, 4, 4, 3))
    x = A_X * y + B_X + SD_X * rng.standard_normal(y.shape)
    return jnp.asarray(y, jnp.float32), jnp.asarray(x, jnp.float32)


def jax_ideal(x):
    return lambda m, t: ideal_f(m, x, t, xp=jnp).astype(jnp.float32)


def test_grids_nest_and_bad_step_counts_are_refused():
    for n in (2, 4, 8, 16, 32, 64):
        teacher, student = distill.grids(S, n)
        assert teacher[0] == S and teacher[-1] == 0 and len(teacher) == n + 1
        np.testing.assert_array_equal(student, dtdm.sampling_timesteps(S, n // 2))
        np.testing.assert_array_equal(teacher[::2], student)
    for bad in (0, 1, 3, 7):
        with pytest.raises(ValueError, match="even"):
            distill.grids(S, bad)
    with pytest.raises(ValueError, match="num_steps"):
        distill.grids(S, 128)  # more steps than s


def test_slope_is_the_derivative_of_the_ddim_step():
    x = jnp.zeros((1, 2, 2, 3))
    m = jnp.full((1, 2, 2, 3), 0.3)
    for t, r in ((100, 50), (100, 0), (12, 6), (2, 1)):
        f0, f1 = jnp.full_like(m, 0.1), jnp.full_like(m, 0.6)
        step = lambda f: dtdm.ddim_step(SCHED, m, f, x, t, r, S)  # noqa: E731
        slope = (step(f1) - step(f0)) / 0.5
        np.testing.assert_allclose(np.asarray(slope), float(distill.ddim_slope(SCHED, t, r)), rtol=2e-3)
        assert float(distill.ddim_slope(SCHED, t, r)) < 0


def test_target_lands_one_step_where_the_teachers_two_land():
    y, x = draw(6, 0)
    t = jnp.array([100, 100, 75, 50, 25, 50], jnp.int32)
    t_mid = jnp.array([75, 50, 50, 25, 12, 38], jnp.int32)
    r = jnp.array([50, 0, 25, 0, 0, 25], jnp.int32)
    m = dtdm.q_sample(SCHED, y, x, t, jax.random.normal(jax.random.key(1), y.shape), S)
    two = distill.teacher_two_steps(SCHED, jax_ideal(x), m, x, t, t_mid, r, S)
    # The teacher's two steps, written out with the DDIM formula m_r = sqrt(ab_r) y_hat + sqrt(1-ab_r) f.
    ab = np.asarray(SCHED.alpha_bars, np.float64)
    mm, xx = np.asarray(m, np.float64), np.asarray(x, np.float64)
    for a_, b_ in ((t, t_mid), (t_mid, r)):
        a_, b_ = np.asarray(a_), np.asarray(b_)
        f = ideal_f(mm, xx, a_)
        col = lambda v: v.reshape(-1, 1, 1, 1)  # noqa: E731
        y_hat = (mm - col(np.sqrt(1 - ab[a_])) * f) / col(np.sqrt(ab[a_]))
        mm = col(np.sqrt(ab[b_])) * y_hat + col(np.sqrt(1 - ab[b_])) * f
    np.testing.assert_allclose(np.asarray(two), mm, atol=2e-5)
    target = distill.student_target(SCHED, m, two, t, r)
    one = dtdm.ddim_step(SCHED, m, target, x, t, r, S)
    np.testing.assert_allclose(np.asarray(one), np.asarray(two), atol=2e-5)


def test_student_examples_at_s_are_the_sampler_start_point():
    """t = s examples: m_s = sqrt(ab_s) x + sqrt(1-ab_s) eps whatever y is (Monte Carlo)."""
    y, x = draw(4000, 2)
    keys = jax.random.split(jax.random.key(3), y.shape[0])
    m, t, _ = distill.distillation_example(SCHED, jax_ideal(x), y, x, keys, S, distill.grids(S, 2)[0])
    assert set(np.asarray(t).tolist()) == {S}  # a 2-step teacher: the student's only step starts at s
    z = (np.asarray(m) - np.sqrt(float(SCHED.alpha_bars[S])) * np.asarray(x)) / np.sqrt(
        float(SCHED.one_minus_alpha_bars[S]))
    assert abs(z.mean()) < 0.01 and abs(z.var() - 1) < 0.02
    assert abs(np.corrcoef(z.ravel(), np.asarray(y).ravel())[0, 1]) < 0.01


def affine_student(m, t, target, x):
    """Least squares over a student's examples (m, t, target; x the conditions) in the family
    f = a_t m + b_t x + c_t, per t (it holds the ideal student: the teacher is affine). Returns
    (the student's denoiser maker ``student(x) -> f(m, t)``, the trained steps, sorted)."""
    m, t, target, xs = (np.asarray(v, np.float64) for v in (m, t, target, x))
    table = np.zeros((S + 1, 3))
    trained = sorted(int(tt) for tt in np.unique(t))
    for tt in trained:
        sel = t == tt
        feats = np.stack([m[sel].ravel(), xs[sel].ravel(), np.ones(m[sel].size)], 1)
        table[tt], *_ = np.linalg.lstsq(feats, target[sel].ravel(), rcond=None)
    table = jnp.asarray(table, jnp.float32)

    def student(xb):
        def f(mb, tb):
            c = table[tb][:, :, None, None, None]
            return c[:, 0] * mb + c[:, 1] * xb + c[:, 2]
        return f
    return student, trained


def fit_student(teacher, teacher_steps, seed):
    """``affine_student`` of distillation_example's targets. Returns the student's denoiser."""
    grid = distill.grids(S, teacher_steps)[0]
    y, x = draw(256, seed)
    keys = jax.random.split(jax.random.key(seed), y.shape[0])
    student, trained = affine_student(*distill.distillation_example(SCHED, teacher(x), y, x, keys, S, grid), x)
    assert trained == sorted(grid[:-1:2].tolist())  # every student step was trained
    return student


def run_sampler(denoiser, x, steps, seed=7):
    return dtdm.sample(denoiser(x), SCHED, x, S, jax.random.key(seed), method="dtdm_ddim", num_steps=steps)


def test_ideal_students_reproduce_the_teacher_with_half_the_steps():
    """16 -> 8 -> 4 -> 2 -> 1: each student, fitted to its teacher's targets, samples like its
    teacher with half the steps; the 1-step student like the 16-step ideal teacher."""
    _, x = draw(64, 11)
    ref = np.asarray(run_sampler(jax_ideal, x, 16))
    teacher = jax_ideal
    for steps in (16, 8, 4, 2):
        student = fit_student(teacher, steps, seed=steps)
        mine, theirs = np.asarray(run_sampler(student, x, steps // 2)), np.asarray(run_sampler(teacher, x, steps))
        np.testing.assert_allclose(mine, theirs, atol=2e-4)
        teacher = student
    np.testing.assert_allclose(np.asarray(run_sampler(teacher, x, 1)), ref, atol=5e-4)
    # ...which the plain 1-step sampler with the ideal denoiser does not achieve.
    assert np.abs(np.asarray(run_sampler(jax_ideal, x, 1)) - ref).max() > 1e-2


def test_file_sampler_is_one_late_step_below_the_switch_and_the_sampler_from_s_above():
    assert [dtdm.file_sampler(S, 4, t, 40) for t in (1, 17, 39, 40, 77, 100)] == \
        [(1, 1), (17, 1), (39, 1), (S, 4), (S, 4), (S, 4)]
    assert dtdm.file_sampler(S, 4, 99, 0) == (99, 1) and dtdm.file_sampler(S, 4, S, 0) == (S, 4)  # 0: never
    for bad in ((0, 40), (S + 1, 40), (5, -1), (5, S + 1)):
        with pytest.raises(ValueError, match="must be in"):
            dtdm.file_sampler(S, 4, *bad)
    starts, counts, table = distill.any_start_grids(S, 4, 40)
    for t0 in (1, 13, 39, 40, 60, 100):
        start, k = dtdm.file_sampler(S, 4, t0, 40)
        assert (starts[t0], counts[t0]) == (start, k)
        np.testing.assert_array_equal(table[t0, :k + 1], dtdm.sampling_timesteps(start, k))
        assert not table[t0, k + 1:].any()


def test_one_step_student_for_the_file_sampler_reproduces_the_teachers_sampler_from_there():
    """distill.start = "any": a student fitted by least squares (per start T, f = a_T m + b_T x +
    c_T, which holds the ideal student) to any_start_example's targets makes in one step from the
    sampler's start point what the ideal teacher's file-dependent sampler makes from the same
    point: one step from T below the switch, DTDM-DDIM-4 from s above it."""
    y, x = draw(6000, 21)
    keys = jax.random.split(jax.random.key(21), y.shape[0])
    m, t, target = distill.any_start_example(SCHED, jax_ideal(x), x, keys, S, 4, 40)
    student, trained = affine_student(m, t, target, x)
    assert trained == list(range(1, 40)) + [S]  # every start drawn
    # The start points are the sampler's: (m_T - sqrt(ab_T) x) / sqrt(1 - ab_T) ~ N(0, 1), free of y.
    ab = np.asarray(SCHED.alpha_bars, np.float64)[np.asarray(t)].reshape(-1, 1, 1, 1)
    z = (np.asarray(m, np.float64) - np.sqrt(ab) * np.asarray(x, np.float64)) / np.sqrt(1 - ab)
    assert abs(z.mean()) < 0.01 and abs(z.var() - 1) < 0.02
    assert abs(np.corrcoef(z.ravel(), np.asarray(y).ravel())[0, 1]) < 0.01

    _, x_test = draw(64, 22)
    for t0 in (3, 20, 39, 40, 70):
        start, k = dtdm.file_sampler(S, 4, t0, 40)
        kw = dict(method="dtdm_ddim", start=None if start == S else start)
        theirs = dtdm.sample(jax_ideal(x_test), SCHED, x_test, S, jax.random.key(5), num_steps=k, **kw)
        mine = dtdm.sample(student(x_test), SCHED, x_test, S, jax.random.key(5), num_steps=1, **kw)
        np.testing.assert_allclose(np.asarray(mine), np.asarray(theirs), atol=5e-4, err_msg=f"start {t0}")
        if k > 1:  # ...which the ideal denoiser's own single step from there does not achieve
            one = dtdm.sample(jax_ideal(x_test), SCHED, x_test, S, jax.random.key(5), num_steps=1, **kw)
            assert np.abs(np.asarray(one) - np.asarray(theirs)).max() > 1e-3, t0


# ------------------------------------------------------------------------- trainer


def _default_test_config():
    from configs import test as test_config

    return test_config.get_config()


def _tiny_sources():
    return tiny_source(), tiny_source(4, seed=1)


def _distill_config(teacher, steps=3, n=2):
    from configs import test as test_config

    cfg = test_config.get_config()
    cfg.degradation.enabled = False
    cfg.distill.teacher = teacher
    cfg.distill.teacher_steps = 2 * n
    cfg.sample.method = "dtdm_ddim"
    cfg.sample.num_steps = n
    cfg.model.dropout = 0.0
    cfg.train.num_train_steps = steps
    cfg.train.checkpoint_every_steps = 2
    return cfg


@pytest.fixture(scope="module")
def teacher(tiny_model):
    """The teacher's workdir: the run's tiny trained model (conftest.py), read only."""
    return tiny_model.workdir


def _tree_files(path):
    return sorted((os.path.relpath(os.path.join(d, f), path), os.path.getsize(os.path.join(d, f)),
                   os.path.getmtime(os.path.join(d, f))) for d, _, fs in os.walk(path) for f in fs)


def test_distillation_starts_from_the_teacher_and_resumes_exactly(tmp_path, teacher):
    from diffraw_jax.training import train
    from diffraw_jax.checkpoints import weights

    before = _tree_files(teacher)
    t_params = weights.load_inference(teacher, color_net=False).params
    start = train.train_and_evaluate(_distill_config(teacher, steps=0), str(tmp_path / "zero"),
                                     data_sources=_tiny_sources())
    for a, b in zip(jax.tree.leaves(start.params), jax.tree.leaves(t_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    full = train.train_and_evaluate(_distill_config(teacher, 3), str(tmp_path / "a"), data_sources=_tiny_sources())
    train.train_and_evaluate(_distill_config(teacher, 2), str(tmp_path / "b"), data_sources=_tiny_sources())
    resumed = train.train_and_evaluate(_distill_config(teacher, 3), str(tmp_path / "b"),
                                       data_sources=_tiny_sources())
    moved = 0.0
    for a, b, c in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params), jax.tree.leaves(t_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        moved = max(moved, float(np.abs(np.asarray(a) - np.asarray(c)).max()))
    assert moved > 0  # the student trained
    assert _tree_files(teacher) == before  # the teacher's workdir is read, never written


def test_mismatched_teacher_or_sampler_is_refused(tmp_path, teacher):
    from diffraw_jax.training import train

    cfg = _distill_config(teacher)
    cfg.sample.num_steps = 4
    with pytest.raises(ValueError, match="sample.num_steps=2"):
        train.train_and_evaluate(cfg, str(tmp_path / "a"), data_sources=_tiny_sources())
    cfg = _distill_config(teacher)
    cfg.model.name = "demo"
    with pytest.raises(ValueError, match="not this run's network"):
        train.train_and_evaluate(cfg, str(tmp_path / "b"), data_sources=_tiny_sources())
    cfg = _distill_config(teacher)
    cfg.diffusion.s = 10
    with pytest.raises(ValueError, match="other diffusion settings"):
        train.train_and_evaluate(cfg, str(tmp_path / "c"), data_sources=_tiny_sources())


def test_exported_student_samples_its_own_step_count(tmp_path, teacher):
    from diffraw_jax.training import train
    from diffraw_jax.checkpoints import weights
    from diffraw_jax.inference.pipeline import DiffRAWPipeline

    wd = str(tmp_path / "student")
    train.train_and_evaluate(_distill_config(teacher, 2), wd, data_sources=_tiny_sources())
    out = str(tmp_path / "weights")
    manifest = weights.export_weights(wd, out)
    assert manifest["sampler"]["method"] == "dtdm_ddim" and manifest["sampler"]["num_steps"] == 2
    assert manifest["sampler"]["label"] == "distilled DTDM-DDIM-2"
    from diffraw_jax.models import factory

    assert factory.is_distilled(_distill_config(teacher)) and not factory.is_distilled(_default_test_config())
    assert json.load(open(os.path.join(out, "manifest.json")))["sampler"] == manifest["sampler"]
    pipe = DiffRAWPipeline.from_checkpoint(out, color="classic", tile=32, overlap=8, batch=2)
    assert (pipe.method, pipe.num_steps, pipe.num_evaluations) == ("dtdm_ddim", 2, 2)
    # The tiled full-frame path with the student: 64 x 64 codes in 3 x 3 tiles of 32.
    mosaic = np.random.default_rng(0).integers(63, 1020, (64, 64)).astype(np.uint16)
    img = pipe(mosaic, seed=1)
    assert img.shape == (64, 64, 3) and np.isfinite(img).all()
    assert len(pipe.plan(64, 64).tiles) > 1


def test_distill_config_chains_the_rounds_and_trains(tmp_path, teacher):
    """configs/distill.py:<n> for every round: the teacher is the previous round's workdir
    (pretrained/demo for the first), the sampler is the student's, and the file trains
    (one round, tiny overrides, 2 steps) through the trainer."""
    import importlib

    from diffraw_jax.training import train

    distill_cfg = importlib.import_module("configs.distill")
    chain = {}
    for n in (8, 4, 2, 1):
        cfg = distill_cfg.get_config(str(n))
        train._validate_distill(cfg)
        chain[n] = cfg.distill.teacher
        assert (cfg.distill.teacher_steps, cfg.sample.num_steps, cfg.sample.method) == (2 * n, n, "dtdm_ddim")
    assert chain == {8: "pretrained/demo", 4: "workdir/distill/student-8", 2: "workdir/distill/student-4",
                     1: "workdir/distill/student-2"}
    with pytest.raises(ValueError, match="takes n in"):
        distill_cfg.get_config("3")
    cfg = distill_cfg.get_config("2")
    from configs import test as test_config

    tiny = test_config.get_config()
    for section in ("model", "diffusion", "data"):
        cfg[section] = tiny[section]
    cfg.model.dropout = 0.0
    cfg.degradation.enabled = False
    cfg.distill.teacher = teacher
    cfg.train.num_train_steps = 2
    cfg.color_net.workdir = ""
    state = train.train_and_evaluate(cfg, str(tmp_path / "s2"), data_sources=_tiny_sources())
    assert int(state.step) == 2


def test_student_for_every_start_trains_and_its_config_is_checked(tmp_path, teacher):
    """distill.start = "any" through the trainer (tiny teacher, 2 steps): the student starts as the
    teacher and moves; configs/distill.py:any is the shipped student's recipe; a step count other
    than 1 and an unknown start are refused before any work; the exported folder records its
    sampler, and "auto" is refused for a model without the calibrated condition."""
    import importlib

    from diffraw_jax.checkpoints import weights
    from diffraw_jax.training import train

    ship = importlib.import_module("configs.distill").get_config("any")
    train._validate_distill(ship)
    assert (ship.distill.start, ship.distill.teacher, ship.distill.teacher_steps, ship.sample.num_steps,
            ship.sample.start) == ("any", "pretrained/demo", 4, 1, "auto")
    teacher_cfg = importlib.import_module("configs.pretrained").get_config()
    assert (ship.sample.start_switch, ship.sample.start_noise_factor) == \
        (teacher_cfg.sample.start_switch, teacher_cfg.sample.start_noise_factor)  # its teacher's sampler
    cfg = _distill_config(teacher, steps=2, n=1)
    cfg.distill.start, cfg.distill.teacher_steps, cfg.sample.start_switch = "any", 3, 12
    wd = str(tmp_path / "any")
    state = train.train_and_evaluate(cfg, wd, data_sources=_tiny_sources())
    t_params = weights.load_inference(teacher, color_net=False).params
    moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(t_params)))
    assert int(state.step) == 2 and moved > 0
    manifest = weights.export_weights(wd, str(tmp_path / "w"), sample_start="")
    assert manifest["sampler"]["num_steps"] == 1 and manifest["sampler"]["start"] == "s"
    with pytest.raises(ValueError, match="not a calibrated model"):
        weights.export_weights(wd, str(tmp_path / "w2"), sample_start="auto")
    assert not os.path.exists(tmp_path / "w2")
    for field, value, message in (("sample.num_steps", 2, "sample.num_steps=1"),
                                  ("distill.start", "late", "must be 's' or 'any'")):
        bad = _distill_config(teacher, steps=2, n=1)
        bad.distill.start = "any"
        section, key = field.split(".")
        bad[section][key] = value
        with pytest.raises(ValueError, match=message):
            train.train_and_evaluate(bad, str(tmp_path / key), data_sources=_tiny_sources())
        assert not os.path.exists(tmp_path / key / "checkpoints")


# make_step(devices, fsdp) for the compare_devices fixture (conftest.py).
DISTILL_ON_DEVICES = """
from configs import test as tc
from diffraw_jax import parallel
from diffraw_jax.training import train
from diffraw_jax.models import factory
from tests.helpers import fixed_batch
cfg = tc.get_config()
cfg.distill.teacher, cfg.distill.teacher_steps = "unused: the teacher is given below", 4
cfg.sample.method, cfg.sample.num_steps = "dtdm_ddim", 2
cfg.model.dropout = 0.0
train._validate_distill(cfg)
def make_step(devices, fsdp):
    mesh = parallel.create_mesh(fsdp, devices)
    model, tx, sched = factory.create_model(cfg), train.create_optimizer(cfg), factory.create_schedule(cfg)
    state = train.create_train_state(cfg, model, tx, mesh, jax.random.key(0))
    sh = jax.tree.map(lambda x: x.sharding, state)
    # A teacher whose output is not 0 (a new U-Net's last conv is zero): the student's
    # parameters plus fixed noise, laid out like them.
    rng = np.random.default_rng(1)
    noisy = [np.asarray(p) + 0.05 * rng.standard_normal(p.shape).astype(np.float32)
             for p in jax.tree.leaves(state.params)]
    teacher = jax.device_put(jax.tree.unflatten(jax.tree.structure(state.params), noisy), sh.params)
    step = train.make_train_step(cfg, model, tx, sched, mesh, sh, teacher)
    return state, step, jax.device_put(fixed_batch(cfg), parallel.batch_sharding(mesh))
"""


def test_distillation_step_is_the_same_on_one_and_eight_devices(compare_devices):
    """The teacher's parameters are laid out like the student's (FSDP over 4 included);
    D2, the student's t and noise are per example, so the layout changes nothing."""
    compare_devices(DISTILL_ON_DEVICES)

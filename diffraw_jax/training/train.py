"""Training (Algorithm 1): ``create_train_state``, ``train_step``, ``train_and_evaluate``.

Shape of google/flax ``examples/``. One ``jax.jit`` step with NamedShardings on a
("data", "fsdp") mesh (``diffraw_jax.parallel``): the batch is split over every
device, parameters/EMA/optimiser state over "fsdp" by the model's logical
annotations. Randomness is per example: example ``i`` of step ``n`` uses
``fold_in(fold_in(key, n), i)``, so results do not depend on the device count.

Two tasks share the loop:
  * ``diffraw``: the U-Net f(m_t, w, c, t). x = c = D2(y) on device; t ~ U{1..s},
    eps, m_t and the target from ``dtdm.training_example`` (Algorithm 1, lines 5-7);
    loss ||f - (gamma_s (x - y) + eps)||^2 (eq. 20).
    ``diffusion.objective = "ddpm"`` trains the plain epsilon target on y_t,
    t ~ U{1..T} (the Fig. 4 baseline) with the same conditions.
  * ``color_net``: G(w) with L1 + color_net.ssim_weight (1 - SSIM) against the DSLR image,
    which is first aligned to G's output by a global integer shift found by
    phase correlation (we have no PWC-Net weights; LiteISPNet uses its flow).
"""
from __future__ import annotations

import functools
import logging
import signal
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffraw_jax import batches, calibration, dtdm, parallel, sampling
from diffraw_jax.runtime import logs, paths
from diffraw_jax.checkpoints import weights
from diffraw_jax.training import workdir_lock
from diffraw_jax.training import distill as distill_lib
from diffraw_jax.models import factory

log = logging.getLogger(__name__)

CONFIG_FILE = weights.CONFIG_FILE  # the training config, written to the workdir
PARAMETERS_FILE = "parameters.txt"  # the parameter table, written to the workdir


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any


class NonFiniteLossError(FloatingPointError):
    """Raised when a step's loss or gradient is NaN/inf; no state was updated by it."""


# ----------------------------------------------------------------- construction

def learning_rate_schedule(config) -> optax.Schedule:
    """Step -> rate: linear warm-up from 0 over ``optim.warmup_steps``, then constant,
    or multiplied by ``optim.decay_factor`` every ``optim.decay_every_steps`` (counted
    from the end of warm-up) when that is > 0."""
    o = config.optim
    if o.learning_rate <= 0 or o.warmup_steps < 0:
        raise ValueError("optim.learning_rate must be > 0 and optim.warmup_steps >= 0")
    if o.decay_every_steps > 0:
        if not 0 < o.decay_factor <= 1:
            raise ValueError(f"optim.decay_factor must be in (0, 1], got {o.decay_factor}")
        after_warmup = optax.exponential_decay(o.learning_rate, o.decay_every_steps, o.decay_factor,
                                               staircase=True)
    else:
        after_warmup = optax.constant_schedule(o.learning_rate)
    if o.warmup_steps == 0:
        return after_warmup
    return optax.join_schedules(
        [optax.linear_schedule(0.0, o.learning_rate, o.warmup_steps), after_warmup], [o.warmup_steps])


def create_optimizer(config) -> optax.GradientTransformation:
    o = config.optim
    lr = learning_rate_schedule(config)
    chain = []
    if o.grad_clip_norm > 0:
        chain.append(optax.clip_by_global_norm(o.grad_clip_norm))
    if o.weight_decay > 0:
        chain.append(optax.adamw(lr, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay))
    else:
        chain.append(optax.adam(lr, b1=o.b1, b2=o.b2))
    return optax.chain(*chain)


def create_train_state(config, model, tx, mesh, key) -> TrainState:
    """Initialises parameters, EMA (a copy) and optimiser state, laid out by the mesh.

    The parameters are drawn with the "rbg" PRNG seeded from ``key``: XLA compiles
    threefry initialisers very slowly on CPU (~40 s for the tiny U-Net). The draw is
    replicated, then resharded, so the values do not depend on the mesh.
    """
    def init(k):
        params = nn.unbox(factory.init_variables(model, k)["params"])
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params))

    shardings = train_state_shardings(config, model, tx, mesh, jax.eval_shape(init, key).opt_state)
    state = jax.jit(init, out_shardings=parallel.replicated(mesh))(key)
    return jax.jit(lambda x: x, out_shardings=shardings)(state)


def train_state_shardings(config, model, tx, mesh, abstract_opt_state) -> TrainState:
    """The TrainState's layout: parameters, EMA and the optimiser leaves that mirror the
    parameters (Adam moments) by ``factory.param_shardings``; everything else replicated.
    ``abstract_opt_state``: ``tx.init`` of the parameters (abstract is enough)."""
    param_sh = factory.param_shardings(model, mesh)
    rep = parallel.replicated(mesh)
    opt_sh = optax.tree_map_params(tx, lambda _, sh: sh, abstract_opt_state, param_sh,
                                   transform_non_params=lambda _: rep)
    return TrainState(step=rep, params=param_sh, ema_params=param_sh, opt_state=opt_sh)


# ---------------------------------------------------------------- the train step

def _step_keys(key, step, batch_size):
    """(per-example keys [B], dropout key) for ``step``: fold_in of the step, then of the index."""
    examples, dropout = jax.random.split(jax.random.fold_in(key, step))
    return jax.vmap(lambda i: jax.random.fold_in(examples, i))(jnp.arange(batch_size)), dropout


def low_quality_image(y, key, degrade: bool):
    """x = c = D2(y) (Algorithm 1, line 3) with ``fold_in(key, 0)`` (``key``: the example's
    key), or y when ``degrade`` is False (``degradation.enabled``). y: [H, W, 3] in [-1, 1];
    x unclipped."""
    from diffraw_jax import degradation

    if not degrade:
        return y
    return degradation.degrade_single(sampling.to_unit_range(y), jax.random.fold_in(key, 0)) * 2.0 - 1.0


def global_shift_align(pred, target, max_shift: int = 4):
    """Rolls ``target`` [H, W, 3] by the integer shift (|dy|, |dx| <= max_shift) that
    maximises its phase correlation with ``pred``; returns (aligned, valid mask [H, W, 1])."""
    h, w = pred.shape[:2]
    g = lambda im: jnp.mean(im, axis=-1) - jnp.mean(im)
    cross = jnp.fft.fft2(g(pred)) * jnp.conj(jnp.fft.fft2(g(target)))
    corr = jnp.real(jnp.fft.ifft2(cross / (jnp.abs(cross) + 1e-8)))
    offs = jnp.arange(-max_shift, max_shift + 1)
    window = corr[offs[:, None] % h, offs[None, :] % w]
    idx = jnp.argmax(window)
    dy, dx = offs[idx // offs.size], offs[idx % offs.size]
    aligned = jnp.roll(target, (dy, dx), axis=(0, 1))
    yy, xx = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    valid = (yy >= dy) & (yy < h + dy) & (xx >= dx) & (xx < w + dx)
    return aligned, valid[..., None].astype(pred.dtype)


def diffraw_inputs(config, batch, keys):
    """(w, x = c) of a normalised batch, as the U-Net sees them in training.

    Paper (``model.condition = "paper"``): w = batch["raw"] [B, h, w, 4] and x = D2(y)
    (``low_quality_image`` with each example's key in ``keys`` [B]; Algorithm 1, line 3).
    Calibrated: what inference sees, from the batch's calibration: the balanced planes and
    the classical ISP of them (``calibration.network_inputs``), x in [-1, 1].
    """
    w, y = batch["raw"], batch["dslr"]
    if factory.model_condition(config) == "calibrated":
        w, x01 = calibration.network_inputs(w, batch["wb_gains"], batch["ccm"], batch["baseline_exposure"])
        return w, sampling.to_model_range(x01)
    degrade = bool(config.degradation.enabled)
    return w, jax.vmap(lambda yy, kk: low_quality_image(yy, kk, degrade))(y, keys)


def train_step(state: TrainState, batch, key, teacher_params=None, *, model, tx, schedule, config):
    """One optimisation step. batch: {"raw": [B, h, w, 4] in [0, 1], "dslr": [B, H, W, 3] in [-1, 1]}.

    The DiffRAW example of each image is Algorithm 1, lines 3-7: x = c = D2(y)
    (``low_quality_image``), then ``dtdm.training_example`` (t, eps, m_t, target).
    A calibrated model (``model.condition = "calibrated"``) instead sees what inference
    sees: the batch's calibration ("wb_gains" [B, 3], "ccm" [B, 3, 3],
    "baseline_exposure" [B]) gives the balanced planes w and x = c, the classical ISP
    of them (``calibration.network_inputs``).
    ``teacher_params``: given when distilling (``distill.teacher`` set): the teacher's
    parameters; the loss is then ||f - f*||^2 against the teacher's two DTDM-DDIM steps
    (``diffraw_jax.training.distill``). Returns (new_state, metrics). A non-finite loss or
    gradient leaves the state unchanged and reports metrics["finite"] = False.
    """
    # uint16/uint8 batches are normalised here, on the device; float batches pass through.
    batch = batches.normalize_batch(batch, config.data.black_level, config.data.white_level)
    y, w = batch["dslr"], batch["raw"]
    bsz = y.shape[0]
    keys, drop_key = _step_keys(key, state.step, bsz)

    if config.task == "color_net":
        import dm_pix

        y01 = sampling.to_unit_range(y)

        def loss_fn(params):
            pred = model.apply({"params": params}, w, train=True)
            if config.color_net.align:
                target, mask = jax.vmap(global_shift_align)(jax.lax.stop_gradient(pred), y01)
            else:
                target, mask = y01, jnp.ones(y01.shape[:3] + (1,), pred.dtype)
            l1 = jnp.sum(jnp.abs(pred - target) * mask) / (jnp.sum(mask) * 3)
            ssim = jnp.mean(dm_pix.ssim(pred * mask, target * mask, max_val=1.0))
            return l1 + config.color_net.ssim_weight * (1.0 - ssim), {"l1": l1, "ssim": ssim}
    else:
        s = config.diffusion.s
        w, x = diffraw_inputs(config, batch, keys)
        if teacher_params is not None:  # the student's examples: targets from the teacher's two steps

            def teacher_fn(m, t):
                return model.apply({"params": teacher_params}, m, w, x, t, train=False).astype(jnp.float32)

            example_keys = jax.vmap(lambda k: jax.random.fold_in(k, 3))(keys)
            if config.distill.start == "any":
                m_t, t, target = distill_lib.any_start_example(
                    schedule, teacher_fn, x, example_keys, s, config.distill.teacher_steps,
                    config.sample.start_switch)
            else:
                teacher_grid, _ = distill_lib.grids(s, config.distill.teacher_steps)
                m_t, t, target = distill_lib.distillation_example(
                    schedule, teacher_fn, y, x, example_keys, s, teacher_grid)
        else:  # Algorithm 1, lines 5-7
            objective = config.diffusion.objective
            m_t, t, target = jax.vmap(
                lambda yy, xx, kk: dtdm.training_example(schedule, yy, xx, kk, s, objective))(y, x, keys)
        weight = jnp.ones((bsz,), jnp.float32)
        share = float(config.train.own_start_share)
        if share > 0 and teacher_params is None:  # exact late starts (dtdm.own_start_example)
            m_o, t_o, target_o, weight_o = jax.vmap(
                lambda yy, xx, kk: dtdm.own_start_example(schedule, yy, xx, kk, s))(y, x, keys)
            pick = jax.vmap(lambda k: jax.random.bernoulli(jax.random.fold_in(k, 5), share))(keys)
            per_pixel = pick.reshape(pick.shape + (1,) * (m_t.ndim - 1))
            m_t, target = jnp.where(per_pixel, m_o, m_t), jnp.where(per_pixel, target_o, target)
            t, weight = jnp.where(pick, t_o, t), jnp.where(pick, weight_o, weight)

        def loss_fn(params):
            f = model.apply({"params": params}, m_t, w, x, t, train=True, rngs={"dropout": drop_key})
            err = (f.astype(jnp.float32) - target) ** 2
            loss = jnp.mean(weight.reshape(weight.shape + (1,) * (err.ndim - 1)) * err)
            return loss, {}

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = config.optim.ema_decay
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new = TrainState(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)
    new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
    metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite, **aux}
    return new, metrics


def make_train_step(config, model, tx, schedule, mesh, state_shardings, teacher_params=None):
    """The jitted ``train_step``: ``fn(state, batch, key) -> (state, metrics)``; the state is
    donated. ``teacher_params`` (distillation): laid out like the parameters and passed to
    every step (not donated, not part of the checkpointed state). The batch is any dict of
    arrays with a leading batch dimension ("raw", "dslr", and the calibration keys of a
    calibrated dataset): one batch sharding is the pytree prefix for all its leaves."""
    fn = functools.partial(train_step, model=model, tx=tx, schedule=schedule, config=config)
    data = parallel.batch_sharding(mesh)
    rep = parallel.replicated(mesh)
    in_sh = (state_shardings, data, rep)
    if teacher_params is not None:
        in_sh += (state_shardings.params,)
    jitted = jax.jit(fn, in_shardings=in_sh, out_shardings=(state_shardings, rep), donate_argnums=(0,))
    if teacher_params is None:
        return jitted
    return lambda state, batch, key: jitted(state, batch, key, teacher_params)


# ----------------------------------------------------------------- distillation

def distilling(config) -> bool:
    """True when ``distill.teacher`` names a teacher (progressive distillation)."""
    return config.task == "diffraw" and factory.is_distilled(config)


def _validate_own_start(config):
    share = float(config.train.own_start_share)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"train.own_start_share must be in [0, 1], got {share}")
    if share > 0 and config.diffusion.objective != "dtdm":
        raise ValueError("train.own_start_share teaches the DTDM late start; it needs diffusion.objective = 'dtdm'")


def _validate_distill(config):
    d = config.distill
    if config.diffusion.objective != "dtdm":
        raise ValueError("distillation needs diffusion.objective = 'dtdm' (it distils the DTDM-DDIM sampler)")
    if d.start not in ("s", "any"):
        raise ValueError(f"distill.start must be 's' or 'any', got {d.start!r}")
    if d.start == "any":
        if d.teacher_steps < 1 or config.sample.method != "dtdm_ddim" or config.sample.num_steps != 1:
            raise ValueError("a student for any start (distill.start='any') samples with DTDM-DDIM in 1 step from "
                             "a teacher's >= 1 steps: set distill.teacher_steps >= 1, sample.method='dtdm_ddim' "
                             f"and sample.num_steps=1 (the config says {d.teacher_steps}, "
                             f"{config.sample.method!r}, {config.sample.num_steps})")
        return
    _, student = distill_lib.grids(config.diffusion.s, d.teacher_steps)
    n = len(student) - 1
    if config.sample.method != "dtdm_ddim" or config.sample.num_steps != n:
        raise ValueError(f"a student of a {d.teacher_steps}-step teacher samples with DTDM-DDIM in {n} steps: "
                         f"set sample.method='dtdm_ddim' and sample.num_steps={n} (the config says "
                         f"{config.sample.method!r}, {config.sample.num_steps})")


def load_compatible_params(path: str, role: str, config, model, param_shardings_):
    """The EMA parameters of the model at ``path`` (a weights folder or a workdir, read-only),
    laid out by ``param_shardings_``; ``role`` names it in messages ("the teacher").
    ValueError when its network, diffusion or colour condition differs from ``config``'s."""
    other = weights.load_inference(path, color_net=False)
    mine, theirs = config.diffusion.to_dict(), other.config.diffusion.to_dict()
    diff = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
    if diff:
        raise ValueError(f"{role} {path} was trained with other diffusion settings "
                         f"(it, this run): {diff}")
    want = jax.tree_util.tree_flatten_with_path(factory.abstract_params(model))[0]
    have = dict(jax.tree_util.tree_flatten_with_path(other.params)[0])
    bad = [jax.tree_util.keystr(p) for p, a in want if p not in have or tuple(have[p].shape) != tuple(a.shape)]
    if bad or len(have) != len(want):
        raise ValueError(f"{role} {path} ({other.config.model.name} U-Net, "
                         f"{other.num_params:,} parameters) is not this run's network "
                         f"({config.model.name}): {len(bad)} parameters differ, e.g. {bad[:3]}")
    return other, jax.device_put(other.params, param_shardings_)


def load_teacher(config, model, param_shardings_):
    """The teacher's EMA parameters (``load_compatible_params``); its colour condition must be the
    student's (a student answers the teacher's questions)."""
    teacher, params = load_compatible_params(config.distill.teacher, "the teacher", config, model,
                                             param_shardings_)
    if factory.model_condition(teacher.config) != factory.model_condition(config):
        raise ValueError(f"the teacher {config.distill.teacher} was trained with model.condition="
                         f"{teacher.config.model.condition!r}, this student with {config.model.condition!r}")
    log.info("teacher: %s (step %d, %s), DTDM-DDIM-%d -> student DTDM-DDIM-%d%s", config.distill.teacher,
             teacher.step, teacher.kind, config.distill.teacher_steps,
             1 if config.distill.start == "any" else config.distill.teacher_steps // 2,
             ", from every start" if config.distill.start == "any" else "")
    return params


# --------------------------------------------------------------------- the loop

def _validate(config):
    d = config.data
    if d.crop_size % 2 or d.crop_size < 8:
        raise ValueError(f"data.crop_size must be even and >= 8, got {d.crop_size}")
    if d.global_batch_size < 1 or d.global_batch_size % jax.device_count():
        raise ValueError(f"data.global_batch_size={d.global_batch_size} must be a positive "
                         f"multiple of the device count {jax.device_count()}")
    if config.train.num_train_steps < 0:
        raise ValueError("train.num_train_steps must be >= 0")
    factory.model_condition(config)
    if config.task == "diffraw":
        _validate_own_start(config)
    if distilling(config):
        _validate_distill(config)


def _check_calibrated_data(data_source, config) -> None:
    """A calibrated model needs each pair's calibration: ValueError in one line otherwise."""
    missing = [k for k in calibration.KEYS if k not in data_source[0]]
    if missing:
        raise ValueError(f"model.condition='calibrated' needs each pair's calibration ({', '.join(missing)} "
                         f"missing from {config.data.name}): build the dataset as zrr/calibrated "
                         f"(python -m tfds_zrr.build --config calibrated; real ZRR: python -m tfds_zrr.calibrate)")


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


class _Preemption:
    """SIGTERM -> finish the current step, save, exit cleanly: the handler of a run of one
    process. A run of several processes installs nothing (``install=False``): there JAX's
    preemption notifier, started by ``jax.distributed.initialize``, owns SIGTERM and
    ``manager.reached_preemption(step)`` (``multihost_utils.reached_preemption_sync_point``)
    turns a notice on any host into the same step on every host."""

    def __init__(self, install: bool = True):
        self.requested = False
        self.install = install
        self._old = None

    def __enter__(self):
        if not self.install:
            return self
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def _handle(self, signum, frame):
        log.warning("SIGTERM received: saving a checkpoint and stopping")
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def _ignore_sigterm_while_stopping() -> None:
    """After the preemption save the process is on its way out: a later SIGTERM (another notice,
    or one that reached this host after every host had stopped) must not kill it mid-exit."""
    try:
        signal.signal(signal.SIGTERM, lambda *_: log.warning("SIGTERM received while stopping: ignored"))
    except ValueError:  # not the main thread
        pass


def _raise_on_nonfinite(metrics, first_step: int, manager, workdir) -> None:
    """NonFiniteLossError naming the first of ``metrics`` (host copies of the per-step
    metrics of steps first_step, first_step + 1, ...) whose loss or gradient was not finite."""
    bad = [i for i, m in enumerate(metrics) if not bool(m["finite"])]
    if not bad:
        return
    from diffraw_jax.checkpoints import checkpointing

    manager.wait_until_finished()
    m = metrics[bad[0]]
    raise NonFiniteLossError(
        f"non-finite loss or gradient at step {first_step + bad[0]} (loss={float(m['loss'])}; "
        f"{len(bad)} of the {len(metrics)} steps since the last report); stopped without saving; "
        f"the last good checkpoint is step {manager.latest_step()} in {checkpointing.checkpoint_dir(workdir)}")


def _check_inputs(config, workdir: str) -> None:
    """Before anything is written: the config is valid, the workdir is a folder (or new), and a
    distillation teacher exists. ValueError / FileNotFoundError in one line."""
    _validate(config)
    wd = paths.as_path(workdir)
    if wd.exists() and not wd.is_dir():
        raise ValueError(f"--workdir {wd} is a file, not a folder")
    if distilling(config):
        weights.load_config(config.distill.teacher)  # FileNotFoundError naming it, before any work


def _take_lock(workdir: str, break_lock: bool):
    """Process 0 takes the workdir's lock (``WorkdirLock``); the others follow it
    (``workdir_lock.Follower`` with its token). Every process raises alike when it could not:
    ``WorkdirLockedError`` (another trainer), ``ConnectionError`` (a gs:// lease unreachable)."""
    lock, error, kind = None, "", 0
    if jax.process_index() == 0:
        try:
            lock = workdir_lock.WorkdirLock(workdir, break_lock=break_lock).acquire()
        except workdir_lock.WorkdirLockedError as e:
            error, kind = str(e), 1
        except ConnectionError as e:
            error, kind = str(e), 2
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        kind = int(multihost_utils.broadcast_one_to_all(np.int32(kind)))
        shared = parallel.broadcast_bytes((error if kind else (lock.token if lock is not None else "")).encode()
                                          ).decode(errors="replace")
        if kind:
            error = shared
        elif jax.process_index() != 0:
            lock = workdir_lock.Follower(workdir, shared)
    if kind:
        raise (workdir_lock.WorkdirLockedError if kind == 1 else ConnectionError)(error)
    return lock


def _check_lock(lock, workdir: str) -> None:
    """Before each save, on every process: WorkdirLockedError on every process (one line each)
    when any of them finds that the lock is no longer this run's."""
    why = lock.lost() if lock is not None else None
    if jax.process_count() > 1:
        seen = [bool(v) for v in parallel.process_values("1" if why else "")]
        if why is None and any(seen):
            why = (f"the lock of {workdir} was taken by another trainer (process {seen.index(True)} "
                   "found it); stopped without saving")
    if why:
        raise workdir_lock.WorkdirLockedError(why)


def _load_data(config, data_sources):
    """(train, test) sources, checked before anything is written: a calibrated model's data
    carry its calibration, and every process reads the same data (their record counts and first
    and last records compared with a collective). ValueError in one line on every process."""
    from diffraw_jax.data import input_pipeline

    train_src, test_src = data_sources if data_sources is not None else input_pipeline.load_data_sources(config)
    if config.task == "diffraw" and factory.model_condition(config) == "calibrated":
        _check_calibrated_data(train_src, config)
    parallel.check_processes_agree(
        role="training", hint="give every process the same dataset (--config.data.name, data_dir, split)",
        train_data=input_pipeline.source_fingerprint(train_src),
        test_data=input_pipeline.source_fingerprint(test_src))
    return train_src, test_src


def train_and_evaluate(config, workdir: str, *, data_sources=None, break_lock: bool = False) -> TrainState:
    """Trains per ``config``, checkpointing to ``workdir``; resumes from its latest checkpoint.

    ``data_sources``: optional (train, test) random-access sources (tests); default TFDS.
    One trainer per workdir: the workdir's lock (``diffraw_jax.training.workdir_lock``) is held
    while it trains; ``break_lock`` takes it from a trainer the user knows is gone.
    Several processes (jax.distributed): process 0 holds the lock, every process checks it
    before each save; a preemption notice on any host stops every host at the same step.
    Raises, on every process alike: ``WorkdirLockedError`` (another trainer holds the lock, or
    took it), ``ConnectionError`` (a gs:// lock unreachable), ``CheckpointSaveError`` (a save
    did not commit), ``CheckpointReadError`` (the storage failed reading a checkpoint to resume
    from), ValueError / FileNotFoundError (bad inputs, or processes given different data,
    found before anything is written).
    """
    _check_inputs(config, workdir)
    # The data first: a missing dataset or hosts reading different data end the run before
    # anything is written to the workdir (taking the lock creates it).
    sources = _load_data(config, data_sources)
    lock = _take_lock(workdir, break_lock)
    try:
        return _train(config, workdir, sources, lock)
    finally:
        if isinstance(lock, workdir_lock.WorkdirLock):
            lock.release()


def _train(config, workdir: str, sources, lock) -> TrainState:
    from clu import metric_writers, parameter_overview, periodic_actions

    from diffraw_jax.data import input_pipeline

    train_src, test_src = sources
    calibrated = config.task == "diffraw" and factory.model_condition(config) == "calibrated"
    wd = paths.as_path(workdir)  # local (made absolute) or gs://: every host writes to the same place
    wd.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:  # inference and evaluation rebuild the model from it
        (wd / CONFIG_FILE).write_text(config.to_json_best_effort(indent=1))
    # TensorBoard events only: the progress lines below are what a person reads.
    writer = (metric_writers.AsyncWriter(metric_writers.SummaryWriter(workdir)) if jax.process_index() == 0
              else metric_writers.MultiWriter([]))
    mesh = parallel.create_mesh(config.mesh.fsdp)
    model = factory.create_model(config)
    schedule = factory.create_schedule(config)
    tx = create_optimizer(config)
    key = jax.random.key(config.seed)
    state = create_train_state(config, model, tx, mesh, jax.random.fold_in(key, 0))
    state_sh = jax.tree.map(lambda x: x.sharding, state)
    if jax.process_index() == 0:
        (wd / PARAMETERS_FILE).write_text(parameter_overview.get_parameter_overview(state.params) + "\n")
        log.info("%s: %s, %s parameters (table: %s)", config.task,
                 config.model.name if config.task == "diffraw" else "G " + config.color_net.name,
                 f"{factory.count_params(state.params):,}", wd / PARAMETERS_FILE)

    loader = input_pipeline.create_train_loader(
        train_src, global_batch_size=config.data.global_batch_size, crop_size=config.data.crop_size,
        seed=config.seed, augment=config.data.augment, worker_count=config.data.worker_count,
        black_level=config.data.black_level, white_level=config.data.white_level, as_codes=True)
    data_sh = parallel.batch_sharding(mesh)
    batch_keys = ("raw", "dslr") + (calibration.KEYS if calibrated else ())
    # Batches go to the devices as uint16/uint8 codes, data.prefetch_to_device of them in
    # flight; the iterator's checkpointed position is that of the batches trained on.
    data_iter = input_pipeline.DevicePrefetch(
        iter(loader), lambda b: input_pipeline.to_global_batch({k: b[k] for k in batch_keys}, data_sh),
        size=config.data.prefetch_to_device)

    from diffraw_jax.checkpoints import checkpointing  # orbax: only the training loop needs it

    manager = checkpointing.create_manager(workdir, config.train.keep_checkpoints)
    saves = checkpointing.Saves(manager)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    start, restored = checkpointing.restore_latest(manager, abstract, data_iter.restore_args())
    teacher = load_teacher(config, model, state_sh.params) if distilling(config) else None
    if restored is not None:
        state = restored
        log.info("resumed from step %d in %s", start, workdir)
    elif teacher is not None or config.train.init_from:  # the student starts as the teacher;
        # a fine-tuning run as the model it names (parameters and EMA)
        first = teacher
        if first is None:
            other, first = load_compatible_params(config.train.init_from, "train.init_from", config, model,
                                                  state_sh.params)
            log.info("initialised from %s (step %d)", config.train.init_from, other.step)
        state = jax.jit(lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p, ema_params=p,
                                             opt_state=tx.init(p)), out_shardings=state_sh)(first)
    start = int(state.step)

    step_fn = make_train_step(config, model, tx, schedule, mesh, state_sh, teacher)
    step_key = jax.random.fold_in(key, 1)
    total = config.train.num_train_steps
    hooks = [periodic_actions.ReportProgress(num_train_steps=total, writer=writer)]
    if config.train.profile and jax.process_index() == 0:
        hooks.append(periodic_actions.Profile(num_profile_steps=5, logdir=workdir))
    eval_every = config.train.eval_every_steps if config.task == "diffraw" else 0
    periodic_eval = None
    if eval_every > 0:
        from diffraw_jax.evaluation.periodic_eval import PeriodicEval

        periodic_eval = PeriodicEval(config, model, schedule, test_src, workdir, mesh)
    writer.write_hparams(_flatten(config.to_dict()))

    # The host waits for the devices only at reports, checkpoints and evaluations: the
    # per-step metrics stay on the device until then (the jitted step already leaves
    # the state untouched by a non-finite step; the first such step is found here).
    pending = []
    last = (start, time.perf_counter())
    log.info("training %s from step %d to %d in %s", config.task, start, total, workdir)
    stopped = False  # for preemption
    with _Preemption(install=jax.process_count() == 1) as preempt:
        for step in range(start, total):
            state, metrics = step_fn(state, next(data_iter), step_key)
            pending.append(metrics)
            done = step + 1
            for h in hooks:
                h(done)
            report = done % config.train.log_every_steps == 0 or done == total
            preempted = preempt.requested or manager.reached_preemption(done)
            save = done % config.train.checkpoint_every_steps == 0 or done == total or preempted
            if report or save:
                fetched = jax.device_get(pending)
                _raise_on_nonfinite(fetched, done - len(fetched) + 1, manager, workdir)
            if report:
                saves.poll()  # logs the last save once it has committed; raises if it failed
                summary = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0] if k != "finite"}
                writer.write_scalars(done, summary)
                pending = []
                now = time.perf_counter()
                rate = (done - last[0]) / max(now - last[1], 1e-9)
                last = (done, now)
                log.info("step %d/%d (%d%%)  %.2f steps/s  ETA %s  %s", done, total, 100 * done // max(total, 1),
                         rate, logs.format_duration((total - done) / max(rate, 1e-9)),
                         "  ".join(f"{k} {v:.4g}" for k, v in summary.items()))
            if save:
                try:
                    _check_lock(lock, workdir)  # another trainer took the workdir: every process stops
                except workdir_lock.WorkdirLockedError:
                    saves.finish()  # the save before the loss was this run's: let it commit
                    raise
                saves.start(done, state, data_iter.save_args())
            if periodic_eval is not None and (done % eval_every == 0 or done == total) and not preempted:
                seconds = periodic_eval(done, state.ema_params, writer)
                last = (last[0], last[1] + seconds)  # steps/s counts training time only
            if preempted:
                saves.finish()
                log.warning("stopping at step %d for preemption (checkpoint saved)", done)
                stopped = True
                break
    if stopped:
        _ignore_sigterm_while_stopping()
    saves.finish()
    manager.close()
    writer.flush()
    return state

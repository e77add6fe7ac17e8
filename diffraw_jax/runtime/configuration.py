"""The config schema: every field training, evaluation and inference read, with the
paper's values, and the one upgrade of a saved ``config.json`` to it.

``default_config()`` is the base of every config (configs/default.py returns it;
configs/*.py start from it and change what they need). It lives in the package,
not in configs/, because the installed ``diffraw`` command reads saved configs
without the repository's configs/ folder.

``upgrade(saved)`` turns a config saved by any earlier version (a workdir's or a
weights folder's ``config.json``) into a full config: the defaults overlaid by the
saved values, after moving renamed fields to their new place (``RENAMED``). Fields
the schema does not know are refused (ValueError naming them), not kept: a
setting the code would silently ignore is an error. Everything that reads a
config reads its fields directly; only this module knows what an older file
lacks. ``diffraw_jax.checkpoints.weights.load_config`` calls it once, at load.

Imports only ml_collections, and only when a function is called (so the modules that
import this one, the loader and the trainer, import on a bare accelerator machine
where benchmarks/run.py stands a plain dict in for ConfigDict).
"""
from __future__ import annotations

import copy
from typing import Any, Mapping


# Fields moved since a config.json was first written: (old section, old key) -> (new section, new key).
# G's loss settings were a section ``isp`` of their own; G is ``color_net`` everywhere.
RENAMED = {
    ("isp", "ssim_weight"): ("color_net", "ssim_weight"),
    ("isp", "align"): ("color_net", "align"),
}


def default_config() -> ml_collections.ConfigDict:
    """Every field with its default (the paper's values where it gives them)."""
    import ml_collections

    c = ml_collections.ConfigDict()
    c.seed = 0
    # "diffraw": the DiffRAW U-Net f(m_t, w, c, t) (Algorithm 1).
    # "color_net": the colour network G of eq. 8 (configs/isp.py).
    c.task = "diffraw"

    c.data = d = ml_collections.ConfigDict()
    d.name = "zrr/patches"       # TFDS name
    d.data_dir = ""             # TFDS data_dir (required)
    d.manual_dir = ""           # a ZRR-layout folder; if set, the dataset is built from it first
    d.crop_size = 448           # RAW mosaic / DSLR crop, even; packed planes are crop/2
    d.global_batch_size = 32
    d.eval_batch_size = 8
    d.worker_count = 0          # Grain worker processes (0: in the main process)
    d.prefetch_to_device = 2    # training batches kept in flight to the devices
    d.augment = True
    d.black_level = 63
    d.white_level = 1020

    c.model = m = ml_collections.ConfigDict()
    m.name = "zrr"              # named U-Net: tiny | demo | zrr (diffraw_jax/models/unet.py)
    m.dtype = "float32"         # compute dtype: float32 | bfloat16 (params stay float32)
    m.remat = False             # True: remat_policy "full" (kept for older configs)
    m.remat_policy = "none"     # recompute inside U-Net blocks on the backward pass: none | full |
                                # dots_saveable | dots_with_no_batch_dims_saveable (unet.REMAT_POLICIES)
    m.attention_impl = "auto"   # auto (chunked above 1024 positions, else JAX's choice) | xla | chunked |
                                # cudnn (flash attention: NVIDIA GPUs, bfloat16); unet.dot_product_attention
    m.use_w = True
    m.use_c = True
    m.condition = "paper"       # paper: train on x = c = D2(y), test on c = G(w) (Algorithm 1/2) |
                                # calibrated: x = c = the classical ISP with each file's own calibration,
                                # the networks see white-balanced, exposed planes (diffraw_jax/calibration.py)
    m.dropout = -1.0            # < 0: the named config's value

    c.color_net = g = ml_collections.ConfigDict()
    g.name = "default"          # diffraw_jax/models/color_net.py: default (~9M) | tiny
    g.workdir = ""              # trained G's workdir: gives c_test = G(w) in eval/inference
    g.ssim_weight = 0.15        # task "color_net": loss = L1 + ssim_weight * (1 - SSIM), as LiteISPNet
    g.align = True              # task "color_net": align the DSLR target to G's output before the loss
    g.zero_mean_details = False  # ColorNet option: no constant detail band before each Haar synthesis
                                 # (no fixed-phase 16/8/4-px lattice; issue 21). Off: the shipped G's design

    c.diffusion = df = ml_collections.ConfigDict()
    df.objective = "dtdm"       # dtdm (eq. 20) | ddpm (plain epsilon target; the Fig. 4 baseline)
    df.num_timesteps = 2000     # T
    df.beta_start = 1e-6
    df.beta_end = 1e-2
    df.schedule = "linear"
    df.s = 100                  # DTDM length

    c.degradation = ml_collections.ConfigDict()
    c.degradation.enabled = True  # x = c = D2(y) on device (Algorithm 1, line 3)

    c.optim = o = ml_collections.ConfigDict()
    o.learning_rate = 1e-4
    o.warmup_steps = 10_000
    o.b1 = 0.9
    o.b2 = 0.999
    o.grad_clip_norm = 1.0      # <= 0: off
    o.ema_decay = 0.9999
    o.weight_decay = 0.0
    o.decay_every_steps = 0     # > 0: multiply the rate by decay_factor every this many steps
    o.decay_factor = 0.5        #   after warm-up (LiteISPNet: halved every 40 epochs)

    c.train = t = ml_collections.ConfigDict()
    t.num_train_steps = 1_000_000
    t.init_from = ""            # a weights folder or workdir whose EMA parameters start a new run
                                #   (fine-tuning; a resumed run ignores it)
    t.own_start_share = 0.0     # DTDM: this share of the examples at their own start t = s' ~ U{1..s}
                                #   (dtdm.own_start_example: teaches the exact late start; docs/real-detail.md)
    t.log_every_steps = 100
    t.checkpoint_every_steps = 5_000
    t.keep_checkpoints = 3
    t.profile = False
    t.eval_every_steps = 0      # > 0: sample train.eval_num_images test images with the EMA
    t.eval_num_images = 4       #   parameters every this many steps (TensorBoard scalars + grid)

    c.mesh = ml_collections.ConfigDict()
    c.mesh.fsdp = 1             # devices along the parameter-sharding axis; the rest is "data"

    c.eval = e = ml_collections.ConfigDict()
    e.crop_size = 0             # centre crop (mosaic pixels) for CPU-sized evaluation; 0: whole image
    e.num_images = -1           # < 0: the whole split
    e.ddim_steps = 10           # the DTDM-DDIM row; 0: off
    e.grid_images = 8
    e.fid_inception_weights = ""  # .npz of Inception-v3 FID weights (not available offline)
    e.model = ""                # model to evaluate: a weights folder or workdir (default: --workdir itself);
                                # results go to <workdir>/eval/<split> either way

    c.distill = ds = ml_collections.ConfigDict()  # progressive distillation (configs/distill.py)
    ds.teacher = ""             # weights folder or workdir of the teacher; "" = ordinary training
    ds.teacher_steps = 0        # the teacher's DTDM-DDIM steps (from s); the student makes half as many
    ds.start = "s"              # "s": progressive rounds from s (the paper's start); "any": a one-step
                                # student for every start T in [1, s] (docs/real-detail.md)

    c.sample = sm = ml_collections.ConfigDict()
    sm.method = "dtdm"          # dtdm | dtdm_ddim | ddpm
    sm.num_steps = -1           # < 0: s
    sm.start = ""               # "": start at s (the paper); "auto": per file, from its measured noise
                                # (calibrated models, inference; docs/real-detail.md)
    sm.start_noise_factor = 1.0  # "auto": the start noise covers this many times the file's noise
    sm.start_switch = 0         # "auto": from this noise-matched start on, the sampler from s
                                #   (dtdm.file_sampler; 0: never); below it one step from there
    sm.use_ema = True
    return c


def upgrade(saved: Mapping[str, Any] | ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The full config of a saved one: ``default_config()`` overlaid by ``saved``.

    Args:
      saved: a config as saved (the parsed ``config.json``, or a ConfigDict);
        not modified. Fields in ``RENAMED`` move to their new names (a value
        already under the new name wins); fields absent from it get their
        defaults (e.g. ``model.attention_impl``, ``distill``, ``train.eval_every_steps``
        for configs saved before those existed).

    Raises ValueError for a field the schema does not know (all of them named),
    a section given as a value, or a value of the wrong type.
    """
    import ml_collections

    saved = saved.to_dict() if isinstance(saved, ml_collections.ConfigDict) else copy.deepcopy(dict(saved))
    for (old_section, old_key), (section, key) in RENAMED.items():
        old = saved.get(old_section)
        if isinstance(old, dict) and old_key in old:
            value = old.pop(old_key)
            saved.setdefault(section, {}).setdefault(key, value)
            if not old:
                del saved[old_section]
    config = default_config()
    unknown = []
    _overlay(config, saved, "", unknown)
    if unknown:
        raise ValueError(f"the saved config has fields this version does not know: {', '.join(unknown)}")
    return config


def _overlay(config: ml_collections.ConfigDict, saved: Mapping[str, Any], prefix: str, unknown: list) -> None:
    import ml_collections

    for key, value in saved.items():
        name = prefix + key
        if key not in config:  # unknown (an unknown section: each of its fields, by name)
            unknown += [f"{name}.{k}" for k in value] if isinstance(value, Mapping) and value else [name]
        elif isinstance(config[key], ml_collections.ConfigDict):
            if not isinstance(value, Mapping):
                raise ValueError(f"config field {name} must be a section, got {value!r}")
            _overlay(config[key], value, name + ".", unknown)
        else:
            try:
                config[key] = value
            except TypeError as e:
                raise ValueError(f"config field {name}: {e}") from e

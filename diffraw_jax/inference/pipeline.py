"""DiffRAW inference on full frames: the Python API.

    from diffraw_jax.inference import DiffRAWPipeline

    pipe = DiffRAWPipeline.from_checkpoint("pretrained/demo")      # a weights folder or workdir
    srgb = pipe(mosaic, black_level=63, white_level=1020, cfa="RGGB", seed=0)
    srgb = pipe.from_file("IMG_0001.DNG", seed=0)   # [H, W, 3] float32 sRGB in [0, 1], oriented
    with rawpy.imread("IMG_0001.DNG") as r:
        same = pipe.from_rawpy(r, "IMG_0001.DNG", seed=0)  # the same picture

The output covers the whole mosaic (``camera.prepare_frame``) in the camera's
orientation. The sampler is the one the model asks for (its config's
``diffusion.objective``, ``sample.method`` and ``sample.num_steps``) unless
``method``/``num_steps`` are given. Frames larger than a tile are sampled as
ONE sample of the whole frame with a tiled denoiser (``diffraw_jax.tiling``):
frame-level noise, network outputs blended across overlaps at every step.
Noise comes from ``key(seed)`` for the frame, so outputs are reproducible and do
not depend on the tile batch.

Loads through ``diffraw_jax.checkpoints.weights`` (read-only); imports jax, numpy and the
core modules only (rawpy is never imported here: ``from_rawpy`` takes an open
``rawpy.RawPy``).
"""
from __future__ import annotations

import functools
import sys
import warnings
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from diffraw_jax import calibration, dtdm, isp_classic, parallel, raw, sampling, tiling
from diffraw_jax.checkpoints import weights
from diffraw_jax.inference import camera
from diffraw_jax.models import factory


class DiffRAWPipeline:
    """RAW mosaic -> sRGB with a trained DiffRAW U-Net.

    Build with ``from_checkpoint`` (or directly from a model, its parameters and
    ``settings``, the sampler that ``factory.sampler_settings`` validated).
    ``tile``: tile side or (H, W) in output pixels, a multiple of the U-Net's
    2**(levels-1); None / 0: the whole frame in one piece, split over the local
    devices in bands of rows where they divide it evenly (``tiling.frame_sharding``:
    e.g. on 8 devices 256 rows in 8 bands, 96 in 4; 104 rows on one device).
    ``overlap``: minimum overlap of neighbouring tiles (even). ``batch``: tiles per
    network call, spread over all local devices (rounded up to a multiple of their number).
    ``color``: "g" (the trained G), "classic" (the classical ISP), "calibrated"
    (a model trained with ``model.condition = "calibrated"``: the networks see the
    planes white-balanced and exposed by the file's own calibration, and c is the
    classical ISP of them with the file's colour matrix; ``diffraw_jax.calibration``)
    or "image" (an sRGB colour condition given per call).
    """

    def __init__(self, model, params, schedule: dtdm.Schedule, settings: factory.SamplerSettings, *,
                 eta: float = 0.0, color: str = "classic", color_model=None, color_params=None,
                 tile=448, overlap: int = 64, batch: int = 4, config=None, step: Optional[int] = None,
                 condition: str = "paper"):
        if color not in COLORS:
            raise ValueError(f"color must be one of {COLORS}, got {color!r}")
        check_color(color, condition)
        self.calibrated_model = condition == "calibrated"
        if color == "g" and color_model is None:
            raise ValueError("color 'g' needs color_model and color_params")
        if int(batch) < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        # Tiles go to every local device: the parameters are replicated over them.
        self.tile_sharding = parallel.tile_sharding()
        if self.tile_sharding is not None:
            params = jax.device_put(params, parallel.replicated(self.tile_sharding.mesh))
        self.model, self.params, self.schedule = model, params, schedule
        self.settings, self.eta = settings, float(eta)
        self.s, self.method, self.num_steps = settings.s, settings.method, settings.num_steps
        self.label = settings.label
        self.color, self.color_model, self.color_params = color, color_model, color_params
        self.tile = tiling.as_tile_shape(tile)
        self.overlap, self.batch = int(overlap), int(batch)
        self.config, self.step = config, step
        self.multiple = tiling.unet_multiple(model)
        if self.tile is not None:
            self._check_tile(self.tile)
        if self.overlap < 0 or self.overlap % 2 or (self.tile and self.overlap >= min(self.tile)):
            raise ValueError(f"overlap must be even and in [0, tile), got {self.overlap}")
        self._samplers = {}
        self._bar = None
        self.last_exposure = 0.0  # the EV of the last calibrated frame (calibrated_inputs)
        self.auto_start = False   # from_checkpoint(start="auto"): the start step per frame
        self.start_noise_factor = 1.0  # auto start: the start noise covers this many times the frame's
        self.start_switch = 0     # auto start: from this start on, the sampler from s (0: never)
        self.base_settings = settings
        self.last_noise = float("nan")  # auto start: the last frame's condition noise (sRGB, [0, 1])
        self._color_fn = sampling.make_color_condition(color_model if color == "g" else None, color_params)

    # ---- construction ----------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str, *, method: Optional[str] = None, num_steps: Optional[int] = None,
                        color: Optional[str] = None, tile="train", overlap: Optional[int] = None, batch: int = 4,
                        eta: float = 0.0, use_ema: Optional[bool] = None,
                        step: Optional[int] = None, other_sampler: bool = False,
                        start=None, start_noise_factor: Optional[float] = None,
                        start_switch: Optional[int] = None) -> "DiffRAWPipeline":
        """Loads a weights folder or a training workdir (read-only, ``weights.load_inference``).

        ``method``/``num_steps``: default what the model's config asks for
        (``factory.sampler_settings``: "ddpm" for an epsilon-objective model,
        else ``sample.method``, ``sample.num_steps``). ``color``: default the
        model's own: "calibrated" for a model trained with ``model.condition =
        "calibrated"`` (then only "calibrated" or "image"), else "g" (the model's
        trained G; ValueError if there is none); or "classic" or "image".
        ``tile``: "train" (the training crop size, the default), a side or
        (H, W), or None / 0 for the whole frame. ``overlap``: default
        min(64, tile / 4) rounded down to even. ``use_ema``: default the
        config's ``sample.use_ema``; ``step``: a workdir's checkpoint step.
        ``other_sampler``: let a distilled student run a sampler other than the one it
        was distilled for (otherwise a ValueError saying which that is). ``start``: the step a
        dtdm_ddim sampler starts from (``factory.sampler_settings``; default s), or "auto": per
        frame, from the frame's measured noise (``auto_start``; a calibrated model only; for
        method "dtdm" it sets the ancestral steps instead, Algorithm 2 from m_t); default the
        model's ``sample.start``. ``start_noise_factor``: the auto start's noise in multiples of the
        frame's (default the model's ``sample.start_noise_factor``); ``start_switch``: the
        noise-matched start from which the sampler runs from s (default the model's
        ``sample.start_switch``; ``dtdm.file_sampler``).
        Raises FileNotFoundError, ValueError or RuntimeError (see ``load_inference``).
        """
        loaded = weights.load_inference(path, use_ema=use_ema, step=step, color_net=False)
        if loaded.config.task != "diffraw":
            raise ValueError(f"{path} is a {loaded.config.task!r} model, not a DiffRAW model")
        color = check_color(color, loaded.condition, path)
        if color == "g":
            loaded.color_net = weights.find_color_net(loaded.config, path)
        if start is None:  # the model's own: sample.start ("" = s, "auto")
            start = loaded.config.sample.start or None
        auto = isinstance(start, str)
        if auto and start != "auto":
            raise ValueError(f"start must be a step or 'auto', got {start!r}")
        try:
            auto_settings = factory.auto_start(loaded.config, start_noise_factor, start_switch, used=auto)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        settings = loaded.sampler_settings(method, num_steps, other_than_distilled=other_sampler,
                                           start=None if auto else start)
        if isinstance(tile, str):
            if tile != "train":
                raise ValueError(f"tile must be 'train', a size, (H, W) or None, got {tile!r}")
            tile = int(loaded.config.data.crop_size)
        if overlap is None:
            shape = tiling.as_tile_shape(tile)
            overlap = 64 if shape is None else min(64, (min(shape) // 4) // 2 * 2)
        g = loaded.color_net
        if color == "g" and g is None:
            raise ValueError(f"color 'g' needs a trained colour network G, but {path} names none "
                             f"(color_net.workdir {loaded.config.color_net.workdir!r}); "
                             "use color 'classic' or an image")
        pipe = cls(loaded.model, loaded.params, loaded.schedule, settings, eta=eta, color=color,
                   color_model=g.model if g else None, color_params=g.params if g else None,
                   tile=tile, overlap=overlap, batch=batch, config=loaded.config, step=loaded.step,
                   condition=loaded.condition)
        pipe.auto_start = auto
        pipe.start_noise_factor, pipe.start_switch = auto_settings
        return pipe

    def _check_tile(self, tile: Tuple[int, int]) -> None:
        th, tw = tile
        if th <= 0 or tw <= 0 or th % self.multiple or tw % self.multiple:
            raise ValueError(f"tile {th}x{tw} must be positive multiples of {self.multiple} "
                             f"(the U-Net's 2**(levels-1), and even)")

    @property
    def num_evaluations(self) -> int:
        """Network evaluations per tile: the sampler's step count (the last frame's under auto start)."""
        return self.settings.num_steps or self.settings.s

    # ---- colour condition ----------------------------------------------------
    def condition(self, prepared: camera.PreparedFrame, *, wb_gains=None, ccm=None,
                  color_image: Optional[np.ndarray] = None) -> np.ndarray:
        """Colour condition of the padded canonical frame, sRGB float32 [2h, 2w, 3] in [0, 1].

        ``color_image``: sRGB [H, W, 3] of the input frame in sensor layout
        (floats in [0, 1] or uint8/uint16); overrides the pipeline's ``color``.
        """
        planes = prepared.planes
        h, w = planes.shape[:2]
        if color_image is not None:
            img = camera.image_to_unit(color_image)
            if img.shape[:2] != (prepared.height, prepared.width):
                raise ValueError(f"colour image has shape {img.shape}, expected "
                                 f"{(prepared.height, prepared.width, 3)} (the frame's size)")
            p = prepared
            pad = ((p.top, 2 * h - p.top - p.height), (p.left, 2 * w - p.left - p.width), (0, 0))
            return np.pad(img, pad, mode="edge")
        if self.color == "image":
            raise ValueError("this pipeline was built with color='image': pass color_image")
        if self.color == "calibrated":
            raise ValueError("a calibrated model's condition comes from the frame's calibration: "
                             "use calibrated_inputs(prepared, frame)")
        wb = None if wb_gains is None else jnp.asarray(wb_gains, jnp.float32)
        m = None if ccm is None else jnp.asarray(ccm, jnp.float32)
        padded = planes if self.color == "classic" else camera.pad_planes(planes, 8)
        x = self._color_fn(jnp.asarray(padded)[None], wb, m)
        return np.asarray(sampling.to_unit_range(x))[0, : 2 * h, : 2 * w].astype(np.float32)

    # ---- sampling --------------------------------------------------------------
    def plan(self, height: int, width: int) -> tiling.TilePlan:
        """The tile plan for a padded canonical frame of [height, width] pixels."""
        if self.tile is None:
            self._check_tile((height, width))
        return tiling.TilePlan.make(height, width, self.tile, self.overlap, self.batch)

    def sampler(self, plan: tiling.TilePlan, progress: bool = False):
        """The jitted frame sampler ``fn(params, w, c, x, key)`` for ``plan`` (cached per plan).

        ``progress``: the variant that reports every network evaluation to the host (the
        progress bar). Its host callback keeps XLA from storing it in the persistent
        compilation cache, so it is used only when a bar is shown; without one the
        sampler has no callback and a second run loads it from the cache."""
        fn = self._samplers.get((plan, progress, self.settings))
        if fn is None:
            fn = self._samplers[(plan, progress, self.settings)] = sampling.make_sampler(
                self.model, self.schedule, self.settings, eta=self.eta, plan=plan,
                on_step=self._tick if progress else None, tile_sharding=self.sharding(plan))
        return fn

    def sharding(self, plan: tiling.TilePlan):
        """How ``plan`` uses this process's devices: its tile batches split over them
        (``tile_sharding``), or a whole frame (one tile) in bands of rows
        (``tiling.frame_sharding``); None: one device."""
        if len(plan.tiles) > 1:
            return self.tile_sharding
        return tiling.frame_sharding(self.tile_sharding, plan.height, self.multiple)

    def _tick(self):
        if self._bar is not None:
            self._bar.update(1)

    def sample_planes(self, planes: np.ndarray, cond01: np.ndarray, *, seed: int = 0,
                      progress: bool = False) -> np.ndarray:
        """planes [h, w, 4] in [0, 1], cond01 [2h, 2w, 3] in [0, 1] -> sRGB float32 [2h, 2w, 3] in [0, 1].

        One sample of the whole frame (tiled denoiser when it is larger than a
        tile), noise from ``jax.random.key(seed)``.
        """
        if not 0 <= int(seed) < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {seed}")
        planes = np.asarray(planes, np.float32)
        height, width = 2 * planes.shape[0], 2 * planes.shape[1]
        if cond01.shape != (height, width, 3):
            raise ValueError(f"condition shape {cond01.shape} != {(height, width, 3)}")
        plan = self.plan(height, width)
        c = sampling.to_model_range(jnp.asarray(cond01, jnp.float32))[None]
        self._bar = _progress(len(plan.tiles), self.num_evaluations, progress)
        fn = self.sampler(plan, progress=self._bar is not None)
        w = jnp.asarray(planes)[None]
        bands = self.sharding(plan) if len(plan.tiles) == 1 else None
        if bands is not None:  # the whole frame's inputs already in its bands over the devices
            w, c = jax.device_put(w, bands), jax.device_put(c, bands)
        try:
            y = fn(self.params, w, c, c, jax.random.key(int(seed)))
            out = np.asarray(sampling.to_unit_range(y))[0]
        finally:
            if self._bar is not None:
                self._bar.close()
            self._bar = None
        return out.astype(np.float32)

    def auto_start_settings(self, planes, exposure_ev: float) -> factory.SamplerSettings:
        """The sampler for one frame under ``start="auto"`` (docs/real-detail.md "The file-dependent
        sampler"): the noise-matched start t = ``dtdm.start_for_noise`` of ``start_noise_factor``
        times the condition's noise at mid-grey (``calibration.condition_noise`` of the frame's
        normalised planes [h, w, 4] at ``exposure_ev``). dtdm_ddim: ``dtdm.file_sampler`` -- one
        step from t below ``start_switch``, else the sampler as it is (from s); dtdm: t ancestral
        steps (Algorithm 2 from m_t). Sets ``last_noise``."""
        base = self.base_settings
        self.last_noise = calibration.condition_noise(planes, exposure_ev)
        t = dtdm.start_for_noise(self.schedule, base.s, self.start_noise_factor * self.last_noise)
        if t >= base.s or base.method == "ddpm":
            return base
        if base.method == "dtdm":
            return base._replace(num_steps=t, label=f"{base.label}, auto start t={t}")
        start, n = dtdm.file_sampler(base.s, base.num_steps or base.s, t, self.start_switch)
        if start == base.s:
            return base._replace(label=f"{base.label}, auto: noisy (t={t}), from s")
        label = base.label.replace(f"DDIM-{base.num_steps or base.s}", f"DDIM-{n}", 1)
        return base._replace(num_steps=n, start=start, label=f"{label}, auto start t={start}")

    # ---- entry points --------------------------------------------------------
    def calibrated_inputs(self, prepared: camera.PreparedFrame, frame: camera.BayerFrame):
        """A calibrated model's inputs: (balanced planes float32 [h, w, 4] in [0, 1], condition
        sRGB float32 [2h, 2w, 3] in [0, 1]) from the frame's calibration (``wb_gains``, gray
        world when None; ``ccm``, identity when None; ``baseline_exposure`` EV, applied as the
        file asks with LibRaw's highlight roll-off: ``calibration.balanced_planes``; the EV is
        kept in ``last_exposure``)."""
        planes = jnp.asarray(prepared.planes)
        wb = (isp_classic.gray_world_gains(planes) if frame.wb_gains is None
              else jnp.asarray(frame.wb_gains, jnp.float32))
        ccm = jnp.eye(3, dtype=jnp.float32) if frame.ccm is None else jnp.asarray(frame.ccm, jnp.float32)
        ev = float(frame.baseline_exposure or 0.0)
        self.last_exposure = ev
        w, cond = _calibrated_inputs(planes, wb, ccm, jnp.float32(ev))
        return np.asarray(w, np.float32), np.asarray(cond, np.float32)

    def inputs(self, prepared: camera.PreparedFrame, frame: camera.BayerFrame, color_image=None):
        """(planes [h, w, 4], condition [2h, 2w, 3]), float32 in [0, 1], of a prepared frame: the
        planes as prepared (balanced by the frame's calibration for a calibrated model,
        ``calibrated_inputs``) and the pipeline's colour condition (or ``color_image``). Under
        ``start="auto"`` it also sets the frame's sampler (``auto_start_settings``).
        ``warnings.warn`` when the colour used was guessed (``frame.color_source`` starts with
        ``camera.FALLBACK``: gray world, identity, a daylight default)."""
        if color_image is None and self.color in ("classic", "calibrated") and \
                str(frame.color_source).startswith(camera.FALLBACK):
            warnings.warn(f"colour guessed: {frame.color_source[len(camera.FALLBACK):]}", UserWarning, stacklevel=3)
        if self.calibrated_model:
            planes, cond = self.calibrated_inputs(prepared, frame)
            if self.auto_start:
                self.settings = self.auto_start_settings(prepared.planes, self.last_exposure)
                self.label = self.settings.label
            if color_image is not None:
                cond = self.condition(prepared, color_image=color_image)
            return planes, cond
        return prepared.planes, self.condition(prepared, wb_gains=frame.wb_gains, ccm=frame.ccm,
                                               color_image=color_image)

    def process(self, frame: camera.BayerFrame, *, seed: int = 0, color_image=None,
                progress: bool = False) -> np.ndarray:
        """BayerFrame -> sRGB float32 [H, W, 3] in [0, 1]: the whole mosaic, oriented by ``frame.flip``.

        ``color_image``: an sRGB colour condition of the frame in sensor layout
        ([H, W, 3]; ``camera.read_color_image`` un-orients a displayed image).
        """
        prepared = camera.prepare_frame(frame)
        planes, cond = self.inputs(prepared, frame, color_image)
        out = self.sample_planes(planes, cond, seed=seed, progress=progress)
        return camera.finish(out, prepared)

    def __call__(self, mosaic, *, black_level: camera.Level = raw.ZRR_BLACK_LEVEL,
                 white_level: camera.Level = raw.ZRR_WHITE_LEVEL, cfa: str = raw.ZRR_PATTERN,
                 seed: int = 0, wb_gains=None, ccm=None, baseline_exposure: float = 0.0, color_image=None,
                 flip: int = 0, progress: bool = False) -> np.ndarray:
        """Bayer mosaic [H, W] (``cfa`` layout, codes) -> sRGB float32 [H, W, 3] in [0, 1].

        ``black_level``/``white_level``: scalars or 4 values in canonical order
        (R, Gr, Gb, B); ZRR's by default. ``wb_gains``/``ccm`` feed the classical
        ISP (gray world / identity when None) or a calibrated model; ``baseline_exposure``
        (EV) is a calibrated model's exposure. ``flip``: LibRaw orientation code.
        """
        given = [name for name, v in (("white balance", wb_gains), ("colour matrix", ccm)) if v is not None]
        guessed = [name for name, v in (("gray-world white balance", wb_gains),
                                        ("an identity colour matrix", ccm)) if v is None]
        source = ("the caller's " + " and ".join(given)) if given else "no colour given"
        if guessed:
            source = f"{camera.FALLBACK}{source}: {' and '.join(guessed)}"
        frame = camera.BayerFrame(mosaic=np.asarray(mosaic), cfa=raw.check_pattern(cfa),
                                  black_level=black_level, white_level=white_level,
                                  wb_gains=wb_gains, ccm=ccm, flip=flip,
                                  baseline_exposure=float(baseline_exposure), color_source=source)
        return self.process(frame, seed=seed, color_image=color_image, progress=progress)

    def from_file(self, path: str, *, seed: int = 0, color_image=None, progress: bool = False) -> np.ndarray:
        """A camera RAW file -> sRGB float32 [H, W, 3] in [0, 1] (``camera.read_camera_raw``: a DNG's
        own colour tags and BaselineExposure, else LibRaw's tables), oriented."""
        return self.process(camera.read_camera_raw(path), seed=seed, color_image=color_image, progress=progress)

    def from_rawpy(self, raw_obj, path: Optional[str] = None, *, seed: int = 0, color_image=None,
                   progress: bool = False) -> np.ndarray:
        """An open ``rawpy.RawPy`` -> sRGB float32 [H, W, 3] in [0, 1] (``camera.frame_from_rawpy``).

        ``path``: the file ``raw_obj`` was opened from; with it the picture is ``from_file``'s
        (a DNG's own tags, GainMap and DefaultCrop); without it LibRaw's reading, with a
        warning that the file's own tags could not be read."""
        return self.process(camera.frame_from_rawpy(raw_obj, path), seed=seed, color_image=color_image,
                            progress=progress)


#: The colour conditions a pipeline can use (``DiffRAWPipeline`` ``color``).
COLORS = ("g", "classic", "calibrated", "image")

#: A calibrated model's inputs at inference: the exposure with LibRaw's highlight roll-off.
_calibrated_inputs = jax.jit(functools.partial(calibration.network_inputs, rolloff=True))


def check_color(color: Optional[str], condition: str, path: str = "the model") -> str:
    """The colour condition to use for a model trained with ``condition`` ("paper" or
    "calibrated"): ``color`` (None: the model's own, "calibrated" or "g"), checked.
    ValueError in one line for a condition the model was not trained with."""
    if color is None:
        return "calibrated" if condition == "calibrated" else "g"
    if color not in COLORS:
        raise ValueError(f"color must be one of {COLORS}, got {color!r}")
    if condition == "calibrated" and color in ("g", "classic"):
        raise ValueError(f"{path} takes its colour from each file's calibration (model.condition "
                         f"'calibrated'): color must be 'calibrated' or an image, not {color!r}")
    if condition != "calibrated" and color == "calibrated":
        raise ValueError(f"{path} was trained with the paper's condition (G or the classical ISP), "
                         "not with calibrated colour: use color 'g', 'classic' or an image")
    return color


def _progress(tiles: int, steps: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional for the API
        return None
    if not sys.stderr.isatty():  # no bar for logs and pipes (and no host callback in the sampler)
        return None
    return tqdm(total=steps, desc=f"sampling ({tiles} tile{'s' * (tiles > 1)})", unit="step", leave=False)

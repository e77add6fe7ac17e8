"""Evaluation during training: a few test images every ``train.eval_every_steps``.

``PeriodicEval(config, model, schedule, test_source, workdir)`` picks the first
``train.eval_num_images`` test images once (``input_pipeline.first_images``: centre
crop ``eval.crop_size``, mosaic pixels, 0: whole images; the config's black/white
levels), computes their condition c = x = G(w) with the trained G that
``color_net.workdir`` names (``weights.find_color_net``; the classical ISP if there
is none), and compiles one sampler: DTDM-DDIM with ``eval.ddim_steps`` steps (10 if
0), or DDPM for a ``diffusion.objective = "ddpm"`` model. Each call samples the
images with the current EMA parameters (laid out as the trainer does), writes PSNR, SSIM
and LPIPS-Alex (``metrics.compute_metrics``: LiteISPNet's protocol on 8-bit images,
"original" GT) as scalars and a sample grid (classical ISP | c = G(w) | DiffRAW |
DSLR) as an image summary to the metric writer (TensorBoard), and logs one line.
It samples through evaluation's path (``evaluate.ShardedSampler``): the images split
over every device of every process (padded to a multiple of the device count), the
parameters laid out as in training, image i with ``fold_in(key(seed + 2), i)``; every
process reads the same images and takes part in the sampling (a collective); process 0
alone computes the scores (LPIPS included) and writes them.

Its cost is one sampler call on a handful of images, i.e. the share a user
picks with ``eval_every_steps`` and ``eval_num_images``; it returns the
seconds it took so the trainer can report it.
"""
from __future__ import annotations

import logging
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffraw_jax import calibration, isp_classic, parallel, sampling
from diffraw_jax.evaluation import evaluate, metrics
from diffraw_jax.data import input_pipeline
from diffraw_jax.checkpoints import weights
from diffraw_jax.models import factory

log = logging.getLogger(__name__)

DEFAULT_DDIM_STEPS = 10
LABELS = ["classical ISP", "c (G(w) or calibrated)", "DiffRAW", "DSLR"]
SCORES = ("psnr", "ssim", "lpips")


class PeriodicEval:
    """Samples a fixed set of test images with the training run's EMA parameters."""

    def __init__(self, config, model, schedule, test_source, workdir: str, mesh=None):
        n = int(config.train.eval_num_images)
        if min(n, len(test_source)) < 1:
            raise ValueError("evaluation during training needs train.eval_num_images >= 1 and a "
                             "non-empty test split")
        # The same images on every process; the sampling is split over every device.
        batch = input_pipeline.first_batch(config, n, config.eval.crop_size, test_source)
        self.w = np.asarray(batch["raw"], np.float32)
        self.y01 = np.asarray(sampling.to_unit_range(jnp.asarray(batch["dslr"])))
        calibrated = factory.model_condition(config) == "calibrated"
        self.calibration = {k: batch[k] for k in calibration.KEYS} if calibrated else None
        g = None if calibrated else weights.find_color_net(config, workdir)
        if config.diffusion.objective == "ddpm" or factory.is_distilled(config):  # its own sampler
            settings = factory.sampler_settings(config)
        else:
            settings = factory.sampler_settings(config, "dtdm_ddim",
                                                config.eval.ddim_steps or DEFAULT_DDIM_STEPS)
        self.label = settings.label
        mesh = mesh if mesh is not None else parallel.create_mesh(config.mesh.fsdp)
        # evaluate's path: parameters laid out as in training, per-example keys.
        self.sampler = evaluate.ShardedSampler(
            mesh, factory.param_shardings(model, mesh), {self.label: sampling.make_sampler(model, schedule, settings)},
            sampling.color_condition(g), jax.random.key(config.seed + 2), {"classic": isp_classic.process},
            calibrated=calibrated)
        self.grid_images = max(1, min(len(self.w), int(config.eval.grid_images)))
        self.color_note = ("the calibrated ISP" if calibrated else
                           "G" if g is not None else "classical ISP (no trained G)")

    def __call__(self, step: int, params, writer) -> float:
        """Samples, writes scalars and the grid at ``step``; returns the seconds taken.
        ``params``: the EMA parameters laid out by ``factory.param_shardings`` (the trainer's)."""
        t0 = time.perf_counter()
        outs = self.sampler(params, self.w, calibration_=self.calibration)  # every process
        if jax.process_index() != 0:  # the scores are process 0's to compute and write
            return time.perf_counter() - t0
        out01 = outs[self.label]
        scores = metrics.mean_scores(metrics.compute_metrics(out01, self.y01, metrics=SCORES))
        scalars = {f"eval/{self.label}/{m}": scores[m] for m in SCORES}
        seconds = time.perf_counter() - t0
        writer.write_scalars(step, {**scalars, "eval/seconds": seconds})
        rows = [[outs["classic"][i], outs["c"][i], out01[i], self.y01[i]] for i in range(self.grid_images)]
        writer.write_images(step, {"eval/samples": evaluate.grid_image(rows, LABELS)[None]})
        log.info("eval step %d: %s on %d test images (c: %s): PSNR %.2f  SSIM %.4f  LPIPS %.4f  (%s)",
                 step, self.label, len(self.w), self.color_note, scalars[f"eval/{self.label}/psnr"],
                 scalars[f"eval/{self.label}/ssim"], scalars[f"eval/{self.label}/lpips"],
                 f"{seconds:.1f} s")
        return seconds

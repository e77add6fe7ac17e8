"""Inference: camera RAW in, sRGB out.

  camera    frames from mosaics / camera RAWs, colour conditions, orientation
  pipeline  ``DiffRAWPipeline`` (whole-frame sampling with a tiled denoiser)
  export    the sampler as a ``jax.export`` artifact
  cli       the ``diffraw`` command (run, export-weights)

Models load through ``diffraw_jax.weights`` (read-only). Nothing here imports the
trainer, evaluation, the data pipeline, grain, tfds, clu or optax.
"""
from diffraw_jax.inference.camera import BayerFrame, frame_from_rawpy, prepare_frame  # noqa: F401
from diffraw_jax.inference.pipeline import DiffRAWPipeline  # noqa: F401

"""Inference: camera RAW in, sRGB out.

  camera    frames from mosaics / camera RAWs, colour conditions, orientation
  pipeline  ``DiffRAWPipeline`` (whole-frame sampling with a tiled denoiser)
  export    the sampler as a ``jax.export`` artifact (loading one needs no model code)
  outputs   output files: PNG / 16-bit TIFF / JPEG bytes with the sRGB ICC profile and camera EXIF
  cli       the ``diffraw`` command (run, export-weights)

Models load through ``diffraw_jax.checkpoints.weights`` (read-only). Nothing here imports the
trainer, evaluation, the data pipeline, grain, tfds, clu or optax. Submodules are
imported when first used (``from diffraw_jax.inference import DiffRAWPipeline``).
"""
import importlib

_LAZY = {"DiffRAWPipeline": "pipeline", "BayerFrame": "camera", "frame_from_rawpy": "camera",
         "prepare_frame": "camera"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)

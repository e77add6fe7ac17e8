"""Data: the training/evaluation input pipeline (``input_pipeline``, TFDS + grain), the
synthetic ZRR-like generator (``synthetic_zrr``) and a DNG writer for test files
(``dng_writer``).

Uses Core and ``tfds_zrr``; never training, evaluation or inference. ``import
diffraw_jax`` imports nothing from here.
"""

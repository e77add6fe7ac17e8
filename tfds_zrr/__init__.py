"""TFDS builder for the Zurich RAW-to-RGB dataset; `import tfds_zrr` registers "zrr".

Importing it loads tensorflow_datasets (not TensorFlow). This package holds only
the builder (`zrr`) and its command (`build`); the synthetic-data generator is
`diffraw_jax.data.synthetic_zrr` and the DNG writer `diffraw_jax.data.dng_writer`.
"""
from tfds_zrr.zrr import Zrr, MANUAL_DOWNLOAD_INSTRUCTIONS, DataLayoutError  # noqa: F401  registers "zrr"

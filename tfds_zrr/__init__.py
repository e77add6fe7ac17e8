"""TFDS builder for the Zurich RAW-to-RGB dataset; `import tfds_zrr` registers "zrr".

Importing it loads tensorflow_datasets (not TensorFlow). The synthetic-data
generator lives in `tfds_zrr.synthetic`.
"""
from tfds_zrr.zrr import Zrr, MANUAL_DOWNLOAD_INSTRUCTIONS, DataLayoutError  # noqa: F401  registers "zrr"

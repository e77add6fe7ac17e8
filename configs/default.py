"""Base configuration: every field the trainer reads, with the paper's values.

The schema itself is ``diffraw_jax.runtime.configuration.default_config`` (in the package,
so that loading a saved config needs no configs/ folder). Other configs start
from `get_config()` here and change what they need. Override any field on the
command line: `--config.optim.learning_rate=2e-4`.
"""
import ml_collections

from diffraw_jax.runtime import configuration


def get_config() -> ml_collections.ConfigDict:
    return configuration.default_config()

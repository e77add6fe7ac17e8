"""diffraw-jax: DiffRAW (AAAI 2024) in JAX/Flax.

Importing the package loads only jax, flax, optax and numpy. TensorFlow,
TFDS, clu and grain are imported lazily by the modules that need them.
"""
__version__ = "0.1.0"

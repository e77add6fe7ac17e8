import os
import tempfile

# Tests run on the CPU, whatever accelerator the machine has; multi-device
# tests start their own subprocess with XLA_FLAGS set (they inherit the rest).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compile time dominates these tiny programs on CPU: skip XLA's expensive
# backend passes and cache compiled programs across tests and subprocesses.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "diffraw_jax_test_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

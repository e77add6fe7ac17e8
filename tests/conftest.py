import os

# Tests run on the CPU, whatever accelerator the machine has; multi-device
# tests start their own subprocess with XLA_FLAGS set.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

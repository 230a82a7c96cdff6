"""Test setup: 8 fake CPU devices, set before JAX is imported anywhere."""

import os

# The micro programs compile for longer than they run: LLVM at -O0 (XLA's HLO passes still run;
# the machine code is slower) takes test_phenaki + test_cvivit from 245 s to 179 s on a 2-core
# Zen 3.
FAST_COMPILE = "--xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {FAST_COMPILE}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

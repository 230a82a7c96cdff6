"""Multi-host start-up: `jax.distributed.initialize()` when launched on a multi-host slice."""

import os

import jax

# Set by Cloud TPU VMs of a multi-host slice, by SLURM, or by the user for a GPU cluster.
_MULTIHOST_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS",
                  "TPU_WORKER_HOSTNAMES", "SLURM_JOB_NUM_NODES")


def _is_multihost_launch():
  if os.environ.get("JZOO_DISTRIBUTED", "").lower() in ("1", "true"):
    return True
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  if "," in hosts and " " not in hosts:  # libtpu puts a warning sentence here off-TPU
    return True
  nodes = os.environ.get("SLURM_JOB_NUM_NODES")
  if nodes and int(nodes) > 1:
    return True
  return bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))


def maybe_initialize():
  """Initialises the distributed runtime once, only on multi-host launches (no flags needed)."""
  if _is_multihost_launch() and not jax.distributed.is_initialized():
    jax.distributed.initialize()

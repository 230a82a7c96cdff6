"""Multi-host start-up: `jax.distributed.initialize()` when launched on a multi-host slice.

On Cloud TPU VMs and SLURM, JAX finds the coordinator by itself. Anywhere else
(a GPU cluster without SLURM, or several processes on one machine) set
`JAX_COORDINATOR_ADDRESS=host:port`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`
on every process.
"""

import os

import jax


def _is_multihost_launch():
  if os.environ.get("JZOO_DISTRIBUTED", "").lower() in ("1", "true"):
    return True
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  if "," in hosts and " " not in hosts:  # libtpu puts a warning sentence here off-TPU
    return True
  nodes = os.environ.get("SLURM_JOB_NUM_NODES")
  if nodes and nodes.isdigit() and int(nodes) > 1:
    return True
  return bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))


def maybe_initialize():
  """Initialises the distributed runtime once, only on multi-host launches (no flags needed)."""
  if not _is_multihost_launch() or jax.distributed.is_initialized():
    return
  # Cross-process collectives of the CPU backend (tests, CPU clusters); other backends ignore it.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {}
  if os.environ.get("JAX_COORDINATOR_ADDRESS") and os.environ.get("JAX_NUM_PROCESSES"):
    kwargs = dict(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                  num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                  process_id=int(os.environ["JAX_PROCESS_ID"]))
  jax.distributed.initialize(**kwargs)

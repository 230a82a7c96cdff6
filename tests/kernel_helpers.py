"""Shared by the attention kernels' tests: random inputs and outputs with their gradients."""

import jax
import jax.numpy as jnp
import numpy as np


def random_qkv(seed, q_shape, k_shape=None, dtype=jnp.float32):
  """(q, k, v, cotangent) from a seeded normal; k and v of `k_shape` (default: q's)."""
  rng = np.random.default_rng(seed)
  k_shape = q_shape if k_shape is None else k_shape
  return tuple(jnp.asarray(rng.standard_normal(s), dtype)
               for s in (q_shape, k_shape, k_shape, q_shape))


def value_and_grads(fn, q, k, v, cot):
  """Output and (dq, dk, dv) for the cotangent `cot`, in one jit."""

  @jax.jit
  def run(q, k, v, cot):
    out, vjp = jax.vjp(fn, q, k, v)
    return out, vjp(cot)

  return run(q, k, v, cot)


def v5e_mesh(shape=(2, 2), axes=("data", "tensor")):
  """A Mesh over a v5e:2x2 TPU topology, for compiling TPU kernels ahead of time on this CPU;
  skips the test where libtpu is not installed."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import pytest  # pylint: disable=g-import-not-at-top
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh  # pylint: disable=g-import-not-at-top
  if importlib.util.find_spec("libtpu") is None:
    pytest.skip("libtpu is not installed (pip install 'jzoo[tpu]')")
  # Tests and other tools may hold libtpu's lockfile; compiling needs no exclusive TPU.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  topology = topologies.get_topology_desc(topology_name="v5e:2x2", platform="tpu")
  return Mesh(np.asarray(topology.devices).reshape(shape), axes)

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


def assert_tpu_kernel_compiles(attend, shape, mesh=None):
  """`attend(q, k, v)` on bf16 [B, T, H, W, heads, D] of `shape`, forward and backward inside
  shard_map (batch over "data", heads over "tensor"), lowers to the TPU kernel's three custom
  calls (forward, dQ, dK/dV) and compiles for a v5e slice."""
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  mesh = mesh or v5e_mesh()
  spec = P("data", None, None, None, "tensor", None)
  x = jax.ShapeDtypeStruct(shape, jnp.bfloat16, sharding=NamedSharding(mesh, spec))

  def loss(q, k, v):
    out = jax.shard_map(attend, mesh=mesh, in_specs=(spec,) * 3, out_specs=spec,
                        check_vma=False)(q, k, v)
    return jnp.sum(out.astype(jnp.float32))

  lowered = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(x, x, x)
  assert lowered.as_text().count("tpu_custom_call") == 3  # forward, dQ, dK/dV
  assert lowered.compile().memory_analysis() is not None


def assert_matches(fn, ref, q, k, v, cot, tol):
  """`fn`'s output and (dq, dk, dv) equal `ref`'s within `tol` (absolute), shape and dtype kept."""
  out, grads = value_and_grads(fn, q, k, v, cot)
  want, want_grads = value_and_grads(ref, q, k, v, cot)
  assert out.shape == q.shape and out.dtype == q.dtype
  np.testing.assert_allclose(out, want, atol=tol, rtol=0)
  for name, got, exp in zip("qkv", grads, want_grads):
    assert np.isfinite(got).all(), f"d{name} not finite"
    np.testing.assert_allclose(got, exp, atol=tol, rtol=0, err_msg=f"d{name}")

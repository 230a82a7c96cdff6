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

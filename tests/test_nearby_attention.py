"""3D nearby attention: every implementation against the dense masked reference."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jzoo.kernels.nearby_attention import api, reference, xla
from jzoo.kernels.nearby_attention import _tiles, pallas_gpu, pallas_tpu
from jzoo.kernels import nearby_attention
from jzoo.nn import sharded_attention as sharded
from jzoo.nn.sharded_attention import sharded_nearby_attention
from tests.kernel_helpers import random_qkv as _inputs
from tests.kernel_helpers import v5e_mesh
from tests.kernel_helpers import assert_matches
from tests.kernel_helpers import value_and_grads as _value_and_grads

TOL = 1e-5


def _assert_matches_reference(fn, q_shape, k_shape, radius, causal, seed=0):
  q, k, v, cot = _inputs(seed, q_shape, k_shape)
  ref = lambda q, k, v: reference.nearby_attention(q, k, v, radius=radius, causal=causal)
  assert_matches(fn, ref, q, k, v, cot, TOL)


def _brute_force_mask(q_grid, k_grid, radius, causal):
  """NUWA's definition with Python loops: the check on the reference's own mask."""
  qs = list(itertools.product(*map(range, q_grid)))
  ks = list(itertools.product(*map(range, k_grid)))
  mask = np.zeros((len(qs), len(ks)), bool)
  for a, qc in enumerate(qs):
    centre = [qc[d] * k_grid[d] // q_grid[d] for d in range(3)]
    for b, kc in enumerate(ks):
      mask[a, b] = all(abs(kc[d] - centre[d]) <= radius[d] for d in range(3))
      if causal and b > a:  # raster order: index in the flattened (t, h, w) grid
        mask[a, b] = False
  return mask


# (q grid, k grid, radius, causal): equal, coarser and finer key grids, zero and
# oversized radii.
CASES = [
    ((3, 5, 6), (3, 5, 6), (1, 1, 2), False),
    ((3, 5, 6), (3, 5, 6), (1, 2, 1), True),
    ((4, 6, 5), (2, 3, 7), (1, 1, 2), False),
    ((2, 3, 4), (5, 7, 9), (0, 1, 1), False),
    ((2, 3, 3), (2, 3, 3), (5, 9, 7), True),
    ((3, 4, 4), (1, 2, 8), (4, 0, 20), False),
    ((1, 1, 7), (1, 1, 7), (0, 0, 0), True),
]


@pytest.mark.parametrize("q_grid,k_grid,radius,causal", [
    ((2, 3, 4), (2, 3, 4), (1, 1, 1), False),
    ((2, 3, 4), (2, 3, 4), (0, 2, 1), True),
    ((3, 2, 5), (2, 4, 3), (1, 0, 1), False),
])
def test_reference_mask_is_the_definition(q_grid, k_grid, radius, causal):
  got = np.asarray(reference.nearby_mask(q_grid, k_grid, radius, causal))
  np.testing.assert_array_equal(got, _brute_force_mask(q_grid, k_grid, radius, causal))


def test_reference_with_huge_radius_is_full_attention():
  q, k, v, _ = _inputs(1, (2, 2, 3, 4, 2, 8), (2, 3, 2, 2, 2, 8))
  got = reference.nearby_attention(q, k, v, radius=(9, 9, 9))
  want = jax.nn.dot_product_attention(q.reshape(2, 24, 2, 8), k.reshape(2, 12, 2, 8),
                                      v.reshape(2, 12, 2, 8), implementation="xla")
  np.testing.assert_allclose(got.reshape(want.shape), want, atol=TOL)


@pytest.mark.parametrize("q_grid,k_grid,radius,causal", CASES)
def test_xla_matches_reference(q_grid, k_grid, radius, causal):
  # chunk_tokens=16: one block of frames per scan step, so chunk halos are exercised.
  fn = lambda q, k, v: xla.nearby_attention(q, k, v, radius=radius, causal=causal,
                                            chunk_tokens=16)
  _assert_matches_reference(fn, (2, *q_grid, 3, 8), (2, *k_grid, 3, 8), radius, causal)


@pytest.mark.parametrize("block", [(1, 1, 1), (2, 4, 8)])  # tiny; uneven and past the grid
def test_xla_block_sizes(block):
  radius = (1, 2, 1)
  fn = lambda q, k, v: xla.nearby_attention(q, k, v, radius=radius, causal=True, block=block)
  _assert_matches_reference(fn, (1, 3, 5, 6, 2, 4), (1, 3, 5, 6, 2, 4), radius, True)


def test_xla_memory_is_linear_in_tokens():
  """Forward + backward temporaries grow like N (dense would grow like N^2)."""

  def temp_bytes(frames):
    x = jax.ShapeDtypeStruct((1, frames, 16, 16, 1, 8), jnp.float32)
    loss = lambda q, k, v: jnp.sum(xla.nearby_attention(q, k, v, radius=(1, 2, 2)))
    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    return grad.lower(x, x, x).compile().memory_analysis().temp_size_in_bytes

  small, big = temp_bytes(8), temp_bytes(32)  # 2048 and 8192 tokens
  assert big < 4.5 * small, (small, big)
  assert big < (32 * 16 * 16) ** 2 * 4 / 8  # an eighth of one dense f32 logit matrix


PALLAS_CASES = [
    # Several query and key tiles, with rows of the grid split across tiles.
    ((3, 5, 6), (3, 5, 6), (1, 2, 1), True, 16, 8),
    ((4, 6, 5), (2, 3, 7), (1, 1, 2), False, 8, 8),
    ((2, 3, 3), (2, 3, 3), (5, 5, 5), False, 8, 16),
]


@pytest.mark.parametrize("q_grid,k_grid,radius,causal,bq,bk", PALLAS_CASES)
def test_pallas_tpu_interpret_matches_reference(q_grid, k_grid, radius, causal, bq, bk):
  fn = lambda q, k, v: pallas_tpu.nearby_attention(
      q, k, v, radius=radius, causal=causal, block_q=bq, block_k=bk, interpret=True)
  _assert_matches_reference(fn, (2, *q_grid, 2, 8), (2, *k_grid, 2, 8), radius, causal)


@pytest.mark.parametrize("q_grid,k_grid,radius,causal,bq,bk", PALLAS_CASES[:2])
def test_pallas_gpu_interpret_matches_reference(q_grid, k_grid, radius, causal, bq, bk):
  # head_dim 12 exercises the padding to a power of two.
  fn = lambda q, k, v: pallas_gpu.nearby_attention(
      q, k, v, radius=radius, causal=causal, block_q=bq, block_k=bk, interpret=True)
  _assert_matches_reference(fn, (1, *q_grid, 2, 12), (1, *k_grid, 2, 12), radius, causal)


@pytest.mark.parametrize("q_grid,k_grid,radius,causal", CASES)
@pytest.mark.parametrize("bq,bk", [(8, 16), (32, 8)])
def test_visit_tables_cover_the_reference_mask(q_grid, k_grid, radius, causal, bq, bk):
  visit = _tiles.visit_matrix(q_grid, k_grid, radius, causal, bq, bk)
  mask = np.asarray(reference.nearby_mask(q_grid, k_grid, radius, causal))
  nq, nk = mask.shape
  mask = np.pad(mask, ((0, -nq % bq), (0, -nk % bk)))
  needed = mask.reshape(visit.shape[0], bq, visit.shape[1], bk).any(axis=(1, 3))
  assert not (needed & ~visit).any(), "a needed key tile would be skipped"
  if q_grid == k_grid:
    np.testing.assert_array_equal(visit, needed)  # exact: nothing visited in vain


def test_pallas_skips_far_key_tiles():
  """At the benchmark shape the kernels visit a small fraction of the tiles."""
  shape = (1, 16, 32, 32, 4, 32)
  visited = pallas_tpu.visited_tiles(shape, shape, radius=(1, 2, 2))
  assert visited / (128 * 128) < 0.08


def test_auto_dispatch():
  assert api.resolve_impl("auto", "cpu") == "xla"
  assert api.resolve_impl("auto", "tpu") == "pallas_tpu"
  assert api.resolve_impl("auto", "gpu") == "pallas_gpu"
  assert api.resolve_impl("pallas", "cpu") == "pallas_tpu"
  radius = (1, 1, 1)
  fn = lambda q, k, v: nearby_attention(q, k, v, radius=radius, causal=True)
  _assert_matches_reference(fn, (1, 2, 3, 4, 2, 8), (1, 2, 3, 4, 2, 8), radius, True)


def test_bfloat16_close_to_reference():
  q, k, v, _ = _inputs(2, (1, 3, 4, 5, 2, 16), (1, 3, 4, 5, 2, 16), jnp.bfloat16)
  got = jax.jit(lambda q, k, v: nearby_attention(q, k, v, radius=(1, 1, 1)))(q, k, v)
  f32 = lambda x: x.astype(jnp.float32)
  want = reference.nearby_attention(f32(q), f32(k), f32(v), radius=(1, 1, 1))
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(f32(got), want, atol=3e-2)


@pytest.mark.parametrize("kwargs,match", [
    (dict(radius=(1, 1)), "three non-negative"),
    (dict(radius=(1, -1, 1)), "three non-negative"),
    (dict(radius=(1, 1, 1), impl="dense"), "impl must be"),
])
def test_bad_arguments(kwargs, match):
  q = jnp.zeros((1, 2, 2, 2, 1, 4))
  with pytest.raises(ValueError, match=match):
    nearby_attention(q, q, q, **kwargs)


def test_causal_needs_equal_grids():
  q, k = jnp.zeros((1, 2, 2, 2, 1, 4)), jnp.zeros((1, 2, 2, 3, 1, 4))
  with pytest.raises(ValueError, match="equal query and key grids"):
    nearby_attention(q, k, k, radius=(1, 1, 1), causal=True)


def _mesh():
  return Mesh(np.asarray(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))


def test_sharded_matches_reference():
  mesh = _mesh()
  radius = (1, 1, 2)
  spec = P(("data", "fsdp"), None, None, None, "tensor", None)
  q, k, v, cot = _inputs(3, (4, 2, 3, 5, 2, 8), (4, 2, 3, 5, 2, 8))
  q, k, v, cot = (jax.device_put(x, NamedSharding(mesh, spec)) for x in (q, k, v, cot))
  fn = lambda q, k, v: sharded_nearby_attention(q, k, v, mesh=mesh, radius=radius, causal=True)
  out, grads = _value_and_grads(fn, q, k, v, cot)
  assert out.sharding.spec == spec
  ref = lambda q, k, v: reference.nearby_attention(q, k, v, radius=radius, causal=True)
  want, want_grads = _value_and_grads(ref, q, k, v, cot)
  np.testing.assert_allclose(out, want, atol=TOL)
  for got, exp in zip(grads, want_grads):
    np.testing.assert_allclose(got, exp, atol=TOL)


def test_sharded_refuses_to_split_the_grid():
  mesh = _mesh()
  rules = (("batch", "data"), ("frames", "tensor"), ("heads", None))
  q = jnp.zeros((2, 2, 2, 2, 1, 4))
  with pytest.raises(ValueError, match="cannot shard axis 'frames'"):
    sharded_nearby_attention(q, q, q, mesh=mesh, radius=(1, 1, 1), rules=rules)


def test_logical_to_spec_uses_first_rule_and_drops_unknown_axes():
  mesh = _mesh()
  rules = (("batch", ("data", "pod")), ("batch", "fsdp"), ("heads", "tensor"))
  spec = sharded.logical_to_spec(sharded.LOGICAL_AXES, rules, mesh)
  assert spec == P("data", None, None, None, "tensor", None)


def test_pallas_gpu_lowers_to_triton_for_cuda():
  """Lowers (Python -> Triton IR) for CUDA without a GPU; PTX compilation needs one."""
  x = jax.ShapeDtypeStruct((1, 4, 8, 8, 2, 32), jnp.bfloat16)
  loss = lambda q, k, v: jnp.sum(pallas_gpu.nearby_attention(q, k, v, radius=(1, 2, 2),
                                                             causal=True).astype(jnp.float32))
  grad = jax.grad(loss, argnums=(0, 1, 2))
  text = jax.jit(grad).trace(x, x, x).lower(lowering_platforms=("cuda",)).as_text()
  assert text.count("xla.gpu.triton") == 3  # forward, dQ, dK/dV


# On a GPU, compiled (not interpreted): default 64 x 64 tiles, grids that are not powers of
# two, coarser key grids, causal masks, and bfloat16.
GPU_CASES = [
    ((4, 8, 8), (4, 8, 8), (1, 2, 2), True, 32),
    ((3, 10, 12), (3, 10, 12), (1, 2, 2), False, 64),
    ((5, 6, 7), (5, 6, 7), (2, 1, 3), True, 12),
    ((4, 12, 10), (2, 6, 5), (1, 1, 2), False, 64),
    ((16, 16, 16), (16, 16, 16), (1, 2, 2), True, 64),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("q_grid,k_grid,radius,causal,d", GPU_CASES)
def test_pallas_gpu_on_gpu_matches_reference(q_grid, k_grid, radius, causal, d, dtype):
  if jax.default_backend() != "gpu":
    pytest.skip("needs a GPU (run with JAX_PLATFORMS=cuda)")
  q, k, v, cot = _inputs(3, (2, *q_grid, 2, d), (2, *k_grid, 2, d), jnp.dtype(dtype))
  fn = lambda q, k, v: pallas_gpu.nearby_attention(q, k, v, radius=radius, causal=causal)
  out, grads = _value_and_grads(fn, q, k, v, cot)
  # The truth: the dense reference in float32 at full matmul precision (no TF32), on the
  # same (possibly bfloat16-rounded) inputs.
  f32 = lambda x: x.astype(jnp.float32)
  ref = lambda q, k, v: reference.nearby_attention(q, k, v, radius=radius, causal=causal)
  with jax.default_matmul_precision("highest"):
    want, want_grads = _value_and_grads(ref, f32(q), f32(k), f32(v), f32(cot))
  assert out.shape == q.shape and out.dtype == q.dtype
  atol = 1e-4 if dtype == "float32" else 3e-2
  np.testing.assert_allclose(f32(out), want, atol=atol, rtol=0)
  for name, got, exp in zip("qkv", grads, want_grads):
    scale = float(jnp.max(jnp.abs(exp)))  # gradients sum over many terms: relative to their size
    np.testing.assert_allclose(f32(got) / scale, exp / scale, atol=atol, rtol=0,
                               err_msg=f"d{name}")


@pytest.mark.tpu_aot
def test_pallas_tpu_compiles_ahead_of_time_for_v5e():
  """The TPU kernel, forward and backward, inside shard_map, compiled for a v5e slice."""
  mesh = v5e_mesh((2, 1, 2), ("data", "fsdp", "tensor"))
  spec = P(("data", "fsdp"), None, None, None, "tensor", None)
  sds = lambda s: jax.ShapeDtypeStruct(s, jnp.bfloat16, sharding=NamedSharding(mesh, spec))
  for q_shape, k_shape, causal in [((4, 8, 16, 16, 4, 64), (4, 8, 16, 16, 4, 64), True),
                                   ((2, 4, 10, 12, 2, 128), (2, 2, 5, 7, 2, 128), False)]:
    def loss(q, k, v, causal=causal):
      out = sharded_nearby_attention(q, k, v, mesh=mesh, radius=(1, 2, 2), causal=causal)
      return jnp.sum(out.astype(jnp.float32))

    q, k = sds(q_shape), sds(k_shape)
    lowered = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(q, k, k)
    assert lowered.as_text().count("tpu_custom_call") == 3  # forward, dQ, dK/dV
    compiled = lowered.compile()
    assert compiled.memory_analysis() is not None

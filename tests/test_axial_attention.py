"""Axial attention: every implementation against the dense masked reference."""

import importlib.util
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jzoo.kernels import _common
from jzoo.kernels.axial_attention import reference, xla
from jzoo.kernels.axial_attention import axial_attention
from jzoo.kernels.window_attention import reference as window_reference
from jzoo.kernels.window_attention import window_attention
from tests.kernel_helpers import random_qkv
from tests.kernel_helpers import assert_tpu_kernel_compiles
from tests.kernel_helpers import assert_matches

TOL = 1e-5
HAS_FULL_ATTENTION = importlib.util.find_spec("jzoo.kernels.full_attention") is not None
needs_full_attention = pytest.mark.skipif(
    not HAS_FULL_ATTENTION, reason="the pallas impl runs jzoo.kernels.full_attention (missing)")


def _inputs(seed, shape, dtype=jnp.float32):
  return random_qkv(seed, shape, dtype=dtype)  # q, k, v, cot


def _assert_matches_reference(fn, shape, axis, causal, seed=0):
  q, k, v, cot = _inputs(seed, shape)
  ref = lambda q, k, v: reference.axial_attention(q, k, v, axis=axis, causal=causal)
  assert_matches(fn, ref, q, k, v, cot, TOL)


def _brute_force_mask(grid, axis, causal):
  """The definition with Python loops: the check on the reference's own mask."""
  cells = list(itertools.product(*map(range, grid)))  # raster order (t, h, w)
  others = [d for d in range(3) if d != "thw".index(axis)]
  mask = np.zeros((len(cells),) * 2, bool)
  for i, qc in enumerate(cells):
    for j, kc in enumerate(cells):
      mask[i, j] = all(qc[d] == kc[d] for d in others) and not (causal and j > i)
  return mask


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("axis", ["t", "h", "w"])
@pytest.mark.parametrize("grid", [(2, 3, 4), (3, 1, 2)])
def test_reference_mask_is_the_definition(grid, axis, causal):
  got = np.asarray(reference.axial_mask(grid, axis, causal))
  np.testing.assert_array_equal(got, _brute_force_mask(grid, axis, causal))


@pytest.mark.parametrize("causal", [False, True])
def test_reference_on_a_single_line_is_full_attention(causal):
  q, k, v, _ = _inputs(1, (2, 1, 7, 1, 2, 8))
  got = jax.jit(lambda q, k, v: reference.axial_attention(q, k, v, axis="h", causal=causal))(
      q, k, v)
  flat = lambda x: x.reshape(2, 7, 2, 8)
  want = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(
      flat(q), flat(k), flat(v), is_causal=causal, implementation="xla"))(q, k, v)
  np.testing.assert_allclose(got.reshape(want.shape), want, atol=TOL)


XLA_CASES = [((3, 5, 6), a, c) for a in "thw" for c in (False, True)] + [
    ((4, 1, 3), "h", True),  # lines of length 1
    ((1, 2, 5), "t", False),
    ((5, 2, 1), "t", True),
]


@pytest.mark.parametrize("grid,axis,causal", XLA_CASES)
def test_xla_matches_reference(grid, axis, causal):
  fn = lambda q, k, v: xla.axial_attention(q, k, v, axis=axis, causal=causal)
  _assert_matches_reference(fn, (2, *grid, 3, 8), axis, causal)


@pytest.mark.parametrize("axis,grow", [("t", 1), ("h", 0), ("w", 0)])
def test_xla_memory_is_linear_in_tokens(axis, grow):
  """Forward + backward temporaries grow like N at a fixed line length (dense: N^2)."""

  def temp_bytes(scale):
    shape = [1, 8, 16, 16, 1, 8]
    shape[1 + grow] *= scale
    x = jax.ShapeDtypeStruct(tuple(shape), jnp.float32)
    loss = lambda q, k, v: jnp.sum(xla.axial_attention(q, k, v, axis=axis, causal=True))
    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    return grad.lower(x, x, x).compile().memory_analysis().temp_size_in_bytes

  # 4096 and 16384 tokens: at 2048 XLA's buffer assignment finds a reuse it does not at larger
  # sizes (axis t: 0.28 MB, then exactly 2x per doubling), which reads as 4.9x from there.
  small, big = temp_bytes(2), temp_bytes(8)
  assert big < 4.5 * small, (small, big)
  assert big < (8 * 8 * 16 * 16) ** 2 * 4 / 64  # 1/64 of one dense f32 logit matrix


@needs_full_attention
@pytest.mark.parametrize("impl,axis,causal", [
    ("pallas_tpu", "h", True),  # splash in the interpreter: slow, one case
    ("pallas_gpu", "t", False),  # interpret: cuDNN's arguments through jax.nn's XLA path
    ("pallas_gpu", "w", True),
])
def test_pallas_interpret_matches_reference(impl, axis, causal):
  fn = lambda q, k, v: axial_attention(q, k, v, axis=axis, causal=causal, impl=impl,
                                       interpret=True)
  _assert_matches_reference(fn, (1, 3, 5, 4, 2, 8), axis, causal)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("axis", ["t", "h", "w"])
def test_axial_is_a_window_spanning_the_axis(axis, causal):
  """Independent of either mask: a line along t is a (T, 1, 1) window (likewise h, w)."""
  grid = (3, 4, 5)
  window = tuple(n if a == axis else 1 for a, n in zip("thw", grid))
  np.testing.assert_array_equal(reference.axial_mask(grid, axis, causal),
                                window_reference.window_mask(grid, window, causal=causal))
  q, k, v, _ = _inputs(2, (2, *grid, 2, 4))
  got, want = jax.jit(lambda q, k, v: (
      axial_attention(q, k, v, axis=axis, causal=causal, impl="xla"),
      window_attention(q, k, v, window=window, causal=causal, impl="xla")))(q, k, v)
  np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_auto_dispatch():
  assert _common.resolve_impl("auto", "cpu") == "xla"
  assert _common.resolve_impl("auto", "tpu") == "pallas_tpu"
  assert _common.resolve_impl("auto", "gpu") == "pallas_gpu"
  assert _common.resolve_impl("pallas", "cpu") == "pallas_tpu"
  fn = lambda q, k, v: axial_attention(q, k, v, axis="h", causal=True)
  _assert_matches_reference(fn, (1, 2, 3, 4, 2, 8), "h", True)


def test_bfloat16_close_to_reference():
  q, k, v, _ = _inputs(3, (1, 3, 4, 5, 2, 16), jnp.bfloat16)
  got = jax.jit(lambda q, k, v: axial_attention(q, k, v, axis="w"))(q, k, v)
  f32 = lambda x: x.astype(jnp.float32)
  want = reference.axial_attention(f32(q), f32(k), f32(v), axis="w")
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(f32(got), want, atol=3e-2)


@pytest.mark.parametrize("shape,kwargs,match", [
    ((1, 2, 2, 2, 1, 4), dict(axis="x"), "axis must be one of"),
    ((1, 2, 2, 2, 1, 4), dict(axis=1), "axis must be one of"),
    ((1, 2, 2, 1, 4), dict(axis="t"), r"\[B, T, H, W, heads, D\]"),
    ((1, 2, 2, 2, 1, 4), dict(axis="t", impl="dense"), "impl must be"),
])
def test_bad_arguments(shape, kwargs, match):
  q = jnp.zeros(shape)
  with pytest.raises(ValueError, match=match):
    axial_attention(q, q, q, **kwargs)


def test_q_k_v_must_share_a_shape():
  q, k = jnp.zeros((1, 2, 2, 2, 1, 4)), jnp.zeros((1, 2, 2, 3, 1, 4))
  with pytest.raises(ValueError, match="the same shape"):
    axial_attention(q, k, k, axis="t")


@pytest.mark.tpu_aot
def test_pallas_tpu_compiles_ahead_of_time_for_v5e():
  """Lines through splash attention, forward and backward, inside shard_map, for a v5e slice."""
  if importlib.util.find_spec("jzoo.kernels.full_attention.pallas_tpu") is None:
    pytest.skip("jzoo.kernels.full_attention has no TPU kernel")
  for axis, causal in (("t", True), ("w", False)):
    assert_tpu_kernel_compiles(
        lambda q, k, v, axis=axis, causal=causal: axial_attention(
            q, k, v, axis=axis, causal=causal, impl="pallas", platform="tpu"),
        (4, 4, 16, 16, 4, 128))

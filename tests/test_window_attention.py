"""3D (shifted) window attention: every implementation against the dense masked reference."""

import importlib.util
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jzoo.kernels.window_attention import api, reference, xla
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


def _assert_matches_reference(fn, shape, window, shift, causal, seed=0):
  q, k, v, cot = _inputs(seed, shape)
  ref = lambda q, k, v: reference.window_attention(q, k, v, window=window, shift=shift,
                                                   causal=causal)
  assert_matches(fn, ref, q, k, v, cot, TOL)


def _brute_force_mask(grid, window, shift, causal):
  """The definition with Python loops: the check on the reference's own mask."""
  cells = list(itertools.product(*map(range, grid)))  # raster order (t, h, w)
  win = lambda c: tuple((c[d] + shift[d]) // window[d] for d in range(3))
  mask = np.zeros((len(cells),) * 2, bool)
  for i, qc in enumerate(cells):
    for j, kc in enumerate(cells):
      mask[i, j] = win(qc) == win(kc) and not (causal and j > i)
  return mask


# (grid, window, shift, causal): tiling and ragged windows, shifts below, at and past the
# window, windows past the grid (one window, or two when shifted), windows of one position.
CASES = [
    ((4, 4, 6), (2, 2, 3), (0, 0, 0), False),
    ((3, 5, 6), (2, 2, 4), (1, 1, 2), True),
    ((3, 5, 7), (2, 3, 3), (1, 2, 1), False),
    ((3, 4, 5), (2, 2, 2), (2, 3, 5), True),  # shift >= window
    ((2, 3, 4), (5, 8, 9), (0, 0, 0), True),  # one window: full attention
    ((2, 3, 4), (3, 4, 4), (2, 3, 1), False),  # larger than the grid, shifted: two windows
    ((3, 4, 5), (1, 1, 1), (0, 2, 0), False),  # each query sees only itself
    ((1, 6, 1), (1, 4, 9), (3, 2, 0), True),
]


@pytest.mark.parametrize("grid,window,shift,causal", CASES)
def test_reference_mask_is_the_definition(grid, window, shift, causal):
  got = np.asarray(reference.window_mask(grid, window, shift, causal))
  np.testing.assert_array_equal(got, _brute_force_mask(grid, window, shift, causal))


@pytest.mark.parametrize("n,w,s,plan", [
    (7, 3, 0, (3, 0, 9)), (7, 3, 2, (3, 2, 9)), (7, 3, 5, (3, 2, 9)),  # s >= w: s mod w
    (6, 3, 0, (3, 0, 6)), (4, 9, 0, (4, 0, 4)), (4, 9, 5, (4, 0, 4)),  # one window: no pad
    (4, 5, 2, (5, 2, 10)),  # larger than the axis but shifted across a border
])
def test_axis_plan(n, w, s, plan):
  assert xla.axis_plan(n, w, s) == plan


@pytest.mark.parametrize("grid,window,shift,causal", CASES)
def test_xla_matches_reference(grid, window, shift, causal):
  fn = lambda q, k, v: xla.window_attention(q, k, v, window=window, shift=shift, causal=causal)
  _assert_matches_reference(fn, (2, *grid, 3, 8), window, shift, causal)


def test_one_window_is_full_attention_and_unit_windows_copy_v():
  q, k, v, _ = _inputs(1, (2, 2, 3, 4, 2, 8))
  full, unit = jax.jit(lambda q, k, v: (
      window_attention(q, k, v, window=(2, 3, 4), causal=True),
      window_attention(q, k, v, window=1, shift=(1, 0, 3))))(q, k, v)
  flat = lambda x: x.reshape(2, 24, 2, 8)
  want = jax.nn.dot_product_attention(flat(q), flat(k), flat(v), is_causal=True,
                                      implementation="xla")
  np.testing.assert_allclose(full.reshape(want.shape), want, atol=TOL)
  np.testing.assert_allclose(unit, v, atol=TOL)


def test_xla_memory_is_linear_in_tokens():
  """Forward + backward temporaries grow like N at a fixed window (dense: N^2)."""

  def temp_bytes(frames):
    x = jax.ShapeDtypeStruct((1, frames, 16, 16, 1, 8), jnp.float32)
    loss = lambda q, k, v: jnp.sum(xla.window_attention(q, k, v, window=(2, 8, 8),
                                                        shift=(1, 4, 4), causal=True))
    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    return grad.lower(x, x, x).compile().memory_analysis().temp_size_in_bytes

  # 2048 and 8192 tokens, windows of 128; the shift pads the grid to 2.4x the tokens.
  small, big = temp_bytes(8), temp_bytes(32)
  assert big < 4.5 * small, (small, big)
  assert big < (32 * 16 * 16) ** 2 * 4 / 4  # 1/4 of one dense f32 logit matrix


@needs_full_attention
@pytest.mark.parametrize("impl,grid,window,shift,causal", [
    ("pallas_tpu", (3, 5, 6), (2, 2, 4), (1, 1, 2), True),  # splash interpreted: one case
    ("pallas_gpu", (3, 5, 6), (2, 2, 4), (1, 1, 2), True),  # interpret: jax.nn's XLA path
    ("pallas_gpu", (2, 3, 4), (3, 4, 4), (2, 3, 1), False),
])
def test_pallas_interpret_matches_reference(impl, grid, window, shift, causal):
  fn = lambda q, k, v: window_attention(q, k, v, window=window, shift=shift, causal=causal,
                                        impl=impl, interpret=True)
  _assert_matches_reference(fn, (1, *grid, 2, 8), window, shift, causal)


def test_auto_dispatch_and_int_arguments():
  fn = lambda q, k, v: window_attention(q, k, v, window=2, shift=1, causal=True)
  _assert_matches_reference(fn, (1, 3, 3, 4, 2, 8), (2, 2, 2), (1, 1, 1), True)


def test_bfloat16_close_to_reference():
  q, k, v, _ = _inputs(3, (1, 3, 4, 5, 2, 16), jnp.bfloat16)
  opts = dict(window=(2, 2, 3), shift=(1, 0, 1))
  got = jax.jit(lambda q, k, v: window_attention(q, k, v, **opts))(q, k, v)
  f32 = lambda x: x.astype(jnp.float32)
  want = reference.window_attention(f32(q), f32(k), f32(v), **opts)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(f32(got), want, atol=3e-2)


@pytest.mark.parametrize("shape,kwargs,match", [
    ((1, 2, 2, 2, 1, 4), dict(window=(2, 0, 2)), "window must be .* >= 1"),
    ((1, 2, 2, 2, 1, 4), dict(window=(2, 2)), "window must be"),
    ((1, 2, 2, 2, 1, 4), dict(window=(2, 2, 1.5)), "window must be"),
    ((1, 2, 2, 2, 1, 4), dict(window=2, shift=(0, -1, 0)), "shift must be .* >= 0"),
    ((1, 2, 2, 2, 1, 4), dict(window=2, shift="a"), "shift must be"),
    ((2, 2, 2, 1, 4), dict(window=2), r"\[B, T, H, W, heads, D\]"),
    ((1, 2, 2, 2, 1, 4), dict(window=2, impl="dense"), "impl must be"),
])
def test_bad_arguments(shape, kwargs, match):
  q = jnp.zeros(shape)
  with pytest.raises(ValueError, match=match):
    window_attention(q, q, q, **kwargs)


def test_check_inputs_normalises():
  q = jnp.zeros((1, 2, 2, 2, 1, 4))
  assert api.check_inputs(q, q, q, 3, np.int64(1)) == ((3, 3, 3), (1, 1, 1))


@pytest.mark.tpu_aot
def test_pallas_tpu_compiles_ahead_of_time_for_v5e():
  """Windows through splash attention, forward and backward, inside shard_map, for a v5e slice."""
  if importlib.util.find_spec("jzoo.kernels.full_attention.pallas_tpu") is None:
    pytest.skip("jzoo.kernels.full_attention has no TPU kernel")
  # Windows of 2 x 8 x 8 = 128 tokens, shifted (padded, with a key mask) and not.
  for shift, causal in (((1, 4, 4), True), ((0, 0, 0), False)):
    assert_tpu_kernel_compiles(
        lambda q, k, v, shift=shift, causal=causal: window_attention(
            q, k, v, window=(2, 8, 8), shift=shift, causal=causal, impl="pallas", platform="tpu"),
        (4, 8, 16, 16, 4, 128))

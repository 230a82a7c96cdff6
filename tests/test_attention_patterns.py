"""jzoo.nn.patterns: the attention op against the kernels' references, its decode steps against
teacher forcing (and their O(window) cost), and the transformer blocks on it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jzoo.kernels.axial_attention import reference as axial_ref
from jzoo.kernels.full_attention import reference as full_ref
from jzoo.kernels.nearby_attention import reference as nearby_ref
from jzoo.kernels.window_attention import reference as window_ref
from jzoo.nn import patterns, transformer
from jzoo.nn.patterns import Axial, Full, Nearby, Window

TOL = 1e-5


def _normal(seed, *shapes):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes]


def _reference(pattern, q, k, v):
  """The kernels' dense reference of a grid pattern on [B, T, H, W, heads, D]."""
  if isinstance(pattern, Nearby):
    return nearby_ref.nearby_attention(q, k, v, radius=pattern.radius, causal=pattern.causal)
  if isinstance(pattern, Axial):
    return axial_ref.axial_attention(q, k, v, axis=pattern.axis, causal=pattern.causal)
  return window_ref.window_attention(q, k, v, window=pattern.window, shift=pattern.shift,
                                     causal=pattern.causal)


GRID_CASES = [
    (Nearby((1, 1, 2)), (3, 4, 5)),
    (Nearby(1, causal=True), (3, 4, 5)),
    (Axial("t"), (3, 4, 5)),
    (Axial("h", causal=True), (3, 4, 5)),
    (Axial("w", causal=True), (2, 3, 4)),
    (Window((2, 2, 3), shift=(1, 0, 2)), (3, 4, 5)),
    (Window((2, 3, 2), shift=1, causal=True), (3, 4, 5)),
]


@pytest.mark.parametrize("pattern,grid", GRID_CASES, ids=str)
def test_grid_patterns_match_the_kernels_reference_in_both_layouts(pattern, grid):
  q, k, v = _normal(0, *[(2, *grid, 2, 8)] * 3)
  want = jax.jit(_reference, static_argnums=0)(pattern, q, k, v)
  got = jax.jit(lambda q, k, v: patterns.attention(q, k, v, pattern))(q, k, v)
  flat = lambda x: x.reshape(2, -1, 2, 8)
  got_flat = jax.jit(lambda q, k, v: patterns.attention(q, k, v, pattern, grid=grid))(
      flat(q), flat(k), flat(v))
  assert got.shape == q.shape and got_flat.shape == flat(q).shape
  np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
  np.testing.assert_allclose(got_flat, flat(want), atol=TOL, rtol=0)


def test_nearby_cross_grid():
  q, k, v = _normal(1, (2, 4, 6, 6, 2, 8), (2, 2, 3, 3, 2, 8), (2, 2, 3, 3, 2, 8))
  pattern = Nearby((1, 1, 1))
  got = jax.jit(lambda *a: patterns.attention(*a, pattern))(q, k, v)
  np.testing.assert_allclose(got, jax.jit(_reference, static_argnums=0)(pattern, q, k, v),
                             atol=TOL, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_full_with_padding_and_prefix_matches_the_reference(causal):
  q, k, v = _normal(2, (2, 7, 4, 8), (2, 9, 2, 8), (2, 9, 2, 8))  # grouped-query heads
  rng = np.random.default_rng(3)
  kv_valid = jnp.asarray(rng.random((2, 9)) > 0.3).at[1].set(False)  # batch 1: no key at all
  q_valid = jnp.asarray(rng.random((2, 7)) > 0.2)
  options = [{}, dict(kv_valid=kv_valid), dict(kv_valid=kv_valid, q_valid=q_valid),
             dict(prefix=jnp.array([3, 6])), dict(prefix=jnp.int32(4), q_valid=q_valid)]
  run = lambda fn: jax.jit(lambda options: [fn(q, k, v, **o) for o in options])(options)
  got = run(lambda *a, **o: patterns.attention(*a, Full(causal), **o))
  want = run(lambda *a, **o: full_ref.full_attention(*a, causal=causal, **o))
  for g, w, o in zip(got, want, options):
    np.testing.assert_allclose(g, w, atol=TOL, rtol=0, err_msg=str(sorted(o)))
  np.testing.assert_array_equal(got[1][1], 0)  # a query that sees no key outputs zeros


# Decoding: every border, shifts that cut windows short, windows and boxes larger than the grid.
DECODE_CASES = [
    (Full(True), (2, 3, 4)),
    (Nearby((1, 1, 1), True), (3, 4, 5)),
    (Nearby((0, 2, 1), True), (2, 5, 4)),
    (Nearby((3, 5, 6), True), (2, 3, 4)),  # the box holds the whole grid
    (Axial("t", True), (3, 4, 5)),
    (Axial("h", True), (3, 4, 5)),
    (Axial("w", True), (3, 4, 5)),
    (Window((2, 2, 3), (1, 1, 2), True), (3, 4, 5)),
    (Window((1, 3, 2), (0, 2, 1), True), (2, 5, 4)),
    (Window((4, 8, 8), (0, 1, 5), True), (3, 4, 5)),  # larger than the grid, shifted
    (Window((8, 8, 8), 0, True), (2, 3, 4)),  # one window: full causal attention
]


@pytest.mark.parametrize("pattern,grid", DECODE_CASES, ids=str)
def test_decode_in_raster_order_equals_teacher_forcing(pattern, grid):
  b, heads, d, n = 2, 2, 8, int(np.prod(grid))
  q, k, v = _normal(4, *[(b, n, heads, d)] * 3)
  if isinstance(pattern, Full):
    want = full_ref.full_attention(q, k, v, causal=True)
    cache = patterns.init_cache(pattern, b, n, heads, d, jnp.float32)
  else:
    want = patterns.attention(q, k, v, pattern, grid=grid, impl="reference")
    cache = patterns.init_cache(pattern, b, grid, heads, d, jnp.float32)

  def body(cache, xs):
    out, cache = patterns.decode_step(pattern, *xs[1:], cache, xs[0])
    return cache, out

  per_token = lambda x: x.transpose(1, 0, 2, 3)
  cache, outs = jax.jit(lambda c, xs: jax.lax.scan(body, c, xs))(
      cache, (jnp.arange(n), per_token(q), per_token(k), per_token(v)))
  np.testing.assert_allclose(per_token(outs), want, atol=TOL, rtol=0)
  np.testing.assert_array_equal(cache.k.reshape(k.shape), k)  # every key written in place


def _step_cost(pattern, grid):
  """(FLOPs, largest intermediate) of one jitted decode step; the cache update is not counted."""
  cache = patterns.init_cache(pattern, 1, grid, 2, 8, jnp.float32)
  x = jnp.zeros((1, 2, 8))
  step = lambda cache, x, n: patterns.decode_step(pattern, x, x, x, cache, n)
  flops = jax.jit(step).lower(cache, x, jnp.int32(5)).cost_analysis()["flops"]
  jaxpr = jax.make_jaxpr(step)(cache, x, jnp.int32(5)).jaxpr
  largest = max(int(np.prod(o.aval.shape)) for e in jaxpr.eqns for o in e.outvars
                if e.primitive.name != "dynamic_update_slice")
  return flops, largest


@pytest.mark.parametrize("pattern,small,large", [
    (Nearby((1, 1, 1), True), (3, 4, 4), (6, 8, 4)),
    (Axial("t", True), (3, 4, 4), (3, 8, 8)),  # the grid grows across the lines
    (Axial("w", True), (3, 4, 4), (6, 8, 4)),
    (Window((2, 2, 2), (1, 1, 1), True), (3, 4, 4), (6, 8, 4)),
], ids=str)
def test_decode_step_cost_is_o_window_not_o_grid(pattern, small, large):
  assert np.prod(large) == 4 * np.prod(small)
  assert _step_cost(pattern, small) == _step_cost(pattern, large)


def test_full_decode_step_cost_is_o_sequence():
  (small, _), (large, _) = _step_cost(Full(True), 48), _step_cost(Full(True), 192)
  assert large > 3.5 * small


@pytest.mark.parametrize("make", [
    lambda: Nearby((1, 1)), lambda: Nearby(-1), lambda: Nearby(1.5), lambda: Axial("x"),
    lambda: Axial(0), lambda: Window(0), lambda: Window((2, 2, 2), shift=-1),
    lambda: Window((2, 2)), lambda: Full(causal="yes"), lambda: Nearby(1, causal=1),
])
def test_bad_pattern_arguments_raise_value_error(make):
  with pytest.raises(ValueError):
    make()


def test_bad_calls_raise_value_error():
  q4, q6 = jnp.zeros((1, 8, 2, 4)), jnp.zeros((1, 2, 2, 2, 2, 4))
  valid = jnp.ones((1, 8), bool)
  calls = [
      lambda: patterns.attention(q4, q4, q4, "full"),
      lambda: patterns.attention(q4, q4, q4, Full(), grid=(2, 2, 2)),
      lambda: patterns.attention(q6, q6, q6, Nearby(1), kv_valid=valid),
      lambda: patterns.attention(q4, q4, q4, Axial("t")),  # flat tokens need their grid
      lambda: patterns.attention(q4, q4, q4, Axial("t"), grid=(2, 2, 3)),
      lambda: patterns.attention(q4, q4, q4, Window(2), grid=(2, 2)),
      lambda: patterns.init_cache(Nearby(1), 1, (2, 2, 2), 2, 4),  # decoding needs causal
      lambda: patterns.init_cache(Axial("t", True), 1, 8, 2, 4),  # a grid pattern needs a grid
      lambda: patterns.decode_step(Full(), q4[:, 0], q4[:, 0], q4[:, 0],
                                   patterns.Cache(q4, q4), 0),
      lambda: patterns.cycle((), 0),
  ]
  for call in calls:
    with pytest.raises(ValueError):
      call()


def test_patterns_are_normalised_hashable_and_cycle():
  assert Nearby(1) == Nearby((1, 1, 1)) and Window(2).shift == (0, 0, 0)
  assert len({Nearby(1), Nearby((1, 1, 1)), Axial("t"), Window(2, 1)}) == 3
  godiva = (Axial("t", True), Axial("h", True), Axial("w", True))
  assert [patterns.cycle(godiva, i).axis for i in range(5)] == ["t", "h", "w", "t", "h"]
  assert patterns.cycle(Full(), 7) == Full()


def _mesh():
  return Mesh(np.asarray(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))


def test_under_a_mesh_grid_patterns_and_fused_full_run_in_shard_map():
  mesh, pattern, grid = _mesh(), Window((1, 2, 2), 1, causal=True), (2, 3, 4)
  spec = P(("data", "fsdp"), None, "tensor", None)
  q, k, v = (jax.device_put(x, NamedSharding(mesh, spec)) for x in _normal(5, *[(4, 24, 2, 8)] * 3))
  fn = jax.jit(lambda q, k, v: patterns.attention(q, k, v, pattern, grid=grid))
  with jax.set_mesh(mesh):
    assert "shard_map" in str(jax.make_jaxpr(fn)(q, k, v))
    out = fn(q, k, v)
    full = lambda impl: str(jax.make_jaxpr(lambda q: patterns.attention(q, q, q, Full(True),
                                                                      impl=impl))(q))
    # XLA partitions its own attention; a fused kernel is opaque to it, so it runs per shard.
    assert "shard_map" not in full("xla") and "shard_map" in full("pallas_tpu")
  grid_layout = lambda x: x.reshape(4, *grid, 2, 8)
  want = _reference(pattern, *(grid_layout(x) for x in (q, k, v)))
  np.testing.assert_allclose(out, want.reshape(out.shape), atol=TOL, rtol=0)


# --- the blocks on the op ----------------------------------------------------------------------


def _perturbed(params, seed):
  """Non-zero output projections (they start at zero), so that attention shows in the output."""
  return jax.tree.map(lambda p: p + 0.1 * jnp.cos(seed + jnp.arange(p.size).reshape(p.shape)),
                      params)


def test_attention_block_masks_on_the_op_equal_the_dense_einsum():
  """Key padding and the causal pattern run the op; the same masks in a form the op does not
  take run `dot_product_attention` (the old path); in float32 on CPU the two agree bit for bit."""
  x, ctx = _normal(6, (2, 6, 16), (2, 5, 16))
  pad = jnp.asarray([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0]], bool)  # batch 1: all masked (CFG)
  dense_causal = transformer.causal_mask(6)
  dense_pad = jnp.broadcast_to(pad[:, None, None, :], (2, 1, 6, 5))  # not [B, 1, 1, K]
  module = transformer.Attention(2, 8, null_kv=True)
  params = _perturbed(module.init(jax.random.key(0), x, ctx), 0)
  apply = jax.jit(module.apply)
  np.testing.assert_array_equal(apply(params, x, ctx, pad[:, None, None, :]),
                                apply(params, x, ctx, dense_pad))
  causal = jax.jit(transformer.Attention(2, 8, null_kv=True, pattern=Full(True)).apply)
  np.testing.assert_array_equal(causal(params, x), apply(params, x, None, dense_causal))
  module = transformer.Attention(2, 8)
  params = _perturbed(module.init(jax.random.key(0), x), 1)
  causal = jax.jit(transformer.Attention(2, 8, pattern=Full(True)).apply)
  np.testing.assert_array_equal(causal(params, x), jax.jit(module.apply)(params, x, None,
                                                                         dense_causal))


def test_transformer_cycles_grid_patterns_over_flat_tokens():
  grid, (x,) = (2, 3, 4), _normal(7, (2, 24, 16))
  make = lambda **kw: transformer.Transformer(3, 2, 8, 32, **kw)
  params = _perturbed(jax.jit(make().init)(jax.random.key(1), x), 2)
  godiva = make(pattern=(Axial("t", True), Axial("h", True), Axial("w", True)), grid=grid)
  whole = make(pattern=Window(grid, causal=True), grid=grid)
  causal = jax.jit(make().apply)(params, x, transformer.causal_mask(24))
  # One window holding the grid is causal full attention; the axial cycle is not.
  np.testing.assert_allclose(jax.jit(whole.apply)(params, x), causal, atol=TOL, rtol=0)
  assert float(jnp.max(jnp.abs(jax.jit(godiva.apply)(params, x) - causal))) > 1e-3
  with pytest.raises(ValueError, match="no mask"):
    godiva.apply(params, x, mask=transformer.causal_mask(24))

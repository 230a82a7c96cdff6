"""Full attention: every implementation against the dense masked reference."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jzoo.kernels.full_attention import api, masks, pallas_gpu, pallas_tpu, reference, xla
from jzoo.kernels.full_attention import attention_mask, full_attention
from tests.kernel_helpers import random_qkv
from tests.kernel_helpers import v5e_mesh
from tests.kernel_helpers import assert_matches
from tests.kernel_helpers import value_and_grads as _value_and_grads

TOL = 1e-5


def _inputs(seed, b, lq, lk, heads, kv_heads, d, dtype=jnp.float32):
  return random_qkv(seed, (b, lq, heads, d), (b, lk, kv_heads, d), dtype)  # q, k, v, cot


def _masks(seed, b, lq, lk, kv_valid=False, q_valid=False, prefix=False):
  """Random padding masks (row 0 of kv_valid all False: a batch that sees nothing) and prefixes."""
  rng = np.random.default_rng(seed + 100)
  opts = {}
  if kv_valid:
    kv = rng.random((b, lk)) < 0.7
    kv[0] = False
    opts["kv_valid"] = jnp.asarray(kv.astype(np.int32) if kv_valid == "int" else kv)
  if q_valid:
    opts["q_valid"] = jnp.asarray(rng.random((b, lq)) < 0.7)
  if prefix:  # 0 (plain causal), inside, and past the keys (full attention)
    opts["prefix"] = jnp.asarray(rng.choice([0, lk // 2, lk + 3], size=b), jnp.int32)
  return opts


def _assert_matches_reference(fn, shape, opts, seed=0, tol=TOL):
  q, k, v, cot = _inputs(seed, *shape)
  ref = lambda q, k, v: reference.full_attention(q, k, v, **opts)
  assert_matches(fn, ref, q, k, v, cot, tol)


def _numpy_mask(b, lq, lk, causal, q_valid, kv_valid, prefix):
  """The definition with Python loops: the check on the reference and on `attention_mask`."""
  mask = np.zeros((b, lq, lk), bool)
  for n in range(b):
    for i in range(lq):
      for j in range(lk):
        seen = True
        if causal or prefix is not None:
          seen = j <= i + lk - lq or (prefix is not None and j < prefix[n])
        if kv_valid is not None and not kv_valid[n, j]:
          seen = False
        if q_valid is not None and not q_valid[n, i]:
          seen = False
        mask[n, i, j] = seen
  return mask


def _numpy_attention(q, k, v, causal=False, q_valid=None, kv_valid=None, prefix=None):
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  np_or_none = lambda x: None if x is None else np.asarray(x)
  b, lq, heads, d = q.shape
  lk, group = k.shape[1], heads // k.shape[2]
  mask = _numpy_mask(b, lq, lk, causal, np_or_none(q_valid), np_or_none(kv_valid),
                     np_or_none(prefix))
  out = np.zeros_like(q)
  for n in range(b):
    for h in range(heads):
      for i in range(lq):
        keys = [j for j in range(lk) if mask[n, i, j]]
        if not keys:
          continue  # sees nothing: zeros
        logits = np.array([q[n, i, h] @ k[n, j, h // group] for j in keys]) / math.sqrt(d)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        out[n, i, h] = sum(pj * v[n, j, h // group] for pj, j in zip(p, keys))
  return out


# (lq, lk, causal, padding masks, prefix): square, fewer and more queries than keys.
NUMPY_CASES = [
    (6, 6, False, (), False),
    (6, 6, True, (), False),
    (3, 7, True, (), False),
    (7, 4, True, (), False),
    (6, 6, False, ("kv_valid", "q_valid"), False),
    (5, 8, True, ("kv_valid",), False),
    (6, 6, True, (), True),
    (4, 9, True, ("kv_valid", "q_valid"), True),
    (8, 5, True, ("kv_valid",), True),
]


@pytest.mark.parametrize("lq,lk,causal,pads,prefix", NUMPY_CASES)
def test_reference_matches_numpy_loops(lq, lk, causal, pads, prefix):
  q, k, v, _ = _inputs(1, 3, lq, lk, 4, 2, 8)  # grouped-query: 2 k/v heads for 4 query heads
  opts = _masks(1, 3, lq, lk, prefix=prefix, **{p: True for p in pads})
  got = jax.jit(functools.partial(reference.full_attention, causal=causal))(q, k, v, **opts)
  np.testing.assert_allclose(got, _numpy_attention(q, k, v, causal=causal, **opts), atol=1e-5)


@pytest.mark.parametrize("lq,lk,causal,pads,prefix", NUMPY_CASES)
def test_mask_helper_is_the_definition(lq, lk, causal, pads, prefix):
  opts = _masks(2, 3, lq, lk, prefix=prefix, **{p: True for p in pads})
  got = np.broadcast_to(attention_mask(lq, lk, causal=causal, **opts), (3, lq, lk))
  want = _numpy_mask(3, lq, lk, causal, *(None if opts.get(n) is None else np.asarray(opts[n])
                                          for n in ("q_valid", "kv_valid", "prefix")))
  np.testing.assert_array_equal(got, want)
  rows = masks.visible_rows(lq, lk, causal=causal, **opts)
  rows = np.ones((3, lq), bool) if rows is None else np.broadcast_to(rows, (3, lq))
  np.testing.assert_array_equal(rows, want.any(-1))


# (b, lq, lk, heads, kv_heads, d), causal, padding masks, prefix.
XLA_CASES = [
    ((2, 9, 9, 2, 2, 8), False, (), False),
    ((2, 9, 9, 2, 2, 8), True, (), False),
    ((2, 4, 11, 4, 1, 8), True, ("kv_valid",), False),
    ((2, 11, 5, 4, 2, 16), True, ("q_valid",), False),
    ((3, 7, 10, 2, 2, 8), False, ("kv_valid", "q_valid"), False),
    ((3, 10, 10, 4, 2, 8), True, ("kv_valid",), True),
    ((3, 6, 12, 2, 1, 8), True, ("q_valid",), True),
    ((3, 12, 6, 2, 2, 8), True, ("kv_valid", "q_valid"), True),
]


@pytest.mark.parametrize("shape,causal,pads,prefix", XLA_CASES)
def test_xla_matches_reference(shape, causal, pads, prefix):
  opts = _masks(3, shape[0], shape[1], shape[2], prefix=prefix, **{p: True for p in pads})
  fn = lambda q, k, v: xla.full_attention(q, k, v, causal=causal, **opts)
  _assert_matches_reference(fn, shape, dict(causal=causal, **opts))


# Splash pads to 128-blocks: lengths off the block, several blocks (block 128 forced),
# Lq < Lk and Lq > Lk (negative causal offset).
PALLAS_CASES = [
    ((1, 128, 128, 2, 2, 32), True, (), False, None),  # on the block: no segment ids
    ((2, 200, 300, 2, 1, 32), True, ("kv_valid",), False, 128),
    ((2, 300, 40, 2, 2, 32), True, ("q_valid",), False, 128),  # whole query blocks see no key
    ((2, 70, 90, 4, 2, 16), False, ("kv_valid", "q_valid"), False, None),
    ((3, 130, 130, 2, 2, 32), True, ("kv_valid",), True, 128),
    ((3, 50, 140, 2, 1, 32), True, ("q_valid",), True, None),
]


@pytest.mark.parametrize("shape,causal,pads,prefix,block", PALLAS_CASES)
def test_pallas_tpu_interpret_matches_reference(shape, causal, pads, prefix, block):
  opts = _masks(4, shape[0], shape[1], shape[2], prefix=prefix, **{p: True for p in pads})
  fn = lambda q, k, v: pallas_tpu.full_attention(q, k, v, causal=causal, block_q=block,
                                                 block_kv=block, interpret=True, **opts)
  _assert_matches_reference(fn, shape, dict(causal=causal, **opts))


@pytest.mark.parametrize("shape,causal,pads,prefix", [
    *XLA_CASES[1:6:2],
    ((2, 9, 9, 2, 1, 8), True, ("kv_valid",), False),  # top-left is_causal with a mask, odd
])
def test_pallas_gpu_interpret_matches_reference(shape, causal, pads, prefix):
  """cuDNN's arguments (top-left is_causal, dense mask, even padding) through jax.nn's XLA."""
  opts = _masks(5, shape[0], shape[1], shape[2], prefix=prefix, **{p: True for p in pads})
  fn = lambda q, k, v: pallas_gpu.full_attention(q, k, v, causal=causal, interpret=True, **opts)
  _assert_matches_reference(fn, shape, dict(causal=causal, **opts))


@pytest.mark.parametrize("impl", ["reference", "xla", "pallas_tpu", "pallas_gpu"])
def test_rows_that_see_nothing_are_zero_with_finite_gradients(impl):
  b, lq, lk = 3, 12, 7
  q, k, v, cot = _inputs(6, b, lq, lk, 2, 2, 8)
  kv_valid = np.ones((b, lk), bool)
  kv_valid[0] = False  # batch 0 sees no key at all
  kv_valid[1, :4] = False  # batch 1: causal rows whose keys are all invalid (with Lq > Lk)
  q_valid = np.ones((b, lq), bool)
  q_valid[2, ::3] = False
  opts = dict(causal=True, kv_valid=jnp.asarray(kv_valid), q_valid=jnp.asarray(q_valid))
  out, grads = _value_and_grads(lambda q, k, v: full_attention(q, k, v, impl=impl, **opts),
                                q, k, v, cot)
  empty = ~_numpy_mask(b, lq, lk, True, q_valid, kv_valid, None).any(-1)
  assert empty[0].all() and empty[1].any() and empty[2].any()
  np.testing.assert_array_equal(np.asarray(out)[empty], 0.0)
  assert all(np.isfinite(g).all() for g in grads)
  np.testing.assert_array_equal(np.asarray(grads[0])[empty], 0.0)  # no signal into dq
  np.testing.assert_array_equal(np.asarray(grads[1])[0], 0.0)  # nor into batch 0's keys
  want, want_grads = _value_and_grads(lambda q, k, v: reference.full_attention(q, k, v, **opts),
                                      q, k, v, cot)
  np.testing.assert_allclose(out, want, atol=TOL, rtol=0)
  for got, exp in zip(grads, want_grads):
    np.testing.assert_allclose(got, exp, atol=TOL, rtol=0)


@pytest.mark.parametrize("impl", ["xla", "pallas_tpu"])
def test_decode_step_sees_every_key(impl):
  q, k, v, _ = _inputs(7, 2, 1, 9, 2, 2, 8)
  got = jax.jit(lambda q, k, v: full_attention(q, k, v, causal=True, prefix=3, impl=impl))(q, k, v)
  np.testing.assert_allclose(got, jax.jit(reference.full_attention)(q, k, v), atol=TOL)


def test_prefix_past_the_end_is_full_and_zero_is_causal():
  q, k, v, _ = _inputs(8, 2, 6, 6, 2, 2, 8)
  full, causal, got = jax.jit(lambda q, k, v: (
      reference.full_attention(q, k, v), reference.full_attention(q, k, v, causal=True),
      full_attention(q, k, v, prefix=jnp.asarray([6, 0]))))(q, k, v)
  np.testing.assert_allclose(got[0], full[0], atol=TOL)
  np.testing.assert_allclose(got[1], causal[1], atol=TOL)


def test_auto_dispatch():
  assert api.resolve_impl("auto", "cpu") == "xla"
  assert api.resolve_impl("auto", "tpu") == "pallas_tpu"
  assert api.resolve_impl("auto", "gpu") == "pallas_gpu"
  assert api.resolve_impl("pallas", "cpu") == "pallas_tpu"
  opts = _masks(9, 2, 8, 8, kv_valid="int", prefix=True)  # int padding masks too
  q, k, v, _ = _inputs(9, 2, 8, 8, 2, 2, 8)
  # impl="pallas" on CPU: splash attention in the interpreter.
  got = jax.jit(lambda q, k, v: [full_attention(q, k, v, impl=impl, **opts)
                                 for impl in ("auto", "pallas")])(q, k, v)
  want = jax.jit(lambda q, k, v: reference.full_attention(q, k, v, causal=True, **opts))(q, k, v)
  for out in got:
    np.testing.assert_allclose(out, want, atol=TOL)


def test_bfloat16_close_to_reference():
  q, k, v, _ = _inputs(10, 2, 16, 16, 2, 2, 16, jnp.bfloat16)
  f32 = lambda x: x.astype(jnp.float32)
  want = reference.full_attention(f32(q), f32(k), f32(v), causal=True)
  for impl in ("xla", "pallas_tpu"):
    got = jax.jit(lambda q, k, v: full_attention(q, k, v, causal=True, impl=impl))(q, k, v)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(f32(got), want, atol=3e-2)


@pytest.mark.parametrize("q_shape,k_shape,kwargs,match", [
    ((1, 4, 2, 8), (1, 4, 2), {}, "shape \\[B, L, heads, D\\]"),
    ((1, 4, 2, 8), (1, 4, 2, 4), {}, "agree on batch and head_dim"),
    ((2, 4, 2, 8), (1, 4, 2, 8), {}, "agree on batch and head_dim"),
    ((1, 4, 3, 8), (1, 4, 2, 8), {}, "must divide the q heads"),
    ((1, 4, 2, 8), (1, 4, 2, 8), dict(kv_valid=np.ones((1, 5), bool)), "kv_valid must have shape"),
    ((1, 4, 2, 8), (1, 4, 2, 8), dict(q_valid=np.ones((1, 4))), "bool or int"),
    ((1, 4, 2, 8), (1, 4, 2, 8), dict(prefix=np.ones((2,), np.int32)), "prefix must be"),
    ((1, 4, 2, 8), (1, 4, 2, 8), dict(prefix=1.5), "prefix must be integer"),
    ((1, 4, 2, 8), (1, 4, 2, 8), dict(impl="flash"), "impl must be"),
])
def test_bad_arguments(q_shape, k_shape, kwargs, match):
  q, k = jnp.zeros(q_shape), jnp.zeros(k_shape)
  with pytest.raises(ValueError, match=match):
    full_attention(q, k, k, **kwargs)


def test_bad_tpu_block_size():
  q = jnp.zeros((1, 8, 1, 8))
  with pytest.raises(ValueError, match="multiples of 128"):
    pallas_tpu.full_attention(q, q, q, block_q=64, interpret=True)


@pytest.mark.tpu_aot
def test_pallas_tpu_compiles_ahead_of_time_for_v5e():
  """Splash attention, forward and backward, inside shard_map, compiled for a v5e slice."""
  mesh = v5e_mesh((2, 2), ("data", "tensor"))
  spec, row = P("data", None, "tensor", None), P("data", None)
  sds = lambda s, dtype=jnp.bfloat16, spec=spec: jax.ShapeDtypeStruct(
      s, dtype, sharding=NamedSharding(mesh, spec))
  # (q, k shapes, options, splash calls): causal + key padding off the block; prefix-LM (two
  # calls) with grouped-query heads and Lq < Lk.
  for q_shape, k_shape, opts, calls in [
      ((4, 1000, 4, 128), (4, 1000, 4, 128), dict(causal=True, kv_valid=True), 1),
      ((4, 256, 8, 64), (4, 1024, 2, 64), dict(prefix=True, q_valid=True), 2)]:
    b, lq, lk = q_shape[0], q_shape[1], k_shape[1]
    masks_in = dict(kv_valid=sds((b, lk), bool, row) if opts.get("kv_valid") else None,
                    q_valid=sds((b, lq), bool, row) if opts.get("q_valid") else None,
                    prefix=sds((b,), jnp.int32, P("data")) if opts.get("prefix") else None)
    causal = opts.get("causal", False)

    def loss(q, k, v, masks_in, causal=causal, q_spec=spec):
      def per_shard(q, k, v, masks_in):
        return full_attention(q, k, v, causal=causal, impl="pallas", platform="tpu", **masks_in)
      mask_specs = {n: (P("data") if n == "prefix" else row) for n in masks_in}
      out = jax.shard_map(per_shard, mesh=mesh, in_specs=(spec, spec, spec, mask_specs),
                          out_specs=q_spec, check_vma=False)(q, k, v, masks_in)
      return jnp.sum(out.astype(jnp.float32))

    masks_in = {n: x for n, x in masks_in.items() if x is not None}
    q, k = sds(q_shape), sds(k_shape)
    lowered = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(q, k, k, masks_in)
    assert lowered.as_text().count("tpu_custom_call") == 3 * calls  # forward, dQ, dK/dV
    assert lowered.compile().memory_analysis() is not None


# On a GPU, cuDNN (bf16/fp16; float32 takes the XLA path, tested on CPU): padding, causal with Lq != Lk, prefix, GQA.
GPU_CASES = [
    ((2, 256, 256, 4, 4, 64), True, (), False),
    ((2, 255, 255, 4, 2, 64), True, ("kv_valid",), False),
    ((2, 128, 384, 4, 1, 128), True, ("q_valid",), False),
    ((2, 300, 300, 4, 4, 64), False, ("kv_valid", "q_valid"), False),
    ((3, 256, 256, 4, 2, 64), True, ("kv_valid",), True),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("shape,causal,pads,prefix", GPU_CASES)
def test_pallas_gpu_on_gpu_matches_reference(shape, causal, pads, prefix, dtype):
  if jax.default_backend() != "gpu":
    pytest.skip("needs a GPU (run with JAX_PLATFORMS=cuda)")
  q, k, v, cot = _inputs(11, *shape, dtype=jnp.dtype(dtype))
  opts = dict(causal=causal, **_masks(11, shape[0], shape[1], shape[2], prefix=prefix,
                                      **{p: True for p in pads}))
  fn = lambda q, k, v: pallas_gpu.full_attention(q, k, v, **opts)
  out, grads = _value_and_grads(fn, q, k, v, cot)
  # The truth: the float32 reference at full matmul precision (no TF32) on the same inputs.
  f32 = lambda x: x.astype(jnp.float32)
  ref = lambda q, k, v: reference.full_attention(q, k, v, **opts)
  with jax.default_matmul_precision("highest"):
    want, want_grads = _value_and_grads(ref, f32(q), f32(k), f32(v), f32(cot))
  assert out.shape == q.shape and out.dtype == q.dtype
  atol = 3e-2
  np.testing.assert_allclose(f32(out), want, atol=atol, rtol=0)
  for name, got, exp in zip("qkv", grads, want_grads):
    scale = float(jnp.max(jnp.abs(exp)))  # gradients sum over many terms: relative to their size
    np.testing.assert_allclose(f32(got) / scale, exp / scale, atol=atol, rtol=0,
                               err_msg=f"d{name}")

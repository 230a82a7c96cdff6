"""Block-sparse flash-style 3D nearby attention for GPU (Pallas Triton backend).

Same tiling and visit tables as the TPU kernel (`_tiles.py`): one program per
(query tile, batch, head) loops over only the key tiles listed for its query
tile (a dynamic-length `fori_loop` over an int32 table), with the exact
window mask from coordinate rows inside each visited tile and an online
softmax in registers. Backward: a dQ kernel over the same tables and a dK/dV
kernel over the transposed tables (no atomics).

Why Triton and not Mosaic GPU: the Triton lowering runs in the Pallas
interpreter and lowers without a GPU, so it is tested here on CPU; a Mosaic GPU
kernel (the upstream direction) could be neither run nor lowered in this
environment. Compiled and tested on an H200 (pytest -m gpu); numbers in
docs/kernels/nearby_attention.md.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltr

from . import _tiles

_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


class _Plan(_tiles.TilePlan):

  def __init__(self, q_shape, k_shape, radius, causal, block_q, block_k, num_warps=4,
               num_stages=2):
    super().__init__(q_shape, k_shape, radius, causal, block_q, block_k)
    self.num_warps, self.num_stages = num_warps, num_stages
    self.d = q_shape[-1]
    self.dp = max(16, pl.next_power_of_2(self.d))  # Triton tiles are powers of two

  def qpos(self):  # [4, Nq_pad]: rows so that a tile's coordinates load contiguously
    return jnp.asarray(_tiles.query_positions(self.q_grid, self.k_grid, self.nq_pad).T)

  def tokens(self, x, n_pad):
    """[B, T, H, W, n, D] -> [B, N_pad, n, Dp]: a free reshape, padded only where the token
    count or head_dim needs it (the kernels index heads in place, no transpose)."""
    b, t, h, w, n, d = x.shape
    x = x.reshape(b, t * h * w, n, d)
    pad = ((0, 0), (0, n_pad - t * h * w), (0, 0), (0, self.dp - d))
    return jnp.pad(x, pad) if any(p != (0, 0) for p in pad) else x

  def untokens(self, x, shape):
    b, t, h, w, n, d = shape
    if x.shape[1:] != (t * h * w, n, d):
      x = x[:, :t * h * w, :, :d]
    return x.reshape(shape)


def _coords(pos_ref, sl):
  """The four coordinate rows (t, h, w, raster) of a tile, each 1D."""
  return [pos_ref[a, sl] for a in range(4)]


def _mask(qc, kc, radius, causal):
  mask = None
  for axis, r in enumerate(radius):
    m = jnp.abs(kc[axis][None, :] - qc[axis][:, None]) <= r
    mask = m if mask is None else mask & m
  if causal:
    mask &= kc[3][None, :] <= qc[3][:, None]
  return mask


def _dot(a, b, trans_a=False, trans_b=False):
  prec = jax.lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
  return pltr.dot(a, b, trans_a=trans_a, trans_b=trans_b, precision=prec)


def _fwd_kernel(q_ref, k_ref, v_ref, qpos_ref, kpos_ref, idx_ref, cnt_ref, o_ref, lse_ref, *,
                scale, radius, causal, steps, bq, bk):
  i = pl.program_id(0)
  q, qc = q_ref[...], _coords(qpos_ref, slice(None))

  def body(j, carry):
    acc, m_prev, l_prev = carry
    ks = pl.ds(idx_ref[i * steps + j] * bk, bk)
    s = _dot(q, k_ref[ks, :], trans_b=True).astype(jnp.float32) * scale
    s = jnp.where(_mask(qc, _coords(kpos_ref, ks), radius, causal), s, _MASK_VALUE)
    m_next = jnp.maximum(m_prev, s.max(axis=-1))
    p = jnp.exp(s - m_next[:, None])
    alpha = jnp.exp(m_prev - m_next)
    v = v_ref[ks, :]
    acc = acc * alpha[:, None] + _dot(p.astype(v.dtype), v).astype(jnp.float32)
    return acc, m_next, alpha * l_prev + p.sum(axis=-1)

  init = (jnp.zeros((bq, q.shape[-1]), jnp.float32), jnp.full((bq,), _MASK_VALUE, jnp.float32),
          jnp.zeros((bq,), jnp.float32))
  acc, m, l = jax.lax.fori_loop(0, cnt_ref[i], body, init)
  l = jnp.where(l == 0.0, 1.0, l)  # padding query tiles with no key tile
  o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)
  lse_ref[...] = m + jnp.log(l)


def _dq_kernel(q_ref, k_ref, v_ref, qpos_ref, kpos_ref, idx_ref, cnt_ref, do_ref, lse_ref,
               delta_ref, dq_ref, *, scale, radius, causal, steps, bq, bk):
  i = pl.program_id(0)
  q, do = q_ref[...], do_ref[...]
  lse, delta = lse_ref[...], delta_ref[...]
  qc = _coords(qpos_ref, slice(None))

  def body(j, dq):
    ks = pl.ds(idx_ref[i * steps + j] * bk, bk)
    k, v = k_ref[ks, :], v_ref[ks, :]
    s = _dot(q, k, trans_b=True).astype(jnp.float32) * scale
    mask = _mask(qc, _coords(kpos_ref, ks), radius, causal)
    p = jnp.where(mask, jnp.exp(s - lse[:, None]), 0.0)
    dp = _dot(do, v, trans_b=True).astype(jnp.float32)
    ds = p * (dp - delta[:, None])
    return dq + _dot(ds.astype(k.dtype), k).astype(jnp.float32)

  dq = jax.lax.fori_loop(0, cnt_ref[i], body, jnp.zeros((bq, q.shape[-1]), jnp.float32))
  dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, qpos_ref, kpos_ref, idx_ref, cnt_ref, do_ref, lse_ref,
                delta_ref, dk_ref, dv_ref, *, scale, radius, causal, steps, bq, bk):
  kt = pl.program_id(0)
  k, v = k_ref[...], v_ref[...]
  kc = _coords(kpos_ref, slice(None))

  def body(j, carry):
    dk, dv = carry
    qs = pl.ds(idx_ref[kt * steps + j] * bq, bq)
    q, do = q_ref[qs, :], do_ref[qs, :]
    s = _dot(q, k, trans_b=True).astype(jnp.float32) * scale
    mask = _mask(_coords(qpos_ref, qs), kc, radius, causal)
    p = jnp.where(mask, jnp.exp(s - lse_ref[qs][:, None]), 0.0)
    dv = dv + _dot(p.astype(do.dtype), do, trans_a=True).astype(jnp.float32)
    dp = _dot(do, v, trans_b=True).astype(jnp.float32)
    ds = p * (dp - delta_ref[qs][:, None])
    dk = dk + _dot(ds.astype(q.dtype), q, trans_a=True).astype(jnp.float32)
    return dk, dv

  zeros = jnp.zeros((bk, k.shape[-1]), jnp.float32)
  dk, dv = jax.lax.fori_loop(0, cnt_ref[kt], body, (zeros, zeros))
  dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _full(shape):
  return pl.BlockSpec(shape, lambda *_: (0,) * len(shape))


def _call(kernel, grid, in_specs, out_specs, out_shape, interpret, name, plan):
  return pl.pallas_call(
      kernel, grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
      compiler_params=pltr.CompilerParams(num_warps=plan.num_warps, num_stages=plan.num_stages),
      interpret=interpret, name=name)


def _forward(plan, q, k, v, interpret):
  b, heads = q.shape[0], q.shape[4]
  qt, kt, vt = plan.tokens(q, plan.nq_pad), plan.tokens(k, plan.nk_pad), plan.tokens(v, plan.nk_pad)
  bq, bk, dp = plan.bq, plan.bk, plan.dp
  steps = plan.kv_idx.shape[1]
  own_q = lambda i, bi, h: (bi, i, h, 0)
  whole_k = lambda i, bi, h: (bi, 0, h, 0)
  kernel = functools.partial(_fwd_kernel, scale=1.0 / math.sqrt(plan.d), radius=plan.radius,
                             causal=plan.causal, steps=steps, bq=bq, bk=bk)
  out, lse = _call(
      kernel, (plan.nq_pad // bq, b, heads),
      in_specs=[pl.BlockSpec((None, bq, None, dp), own_q),
                pl.BlockSpec((None, plan.nk_pad, None, dp), whole_k),
                pl.BlockSpec((None, plan.nk_pad, None, dp), whole_k),
                pl.BlockSpec((4, bq), lambda i, bi, h: (0, i)),
                _full((4, plan.nk_pad)), _full((plan.kv_idx.size,)), _full((plan.kv_cnt.size,))],
      out_specs=[pl.BlockSpec((None, bq, None, dp), own_q),
                 pl.BlockSpec((None, None, bq), lambda i, bi, h: (bi, h, i))],
      out_shape=[jax.ShapeDtypeStruct(qt.shape, q.dtype),
                 jax.ShapeDtypeStruct((b, heads, plan.nq_pad), jnp.float32)],
      interpret=interpret, name="nearby_attention_fwd", plan=plan,
  )(qt, kt, vt, plan.qpos(), plan.kpos(), jnp.asarray(plan.kv_idx.reshape(-1)),
    jnp.asarray(plan.kv_cnt))
  return out, lse


def _backward(plan, q, k, v, out_t, lse, dout, interpret):
  b, heads = q.shape[0], q.shape[4]
  qt, kt, vt = plan.tokens(q, plan.nq_pad), plan.tokens(k, plan.nk_pad), plan.tokens(v, plan.nk_pad)
  dot = plan.tokens(dout, plan.nq_pad)
  delta = jnp.einsum("bqnd,bqnd->bnq", dot.astype(jnp.float32), out_t.astype(jnp.float32))
  bq, bk, dp = plan.bq, plan.bk, plan.dp
  static = dict(scale=1.0 / math.sqrt(plan.d), radius=plan.radius, causal=plan.causal, bq=bq,
                bk=bk)
  qpos, kpos = plan.qpos(), plan.kpos()

  tile_q = lambda i, bi, h: (bi, i, h, 0)
  row_q = lambda i, bi, h: (bi, h, i)
  whole = lambda i, bi, h: (bi, 0, h, 0)
  whole_row = lambda i, bi, h: (bi, h, 0)
  steps = plan.kv_idx.shape[1]
  dq = _call(
      functools.partial(_dq_kernel, steps=steps, **static), (plan.nq_pad // bq, b, heads),
      in_specs=[pl.BlockSpec((None, bq, None, dp), tile_q),
                pl.BlockSpec((None, plan.nk_pad, None, dp), whole),
                pl.BlockSpec((None, plan.nk_pad, None, dp), whole),
                pl.BlockSpec((4, bq), lambda i, bi, h: (0, i)),
                _full((4, plan.nk_pad)), _full((plan.kv_idx.size,)), _full((plan.kv_cnt.size,)),
                pl.BlockSpec((None, bq, None, dp), tile_q),
                pl.BlockSpec((None, None, bq), row_q), pl.BlockSpec((None, None, bq), row_q)],
      out_specs=pl.BlockSpec((None, bq, None, dp), tile_q),
      out_shape=jax.ShapeDtypeStruct(qt.shape, q.dtype),
      interpret=interpret, name="nearby_attention_dq", plan=plan,
  )(qt, kt, vt, qpos, kpos, jnp.asarray(plan.kv_idx.reshape(-1)), jnp.asarray(plan.kv_cnt), dot,
    lse, delta)

  qsteps = plan.q_idx.shape[1]
  dk, dv = _call(
      functools.partial(_dkv_kernel, steps=qsteps, **static), (plan.nk_pad // bk, b, heads),
      in_specs=[pl.BlockSpec((None, plan.nq_pad, None, dp), whole),
                pl.BlockSpec((None, bk, None, dp), tile_q),
                pl.BlockSpec((None, bk, None, dp), tile_q),
                _full((4, plan.nq_pad)),
                pl.BlockSpec((4, bk), lambda i, bi, h: (0, i)),
                _full((plan.q_idx.size,)), _full((plan.q_cnt.size,)),
                pl.BlockSpec((None, plan.nq_pad, None, dp), whole),
                pl.BlockSpec((None, None, plan.nq_pad), whole_row),
                pl.BlockSpec((None, None, plan.nq_pad), whole_row)],
      out_specs=[pl.BlockSpec((None, bk, None, dp), tile_q),
                 pl.BlockSpec((None, bk, None, dp), tile_q)],
      out_shape=[jax.ShapeDtypeStruct(kt.shape, k.dtype), jax.ShapeDtypeStruct(vt.shape, v.dtype)],
      interpret=interpret, name="nearby_attention_dkv", plan=plan,
  )(qt, kt, vt, qpos, kpos, jnp.asarray(plan.q_idx.reshape(-1)), jnp.asarray(plan.q_cnt), dot,
    lse, delta)
  return plan.untokens(dq, q.shape), plan.untokens(dk, k.shape), plan.untokens(dv, v.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _attention(q, k, v, radius, causal, tiling, interpret):
  plan = _Plan(q.shape, k.shape, radius, causal, *tiling)
  return plan.untokens(_forward(plan, q, k, v, interpret)[0], q.shape)


def _attention_fwd(q, k, v, radius, causal, tiling, interpret):
  plan = _Plan(q.shape, k.shape, radius, causal, *tiling)
  out_t, lse = _forward(plan, q, k, v, interpret)
  return plan.untokens(out_t, q.shape), (q, k, v, out_t, lse)


def _attention_bwd(radius, causal, tiling, interpret, res, dout):
  q, k, v, out_t, lse = res
  plan = _Plan(q.shape, k.shape, radius, causal, *tiling)
  return _backward(plan, q, k, v, out_t, lse, dout, interpret)


_attention.defvjp(_attention_fwd, _attention_bwd)


def nearby_attention(q, k, v, *, radius, causal=False, block_q=64, block_k=64, num_warps=4,
                     num_stages=2, interpret=False):
  """3D nearby attention as a block-sparse Pallas Triton kernel (see module docstring).

  block_q and block_k must be powers of two (Triton tiles); num_warps and num_stages are
  Triton's launch settings (benchmarks/nearby_attention_tiles.py compares choices).
  """
  for name, blk in (("block_q", block_q), ("block_k", block_k)):
    if blk < 1 or blk & (blk - 1):
      raise ValueError(f"{name} must be a power of two for the Triton kernel, got {blk}")
  tiling = (int(block_q), int(block_k), int(num_warps), int(num_stages))
  return _attention(q, k, v, tuple(int(r) for r in radius), bool(causal), tiling,
                    bool(interpret))

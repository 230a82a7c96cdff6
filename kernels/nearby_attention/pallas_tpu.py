"""Block-sparse flash-style 3D nearby attention for TPU (Pallas Mosaic).

Tokens are flattened in raster order and tiled (`_tiles.py`). The grid is
(batch, heads, query tile, step); step j of query tile i visits key tile
`kv_idx[i, j]`, read from a scalar-prefetch table by the BlockSpec index map,
so key tiles outside every window are never fetched or computed (steps past
`kv_cnt[i]` repeat the last index: no DMA, and the body is skipped). Inside a
visited tile the exact window (and causal) mask comes from int32 coordinate
tiles. Online softmax in f32 VMEM scratch; the forward also writes the
log-sum-exp for the backward.

Backward: two kernels like flash attention. dQ walks the same tables; dK/dV
walks the transposed tables (for each key tile, the query tiles that visit
it), so neither needs atomics. delta = rowsum(dO * O) is computed in XLA.

Layout notes (Mosaic): per-row statistics are kept lane-replicated
[rows, 128] like splash attention; the query coordinates are a [rows, 4]
block and the key coordinates a [4, cols] block, so the masks broadcast a
column against a row.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from . import _tiles

LANES = 128
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
_NT = (((1,), (1,)), ((), ()))  # a @ b.T


class _Plan(_tiles.TilePlan):

  def qpos(self):  # [Nq_pad, 4]
    return jnp.asarray(_tiles.query_positions(self.q_grid, self.k_grid, self.nq_pad))


def _to_tokens(x, n_pad):
  """[B, T, H, W, n, D] -> [B, n, N_pad, D] in raster order, zero padded."""
  b, t, h, w, n, d = x.shape
  x = x.reshape(b, t * h * w, n, d).transpose(0, 2, 1, 3)
  return jnp.pad(x, ((0, 0), (0, 0), (0, n_pad - t * h * w), (0, 0)))


def _from_tokens(x, like_shape):
  b, t, h, w, n, d = like_shape
  return x[:, :, :t * h * w].transpose(0, 2, 1, 3).reshape(b, t, h, w, n, d)


def _window_mask(qpos_ref, kpos_ref, radius, causal):
  """(bq, bk) bool from a [bq, 4] query-coordinate block and a [4, bk] key block."""
  q, k = qpos_ref[...], kpos_ref[...]
  mask = None
  for axis, r in enumerate(radius):
    m = jnp.abs(k[axis:axis + 1, :] - q[:, axis:axis + 1]) <= r
    mask = m if mask is None else mask & m
  if causal:
    mask &= k[3:4, :] <= q[:, 3:4]
  return mask


def _fwd_kernel(kv_idx_ref, kv_cnt_ref, q_ref, k_ref, v_ref, qpos_ref, kpos_ref,
                o_ref, lse_ref, m_sc, l_sc, acc_sc, *, scale, radius, causal, steps):
  del kv_idx_ref
  i, j = pl.program_id(2), pl.program_id(3)

  @pl.when(j == 0)
  def _init():
    m_sc[...] = jnp.full_like(m_sc, _MASK_VALUE)
    l_sc[...] = jnp.zeros_like(l_sc)
    acc_sc[...] = jnp.zeros_like(acc_sc)

  @pl.when(j < kv_cnt_ref[i])
  def _step():
    q, k, v = q_ref[...], k_ref[...], v_ref[...]
    s = jax.lax.dot_general(q, k, _NT, preferred_element_type=jnp.float32) * scale
    s = jnp.where(_window_mask(qpos_ref, kpos_ref, radius, causal), s, _MASK_VALUE)
    m_prev, l_prev = m_sc[...], l_sc[...]
    m_next = jnp.maximum(m_prev, s.max(axis=-1, keepdims=True))
    # Rows with nothing valid yet accumulate exp(0) junk; the first valid key
    # makes alpha exactly 0 and wipes it (every real row has a valid key).
    p = jnp.exp(s - m_next[:, :1])
    alpha = jnp.exp(m_prev - m_next)
    l_sc[...] = alpha * l_prev + p.sum(axis=-1, keepdims=True)
    m_sc[...] = m_next
    pv = jax.lax.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    acc_sc[...] = acc_sc[...] * alpha[:, :1] + pv

  @pl.when(j == steps - 1)
  def _finish():
    l = l_sc[...]
    o_ref[...] = (acc_sc[...] / l[:, :1]).astype(o_ref.dtype)
    lse_ref[...] = m_sc[...] + jnp.log(l)


def _dq_kernel(kv_idx_ref, kv_cnt_ref, q_ref, k_ref, v_ref, qpos_ref, kpos_ref, do_ref,
               lse_ref, delta_ref, dq_ref, dq_sc, *, scale, radius, causal, steps):
  del kv_idx_ref
  i, j = pl.program_id(2), pl.program_id(3)

  @pl.when(j == 0)
  def _init():
    dq_sc[...] = jnp.zeros_like(dq_sc)

  @pl.when(j < kv_cnt_ref[i])
  def _step():
    q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
    s = jax.lax.dot_general(q, k, _NT, preferred_element_type=jnp.float32) * scale
    mask = _window_mask(qpos_ref, kpos_ref, radius, causal)
    p = jnp.where(mask, jnp.exp(s - lse_ref[...][:, :1]), 0.0)
    dp = jax.lax.dot_general(do, v, _NT, preferred_element_type=jnp.float32)
    ds = p * (dp - delta_ref[...][:, :1])
    dq_sc[...] += jax.lax.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

  @pl.when(j == steps - 1)
  def _finish():
    dq_ref[...] = (dq_sc[...] * scale).astype(dq_ref.dtype)


def _dkv_kernel(q_idx_ref, q_cnt_ref, q_ref, k_ref, v_ref, qpos_ref, kpos_ref, do_ref,
                lse_ref, delta_ref, dk_ref, dv_ref, dk_sc, dv_sc, *, scale, radius, causal,
                steps):
  del q_idx_ref
  kt, j = pl.program_id(2), pl.program_id(3)

  @pl.when(j == 0)
  def _init():
    dk_sc[...] = jnp.zeros_like(dk_sc)
    dv_sc[...] = jnp.zeros_like(dv_sc)

  @pl.when(j < q_cnt_ref[kt])
  def _step():
    q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
    s = jax.lax.dot_general(q, k, _NT, preferred_element_type=jnp.float32) * scale
    mask = _window_mask(qpos_ref, kpos_ref, radius, causal)
    p = jnp.where(mask, jnp.exp(s - lse_ref[...][:, :1]), 0.0)
    dv_sc[...] += jax.lax.dot(p.T.astype(do.dtype), do, preferred_element_type=jnp.float32)
    dp = jax.lax.dot_general(do, v, _NT, preferred_element_type=jnp.float32)
    ds = p * (dp - delta_ref[...][:, :1])
    dk_sc[...] += jax.lax.dot(ds.T.astype(q.dtype), q, preferred_element_type=jnp.float32)

  @pl.when(j == steps - 1)
  def _finish():
    dk_ref[...] = (dk_sc[...] * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def _params():
  return pltpu.CompilerParams(
      dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"))


def _forward(plan, q, k, v, interpret):
  b, heads, d = q.shape[0], q.shape[4], q.shape[5]
  qt, kt, vt = _to_tokens(q, plan.nq_pad), _to_tokens(k, plan.nk_pad), _to_tokens(v, plan.nk_pad)
  bq, bk = plan.bq, plan.bk
  steps = plan.kv_idx.shape[1]
  nqt = plan.nq_pad // bq

  def q_map(bi, h, i, j, idx, cnt):
    return bi, h, i, 0

  def k_map(bi, h, i, j, idx, cnt):
    return bi, h, idx[i * steps + j], 0

  kernel = functools.partial(_fwd_kernel, scale=1.0 / math.sqrt(d), radius=plan.radius,
                             causal=plan.causal, steps=steps)
  out, lse = pl.pallas_call(
      kernel,
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=2,
          grid=(b, heads, nqt, steps),
          in_specs=[
              pl.BlockSpec((None, None, bq, d), q_map),
              pl.BlockSpec((None, None, bk, d), k_map),
              pl.BlockSpec((None, None, bk, d), k_map),
              pl.BlockSpec((bq, 4), lambda bi, h, i, j, idx, cnt: (i, 0)),
              pl.BlockSpec((4, bk), lambda bi, h, i, j, idx, cnt: (0, idx[i * steps + j])),
          ],
          out_specs=[
              pl.BlockSpec((None, None, bq, d), q_map),
              pl.BlockSpec((None, None, bq, LANES), q_map),
          ],
          scratch_shapes=[pltpu.VMEM((bq, LANES), jnp.float32),
                          pltpu.VMEM((bq, LANES), jnp.float32),
                          pltpu.VMEM((bq, d), jnp.float32)],
      ),
      out_shape=[jax.ShapeDtypeStruct(qt.shape, q.dtype),
                 jax.ShapeDtypeStruct((b, heads, plan.nq_pad, LANES), jnp.float32)],
      compiler_params=_params(),
      interpret=interpret,
      name="nearby_attention_fwd",
  )(jnp.asarray(plan.kv_idx.reshape(-1)), jnp.asarray(plan.kv_cnt), qt, kt, vt, plan.qpos(),
    plan.kpos())
  return out, lse


def _backward(plan, q, k, v, out_t, lse, dout, interpret):
  b, heads, d = q.shape[0], q.shape[4], q.shape[5]
  qt, kt, vt = _to_tokens(q, plan.nq_pad), _to_tokens(k, plan.nk_pad), _to_tokens(v, plan.nk_pad)
  dot = _to_tokens(dout, plan.nq_pad)
  delta = jnp.sum(dot.astype(jnp.float32) * out_t.astype(jnp.float32), -1, keepdims=True)
  delta = jnp.broadcast_to(delta, lse.shape)
  bq, bk = plan.bq, plan.bk
  scale = 1.0 / math.sqrt(d)
  qpos, kpos = plan.qpos(), plan.kpos()
  static = dict(scale=scale, radius=plan.radius, causal=plan.causal)

  # dQ: same walk as the forward.
  steps = plan.kv_idx.shape[1]

  def own_q(bi, h, i, j, idx, cnt):
    return bi, h, i, 0

  def visit_k(bi, h, i, j, idx, cnt):
    return bi, h, idx[i * steps + j], 0

  dq = pl.pallas_call(
      functools.partial(_dq_kernel, steps=steps, **static),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=2,
          grid=(b, heads, plan.nq_pad // bq, steps),
          in_specs=[
              pl.BlockSpec((None, None, bq, d), own_q),
              pl.BlockSpec((None, None, bk, d), visit_k),
              pl.BlockSpec((None, None, bk, d), visit_k),
              pl.BlockSpec((bq, 4), lambda bi, h, i, j, idx, cnt: (i, 0)),
              pl.BlockSpec((4, bk), lambda bi, h, i, j, idx, cnt: (0, idx[i * steps + j])),
              pl.BlockSpec((None, None, bq, d), own_q),
              pl.BlockSpec((None, None, bq, LANES), own_q),
              pl.BlockSpec((None, None, bq, LANES), own_q),
          ],
          out_specs=pl.BlockSpec((None, None, bq, d), own_q),
          scratch_shapes=[pltpu.VMEM((bq, d), jnp.float32)],
      ),
      out_shape=jax.ShapeDtypeStruct(qt.shape, q.dtype),
      compiler_params=_params(),
      interpret=interpret,
      name="nearby_attention_dq",
  )(jnp.asarray(plan.kv_idx.reshape(-1)), jnp.asarray(plan.kv_cnt), qt, kt, vt, qpos, kpos,
    dot, lse, delta)

  # dK, dV: for each key tile, the query tiles that visit it.
  qsteps = plan.q_idx.shape[1]

  def own_k(bi, h, kj, j, idx, cnt):
    return bi, h, kj, 0

  def visit_q(bi, h, kj, j, idx, cnt):
    return bi, h, idx[kj * qsteps + j], 0

  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, steps=qsteps, **static),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=2,
          grid=(b, heads, plan.nk_pad // bk, qsteps),
          in_specs=[
              pl.BlockSpec((None, None, bq, d), visit_q),
              pl.BlockSpec((None, None, bk, d), own_k),
              pl.BlockSpec((None, None, bk, d), own_k),
              pl.BlockSpec((bq, 4), lambda bi, h, kj, j, idx, cnt: (idx[kj * qsteps + j], 0)),
              pl.BlockSpec((4, bk), lambda bi, h, kj, j, idx, cnt: (0, kj)),
              pl.BlockSpec((None, None, bq, d), visit_q),
              pl.BlockSpec((None, None, bq, LANES), visit_q),
              pl.BlockSpec((None, None, bq, LANES), visit_q),
          ],
          out_specs=[pl.BlockSpec((None, None, bk, d), own_k),
                     pl.BlockSpec((None, None, bk, d), own_k)],
          scratch_shapes=[pltpu.VMEM((bk, d), jnp.float32), pltpu.VMEM((bk, d), jnp.float32)],
      ),
      out_shape=[jax.ShapeDtypeStruct(kt.shape, k.dtype), jax.ShapeDtypeStruct(vt.shape, v.dtype)],
      compiler_params=_params(),
      interpret=interpret,
      name="nearby_attention_dkv",
  )(jnp.asarray(plan.q_idx.reshape(-1)), jnp.asarray(plan.q_cnt), qt, kt, vt, qpos, kpos, dot,
    lse, delta)
  return _from_tokens(dq, q.shape), _from_tokens(dk, k.shape), _from_tokens(dv, v.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7))
def _attention(q, k, v, radius, causal, block_q, block_k, interpret):
  plan = _Plan(q.shape, k.shape, radius, causal, block_q, block_k)
  return _from_tokens(_forward(plan, q, k, v, interpret)[0], q.shape)


def _attention_fwd(q, k, v, radius, causal, block_q, block_k, interpret):
  plan = _Plan(q.shape, k.shape, radius, causal, block_q, block_k)
  out_t, lse = _forward(plan, q, k, v, interpret)
  return _from_tokens(out_t, q.shape), (q, k, v, out_t, lse)


def _attention_bwd(radius, causal, block_q, block_k, interpret, res, dout):
  q, k, v, out_t, lse = res
  plan = _Plan(q.shape, k.shape, radius, causal, block_q, block_k)
  return _backward(plan, q, k, v, out_t, lse, dout, interpret)


_attention.defvjp(_attention_fwd, _attention_bwd)


def nearby_attention(q, k, v, *, radius, causal=False, block_q=128, block_k=128,
                     interpret=False):
  """3D nearby attention as a block-sparse Pallas TPU kernel (see module docstring).

  Args:
    q: [B, Tq, Hq, Wq, heads, D]; k, v: [B, Tk, Hk, Wk, heads, D].
    radius: (rt, rh, rw); causal: raster-order causal mask (equal grids).
    block_q, block_k: raster tile sizes (multiples of 8 and 128 on TPU).
    interpret: run the kernel in the Pallas interpreter (CPU tests).
  """
  return _attention(q, k, v, tuple(int(r) for r in radius), bool(causal), int(block_q),
                    int(block_k), bool(interpret))


def visited_tiles(q_shape, k_shape, *, radius, causal=False, block_q=128, block_k=128):
  """Number of (query tile, key tile) pairs one (batch, head) visits: for FLOP counts."""
  return _Plan(q_shape, k_shape, radius, causal, block_q, block_k).visited_tiles

"""Full attention on TPU: splash attention (`jax.experimental.pallas.ops.tpu`).

Splash takes one static mask for all batches ([heads, Lq, Lk], block-sparse:
blocks the mask rules out are never fetched) plus per-batch segment ids
(query i sees key j only if their ids are equal). So:

- causal is `CausalMask(offset=Lk - Lq)` (bottom-right aligned);
- key padding (`kv_valid`, and the keys added to reach a block multiple) is a
  key segment id of 1 against query ids of 0;
- prefix-LM (per-batch prefix, so not a static mask) is two calls: a query
  whose causal horizon i + Lk - Lq is below prefix - 1 sees exactly the keys
  j < prefix (a full mask whose key ids mark the prefix), every other query
  sees exactly its causal keys; the rows are picked per query. That costs a
  full plus a causal pass (1.5x full attention).

Lq and Lk are padded up to multiples of 128 (the kernel's lane width; blocks
are 128, 256 or 512). Rows that see nothing come out of splash as an average
of masked keys (it masks with a finite value) or, where a whole query block
sees nothing (causal with Lq > Lk: offset < 0), as NaN that no backward block
reads; both are zeroed here. The softmax scale is applied to q before the
kernel (splash has no scale argument).

Grouped-query attention is native (k/v heads dividing q heads). Backward:
splash's dQ and dK/dV kernels (its custom VJP).
"""

import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as sa

from . import masks

LANES = 128


def _block(n, block):
  """Block size for a padded length n (a multiple of 128): `block`, else the largest of
  512, 256, 128 dividing n."""
  if block is not None:
    if block % LANES:
      raise ValueError(f"TPU block sizes must be multiples of {LANES}, got {block}")
    return block
  return next(b for b in (512, 256, LANES) if n % b == 0)


def _round_up(n, m):
  return -(-n // m) * m


def full_attention(q, k, v, *, causal=False, q_valid=None, kv_valid=None, prefix=None,
                   block_q=None, block_kv=None, interpret=False):
  """Splash-attention full attention (see module docstring and `api.full_attention`).

  Args:
    q: [B, Lq, heads, D]; k, v: [B, Lk, kv_heads, D], kv_heads dividing heads.
    block_q, block_kv: splash block sizes (multiples of 128; default: up to 512).
    interpret: run the kernels in the Pallas interpreter (CPU tests).
  """
  b, lq, heads, d = q.shape
  lk = k.shape[1]
  causal = causal or prefix is not None
  bq = _block(_round_up(lq, LANES), block_q)
  bkv = _block(_round_up(lk, LANES), block_kv)
  lq_p, lk_p = _round_up(lq, bq), _round_up(lk, bkv)
  blocks = sa.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq,
                         block_kv_dkv=bkv, block_kv_dkv_compute=bkv, block_q_dq=bq,
                         block_kv_dq=bkv)

  def heads_major(x, length):  # [B, L, n, D] -> [B, n, length, D], zero padded
    return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, 0))).transpose(0, 2, 1, 3)

  qt = heads_major((q * (1.0 / math.sqrt(d))).astype(q.dtype), lq_p)
  kt, vt = heads_major(k, lk_p), heads_major(v, lk_p)

  # Keys that exist (not padding) and are valid, [B or 1, lk_p]; None when all are.
  j = jnp.arange(lk_p)
  key_ok = None if lk_p == lk else (j < lk)[None]
  if kv_valid is not None:
    key_ok = jnp.pad(masks.as_valid(kv_valid), ((0, 0), (0, lk_p - lk)))

  def splash(mask, key_ok):
    kernel = sa.make_splash_mha(sa.MultiHeadMask([mask] * heads), block_sizes=blocks,
                                head_shards=1, q_seq_shards=1, interpret=interpret)
    if key_ok is None:
      return jax.vmap(kernel)(qt, kt, vt)
    seg = sa.SegmentIds(q=jnp.zeros((b, lq_p), jnp.int32),
                        kv=jnp.broadcast_to(jnp.where(key_ok, 0, 1), (b, lk_p)).astype(jnp.int32))
    return jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=s))(qt, kt, vt, seg)

  shape = (lq_p, lk_p)
  if causal:
    out = splash(sa.CausalMask(shape, offset=lk - lq), key_ok)
  else:
    out = splash(sa.FullMask(shape), key_ok)
  if prefix is not None:
    end = jnp.asarray(prefix, jnp.int32).reshape(-1, 1)
    in_prefix = j[None] < end
    out_prefix = splash(sa.FullMask(shape), in_prefix if key_ok is None else in_prefix & key_ok)
    # Queries whose causal horizon stops before the prefix's last key see exactly the prefix.
    rows = jnp.arange(lq_p)[None] + (lk - lq) < end - 1
    out = jnp.where(rows[:, None, :, None], out_prefix, out)
  out = out.transpose(0, 2, 1, 3)[:, :lq]
  return masks.zero_empty_rows(out, masks.visible_rows(
      lq, lk, causal=causal, q_valid=q_valid, kv_valid=kv_valid, prefix=prefix))

"""Dense masked attention in float32: the truth for full attention in tests.

Deliberately naive and independent of the other implementations: the mask is
built here straight from the definition ("j <= i + Lk - Lq, or j < prefix")
and shares no helper with `masks.py`. Memory is O(B * heads * Lq * Lk).
"""

import math

import jax
import jax.numpy as jnp


def full_attention(q, k, v, *, causal=False, q_valid=None, kv_valid=None, prefix=None):
  """softmax(q k^T / sqrt(D) + mask) v; queries that see no key output zeros."""
  b, lq, heads, d = q.shape
  lk, kv_heads = k.shape[1], k.shape[2]
  # Grouped-query attention: query head h reads key/value head h // (heads // kv_heads).
  k, v = (jnp.repeat(x, heads // kv_heads, axis=2) for x in (k, v))
  i, j = jnp.arange(lq)[:, None], jnp.arange(lk)[None, :]
  mask = jnp.ones((b, lq, lk), bool)
  if causal or prefix is not None:
    seen = j <= i + (lk - lq)
    if prefix is not None:
      seen = seen | (j < jnp.asarray(prefix).reshape(-1, 1, 1))
    mask &= seen
  if kv_valid is not None:
    mask &= jnp.asarray(kv_valid).astype(bool)[:, None, :]
  if q_valid is not None:
    mask &= jnp.asarray(q_valid).astype(bool)[:, :, None]
  hi = jax.lax.Precision.HIGHEST
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=hi,
                      preferred_element_type=jnp.float32) / math.sqrt(d)
  mask = mask[:, None]
  # A finite fill and a multiply by the mask: empty rows get zeros, and finite gradients.
  probs = jax.nn.softmax(jnp.where(mask, logits, -1e30), axis=-1) * mask
  out = jnp.einsum("bhqk,bkhd->bqhd", probs, v.astype(jnp.float32), precision=hi)
  return out.astype(q.dtype)

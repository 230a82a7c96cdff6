"""Full attention in plain XLA: `jax.nn.dot_product_attention(implementation="xla")`.

The mask is dense, [B, 1, Lq, Lk] bool (memory O(B * Lq * Lk), logits
O(B * heads * Lq * Lk)); grouped-query attention is native. Rows with no
visible key come out of jax.nn as a uniform average (it masks with a finite
value) and are zeroed here, which also zeroes their gradients.
"""

import jax

from . import masks


def full_attention(q, k, v, *, causal=False, q_valid=None, kv_valid=None, prefix=None):
  lq, lk = q.shape[1], k.shape[1]
  opts = dict(causal=causal, q_valid=q_valid, kv_valid=kv_valid, prefix=prefix)
  masked = causal or prefix is not None or kv_valid is not None or q_valid is not None
  mask = masks.attention_mask(lq, lk, **opts)[:, None] if masked else None
  out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
  return masks.zero_empty_rows(out, masks.visible_rows(lq, lk, **opts))


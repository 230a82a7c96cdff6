"""Full attention on GPU: cuDNN flash attention via `jax.nn.dot_product_attention`.

cuDNN takes bf16/fp16 with head_dim a multiple of 8 (<= 128, or <= 256 on
Hopper and later); anything else falls back to `xla.py`. Pallas's own GPU
flash attention (`jax.experimental.pallas.ops.gpu.attention.mha`) is not used:
it has one segment-id array for queries and keys together (no cross attention
padding), a top-left causal mask, and no grouped-query heads.

cuDNN's causal mask is top-left aligned, which is ours only when Lq == Lk; so
`is_causal` is used then (cuDNN skips the masked half), and every other mask
(padding, prefix-LM, causal with Lq != Lk) is passed dense as `mask`
[B, 1, Lq, Lk], which cuDNN turns into a bias (memory O(B * Lq * Lk)). With a
bias, cuDNN's backward needs even sequence lengths: odd ones get a masked
key and a dropped query row. Rows with no visible key are zeroed.

`interpret=True` runs the same arguments through jax.nn's XLA implementation
(cuDNN has no interpreter): it checks this file's mask and padding logic on CPU.
"""

import jax
import jax.numpy as jnp

from . import masks, xla


def _cudnn_supports(q, v):
  d = q.shape[-1]
  if q.dtype not in (jnp.bfloat16, jnp.float16) or d % 8 or v.shape[-1] != d:
    return False
  if d <= 128:
    return True
  try:  # head_dim up to 256 needs Hopper (compute capability 9.0)
    return d <= 256 and float(jax.devices("gpu")[0].compute_capability) >= 9.0
  except (RuntimeError, AttributeError, ValueError):
    return False


def full_attention(q, k, v, *, causal=False, q_valid=None, kv_valid=None, prefix=None,
                   interpret=False):
  """cuDNN full attention (see module docstring and `api.full_attention`)."""
  opts = dict(causal=causal, q_valid=q_valid, kv_valid=kv_valid, prefix=prefix)
  if not interpret and not _cudnn_supports(q, v):
    return xla.full_attention(q, k, v, **opts)
  lq, lk = q.shape[1], k.shape[1]
  top_left = causal and prefix is None and lq == lk
  mask = None
  if kv_valid is not None or prefix is not None or (causal and not top_left):
    mask = masks.attention_mask(lq, lk, causal=causal and not top_left, kv_valid=kv_valid,
                                prefix=prefix)
    pq, pk = lq % 2, lk % 2
    if pq or pk:  # pad to even lengths; padded keys are masked, padded queries dropped
      q, k, v = (jnp.pad(x, ((0, 0), (0, p), (0, 0), (0, 0))) for x, p in ((q, pq), (k, pk), (v, pk)))
      mask = jnp.pad(mask, ((0, 0), (0, pq), (0, pk)))
    mask = mask[:, None]
  out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=top_left,
                                     implementation="xla" if interpret else "cudnn")
  return masks.zero_empty_rows(out[:, :lq], masks.visible_rows(lq, lk, **opts))

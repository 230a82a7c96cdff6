"""Dense masked window attention: the truth in tests.

The [N, N] mask is built from raster coordinates straight from the definition
(window index floor((x + s) / w) per axis, shift not reduced) and shares
nothing with `xla.py`'s padding layout. Memory O(N^2): small grids only.
"""

import jax.numpy as jnp

from .._common import masked_attention


def window_mask(grid, window, shift=(0, 0, 0), causal=False):
  """[N, N] bool, True where query i and key j lie in the same window on all three axes."""
  t, h, w = grid
  coords = [c.reshape(-1) for c in jnp.meshgrid(jnp.arange(t), jnp.arange(h), jnp.arange(w),
                                                 indexing="ij")]
  mask = jnp.ones((t * h * w,) * 2, bool)
  for c, size, s in zip(coords, window, shift):
    index = (c + s) // size
    mask &= index[:, None] == index[None, :]
  if causal:  # keys after the query in raster order
    mask &= jnp.arange(t * h * w)[None, :] <= jnp.arange(t * h * w)[:, None]
  return mask


def window_attention(q, k, v, *, window, shift=(0, 0, 0), causal=False):
  """Attention over the flattened grid with `window_mask`, in float32."""
  b, t, h, w, heads, d = q.shape
  flat = lambda x: x.reshape(b, t * h * w, heads, d).astype(jnp.float32)
  mask = window_mask((t, h, w), window, shift, causal)
  out = masked_attention(flat(q), flat(k), flat(v), mask)
  return out.reshape(q.shape).astype(q.dtype)

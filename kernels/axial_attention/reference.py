"""Dense masked axial attention: the truth in tests.

The [N, N] mask is built from raster coordinates straight from the definition
and shares nothing with `xla.py`'s layout. Memory O(N^2): small grids only.
"""

import jax.numpy as jnp

from .._common import masked_attention

_AXIS = {"t": 0, "h": 1, "w": 2}


def axial_mask(grid, axis, causal=False):
  """[N, N] bool, True where query i may attend key j: the other two coordinates agree."""
  t, h, w = grid
  coords = [c.reshape(-1) for c in jnp.meshgrid(jnp.arange(t), jnp.arange(h), jnp.arange(w),
                                                 indexing="ij")]
  mask = jnp.ones((t * h * w,) * 2, bool)
  for a, c in enumerate(coords):
    if a != _AXIS[axis]:
      mask &= c[:, None] == c[None, :]
  if causal:  # keys after the query in raster order
    mask &= jnp.arange(t * h * w)[None, :] <= jnp.arange(t * h * w)[:, None]
  return mask


def axial_attention(q, k, v, *, axis, causal=False):
  """Attention over the flattened grid with `axial_mask`, in float32."""
  b, t, h, w, heads, d = q.shape
  flat = lambda x: x.reshape(b, t * h * w, heads, d).astype(jnp.float32)
  out = masked_attention(flat(q), flat(k), flat(v), axial_mask((t, h, w), axis, causal))
  return out.reshape(q.shape).astype(q.dtype)

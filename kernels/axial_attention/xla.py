"""Axial attention as a layout: the lines along `axis` become a batch of sequences.

[B, T, H, W, n, D] is transposed so that `axis` sits next to the heads and
reshaped to [B * (N / L), L, n, D] (free for axis "w"); one attention call
runs over all lines at once and the result is transposed back. Raster order
on a line is the order along it, so causal is the plain causal mask of each
sequence. `attend` is `_common.dense_attention` (impl="xla": logits
[lines, n, L, L], memory O(N * L)) or `full_attention`'s fused kernel.
"""

from .._common import dense_attention

_AXIS = {"t": 1, "h": 2, "w": 3}


def axial_attention(q, k, v, *, axis, causal=False, attend=dense_attention):
  """q, k, v: [B, T, H, W, heads, D]; `attend(q, k, v, causal=)` on [B', L, heads, D]."""
  a = _AXIS[axis]
  perm = (0, *(i for i in (1, 2, 3) if i != a), a, 4, 5)
  lines_shape = tuple(q.shape[i] for i in perm)
  lines = lambda x: x.transpose(perm).reshape(-1, *lines_shape[3:])
  out = attend(lines(q), lines(k), lines(v), causal=causal)
  inverse = tuple(perm.index(i) for i in range(6))
  return out.reshape(lines_shape).transpose(inverse)

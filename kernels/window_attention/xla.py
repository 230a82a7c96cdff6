"""Window attention as a layout: the padded windows become a batch of sequences.

Each axis is padded so that windows tile it (front by s, back to a multiple of
w), then [B, T', H', W', n, D] is reshaped to [B * windows, wt * wh * ww, n, D]
and one attention call runs inside every window, with a key-validity mask for
the padding; padded queries are computed and dropped by the un-pad. For
causal, the plain causal mask of each sequence is the window-local raster
order, which for two positions of one window is the global raster order.
`attend` is `_common.dense_attention` (impl="xla": logits [windows, n, L, L],
memory O(N * L)) or `full_attention`'s fused kernel.

Per axis the shift is reduced mod w (the same partition, so no window of pure
padding), and an axis that fits in one window is neither padded nor cut:
window = grid is full attention along it, at no padding cost.
"""

import math

import jax.numpy as jnp
import numpy as np

from .._common import dense_attention


def axis_plan(n, w, s):
  """(window, front pad, padded length) of one axis of length n."""
  s %= w
  if n + s <= w:  # one window holds the whole axis
    return n, 0, n
  return w, s, -(-(n + s) // w) * w


def _valid(plans, grid):
  """bool [windows, L]: which positions of each padded window are in the grid, None if all."""
  axes = []
  for (w, s, p), n in zip(plans, grid):
    pos = np.arange(p)
    axes.append(((pos >= s) & (pos < s + n)).reshape(p // w, w))
  if all(a.all() for a in axes):
    return None
  (vt, vh, vw), wins = axes, [p // w for w, _, p in plans]
  valid = (vt[:, None, None, :, None, None] & vh[None, :, None, None, :, None]
           & vw[None, None, :, None, None, :])
  return valid.reshape(math.prod(wins), -1)


def window_attention(q, k, v, *, window, shift=(0, 0, 0), causal=False, attend=dense_attention):
  """q, k, v: [B, T, H, W, heads, D]; `attend(q, k, v, causal=, kv_valid=)` on [B', L, heads, D]."""
  b, t, h, w, heads, d = q.shape
  plans = [axis_plan(*a) for a in zip((t, h, w), window, shift)]
  (wt, _, pt), (wh, _, ph), (ww, _, pw) = plans
  nt, nh, nw = pt // wt, ph // wh, pw // ww
  pads = ((0, 0), *((s, p - n - s) for (_, s, p), n in zip(plans, (t, h, w))), (0, 0), (0, 0))

  def windows(x):  # [B, T, H, W, n, D] -> [B * windows, L, n, D]
    x = jnp.pad(x, pads) if any(p != (0, 0) for p in pads) else x
    x = x.reshape(b, nt, wt, nh, wh, nw, ww, heads, d).transpose(0, 1, 3, 5, 2, 4, 6, 7, 8)
    return x.reshape(b * nt * nh * nw, wt * wh * ww, heads, d)

  valid = _valid(plans, (t, h, w))
  if valid is not None:  # the same pattern for every batch element
    valid = jnp.broadcast_to(jnp.asarray(valid)[None], (b, *valid.shape)).reshape(-1, wt * wh * ww)
  out = attend(windows(q), windows(k), windows(v), causal=causal, kv_valid=valid)
  out = out.reshape(b, nt, nh, nw, wt, wh, ww, heads, d).transpose(0, 1, 4, 2, 5, 3, 6, 7, 8)
  out = out.reshape(b, pt, ph, pw, heads, d)
  (_, st, _), (_, sh, _), (_, sw, _) = plans
  return out[:, st:st + t, sh:sh + h, sw:sw + w]

"""Dense masked attention: the truth for 3D nearby attention in tests.

Deliberately naive and independent of the other implementations: the mask is
built here from raster coordinates by broadcast comparisons, straight from
NUWA's definition, and shares no helper with `xla.py` or the Pallas kernels.
Memory is O(Nq * Nk); use it only on small grids.
"""

import math

import jax
import jax.numpy as jnp


def _grid_coords(t, h, w):
  """(t, h, w) coordinates of every token of a grid in raster order, each [t*h*w]."""
  tt, hh, ww = jnp.meshgrid(jnp.arange(t), jnp.arange(h), jnp.arange(w), indexing="ij")
  return tt.reshape(-1), hh.reshape(-1), ww.reshape(-1)


def nearby_mask(q_grid, k_grid, radius, causal=False):
  """[Nq, Nk] bool, True where query (i, j, l) may attend key (a, b, c)."""
  (tq, hq, wq), (tk, hk, wk) = q_grid, k_grid
  rt, rh, rw = radius
  qi, qj, ql = _grid_coords(tq, hq, wq)
  ka, kb, kc = _grid_coords(tk, hk, wk)
  # Window centres on the key grid: i' = floor(i * Tk / Tq), likewise for h, w.
  ci, cj, cl = (qi * tk) // tq, (qj * hk) // hq, (ql * wk) // wq
  mask = ((jnp.abs(ka[None, :] - ci[:, None]) <= rt)
          & (jnp.abs(kb[None, :] - cj[:, None]) <= rh)
          & (jnp.abs(kc[None, :] - cl[:, None]) <= rw))
  if causal:
    # Same grids only (checked by the API): keys after the query in raster order.
    mask &= jnp.arange(tk * hk * wk)[None, :] <= jnp.arange(tq * hq * wq)[:, None]
  return mask


def nearby_attention(q, k, v, *, radius, causal=False):
  """Dense softmax(q k^T / sqrt(D) + mask) v over flattened grids, float32 softmax."""
  b, tq, hq, wq, heads, d = q.shape
  _, tk, hk, wk, _, _ = k.shape
  qf = q.reshape(b, tq * hq * wq, heads, d)
  kf = k.reshape(b, tk * hk * wk, heads, d)
  vf = v.reshape(b, tk * hk * wk, heads, v.shape[-1])
  hi = jax.lax.Precision.HIGHEST
  # Heads-major, as _common.masked_attention: "bhqk,bkhd->bqhd" runs probs @ v on XLA:CPU as
  # the transposed product at a third of the rate, which made this (the benchmarks' dense
  # side) look slower than dense attention is.
  heads_major = lambda x: jnp.swapaxes(x, 1, 2)
  logits = jnp.einsum("bhqd,bhkd->bhqk", heads_major(qf), heads_major(kf), precision=hi,
                      preferred_element_type=jnp.float32) / math.sqrt(d)
  mask = nearby_mask((tq, hq, wq), (tk, hk, wk), radius, causal)
  logits = jnp.where(mask[None, None], logits, -jnp.inf)
  probs = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum("bhqk,bhkd->bhqd", probs, heads_major(vf).astype(jnp.float32), precision=hi)
  return heads_major(out).reshape(b, tq, hq, wq, heads, v.shape[-1]).astype(q.dtype)

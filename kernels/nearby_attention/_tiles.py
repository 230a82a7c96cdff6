"""Static tiling for the Pallas kernels (TPU and GPU).

Tokens are flattened in raster order (t, h, w) and cut into tiles of `bq`
queries and `bk` keys. A query tile visits only the key tiles that hold at
least one key of one of its queries' windows; the lists are computed here
once per static shape, exactly, in NumPy, and handed to the kernels (as
scalar-prefetch tables on TPU, as plain int32 inputs on GPU). The kernels
still mask inside a visited tile, with the coordinates from
`query_positions` / `key_positions`. Not used by `reference.py`.
"""

import math

import jax.numpy as jnp
import numpy as np

# Coordinates of padding rows: far enough apart that no clipped radius bridges
# them, small enough that differences fit in int32.
_FAR = 1 << 29


def clip_radius(radius, k_grid):
  """A radius beyond the key grid means the whole axis; clip so coordinates stay small."""
  return tuple(int(min(r, max(n - 1, 0))) for r, n in zip(radius, k_grid))


def round_up(n, m):
  return -(-n // m) * m


def _raster(grid):
  t, h, w = grid
  i = np.arange(t * h * w, dtype=np.int64)
  return i // (h * w), (i // w) % h, i % w


def query_positions(q_grid, k_grid, n_pad):
  """[n_pad, 4] int32: window centre (t', h', w') on the key grid and raster index."""
  qt, qh, qw = _raster(q_grid)
  pos = np.full((n_pad, 4), -_FAR, np.int64)
  pos[:qt.size, 0] = qt * k_grid[0] // q_grid[0]
  pos[:qt.size, 1] = qh * k_grid[1] // q_grid[1]
  pos[:qt.size, 2] = qw * k_grid[2] // q_grid[2]
  pos[:qt.size, 3] = np.arange(qt.size)
  return pos.astype(np.int32)


def key_positions(k_grid, n_pad):
  """[4, n_pad] int32: key coordinates (t, h, w) and raster index."""
  kt, kh, kw = _raster(k_grid)
  pos = np.full((4, n_pad), _FAR, np.int64)
  pos[0, :kt.size], pos[1, :kt.size], pos[2, :kt.size] = kt, kh, kw
  pos[3, :kt.size] = np.arange(kt.size)
  return pos.astype(np.int32)


def visit_matrix(q_grid, k_grid, radius, causal, bq, bk):
  """[nq_tiles, nk_tiles] bool: True where the query tile has a key in the key tile.

  Works on query row segments (the queries of one tile on one (t, h) row), so
  the cost is segments x window rows, not queries x window rows. Exact for
  equal grids; for unequal grids the union of a segment's windows is taken as
  one interval per key row, which may add a tile (masked in the kernel).
  """
  (tq, hq, wq), (tk, hk, wk) = q_grid, k_grid
  rt, rh, rw = clip_radius(radius, k_grid)
  n_q, n_k = tq * hq * wq, tk * hk * wk
  nqt, nkt = -(-n_q // bq), -(-n_k // bk)
  raster = np.arange(n_q)
  qtile, qrow = raster // bq, raster // wq
  first = np.ones(n_q, bool)
  first[1:] = (qtile[1:] != qtile[:-1]) | (qrow[1:] != qrow[:-1])
  start = np.flatnonzero(first)
  end = np.append(start[1:], n_q) - 1
  seg_tile, row = qtile[start], qrow[start]
  ct, ch = (row // hq) * tk // tq, (row % hq) * hk // hq
  cw_lo, cw_hi = (start % wq) * wk // wq, (end % wq) * wk // wq
  # Key rows (a, b) of each segment's windows, each a raster interval [lo, hi].
  a = ct[:, None, None] + np.arange(-rt, rt + 1)[None, :, None]
  b = ch[:, None, None] + np.arange(-rh, rh + 1)[None, None, :]
  ok = (a >= 0) & (a < tk) & (b >= 0) & (b < hk)
  base = (a * hk + b) * wk
  lo = base + np.maximum(cw_lo - rw, 0)[:, None, None]
  hi = base + np.minimum(cw_hi + rw, wk - 1)[:, None, None]
  if causal:  # equal grids: no key after the segment's last query
    hi = np.minimum(hi, end[:, None, None])
    ok &= lo <= hi
  seg = np.broadcast_to(seg_tile[:, None, None], ok.shape)[ok]
  lo_t, hi_t = lo[ok] // bk, hi[ok] // bk
  # Mark the tile interval [lo_t, hi_t] of every key row with a difference array.
  diff = np.zeros((nqt, nkt + 1), np.int64)
  np.add.at(diff, (seg, lo_t), 1)
  np.add.at(diff, (seg, hi_t + 1), -1)
  return np.cumsum(diff, axis=1)[:, :nkt] > 0


def visit_lists(visit):
  """Rows of `visit` as padded index lists: (idx [rows, width], count [rows]).

  Padding repeats the last visited index so that the pipeline does not fetch
  a new block on the skipped steps; width >= 1 because grids cannot be empty.
  """
  count = visit.sum(1).astype(np.int32)
  width = max(int(count.max(initial=0)), 1)
  idx = np.zeros((visit.shape[0], width), np.int32)
  for r, row in enumerate(visit):
    cols = np.flatnonzero(row)
    if cols.size:
      idx[r, :cols.size] = cols
      idx[r, cols.size:] = cols[-1]
  return idx, count


class TilePlan:
  """Static shapes and visit tables of one call, shared by the TPU and GPU kernels.

  `kv_idx/kv_cnt`: the key tiles each query tile visits; `q_idx/q_cnt`: the transpose, for the
  dK/dV pass."""

  def __init__(self, q_shape, k_shape, radius, causal, block_q, block_k):
    self.q_grid, self.k_grid = tuple(q_shape[1:4]), tuple(k_shape[1:4])
    self.radius = clip_radius(radius, self.k_grid)
    self.causal = causal
    self.bq, self.bk = block_q, block_k
    self.nq, self.nk = math.prod(self.q_grid), math.prod(self.k_grid)
    self.nq_pad, self.nk_pad = round_up(self.nq, self.bq), round_up(self.nk, self.bk)
    visit = visit_matrix(self.q_grid, self.k_grid, self.radius, causal, self.bq, self.bk)
    self.kv_idx, self.kv_cnt = visit_lists(visit)
    self.q_idx, self.q_cnt = visit_lists(visit.T)
    self.visited_tiles = int(visit.sum())

  def kpos(self):
    return jnp.asarray(key_positions(self.k_grid, self.nk_pad))


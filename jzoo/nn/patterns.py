"""Attention patterns and the one attention op of the zoo's transformer blocks.

A pattern says which keys a query sees; `attention(q, k, v, pattern)` runs it on
`jzoo.kernels` (impl="auto": the Pallas kernels on TPU/GPU, XLA on CPU):

  Full(causal)                   every key (causal: bottom-right aligned); key/query
                                 padding and a prefix-LM prefix at call time. [B, L, heads, D]
  Nearby(radius, causal)         NUWA's 3D nearby box (T = 1: CogView2's local window)
  Axial(axis, causal)            the line through the query along "t", "h" or "w" (GODIVA)
  Window(window, shift, causal)  (shifted) 3D windows, truncated at the borders (Swin, CogVideo)

Grid patterns take [B, T, H, W, heads, D], or flat [B, L, heads, D] tokens in
raster order (t, h, w) with grid=(T, H, W). Under an active multi-device mesh
they run inside `shard_map` (`jzoo.nn.sharded_attention`: batch and heads split
by the logical axis rules, the grid whole); so does Full on a fused kernel,
which XLA cannot partition (Full on XLA is left to XLA's partitioner, which
can also split the sequence). `cycle(patterns, layer)` is a layer's pattern of
a per-layer cycle (GODIVA: Axial t, h, w).

Decoding: `init_cache(...)` and `decode_step(pattern, q, k_new, v_new, cache,
position)` run one token at a time in raster order, equal to the causal
pattern's teacher-forced `attention`. A step writes its key/value into the
cache and reads only the keys of its window, cut out with one dynamic slice
(Nearby: the box's past half (rt+1)(2rh+1)(2rw+1); Axial: the line; Window: the
window), so it costs O(window) whatever the grid. Full's window is every
earlier position: its step is O(sequence) by nature.

T5 and CLIP do not use this op and keep `jzoo.nn.attention.dot_product_attention`:
T5 adds a learned relative-position bias to unscaled logits (the op has
neither a bias nor a scale option), and CLIP's towers are checked bit for bit
against transformers and are a metric (CLIP score) whose value must not depend
on the backend, which the fused kernels on TPU/GPU would make it.
"""

import dataclasses
import functools
import math
import operator
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jzoo import kernels
from jzoo.kernels._common import resolve_impl
from jzoo.kernels._common import triple as _triple  # the kernels' own argument rule
from jzoo.nn import sharded_attention

SEQUENCE_AXES = ("batch", "length", "heads", "kv")
GRID_AXES = sharded_attention.LOGICAL_AXES  # batch, frames, height, width, heads, kv
AXES = ("t", "h", "w")


def _grid_shape(grid):
  """(T, H, W) from three ints >= 1 (not one int: a length is not a grid)."""
  if np.ndim(grid) != 1:
    raise ValueError(f"a grid is three ints (T, H, W), got {grid!r}")
  return _triple("grid", grid, 1)


class _Pattern:
  def __post_init__(self):
    if not isinstance(self.causal, (bool, np.bool_)):
      raise ValueError(f"{type(self).__name__}: causal must be a bool, got {self.causal!r}")


@dataclasses.dataclass(frozen=True)
class Full(_Pattern):
  """Dense attention; causal: key j visible iff j <= i + Lk - Lq."""
  causal: bool = False


@dataclasses.dataclass(frozen=True)
class Nearby(_Pattern):
  """Keys within `radius` (rt, rh, rw) of the query on every axis (an int: all three)."""
  radius: Any
  causal: bool = False

  def __post_init__(self):
    object.__setattr__(self, "radius", _triple("Nearby radius", self.radius, 0))
    super().__post_init__()


@dataclasses.dataclass(frozen=True)
class Axial(_Pattern):
  """Keys on the line through the query along `axis`."""
  axis: str
  causal: bool = False

  def __post_init__(self):
    if self.axis not in AXES:
      raise ValueError(f"Axial axis must be one of {AXES}, got {self.axis!r}")
    super().__post_init__()


@dataclasses.dataclass(frozen=True)
class Window(_Pattern):
  """Keys in the query's window: x lies in window floor((x + shift) / window) on each axis."""
  window: Any
  shift: Any = (0, 0, 0)
  causal: bool = False

  def __post_init__(self):
    object.__setattr__(self, "window", _triple("Window window", self.window, 1))
    object.__setattr__(self, "shift", _triple("Window shift", self.shift, 0))
    super().__post_init__()


PATTERNS = (Full, Nearby, Axial, Window)


def _check_pattern(pattern):
  if not isinstance(pattern, PATTERNS):
    raise ValueError(f"pattern must be Full, Nearby, Axial or Window, got {pattern!r}")


def cycle(patterns, layer):
  """The pattern of `layer` in a per-layer cycle (a single pattern: every layer's)."""
  if isinstance(patterns, PATTERNS):
    return patterns
  patterns = tuple(patterns)
  if not patterns:
    raise ValueError("cycle needs at least one pattern")
  return patterns[layer % len(patterns)]


def _mesh():
  """The active multi-device mesh (inside jit: the abstract one), or None."""
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh.empty or mesh.size == 1 else mesh


def _grid_kernel(pattern, impl):
  if isinstance(pattern, Nearby):
    return functools.partial(kernels.nearby_attention, radius=pattern.radius,
                             causal=pattern.causal, impl=impl)
  if isinstance(pattern, Axial):
    return functools.partial(kernels.axial_attention, axis=pattern.axis, causal=pattern.causal,
                             impl=impl)
  return functools.partial(kernels.window_attention, window=pattern.window, shift=pattern.shift,
                           causal=pattern.causal, impl=impl)


def attention(q, k, v, pattern, *, impl="auto", kv_valid=None, q_valid=None, prefix=None,
              grid=None):
  """softmax(q k^T / sqrt(D)) v over the keys `pattern` lets each query see.

  Args:
    q, k, v: Full: [B, Lq, heads, D] and [B, Lk, kv_heads, D]. Grid patterns:
      [B, T, H, W, heads, D] (Nearby, not causal: k, v may have another grid),
      or [B, T*H*W, heads, D] with `grid`.
    pattern: Full, Nearby, Axial or Window.
    impl: "auto" | "reference" | "xla" | "pallas" | "pallas_tpu" | "pallas_gpu", as the kernels.
    kv_valid, q_valid, prefix: Full only, as in `jzoo.kernels.full_attention`.
    grid: (T, H, W) of flat tokens, grid patterns only.
  Returns:
    The shape of q.
  """
  _check_pattern(pattern)
  rules = nn.get_logical_axis_rules() or None
  mesh = _mesh()
  if isinstance(pattern, Full):
    if grid is not None:
      raise ValueError("grid is for grid patterns; Full takes [B, L, heads, D] as it is")
    kernel = functools.partial(kernels.full_attention, causal=pattern.causal, impl=impl)
    if mesh is None or resolve_impl(impl, sharded_attention.mesh_platform(mesh)) in (
        "reference", "xla"):
      return kernel(q, k, v, q_valid=q_valid, kv_valid=kv_valid, prefix=prefix)
    if prefix is not None:  # per batch element, so it splits with the batch
      prefix = jnp.broadcast_to(jnp.asarray(prefix, jnp.int32), (q.shape[0],))
    return sharded_attention.sharded_attention(
        kernel, q, k, v, mesh=mesh, logical_axes=SEQUENCE_AXES, rules=rules, keep=(1, 3),
        name="full attention", q_valid=q_valid, kv_valid=kv_valid, prefix=prefix)

  name = f"{type(pattern).__name__.lower()} attention"
  if any(m is not None for m in (kv_valid, q_valid, prefix)):
    raise ValueError(f"kv_valid, q_valid and prefix are Full's masks; {name} takes none")
  shape = q.shape
  if grid is not None:
    grid = _grid_shape(grid)
    if any(x.ndim != 4 or x.shape[1] != math.prod(grid) for x in (q, k, v)):
      raise ValueError(f"{name} with grid={grid} takes q, k, v of shape [B, {math.prod(grid)}, "
                       f"heads, D]; got {q.shape}, {k.shape}, {v.shape}")
    q, k, v = (x.reshape(x.shape[0], *grid, *x.shape[2:]) for x in (q, k, v))
  elif q.ndim != 6:
    raise ValueError(f"{name} takes [B, T, H, W, heads, D], or [B, L, heads, D] with grid=(T, H, "
                     f"W); got q of shape {q.shape}")
  kernel = _grid_kernel(pattern, impl)
  if mesh is None:
    out = kernel(q, k, v)
  else:
    out = sharded_attention.sharded_attention(kernel, q, k, v, mesh=mesh, logical_axes=GRID_AXES,
                                              rules=rules, keep=(1, 2, 3, 5), name=name)
  return out.reshape(shape)


# --- Decoding ------------------------------------------------------------------------------------


class Cache(NamedTuple):
  """Keys and values: Full [B, L, heads, D]; grid patterns [B, T, H, W, heads, D]."""
  k: jax.Array
  v: jax.Array


def _check_decodable(pattern):
  _check_pattern(pattern)
  if not pattern.causal:  # a token cannot attend to keys that are not written yet
    raise ValueError(f"decoding needs a causal pattern, got {pattern!r}")


def init_cache(pattern, batch, grid_or_length, heads, head_dim, dtype=jnp.float32):
  """An empty (zero) cache for `decode_step`: Full takes a length (or a grid: T*H*W tokens),
  the grid patterns a grid (T, H, W)."""
  _check_decodable(pattern)
  if isinstance(pattern, Full):
    n = grid_or_length
    length = math.prod(_grid_shape(n)) if np.ndim(n) else operator.index(n)
    shape = (batch, length, heads, head_dim)
  else:
    shape = (batch, *_grid_shape(grid_or_length), heads, head_dim)
  return Cache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def _attend_one(q, keys, values, valid):
  """One query per head against K keys: q [B, n, D], keys/values [B, K, n, D], valid [K].

  float32 logits and softmax at full precision, as the kernels' references. The query's own
  key is always valid, so no row is empty."""
  prec = jax.lax.Precision.HIGHEST if q.dtype == jnp.float32 else jax.lax.Precision.DEFAULT
  logits = jnp.einsum("bnd,bknd->bnk", q, keys, precision=prec,
                      preferred_element_type=jnp.float32) / math.sqrt(q.shape[-1])
  probs = jax.nn.softmax(jnp.where(valid, logits, -1e30), axis=-1)
  out = jnp.einsum("bnk,bknd->bnd", probs.astype(values.dtype), values, precision=prec,
                   preferred_element_type=jnp.float32)
  return out.astype(q.dtype)


def _window_slab(pattern, point, grid):
  """Per axis (first coordinate, static extent, keep(coords) -> bool) of a slab that holds
  every key of `pattern` visible from `point`; the raster mask is applied by the caller."""
  if isinstance(pattern, Nearby):
    # Keys after the query's frame are never visible: only rt + 1 frames are read.
    return [(p - r, min(r + (r if a else 0) + 1, n), lambda c, p=p, r=r: jnp.abs(c - p) <= r)
            for a, (p, r, n) in enumerate(zip(point, pattern.radius, grid))]
  if isinstance(pattern, Axial):
    along = AXES.index(pattern.axis)
    return [(0, n, None) if a == along else (p, 1, None)
            for a, (p, n) in enumerate(zip(point, grid))]
  slabs = []
  for p, n, w, s in zip(point, grid, pattern.window, pattern.shift):
    index = (p + s) // w
    slabs.append((index * w - s, min(w, n), lambda c, s=s, w=w, index=index: (c + s) // w == index))
  return slabs


def decode_step(pattern, q, k_new, v_new, cache, position):
  """One token of causal decoding in raster order.

  Args:
    pattern: a causal Full, Nearby, Axial or Window.
    q, k_new, v_new: [B, heads, D], the new token's query, key and value.
    cache: a `Cache` from `init_cache` holding the keys/values of every earlier position.
    position: the token's raster index (t * H + h) * W + w; a traced int.
  Returns:
    (out [B, heads, D], the cache with the token's key and value written).
  """
  _check_decodable(pattern)
  position = jnp.asarray(position, jnp.int32)
  b, *space, heads, d = cache.k.shape
  if isinstance(pattern, Full):
    point = (position,)
  else:
    _, hh, ww = space
    point = (position // (hh * ww), (position // ww) % hh, position % ww)
  write = lambda c, x: jax.lax.dynamic_update_slice(
      c, x.astype(c.dtype).reshape(b, *(1,) * len(space), heads, d), (0, *point, 0, 0))
  cache = Cache(write(cache.k, k_new), write(cache.v, v_new))
  if isinstance(pattern, Full):  # the window is the whole past: O(sequence)
    return _attend_one(q, cache.k, cache.v, jnp.arange(space[0]) <= position), cache

  slabs = _window_slab(pattern, point, space)
  sizes = tuple(e for _, e, _ in slabs)
  # dynamic_slice would clamp the start anyway; clamping here keeps `coords` in step with it.
  starts = [jnp.clip(s, 0, n - e) for (s, e, _), n in zip(slabs, space)]
  coords = [s + jnp.arange(e) for s, e in zip(starts, sizes)]
  keep = [jnp.ones(e, bool) if f is None else f(c) for (_, e, f), c in zip(slabs, coords)]
  ct, ch, cw = jnp.meshgrid(*coords, indexing="ij")
  valid = (keep[0][:, None, None] & keep[1][None, :, None] & keep[2][None, None, :]
           & ((ct * space[1] + ch) * space[2] + cw <= position))
  cut = lambda c: jax.lax.dynamic_slice(c, (0, *starts, 0, 0), (b, *sizes, heads, d)).reshape(
      b, -1, heads, d)
  return _attend_one(q, cut(cache.k), cut(cache.v), valid.reshape(-1)), cache

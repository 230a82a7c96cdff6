"""Benchmark: axial, nearby (CogView2 local and cross-level) and window attention against dense.

    python benchmarks/attention_patterns.py            # tables
    python benchmarks/attention_patterns.py --json     # one JSON object
    python benchmarks/attention_patterns.py --json out.json  # tables, and the JSON in out.json
    python benchmarks/attention_patterns.py --smoke    # tiny grids, one timed run: seconds

Defaults are the issue's CPU setting (B=1, heads=4, D=32, float32):
  axial   `axial_attention` on 16x16x16 tokens, causal, along t, h and w (one row each)
  local   `nearby_attention` on a 1x60x60 grid, radius (0, 2, 2): CogView2's local window
  cross   `nearby_attention` from a 1x60x60 query grid onto a 1x20x20 key/value grid,
          radius (0, 2, 2) on the key grid: CogView2's cross-level window
  window  `window_attention` on 16x32x32, window (4, 8, 8), shift (2, 4, 4)

Per pattern, side by side in one run: the pattern (`impl="auto"`, XLA on CPU) against the
dense side, forward and forward+backward (`jax.grad` of sum(out * cotangent) w.r.t. q, k, v);
the pattern again at 2x the tokens (grown along an axis its window does not span: t, or h for
axial along t, or w for the 2D grids, the cross grid's key grid with it); and a decode step per
token at sequence lengths L and 4L. The dense side is the pattern's `impl="reference"` (dense
masked attention over the flattened grid with the same mask) jitted and run one head at a time
(`lax.map`) so that its [N, N] logits fit in RAM (same FLOPs); `--baseline sdpa` is
`jax.nn.dot_product_attention` with the mask instead (cuDNN on a GPU, the default there).

Decode: the self patterns (axial, local, window) decode through `jzoo.nn.patterns.decode_step`
on a cache from `init_cache` (the causal pattern; what NUWA and Phenaki run): each new token's
key/value is written into the [B, T, H, W, heads, D] cache and one query attends to its window,
cut out with one dynamic slice. The cross window has no decode API in jzoo.nn.patterns (its
keys are a fixed, fully known grid: nothing is written), so this script times its own gather
step for it (`_decode_fn`): the window's keys gathered from the 20x20 key/value grid.
`--decode-tokens` consecutive tokens per jitted call (a `fori_loop`, cache donated, so nothing is
copied per call). Beside it, for contrast, the benchmark's step attending all N cached keys
under the pattern's mask (dense decode, an eighth as many tokens per call). All are checked
against the reference (causal) on small grids first.

Timings are medians over the timed runs after one warm-up (compile), with
`jax.block_until_ready`. All cases run round-robin, `--repeats` rounds, so that load from other
processes hits all alike: fast cases make several timed calls per round (`--round-seconds`),
each after an untimed one; the timed calls of the pairs whose ratio is reported (1x and 2x
tokens, L and 4L) alternate call by call; the dense cases, seconds each, make one timed call in
each of the first `--dense-repeats` rounds.
"""

import argparse
import functools
import json
import math
import os
import platform as platform_lib
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jzoo.kernels import axial_attention, nearby_attention, window_attention
from jzoo.kernels import _common as kernels_common
from jzoo.kernels.axial_attention import reference as axial_reference
from jzoo.kernels.nearby_attention import _tiles
from jzoo.kernels.nearby_attention import reference as nearby_reference
from jzoo.kernels.window_attention import reference as window_reference
from jzoo.kernels.window_attention import xla as window_xla
from jzoo.nn import patterns as nn_patterns

import _common  # benchmarks/_common.py: this script's folder is sys.path[0]

TARGETS = dict(fwd_speedup=10.0, fwd_bwd_speedup=5.0, doubling_ratio=2.2, decode_flat=0.2,
               gpu_speedup_over_cudnn=5.0)
DECODE_NOTE = ("jzoo.nn.patterns.decode_step (self patterns); the cross window, which "
               "jzoo.nn.patterns has no decode API for: the benchmark's own gather step "
               "(_decode_fn)")

# --smoke: every case once at tiny grids (one axial axis).
SMOKE = dict(axial_grid=(4, 4, 4), axial_axes=("t",), local_grid=(1, 6, 6),
             cross_key_grid=(1, 2, 2), window_grid=(4, 4, 8), window=(2, 2, 4), shift=(1, 1, 2),
             radius=(0, 1, 1), cross_radius=(0, 1, 1), heads=1, head_dim=8, repeats=1,
             round_seconds=0.0, dense_repeats=1, decode_tokens=4)


def _parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--head-dim", type=int, default=32)
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--patterns", nargs="*", default=("axial", "local", "cross", "window"),
                 choices=("axial", "local", "cross", "window"))
  p.add_argument("--axial-grid", type=int, nargs=3, default=(16, 16, 16))
  p.add_argument("--axial-axes", nargs="*", default=("t", "h", "w"), choices=("t", "h", "w"))
  p.add_argument("--local-grid", type=int, nargs=3, default=(1, 60, 60),
                 help="the local window's grid, also the cross window's query grid")
  p.add_argument("--local-causal", action="store_true")
  p.add_argument("--radius", type=int, nargs=3, default=(0, 2, 2), help="the local window's")
  p.add_argument("--cross-key-grid", type=int, nargs=3, default=(1, 20, 20))
  p.add_argument("--cross-radius", type=int, nargs=3, default=(0, 2, 2),
                 help="the cross window's, on the key grid")
  p.add_argument("--window-grid", type=int, nargs=3, default=(16, 32, 32))
  p.add_argument("--window", type=int, nargs=3, default=(4, 8, 8))
  p.add_argument("--shift", type=int, nargs=3, default=(2, 4, 4))
  p.add_argument("--window-causal", action="store_true")
  p.add_argument("--impl", default="auto", choices=kernels_common.IMPLS)
  p.add_argument("--baseline", default="auto", choices=("auto", "reference", "sdpa", "none"),
                 help="dense side: the masked reference (per head), jax.nn.dot_product_attention "
                 "with the mask (cuDNN on GPU), or none; auto: sdpa on a GPU, else reference")
  p.add_argument("--repeats", type=int, default=7, help="rounds of timed runs of the fast cases")
  p.add_argument("--round-seconds", type=float, default=0.1,
                 help="a fast case's timed calls per round fill this (1 to 64 calls)")
  p.add_argument("--dense-repeats", type=int, default=2, help="timed runs of each dense case")
  p.add_argument("--decode-tokens", type=int, default=1024,
                 help="tokens decoded per timed call of a decode case")
  p.add_argument("--no-decode", dest="decode", action="store_false")
  p.add_argument("--json", nargs="?", const=True, default=False, metavar="PATH",
                 help="print one JSON object instead of the tables; with PATH: write it there "
                 "and print the tables too")
  return _common.parse_args(p, SMOKE, argv)


# ---- the patterns --------------------------------------------------------------------------

class Pattern:
  """One attention pattern: its grids, the call, and per query its window as a separable box.

  `box(coords, q_grid, k_grid)` maps a query's (t, h, w) (traced ints) to per-axis key positions
  and whether each is inside the pattern and the key grid, causality aside: three ([n_a] int,
  [n_a] bool).
  `grow` lists the axes that 2x / 4x the tokens grow, alternately (the window spans no more
  keys); the key grid of a cross pattern grows with the query grid.
  `decode` is the causal `jzoo.nn.patterns` pattern that decodes it (None: cross).
  """

  def __init__(self, name, label, q_grid, k_grid, call, mask, box, causal, grow, decode=None):
    self.name, self.label, self.q_grid, self.k_grid = name, label, tuple(q_grid), tuple(k_grid)
    self.call, self.mask, self.box, self.causal, self.grow = call, mask, box, causal, grow
    self.decode = decode
    self.cross = name == "cross"  # keys from another grid: nothing written while decoding

  def grown(self, factor):
    """(q_grid, k_grid) at `factor` (1, 2, 4) times the tokens."""
    q, k = list(self.q_grid), list(self.k_grid)
    for i in range(int(round(math.log2(factor)))):
      a = self.grow[i % len(self.grow)]
      q[a] *= 2
      k[a] = k[a] * 2 if self.cross else q[a]
    return tuple(q), tuple(k)

  def at(self, q_grid, k_grid):
    """This pattern at other grids."""
    return Pattern(self.name, self.label, q_grid, k_grid, self.call, self.mask, self.box,
                   self.causal, self.grow, self.decode)


def _patterns(args):
  """The benchmark's patterns, in table order."""
  out = []
  for axis in args.axial_axes if "axial" in args.patterns else ():
    a = "thw".index(axis)

    def box(c, grid, a=a):
      return tuple((jnp.arange(n), jnp.ones(n, bool)) if i == a else (c[i][None], jnp.ones(1, bool))
                   for i, n in enumerate(grid))

    out.append(Pattern(
        f"axial_{axis}", f"axial {axis}, causal", args.axial_grid, args.axial_grid,
        lambda q, k, v, impl, axis=axis: axial_attention(q, k, v, axis=axis, causal=True,
                                                         impl=impl),
        lambda qg, kg, axis=axis: axial_reference.axial_mask(qg, axis, True),
        lambda c, qg, kg, box=box: box(c, kg), True, (1,) if axis == "t" else (0,),
        nn_patterns.Axial(axis, causal=True)))

  def nearby_box(radius):
    def box(c, qg, kg):
      axes = []
      for x, nq, nk, r in zip(c, qg, kg, radius):
        pos = (x * nk) // nq + jnp.arange(-r, r + 1)
        axes.append((pos, (pos >= 0) & (pos < nk)))
      return tuple(axes)
    return box

  def nearby_pattern(name, label, k_grid, radius, causal, decode):
    radius = tuple(radius)
    return Pattern(
        name, label, args.local_grid, k_grid,
        lambda q, k, v, impl: nearby_attention(q, k, v, radius=radius, causal=causal, impl=impl),
        lambda qg, kg: nearby_reference.nearby_mask(qg, kg, radius, causal),
        nearby_box(radius), causal, (2, 1), decode)

  if "local" in args.patterns:
    out.append(nearby_pattern("local", f"nearby local r={tuple(args.radius)}"
                              + (", causal" if args.local_causal else ""),
                              args.local_grid, args.radius, args.local_causal,
                              nn_patterns.Nearby(tuple(args.radius), causal=True)))
  if "cross" in args.patterns:
    out.append(nearby_pattern("cross", f"nearby cross r={tuple(args.cross_radius)}",
                              args.cross_key_grid, args.cross_radius, False, None))
  if "window" in args.patterns:
    window, shift, causal = tuple(args.window), tuple(args.shift), args.window_causal

    def window_box(c, qg, kg):
      axes = []
      for x, n, w, s in zip(c, kg, window, shift):
        pos = ((x + s) // w) * w - s + jnp.arange(w)
        axes.append((pos, (pos >= 0) & (pos < n)))
      return tuple(axes)

    out.append(Pattern(
        "window", f"window {window} shift {shift}" + (", causal" if causal else ""),
        args.window_grid, args.window_grid,
        lambda q, k, v, impl: window_attention(q, k, v, window=window, shift=shift,
                                               causal=causal, impl=impl),
        lambda qg, kg: window_reference.window_mask(qg, window, shift, causal),
        window_box, causal, (0,), nn_patterns.Window(window, shift, causal=True)))
  return out


def _unravel(pos, grid):
  _, h, w = grid
  return pos // (h * w), (pos // w) % h, pos % w


def _window(pattern, q_grid, k_grid, pos):
  """A query's window on the flattened key grid: (flat key index [K] int32, inside [K] bool),
  out-of-grid entries clipped into it and marked outside. Causality not applied."""
  axes = pattern.box(_unravel(pos, q_grid), q_grid, k_grid)
  grids = jnp.meshgrid(*(p for p, _ in axes), indexing="ij")
  inside = jnp.meshgrid(*(v for _, v in axes), indexing="ij")
  inside = (inside[0] & inside[1] & inside[2]).reshape(-1)
  t, h, w = (jnp.clip(g, 0, n - 1).reshape(-1) for g, n in zip(grids, k_grid))
  _, hk, wk = k_grid
  return ((t * hk + h) * wk + w).astype(jnp.int32), inside


def _pairs(pattern, q_grid, k_grid, causal):
  """Number of (query, key) pairs inside the pattern (from the windows, all queries at once)."""
  n = math.prod(q_grid)
  pos = jnp.arange(n, dtype=jnp.int32)
  idx, inside = jax.jit(jax.vmap(lambda p: _window(pattern, q_grid, k_grid, p)))(pos)
  if causal:
    inside &= idx <= pos[:, None]
  return int(inside.sum())


# ---- forward, forward+backward, dense ------------------------------------------------------

def _fwd_bwd(fn):
  """(q, k, v, cotangent) -> the gradients of sum(fn(q, k, v) * cotangent) w.r.t. q, k, v."""
  def run(q, k, v, cot):
    loss = lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * cot)
    return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
  return run


def _fwd(fn):
  return lambda q, k, v, cot: fn(q, k, v)


def _per_head(fn):
  """Runs fn(q, k, v, cot) one head at a time (`lax.map`); heads stay on axis 4."""
  def run(*xs):
    split = lambda x: jnp.moveaxis(x, 4, 0)[:, :, :, :, :, None]
    outs = jax.lax.map(lambda ys: fn(*ys), tuple(split(x) for x in xs))
    return jax.tree.map(lambda x: jnp.moveaxis(x[:, :, :, :, :, 0], 0, 4), outs)
  return run


def _dense(pattern, baseline, sdpa_impl=None):
  """(forward, forward+backward) of the dense side, each a function of (q, k, v, cot)."""
  if baseline == "reference":
    ref = lambda q, k, v: pattern.call(q, k, v, "reference")
    return _per_head(_fwd(ref)), _per_head(_fwd_bwd(ref))

  def sdpa(q, k, v):  # flattened tokens, boolean mask; cuDNN/XLA picked by JAX
    b, n, d = q.shape[0], q.shape[4], q.shape[5]
    mask = pattern.mask(pattern.q_grid, pattern.k_grid)
    flat = lambda x: x.reshape(b, -1, n, d)
    out = jax.nn.dot_product_attention(flat(q), flat(k), flat(v), mask=mask[None, None],
                                       implementation=sdpa_impl)
    return out.reshape(q.shape)
  return _fwd(sdpa), _fwd_bwd(sdpa)


def _inputs(batch, heads, head_dim, dtype, q_grid, k_grid, seed=0):
  """q, k, v and a cotangent like q."""
  keys = jax.random.split(jax.random.key(seed), 4)
  shape = lambda g: (batch, *g, heads, head_dim)
  q = jax.random.normal(keys[0], shape(q_grid), dtype)
  k, v = (jax.random.normal(key, shape(k_grid), dtype) for key in keys[1:3])
  cot = jax.random.normal(keys[3], shape(q_grid), jnp.float32)
  return q, k, v, cot


class _Case:
  """One compiled function, its arguments and its timings.

  Fast cases (`rewarm`) make `calls` timed calls per round, as many as fill `round_seconds`
  (1 to 64; medians over many samples for the millisecond cases, which a loaded machine hits
  hardest), each after an untimed one (the previous case may have flushed the caches). Dense
  cases make one timed call per round, with no untimed one (GB-sized working sets)."""

  def __init__(self, pattern, what, fn, args, tokens, rewarm=True, donate=(), per_call=1,
               round_seconds=0.0):
    self.pattern, self.what, self.args, self.tokens = pattern, what, list(args), tokens
    self.rewarm, self.donate, self.per_call = rewarm, donate, per_call
    t0 = time.perf_counter()
    self.compiled = jax.jit(fn, donate_argnums=donate).lower(*self.args).compile()
    self.compile_seconds = time.perf_counter() - t0
    mem = self.compiled.memory_analysis()  # XLA's buffer assignment: the peak estimate
    self.peak_bytes = None if mem is None else (
        mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
        - mem.alias_size_in_bytes)
    t0 = time.perf_counter()
    self._call()  # warm-up
    warm = time.perf_counter() - t0
    self.calls = 1 if not rewarm else int(min(64, max(1, round_seconds // max(warm, 1e-6))))
    self.times = []

  def _call(self):
    out = jax.block_until_ready(self.compiled(*self.args))
    for i, j in enumerate(self.donate):  # donated buffers come back as the first outputs
      self.args[j] = out[i]

  def time_one(self):
    if self.rewarm:
      self._call()
    t = time.perf_counter()
    self._call()
    self.times.append((time.perf_counter() - t) / self.per_call)

  @property
  def seconds(self):
    return statistics.median(self.times)

  def row(self):
    t = sorted(self.times)
    q = lambda f: t[min(len(t) - 1, int(f * len(t)))]
    return dict(pattern=self.pattern, what=self.what, tokens=self.tokens, seconds=self.seconds,
                min_seconds=t[0], p25_seconds=q(0.25), p75_seconds=q(0.75), samples=len(t),
                calls_per_round=self.calls, per_call=self.per_call,
                all_seconds=self.times if len(t) <= 16 else None,
                compile_seconds=self.compile_seconds, peak_bytes=self.peak_bytes)


def _run_group(group):
  """One round of a group of cases whose ratio is reported (a pattern at 1x and 2x tokens, a
  decode at L and 4L): their timed calls alternate, so that load from other processes hits
  both alike."""
  for _ in range(min(c.calls for c in group)):
    for c in group:
      c.time_one()


# ---- decode ---------------------------------------------------------------------------------

def _attend_box(q, keys, values, valid):
  """One query per head against its gathered keys: q [B, heads, D], keys/values [B, K, heads, D],
  valid [K] -> [B, heads, D] (softmax scale 1/sqrt(D), float32 softmax)."""
  logits = jnp.einsum("bhd,bkhd->bhk", q.astype(jnp.float32), keys.astype(jnp.float32))
  logits = jnp.where(valid[None, None], logits / np.sqrt(q.shape[-1]), -jnp.inf)
  weights = jax.nn.softmax(logits, axis=-1).astype(values.dtype)
  return jnp.einsum("bhk,bkhd->bhd", weights, values)


def _uses_decode_step(pattern, dense):
  return pattern.decode is not None and not dense


def _decode_fn(pattern, q_grid, k_grid, n_tokens, dense=False):
  """decode(cache_k, cache_v, qs, ks, vs, start) -> (cache_k, cache_v, outs).

  Tokens start .. start + n_tokens - 1 (raster order on the query grid), one at a time in a
  `fori_loop`. Self patterns: `jzoo.nn.patterns.decode_step` of the causal pattern on its
  [B, T, H, W, heads, D] cache (`_decode_args`), the op the models decode with. Cross (no
  decode API in jzoo.nn.patterns: its keys are a fixed grid, nothing is written): this script's
  gather step, the window's keys taken from the flat [B, N, heads, D] key/value grid.
  dense=True (a contrast, this script's): the token's key/value goes into the flat cache and it
  attends all cached keys with its causal window as a mask (O(N) per token).
  """
  n_keys = math.prod(k_grid)

  def decode(cache_k, cache_v, qs, ks, vs, start):
    def body(i, carry):
      ck, cv, outs = carry
      pos = start + i
      if _uses_decode_step(pattern, dense):
        out, cache = nn_patterns.decode_step(pattern.decode, qs[i], ks[i], vs[i],
                                             nn_patterns.Cache(ck, cv), pos)
        return cache.k, cache.v, outs.at[i].set(out)
      if not pattern.cross:
        ck = jax.lax.dynamic_update_slice(ck, ks[i][:, None], (0, pos, 0, 0))
        cv = jax.lax.dynamic_update_slice(cv, vs[i][:, None], (0, pos, 0, 0))
      idx, valid = _window(pattern, q_grid, k_grid, pos)
      if not pattern.cross:
        valid &= idx <= pos
      if dense:
        valid = jnp.zeros(n_keys, bool).at[idx].max(valid)
        out = _attend_box(qs[i], ck, cv, valid)
      else:
        out = _attend_box(qs[i], jnp.take(ck, idx, axis=1), jnp.take(cv, idx, axis=1), valid)
      return ck, cv, outs.at[i].set(out)

    return jax.lax.fori_loop(0, n_tokens, body, (cache_k, cache_v, jnp.zeros_like(qs)))
  return decode


def _cache_shape(pattern, dense, batch, heads, head_dim, k_grid):
  """decode_step's cache is `init_cache`'s; the benchmark's own steps take it flat."""
  if _uses_decode_step(pattern, dense):
    return jax.eval_shape(lambda: nn_patterns.init_cache(
        pattern.decode, batch, k_grid, heads, head_dim)).k.shape
  return (batch, math.prod(k_grid), heads, head_dim)


def _decode_args(pattern, dense, batch, heads, head_dim, dtype, k_grid, n_tokens, seed=1):
  keys = jax.random.split(jax.random.key(seed), 5)
  cache = _cache_shape(pattern, dense, batch, heads, head_dim, k_grid)
  steps = (n_tokens, batch, heads, head_dim)
  return [jax.random.normal(keys[i], s, dtype) for i, s in
          enumerate((cache, cache, steps, steps, steps))]


def _check_decode(pattern, dtype):
  """The decode step's outputs (and the dense decode's) for every token of a small grid against
  impl="reference" (causal for self patterns); raises AssertionError if they differ."""
  q, k, v, _ = _inputs(1, 2, 8, dtype, pattern.q_grid, pattern.k_grid, seed=3)
  n = math.prod(pattern.q_grid)
  flat = lambda x: x.reshape(1, -1, 2, 8)

  def errors(q, k, v):
    if pattern.cross:  # the cache is the key/value grid; nothing is written
      want = flat(pattern.call(q, k, v, "reference"))
      new = (q, q)
    else:  # the causal variant of the pattern, via its dense mask; the decode fills the cache
      mask = pattern.mask(pattern.q_grid, pattern.k_grid)
      mask &= jnp.tril(jnp.ones(mask.shape, bool))
      want = kernels_common.masked_attention(flat(q), flat(k), flat(v), mask)
      new = (k, v)
    steps = lambda x: jnp.moveaxis(flat(x), 1, 0)
    errs = []
    for dense in (False, True):
      if pattern.cross:
        cache = flat(k), flat(v)
      else:
        cache = (jnp.zeros(_cache_shape(pattern, dense, 1, 2, 8, pattern.k_grid), dtype),) * 2
      decode = _decode_fn(pattern, pattern.q_grid, pattern.k_grid, n, dense)
      _, _, outs = decode(*cache, steps(q), *(steps(x) for x in new), 0)
      errs.append(jnp.max(jnp.abs(jnp.moveaxis(outs, 0, 1) - want)))
    return jnp.stack(errs)

  err = np.asarray(jax.jit(errors)(q, k, v))
  tol = 1e-4 if dtype == jnp.float32 else 3e-2
  assert (err < tol).all(), (
      f"{pattern.name}: decode (gather, dense) differs from the reference: {err}")


# ---- FLOP accounting ------------------------------------------------------------------------

def _layout_pairs(pattern, args):
  """(query, key) pairs the axial/window layouts compute (lines / padded windows x L^2; causal:
  L(L+1)/2), what the fused kernel of a Pallas impl sees; None for nearby."""
  if pattern.name.startswith("axial"):
    grid, axis = pattern.q_grid, "thw".index(pattern.name[-1])
    n_seq, length = math.prod(grid) // grid[axis], grid[axis]
    return n_seq * length * (length + 1) // 2
  if pattern.name == "window":
    plans = [window_xla.axis_plan(*a) for a in zip(pattern.q_grid, args.window, args.shift)]
    n_seq = math.prod(p // w for w, _, p in plans)
    length = math.prod(w for w, _, _ in plans)
    return n_seq * (length * (length + 1) // 2 if args.window_causal else length * length)
  return None


# ---- main ----------------------------------------------------------------------------------

def _cpu_model():
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform_lib.processor()


def _met(value, target, kind):
  if value is None:
    return None
  if kind == "min":
    return value >= target
  if kind == "max":
    return value <= target
  return abs(value - 1) <= target  # "flat"


def main():
  args = _parse()
  dtype = jnp.dtype(args.dtype)
  backend = jax.default_backend()
  impl = kernels_common.resolve_impl(args.impl, backend)
  baseline = args.baseline
  if baseline == "auto":
    baseline = "sdpa" if backend == "gpu" else "reference"
  patterns = _patterns(args)
  print(f"backend={backend} impl={impl} baseline={baseline} heads={args.heads} "
        f"D={args.head_dim} B={args.batch} {args.dtype}: "
        + ", ".join(f"{p.name} {p.q_grid}->{p.k_grid}" for p in patterns), file=sys.stderr)

  t_start = time.perf_counter()
  # The decode step's windows against the reference, on small grids of each pattern.
  small = dict(axial=((3, 4, 5), None), local=((1, 6, 7), None), cross=((1, 6, 7), (1, 2, 3)),
               window=((4, 5, 6), None))
  if args.decode:
    for p in patterns:
      q_grid, k_grid = small[p.name.split("_")[0]]
      _check_decode(p.at(q_grid, k_grid or q_grid), dtype)

  fwd_cases, dense_cases, decode_cases, groups = [], [], [], []
  fast_case = functools.partial(_Case, round_seconds=args.round_seconds)
  info = {}
  for p in patterns:
    tokens = math.prod(p.q_grid)
    inp = _inputs(args.batch, args.heads, args.head_dim, dtype, p.q_grid, p.k_grid)
    fast = lambda q, k, v, p=p: p.call(q, k, v, args.impl)
    cases = dict(fwd=fast_case(p.name, "auto fwd", _fwd(fast), inp, tokens),
                 fwd_bwd=fast_case(p.name, "auto fwd+bwd", _fwd_bwd(fast), inp, tokens))
    q2, k2 = p.grown(2)
    p2 = p.at(q2, k2)
    inp2 = _inputs(args.batch, args.heads, args.head_dim, dtype, q2, k2)
    fast2 = lambda q, k, v, p2=p2: p2.call(q, k, v, args.impl)
    cases.update(fwd_2x=fast_case(p.name, "auto fwd, 2x tokens", _fwd(fast2), inp2,
                                  math.prod(q2)),
                 fwd_bwd_2x=fast_case(p.name, "auto fwd+bwd, 2x tokens", _fwd_bwd(fast2),
                                      inp2, math.prod(q2)))
    fwd_cases += cases.values()
    groups += [[cases["fwd"], cases["fwd_2x"]], [cases["fwd_bwd"], cases["fwd_bwd_2x"]]]
    dense = {}
    if baseline != "none":
      # On a GPU the sdpa side is cuDNN's fused attention where it takes the shape, else XLA's.
      for sdpa_impl in ("cudnn", "xla") if baseline == "sdpa" and backend == "gpu" else (None,):
        label = baseline if sdpa_impl is None else f"sdpa {sdpa_impl}"
        try:  # GB-sized working sets: nothing to keep warm, and a second run would double the time
          d_fwd, d_fb = _dense(p, baseline, sdpa_impl)
          dense = dict(
              fwd=_Case(p.name, f"dense ({label}) fwd", d_fwd, inp, tokens, rewarm=False),
              fwd_bwd=_Case(p.name, f"dense ({label}) fwd+bwd", d_fb, inp, tokens, rewarm=False))
          break
        except Exception as e:  # pylint: disable=broad-except
          print(f"{p.name}: dense ({label}) unavailable: {' '.join(str(e).split())[:200]}",
                file=sys.stderr)
      dense_cases += dense.values()
    decode = {}
    if args.decode:
      for factor in (1, 4):
        qg, kg = p.grown(factor)
        for dense_decode in (False, True):
          # Dense decode is O(N) per token: fewer tokens per call, the same per-token time.
          n_tok = args.decode_tokens // (8 if dense_decode else 1)
          n_tok = max(1, min(n_tok, math.prod(p.q_grid) // 2))  # the same tokens at L and 4L
          start = math.prod(qg) // 2 - n_tok // 2
          fn = _decode_fn(p, qg, kg, n_tok, dense=dense_decode)
          dargs = _decode_args(p, dense_decode, args.batch, args.heads, args.head_dim, dtype,
                               kg, n_tok)
          what = f"{'dense ' if dense_decode else ''}decode/token, {factor}L"
          decode[(factor, dense_decode)] = fast_case(
              p.name, what, lambda *a, fn=fn: fn(*a), [*dargs, jnp.int32(start)],
              math.prod(qg), donate=(0, 1), per_call=n_tok)
      decode_cases += decode.values()
      groups += [[decode[(1, d)], decode[(4, d)]] for d in (False, True)]
    info[p.name] = (p, p2, cases, dense, decode)
    print(f"{p.name}: compiled and warmed up, {time.perf_counter() - t_start:.0f} s",
          file=sys.stderr, flush=True)

  rounds = max(args.repeats, args.dense_repeats)
  for r in range(rounds):
    for group in groups + ([[c] for c in dense_cases] if r < args.dense_repeats else []):
      _run_group(group)
    print(f"timed round {r + 1} of {rounds}, {time.perf_counter() - t_start:.0f} s",
          file=sys.stderr, flush=True)

  rows = [c.row() for c in fwd_cases + dense_cases + decode_cases]
  # The targets: >= 10x / 5x on a CPU; on a GPU the Pallas kernels >= 5x over cuDNN.
  speedup_targets = ((TARGETS["gpu_speedup_over_cudnn"],) * 2 if backend == "gpu" else
                     (TARGETS["fwd_speedup"], TARGETS["fwd_bwd_speedup"]))
  results, met = [], []
  for name, (p, p2, cases, dense, decode) in info.items():
    tokens, tokens2 = math.prod(p.q_grid), math.prod(p2.q_grid)
    pairs, pairs2 = (_pairs(p, p.q_grid, p.k_grid, p.causal),
                     _pairs(p, p2.q_grid, p2.k_grid, p.causal))
    s = {k: c.seconds for k, c in cases.items()}
    flops = 4 * pairs * args.head_dim * args.heads * args.batch
    res = dict(pattern=name, label=p.label, q_grid=p.q_grid, k_grid=p.k_grid, tokens=tokens,
               keys=math.prod(p.k_grid), causal=p.causal, pairs=pairs,
               window_fraction=pairs / (tokens * math.prod(p.k_grid)),
               auto_fwd_seconds=s["fwd"], auto_fwd_bwd_seconds=s["fwd_bwd"],
               pattern_flops_fwd=flops, auto_fwd_gflops=flops / s["fwd"] / 1e9,
               grown_q_grid=p2.q_grid, grown_k_grid=p2.k_grid, grown_tokens=tokens2,
               grown_pairs=pairs2, pair_ratio=pairs2 / pairs,
               doubling_ratio_fwd=s["fwd_2x"] / s["fwd"],
               doubling_ratio_fwd_bwd=s["fwd_bwd_2x"] / s["fwd_bwd"])
    if dense:
      res.update(dense=dense["fwd"].what.split(" fwd")[0],
                 dense_fwd_seconds=dense["fwd"].seconds,
                 dense_fwd_bwd_seconds=dense["fwd_bwd"].seconds,
                 fwd_speedup=dense["fwd"].seconds / s["fwd"],
                 fwd_bwd_speedup=dense["fwd_bwd"].seconds / s["fwd_bwd"])
    layout = _layout_pairs(p, args)
    if layout is not None:
      res.update(layout_pairs=layout, layout_tflops_fwd=(
          4 * layout * args.head_dim * args.heads * args.batch / s["fwd"] / 1e12))
    if impl.startswith("pallas") and name in ("local", "cross"):
      b = 128 if impl == "pallas_tpu" else 64  # default tiles: 128 x 128 on TPU, 64 x 64 on GPU
      radius = tuple(args.radius if name == "local" else args.cross_radius)
      tiles = int(_tiles.visit_matrix(p.q_grid, p.k_grid, radius, p.causal, b, b).sum())
      res.update(visited_tiles=tiles, visited_tile_tflops=(
          4 * tiles * b * b * args.head_dim * args.heads * args.batch / s["fwd"] / 1e12))
    if decode:
      (g1, k1), (g4, k4) = p.grown(1), p.grown(4)
      res.update(
          decode_note=DECODE_NOTE, decode_tokens_per_call=decode[(1, False)].per_call,
          decode_grids=dict(L=dict(q=g1, k=k1), L4=dict(q=g4, k=k4)),
          decode_window_keys=int(_window(p, g1, k1, jnp.int32(0))[0].shape[0]),
          decode_seconds_per_token_L=decode[(1, False)].seconds,
          decode_seconds_per_token_4L=decode[(4, False)].seconds,
          decode_ratio=decode[(4, False)].seconds / decode[(1, False)].seconds,
          dense_decode_seconds_per_token_L=decode[(1, True)].seconds,
          dense_decode_seconds_per_token_4L=decode[(4, True)].seconds,
          dense_decode_ratio=decode[(4, True)].seconds / decode[(1, True)].seconds)
    checks = dict(
        fwd_speedup=_met(res.get("fwd_speedup"), speedup_targets[0], "min"),
        fwd_bwd_speedup=_met(res.get("fwd_bwd_speedup"), speedup_targets[1], "min"),
        doubling_fwd=_met(res["doubling_ratio_fwd"], TARGETS["doubling_ratio"], "max"),
        doubling_fwd_bwd=_met(res["doubling_ratio_fwd_bwd"], TARGETS["doubling_ratio"], "max"),
        decode_flat=_met(res.get("decode_ratio"), TARGETS["decode_flat"], "flat"))
    res["met"] = checks
    met += [v for v in checks.values() if v is not None]
    results.append(res)

  result = dict(
      backend=backend, impl=impl, baseline=baseline, device=str(jax.devices()[0].device_kind),
      cpu=_cpu_model(), cpu_count=os.cpu_count(), host=platform_lib.node(),
      jax_version=jax.__version__, batch=args.batch, heads=args.heads, head_dim=args.head_dim,
      dtype=args.dtype, repeats=args.repeats, dense_repeats=args.dense_repeats,
      statistic="median", smoke=args.smoke, targets=TARGETS,
      speedup_targets=dict(fwd=speedup_targets[0], fwd_bwd=speedup_targets[1]),
      decode_note=DECODE_NOTE, patterns=results, rows=rows,
      targets_met=sum(met), targets_checked=len(met),
      max_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)

  if isinstance(args.json, str):  # --json PATH
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=1)
    print(f"wrote {args.json}", file=sys.stderr)
  elif _common.print_json(args, result, indent=1):
    return
  _print_tables(args, result)


def _print_tables(args, result):
  yes = lambda ok: "-" if ok is None else ("yes" if ok else "NO")
  ms = lambda x: _common.fmt(None if x is None else x * 1e3, ".1f" if x and x >= 0.01 else ".2f")
  grid = lambda g: "x".join(map(str, g))
  print(f"\nAttention patterns vs dense masked attention, {result['backend']} "
        f"({result['device']}; {result['cpu']}, {result['cpu_count']} cores), JAX "
        f"{result['jax_version']}, impl={result['impl']}, dense side: {result['baseline']}; "
        f"B={result['batch']}, heads={result['heads']}, D={result['head_dim']}, "
        f"{result['dtype']}; medians of {args.repeats} runs (dense: {args.dense_repeats})")
  st = result["speedup_targets"]
  print("\n| pattern | grid (q -> k) | window % | dense fwd ms | auto fwd ms | speed-up "
        f"(>= {st['fwd']:g}x) | dense f+b ms | auto f+b ms | speed-up (>= {st['fwd_bwd']:g}x) |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in result["patterns"]:
    g = grid(r["q_grid"]) + ("" if r["q_grid"] == r["k_grid"] else " -> " + grid(r["k_grid"]))
    print(f"| {r['label']} | {g} | {100 * r['window_fraction']:.2f} | "
          f"{ms(r.get('dense_fwd_seconds'))} | {ms(r['auto_fwd_seconds'])} | "
          f"{_common.fmt(r.get('fwd_speedup'), '.1f', 'x')} {yes(r['met']['fwd_speedup'])} | "
          f"{ms(r.get('dense_fwd_bwd_seconds'))} | {ms(r['auto_fwd_bwd_seconds'])} | "
          f"{_common.fmt(r.get('fwd_bwd_speedup'), '.1f', 'x')} "
          f"{yes(r['met']['fwd_bwd_speedup'])} |")
  print("\nscaling, 2x tokens (auto):\n| pattern | grid -> 2x grid | pairs ratio | fwd ratio "
        "(<= 2.2) | f+b ratio (<= 2.2) |")
  print("|---|---|---|---|---|")
  for r in result["patterns"]:
    print(f"| {r['label']} | {grid(r['q_grid'])} -> {grid(r['grown_q_grid'])} | "
          f"{r['pair_ratio']:.2f} | {r['doubling_ratio_fwd']:.2f} {yes(r['met']['doubling_fwd'])} "
          f"| {r['doubling_ratio_fwd_bwd']:.2f} {yes(r['met']['doubling_fwd_bwd'])} |")
  decoded = [r for r in result["patterns"] if "decode_ratio" in r]
  if decoded:
    print(f"\ndecode per token, L -> 4L ({DECODE_NOTE}; "
          f"{decoded[0]['decode_tokens_per_call']} tokens per call):")
    print("| pattern | grid L -> 4L | window keys | us/token L | us/token 4L | ratio (1 +- 0.2) "
          "| dense decode us/token L -> 4L | dense ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in decoded:
      d = r["decode_grids"]
      print(f"| {r['label']} | {grid(d['L']['q'])} -> {grid(d['L4']['q'])} | "
            f"{r['decode_window_keys']} | {r['decode_seconds_per_token_L'] * 1e6:.1f} | "
            f"{r['decode_seconds_per_token_4L'] * 1e6:.1f} | {r['decode_ratio']:.2f} "
            f"{yes(r['met']['decode_flat'])} | {r['dense_decode_seconds_per_token_L'] * 1e6:.1f} "
            f"-> {r['dense_decode_seconds_per_token_4L'] * 1e6:.1f} | "
            f"{r['dense_decode_ratio']:.2f} |")
  for r in result["patterns"]:
    extra = []
    if "layout_tflops_fwd" in r:
      extra.append(f"{r['layout_tflops_fwd'] * 1e3:.2f} GFLOP/s on the layout's pairs")
    if "visited_tile_tflops" in r:
      extra.append(f"{r['visited_tile_tflops']:.2f} TFLOP/s on {r['visited_tiles']} visited tiles")
    print(f"{r['label']}: auto fwd {r['auto_fwd_gflops']:.2f} GFLOP/s on the pattern's pairs"
          + "".join("; " + e for e in extra))
  print(f"\ntargets met: {result['targets_met']} of {result['targets_checked']}; "
        f"process max RSS {result['max_rss_bytes'] / 2**30:.2f} GiB")


if __name__ == "__main__":
  main()

"""Benchmark: 3D nearby attention (`impl="auto"`) against dense masked attention.

    python benchmarks/nearby_attention.py            # table
    python benchmarks/nearby_attention.py --json     # one JSON object
    python benchmarks/nearby_attention.py --smoke    # 4x4x4 tokens, one timed run: seconds

Defaults are the issue's CPU setting: B=1, T=16, H=W=32, heads=4, D=32,
radius (1, 2, 2), float32 (16,384 tokens; a 3x5x5 window). Both sides are
measured in the same run, forward and forward+backward, with XLA's peak
buffer estimate; then a scaling curve over T (at fixed H, W) for the fast
path. The dense baseline is the test reference (dense logits + boolean mask),
run one head at a time (`lax.map`, forward and backward per head) so that its
[N, N] logits fit in RAM: same FLOPs, and faster on this CPU than all heads
at once. Timings are the minimum over the timed runs after one warm-up; the
cases are run round-robin so that load from other processes hits all alike.
"""

import argparse
import math
import platform as platform_lib
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jzoo.kernels.nearby_attention import _tiles, api, reference

import _common  # benchmarks/_common.py: this script's folder is sys.path[0]

# --smoke: every case (fast, dense, scaling) once at a 4x4x4 grid.
SMOKE = dict(frames=4, height=4, width=4, heads=1, head_dim=8, radius=(1, 1, 1), repeats=1,
             dense_repeats=1, scaling_frames=(2, 4))


def _parse():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--frames", type=int, default=16)
  p.add_argument("--height", type=int, default=32)
  p.add_argument("--width", type=int, default=32)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--head-dim", type=int, default=32)
  p.add_argument("--radius", type=int, nargs=3, default=(1, 2, 2))
  p.add_argument("--causal", action="store_true")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--impl", default="auto", choices=api.IMPLS)
  p.add_argument("--baseline", default="reference", choices=("reference", "sdpa", "none"),
                 help="dense side: the masked reference (per head), "
                 "jax.nn.dot_product_attention with the mask (cuDNN on GPU), or none")
  p.add_argument("--also", nargs="*", default=(), choices=api.IMPLS,
                 help="other impls timed side by side with --impl (e.g. xla on a GPU)")
  p.add_argument("--repeats", type=int, default=5, help="timed runs of each fast case")
  p.add_argument("--dense-repeats", type=int, default=2, help="timed runs of each dense case")
  # From T=8 on, the frames clipped at the two ends change the work per doubling by < 5%.
  p.add_argument("--scaling-frames", type=int, nargs="*", default=(8, 16, 32, 64))
  p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
  return _common.parse_args(p, SMOKE)


class _Case:
  """One compiled function and its timings."""

  def __init__(self, name, fn, args, frames, rewarm=True):
    self.name, self.args, self.frames, self.rewarm = name, args, frames, rewarm
    t0 = time.perf_counter()
    self.compiled = jax.jit(fn).lower(*args).compile()
    self.compile_seconds = time.perf_counter() - t0
    mem = self.compiled.memory_analysis()  # XLA's buffer assignment: the peak estimate
    self.peak_bytes = None if mem is None else (
        mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
        - mem.alias_size_in_bytes)
    jax.block_until_ready(self.compiled(*args))  # warm-up
    self.times = []

  def run(self):
    if self.rewarm:  # an untimed run first: the previous case may have flushed the caches
      jax.block_until_ready(self.compiled(*self.args))
    t = time.perf_counter()
    jax.block_until_ready(self.compiled(*self.args))
    self.times.append(time.perf_counter() - t)

  @property
  def seconds(self):
    return min(self.times)


def _interleaved(cases, repeats):
  """Times the cases round-robin, so that load from other processes hits all of them alike."""
  for _ in range(repeats):
    for c in cases:
      c.run()


def _fwd_bwd(fn):
  def run(q, k, v):
    out, vjp = jax.vjp(fn, q, k, v)
    return vjp(out)  # any cotangent of the right shape; the work is the same
  return run


def _per_head(fn):
  """Runs fn(q, k, v) -> outputs one head at a time (`lax.map`); heads stay on axis 4."""
  def run(q, k, v):
    split = lambda x: jnp.moveaxis(x, 4, 0)[:, :, :, :, :, None]
    outs = jax.lax.map(lambda qkv: fn(*qkv), (split(q), split(k), split(v)))
    return jax.tree.map(lambda x: jnp.moveaxis(x[:, :, :, :, :, 0], 0, 4), outs)
  return run


def _dense(baseline, radius, causal, sdpa_impl=None):
  """(forward, forward+backward) of the dense side, each a function of (q, k, v)."""
  if baseline == "reference":
    ref = lambda q, k, v: reference.nearby_attention(q, k, v, radius=radius, causal=causal)
    # One head at a time, backward included, so [N, N] residuals never pile up.
    return _per_head(ref), _per_head(_fwd_bwd(ref))

  def sdpa(q, k, v):  # flattened tokens, boolean mask; cuDNN/XLA picked by JAX
    b, t, h, w, n, d = q.shape
    mask = reference.nearby_mask((t, h, w), (t, h, w), radius, causal)
    flat = lambda x: x.reshape(b, t * h * w, n, d)
    out = jax.nn.dot_product_attention(flat(q), flat(k), flat(v), mask=mask[None, None],
                                       implementation=sdpa_impl)
    return out.reshape(q.shape)
  return sdpa, _fwd_bwd(sdpa)


def _neighbourhood_pairs(grid, radius, causal):
  """Number of (query, key) pairs inside the windows (equal grids), by per-axis counts."""
  full, before = [], []  # per axis: window size, and window keys strictly before the query
  for n, r in zip(grid, radius):
    c = np.arange(n)
    full.append(np.minimum(c + r, n - 1) - np.maximum(c - r, 0) + 1)
    before.append(np.minimum(c, r))
  (ft, fh, fw), (bt, bh, bw) = full, before
  if not causal:
    return int(ft.sum() * fh.sum() * fw.sum())
  # Raster order: earlier frames (whole h, w windows), earlier rows, then columns <= the query.
  t, h, _ = grid
  return int(bt.sum() * fh.sum() * fw.sum() + t * bh.sum() * fw.sum() + t * h * (bw + 1).sum())


def main():
  args = _parse()
  dtype = jnp.dtype(args.dtype)
  radius, causal = tuple(args.radius), args.causal
  backend = jax.default_backend()
  impl = api.resolve_impl(args.impl, backend)
  fast = lambda q, k, v: api.nearby_attention(q, k, v, radius=radius, causal=causal,
                                              impl=args.impl)

  def inputs(frames):
    shape = (args.batch, frames, args.height, args.width, args.heads, args.head_dim)
    keys = jax.random.split(jax.random.key(0), 3)
    return tuple(jax.random.normal(k, shape, dtype) for k in keys)

  grid = (args.frames, args.height, args.width)
  n_tokens = math.prod(grid)
  qkv = inputs(args.frames)
  print(f"backend={backend} impl={impl} grid={grid} heads={args.heads} D={args.head_dim} "
        f"radius={radius} causal={causal} dtype={args.dtype}", file=sys.stderr)
  fast_cases = [_Case("auto fwd", fast, qkv, args.frames),
                _Case("auto fwd+bwd", _fwd_bwd(fast), qkv, args.frames)]
  also_cases = []
  for other in args.also:
    fn = lambda q, k, v, other=other: api.nearby_attention(q, k, v, radius=radius, causal=causal,
                                                           impl=other)
    also_cases += [_Case(f"{other} fwd", fn, qkv, args.frames),
                   _Case(f"{other} fwd+bwd", _fwd_bwd(fn), qkv, args.frames)]
  dense_cases = []
  if args.baseline != "none":
    # On a GPU the sdpa side is cuDNN's fused attention where it takes the shape, else XLA's.
    for sdpa_impl in ("cudnn", "xla") if args.baseline == "sdpa" and backend == "gpu" else (None,):
      dense, dense_and_grad = _dense(args.baseline, radius, causal, sdpa_impl)
      label = args.baseline if sdpa_impl is None else f"sdpa {sdpa_impl}"
      try:  # GB-sized working sets: nothing to keep warm, and a second run would double the time.
        dense_cases = [
            _Case(f"dense ({label}) fwd", dense, qkv, args.frames, rewarm=False),
            _Case(f"dense ({label}) fwd+bwd", dense_and_grad, qkv, args.frames, rewarm=False)]
        break
      except Exception as e:  # pylint: disable=broad-except
        print(f"dense ({label}) unavailable: {' '.join(str(e).split())[:200]}", file=sys.stderr)
  # The dense side is slow and long-running, so its timings are less noisy: fewer repeats.
  for r in range(max(args.repeats, args.dense_repeats)):
    _interleaved(fast_cases + also_cases + (dense_cases if r < args.dense_repeats else []), 1)
  scaling_cases = [
      _Case("auto fwd (scaling)", fast, qkv if f == args.frames else inputs(f), f)
      for f in args.scaling_frames]
  _interleaved(scaling_cases, args.repeats)
  fast_fwd, fast_fb = (c.seconds for c in fast_cases)
  ratios = {}
  if dense_cases:
    dense_fwd, dense_fb = (c.seconds for c in dense_cases)
    ratios = dict(fwd_speedup=dense_fwd / fast_fwd, fwd_bwd_speedup=dense_fb / fast_fb)
  for other, (fwd, fb) in zip(args.also, zip(also_cases[::2], also_cases[1::2])):
    ratios[f"fwd_speedup_over_{other}"] = fwd.seconds / fast_fwd
    ratios[f"fwd_bwd_speedup_over_{other}"] = fb.seconds / fast_fb
  rows = [dict(name=c.name, frames=c.frames, tokens=c.frames * args.height * args.width,
               seconds=c.seconds, all_seconds=c.times, compile_seconds=c.compile_seconds,
               peak_bytes=c.peak_bytes) for c in fast_cases + also_cases + dense_cases + scaling_cases]
  scaling = [dict(frames=c.frames, tokens=c.frames * args.height * args.width,
                  seconds=c.seconds,
                  pairs=_neighbourhood_pairs((c.frames, args.height, args.width), radius, causal))
             for c in scaling_cases]
  for prev, cur in zip(scaling, scaling[1:]):
    cur["ratio_to_previous"] = cur["seconds"] / prev["seconds"]
    cur["token_ratio"] = cur["tokens"] / prev["tokens"]
    # Work grows slightly faster than tokens: fewer window frames are clipped at the ends.
    cur["pair_ratio"] = cur["pairs"] / prev["pairs"]

  # FLOPs: 4 * pairs * D per head (QK^T and PV); for the Pallas kernels also on visited tiles.
  pairs = _neighbourhood_pairs(grid, radius, causal)
  flops = 4 * pairs * args.head_dim * args.heads * args.batch
  result = dict(
      backend=backend, impl=impl, device=str(jax.devices()[0].device_kind),
      host=platform_lib.node(), grid=grid, tokens=n_tokens, batch=args.batch, heads=args.heads,
      head_dim=args.head_dim, radius=radius, causal=causal, dtype=args.dtype,
      window_fraction=pairs / n_tokens**2, neighbourhood_flops_fwd=flops,
      auto_fwd_tflops=flops / fast_fwd / 1e12, rows=rows, scaling=scaling,
      max_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, **ratios)
  if impl.startswith("pallas"):  # default tiles: 128 x 128 on TPU, 64 x 64 on GPU
    b = 128 if impl == "pallas_tpu" else 64
    tiles = int(_tiles.visit_matrix(grid, grid, radius, causal, b, b).sum())
    tile_flops = 4 * tiles * b * b * args.head_dim * args.heads * args.batch
    result.update(visited_tiles=tiles, visited_tile_flops_fwd=tile_flops,
                  visited_tile_tflops=tile_flops / fast_fwd / 1e12)

  if _common.print_json(args, result, indent=1):
    return
  print(f"\n3D nearby attention, {backend} ({result['device']}), impl={impl}: grid {grid} "
        f"({n_tokens} tokens), heads={args.heads}, D={args.head_dim}, radius={radius}, "
        f"causal={causal}, {args.dtype}; window = {100 * result['window_fraction']:.2f}% of keys")
  print(f"| {'what':<30} | {'T':>3} | {'ms':>10} | {'XLA peak MiB':>12} |")
  print(f"|{'-' * 32}|{'-' * 5}|{'-' * 12}|{'-' * 14}|")
  for r in rows:
    peak = "" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.1f}"
    print(f"| {r['name']:<30} | {r['frames']:>3} | {r['seconds'] * 1e3:>10.1f} | {peak:>12} |")
  for other in args.also:
    print(f"speed-up over {other}: forward {ratios[f'fwd_speedup_over_{other}']:.1f}x, "
          f"forward+backward {ratios[f'fwd_bwd_speedup_over_{other}']:.1f}x")
  if "fwd_speedup" in ratios:
    print(f"\nspeed-up over dense: forward {ratios['fwd_speedup']:.1f}x (target >= 20x), "
          f"forward+backward {ratios['fwd_bwd_speedup']:.1f}x (target >= 10x)")
  worst = max((s["ratio_to_previous"] for s in scaling[1:]), default=float("nan"))
  print("scaling (auto fwd): " + ", ".join(
      f"T={s['frames']}: {s['seconds'] * 1e3:.1f} ms" for s in scaling)
        + f"; worst time ratio per doubling {worst:.2f} (target <= 2.2; window pairs grow "
        + ", ".join(f"{s['pair_ratio']:.2f}x" for s in scaling[1:]) + ")")
  print(f"auto fwd: {result['auto_fwd_tflops'] * 1e3:.2f} GFLOP/s on neighbourhood FLOPs; "
        f"process max RSS {result['max_rss_bytes'] / 2**30:.2f} GiB")
  if "visited_tile_tflops" in result:
    print(f"auto fwd: {result['auto_fwd_tflops']:.2f} TFLOP/s on neighbourhood FLOPs, "
          f"{result['visited_tile_tflops']:.2f} TFLOP/s on the {result['visited_tiles']} "
          "visited tiles")


if __name__ == "__main__":
  main()

"""Tile and launch settings of the Pallas GPU nearby-attention kernel, compared in one run.

    python benchmarks/nearby_attention_tiles.py            # table (needs a GPU)
    python benchmarks/nearby_attention_tiles.py --json
    python benchmarks/nearby_attention_tiles.py --smoke    # one tiling at 2x4x4 tokens; off a
                                                           # GPU in the Pallas interpreter

Times the forward of every (block_q, block_k, num_warps, num_stages) in the grid at a
NUWA-like shape (B=8, 16x32x32 tokens, 8 heads, D=64, radius (1, 2, 2), causal,
bfloat16), then forward+backward for the fastest few, and the layout copies the kernel's
wrapper makes ([B, T, H, W, n, D] <-> [B, n, N, D]) alone. TFLOP/s are counted on the
neighbourhood's FLOPs (4 * pairs * D per head, the same for every tiling) and on the
visited tiles (what the kernel computes, masked entries included).
"""

import argparse
import itertools
import math
import sys
import time

import jax
import jax.numpy as jnp

from jzoo.kernels.nearby_attention import _tiles, pallas_gpu

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import _common  # noqa: E402 - benchmarks/_common.py
from nearby_attention import _neighbourhood_pairs  # pylint: disable=g-import-not-at-top,wrong-import-position


def _parse():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--shape", type=int, nargs=6, default=(8, 16, 32, 32, 8, 64),
                 metavar=("B", "T", "H", "W", "HEADS", "D"))
  p.add_argument("--radius", type=int, nargs=3, default=(1, 2, 2))
  p.add_argument("--no-causal", dest="causal", action="store_false")
  p.add_argument("--blocks", type=int, nargs="*", default=(32, 64, 128))
  p.add_argument("--warps", type=int, nargs="*", default=(4, 8))
  p.add_argument("--stages", type=int, nargs="*", default=(2, 3))
  p.add_argument("--top", type=int, default=4, help="fastest forward settings also timed fwd+bwd")
  p.add_argument("--repeats", type=int, default=20)
  p.add_argument("--json", action="store_true")
  p.add_argument("--interpret", action="store_true", help="Pallas interpreter (checks on a CPU)")
  # --smoke: one setting, forward and forward+backward, at 2x4x4 = 32 tokens (two 16-token
  # blocks); in the interpreter unless there is a GPU.
  return _common.parse_args(p, dict(
      shape=(1, 2, 4, 4, 1, 16), blocks=(16,), warps=(4,), stages=(2,), top=1, repeats=1,
      interpret=jax.default_backend() != "gpu"))


def _time(fn, args, repeats):
  compiled = jax.jit(fn).lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  best = math.inf
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    best = min(best, time.perf_counter() - t)
  return best


def main():
  args = _parse()
  b, t, h, w, n, d = args.shape
  radius, causal, grid = tuple(args.radius), args.causal, (t, h, w)
  keys = jax.random.split(jax.random.key(0), 3)
  qkv = tuple(jax.random.normal(k, args.shape, jnp.bfloat16) for k in keys)
  pairs_flops = 4 * _neighbourhood_pairs(grid, radius, causal) * d * n * b

  def attention(setting):
    bq, bk, warps, stages = setting
    return lambda q, k, v: pallas_gpu.nearby_attention(
        q, k, v, radius=radius, causal=causal, block_q=bq, block_k=bk, num_warps=warps,
        num_stages=stages, interpret=args.interpret)

  def fwd_bwd(fn):
    def run(q, k, v):
      out, vjp = jax.vjp(fn, q, k, v)
      return vjp(out)
    return run

  rows = []
  for setting in itertools.product(args.blocks, args.blocks, args.warps, args.stages):
    bq, bk = setting[:2]
    tiles = int(_tiles.visit_matrix(grid, grid, radius, causal, bq, bk).sum())
    try:
      seconds = _time(attention(setting), qkv, args.repeats)
    except Exception as e:  # pylint: disable=broad-except  (a tiling Triton cannot compile)
      print(f"{setting}: {' '.join(str(e).split())[:160]}", file=sys.stderr)
      continue
    rows.append(dict(block_q=bq, block_k=bk, num_warps=setting[2], num_stages=setting[3],
                     fwd_ms=seconds * 1e3, fwd_tflops=pairs_flops / seconds / 1e12,
                     visited_tile_tflops=4 * tiles * bq * bk * d * n * b / seconds / 1e12))
    print(rows[-1], file=sys.stderr)
  rows.sort(key=lambda r: r["fwd_ms"])
  for r in rows[:args.top]:
    setting = (r["block_q"], r["block_k"], r["num_warps"], r["num_stages"])
    r["fwd_bwd_ms"] = _time(fwd_bwd(attention(setting)), qkv, args.repeats) * 1e3

  plan = pallas_gpu._Plan(args.shape, args.shape, radius, causal, 64, 64)  # pylint: disable=protected-access
  copies = lambda q, k, v: [plan.untokens(plan.tokens(x, plan.nq_pad), x.shape) for x in (q, k, v)]
  result = dict(device=str(jax.devices()[0].device_kind), shape=args.shape, radius=radius,
                causal=causal, neighbourhood_flops_fwd=pairs_flops, rows=rows,
                layout_copies_ms=_time(copies, qkv, args.repeats) * 1e3)
  if _common.print_json(args, result, indent=1):
    return
  print(f"{result['device']}: shape {args.shape}, radius {radius}, causal={causal}, bfloat16")
  print("| bq | bk | warps | stages | fwd ms | fwd TFLOP/s | tile TFLOP/s | fwd+bwd ms |")
  print("|---|---|---|---|---|---|---|---|")
  for r in rows:
    fb = f"{r['fwd_bwd_ms']:.3f}" if "fwd_bwd_ms" in r else ""
    print(f"| {r['block_q']} | {r['block_k']} | {r['num_warps']} | {r['num_stages']} | "
          f"{r['fwd_ms']:.3f} | {r['fwd_tflops']:.1f} | {r['visited_tile_tflops']:.1f} | {fb} |")
  print(f"layout copies alone (q, k, v to [B, n, N, D] and back): "
        f"{result['layout_copies_ms']:.3f} ms")


if __name__ == "__main__":
  main()

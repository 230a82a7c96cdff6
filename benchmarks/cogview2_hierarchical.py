"""CogView2's speed claim, measured: hierarchical generation against token-by-token generation
of the fine grid, side by side in one run on this machine.

    python benchmarks/cogview2_hierarchical.py [--json]
    python benchmarks/cogview2_hierarchical.py --smoke [--json]   # seconds: cogview2:micro

Both sides generate the same final token grid from one caption with the same model family at
the same widths (random weights, the config's sizes):
  hierarchical  CogLM samples the coarse grid token by token (cached), direct SR draws every
                fine token at once, LoPAR redraws them in the priority pattern's rounds
                (`CogView2.sample_coarse` + `CogView2.super_resolve`, jitted as generate runs
                them);
  flat          a CogLM of the same width and depth over the fine grid samples every fine
                token one by one with the same key/value cache (`cogview2.sample_region`):
                what CogView would do at that resolution without the hierarchy.
The VQ decoder, the same for both, is left out. Each side is jitted, warmed up once, then timed
`--repeats` times (best). Two settings by default: the bundled tiny_shapes grids (8x8 -> 16x16)
and the paper's ratio (20x20 -> 60x60, 3x per side) at tiny_shapes' widths.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import _common  # noqa: E402 - benchmarks/_common.py

SETTINGS = {
    "tiny_shapes 8x8 -> 16x16": ("cogview2:tiny_shapes", []),
    "paper ratio 20x20 -> 60x60": ("cogview2:tiny_shapes",
                                   ["tokenizer.resolution=240", "sr.factor=3"]),
}
SMOKE_SETTINGS = {"micro 2x2 -> 4x4": ("cogview2:micro", [])}


def _best(fn, repeats):
  import jax
  jax.block_until_ready(fn())  # compile + warm-up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return min(times)


def measure(config_name, overrides, batch, repeats):
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np

  from jzoo import config as config_lib
  from jzoo.models import cogview2
  from jzoo.models import params as params_lib
  from jzoo.models.params import count_params

  config = config_lib.load(config_name, overrides)
  model = cogview2.build(config)
  params = {s: params_lib.random_params(model, s, jax.random.PRNGKey(i))
            for i, s in enumerate(model.stages)}
  tokens = jnp.ones((batch, model.text_length), jnp.int32)
  rng = jax.random.PRNGKey(0)
  nc, nf = int(np.prod(model.coarse_grid)), int(np.prod(model.fine_grid))

  @jax.jit
  def hierarchical(params, rng):
    known = jnp.zeros((batch, *model.coarse_grid), jnp.int32)
    coarse = model.sample_coarse(params, tokens, known, jnp.ones((batch, nc), bool), rng)
    return model.super_resolve(params, coarse, tokens, jnp.ones_like(tokens), rng)

  lm = config.coglm
  flat_lm = cogview2.CogLM(int(lm.vocab_size), model.text_length,
                           int(config.tokenizer.codebook_size), model.fine_grid, int(lm.width),
                           int(lm.num_layers), int(lm.head_dim), int(lm.mlp_dim))
  cells = jnp.zeros((batch, nf), jnp.int32)
  flat_params = nn.unbox(flat_lm.init(jax.random.PRNGKey(9), tokens,
                                              jnp.zeros((batch, *model.fine_grid), jnp.int32),
                                              cells, cells)["params"])

  @jax.jit
  def flat(flat_params, rng):
    known = jnp.zeros((batch, *model.fine_grid), jnp.int32)
    return cogview2.sample_region(flat_lm, flat_params, tokens, known,
                                  jnp.ones((batch, nf), bool), rng,
                                  temperature=float(config.sample.temperature),
                                  top_k=int(config.sample.top_k),
                                  # guided as stage 1 is (a doubled batch), when it is
                                  guidance=float(config.sample.guidance) if model.guided else None)

  t_h = _best(lambda: hierarchical(params, rng), repeats)
  t_f = _best(lambda: flat(flat_params, rng), repeats)
  rounds = int(lopar_rounds(config))
  return dict(config=config_name, overrides=overrides, coarse_grid=list(model.coarse_grid),
              fine_grid=list(model.fine_grid), batch=batch,
              coglm_params=count_params(params["coglm"]), sr_params=count_params(params["sr"]),
              flat_coglm_params=count_params(flat_params),
              hierarchical_forward_passes=nc + 1 + 1 + rounds, flat_forward_passes=nf,
              hierarchical_s=t_h, flat_s=t_f, speedup=t_f / t_h)


def lopar_rounds(config):
  return sum(w - 1 for w in config.sample.lopar_window) + 1


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--json", action="store_true")
  args = _common.parse_args(parser, dict(batch=1, repeats=1), argv)
  settings = SMOKE_SETTINGS if args.smoke else SETTINGS
  rows = {name: measure(cfg, list(ov), args.batch, args.repeats)
          for name, (cfg, ov) in settings.items()}
  import jax
  result = dict(smoke=args.smoke, device=jax.devices()[0].device_kind, rows=rows)
  if _common.print_json(args, result, indent=1):
    return
  print(f"CogView2 hierarchical vs flat token-by-token generation ({result['device']}, batch "
        f"{args.batch}, best of {args.repeats})")
  print(f"{'setting':<28} {'hierarchical s':>15} {'flat s':>10} {'speed-up':>9} "
        f"{'passes h / flat':>16}")
  for name, r in rows.items():
    print(f"{name:<28} {r['hierarchical_s']:>15.3f} {r['flat_s']:>10.3f} {r['speedup']:>8.2f}x "
          f"{r['hierarchical_forward_passes']:>7} / {r['flat_forward_passes']}")


if __name__ == "__main__":
  main()

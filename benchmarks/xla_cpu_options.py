"""XLA's CPU defaults against a `config.xla_cpu_ynn_fusions` setting, side by side in one process.

    python benchmarks/xla_cpu_options.py --config imagen:tiny_shapes [--fusions eltwise,reduce] \
        [--stages base,sr] [--num 4] [--rounds 5] [--json]

Builds the model twice from the same config, once with `xla_cpu_ynn_fusions=''` (XLA decides
what YNNPACK runs) and once with `--fusions` (default: the config's own setting), on random
weights, and times in alternating rounds (minimum over rounds):
  * each stage's training step at its config batch size (`jzoo.bench.bench_training`'s step);
  * generation of `--num` samples with the CLI defaults (`jzoo.pipeline.generate`).
This is how the setting in `configs/imagen.py` was chosen (docs/benchmarks.md); rerun it per
jaxlib release, since the option is experimental in XLA. `--smoke`: `imagen:micro`, the text
encoder's step (the quickest to compile: the same code path) and one sample, one round.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers"))
import _common  # noqa: E402 - benchmarks/_common.py, beside this script

PROMPT = "a large red circle in the center"  # an Imagen caption of docs/SHAPES.md


def build_cases(config_ref, fusions, stages, num):
  import jax

  from jzoo import pipeline
  from jzoo import config as config_lib
  from jzoo import registry
  from jzoo.models import params as params_lib
  from imagen_training_sampling import jzoo_train_step  # noqa: E402 - the peers' shared helper
  cases, params = {}, None
  for label, value in (("xla_defaults", ""), ("fusions", fusions)):
    config = config_lib.load(config_ref, [f"xla_cpu_ynn_fusions={value}"])
    for stage in stages:
      staged = config_lib.load(config_ref, [f"xla_cpu_ynn_fusions={value}", f"stage={stage}"])
      cases[(label, f"train {stage}")] = jzoo_train_step(staged, stage)[0]
    model = registry.build_model(config)
    if params is None:  # the same random weights for both settings (the option leaves them be)
      params = {s: params_lib.random_params(model, s, jax.random.PRNGKey(i))
                for i, s in enumerate(model.stages)}
    cases[(label, f"generate {num}")] = (lambda model=model, params=params: pipeline.generate(
        model, params, [PROMPT] * num, seed=0, batch_size=num))
  return cases


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="imagen:tiny_shapes")
  p.add_argument("--fusions", default=None, help="default: the config's xla_cpu_ynn_fusions")
  p.add_argument("--stages", default=None, help="comma list; default: the model's stages")
  p.add_argument("--num", type=int, default=4)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--json", action="store_true")
  args = _common.parse_args(
      p, dict(config="imagen:micro", stages="text_encoder", num=1, rounds=1))
  import jax

  from jzoo import config as config_lib
  from jzoo import registry
  config = config_lib.load(args.config)
  fusions = config.get("xla_cpu_ynn_fusions", "") if args.fusions is None else args.fusions
  if not fusions:
    sys.exit(f"{args.config} keeps XLA's defaults; pass --fusions to compare a setting")
  stages = (args.stages.split(",") if args.stages
            else list(registry.build_model(config).stages))
  cases = build_cases(args.config, fusions, stages, args.num)
  for run in cases.values():  # compile, then one warm call
    run()
    run()
  best = {k: float("inf") for k in cases}
  for _ in range(args.rounds):
    for key, run in cases.items():
      t0 = time.perf_counter()
      jax.block_until_ready(run())
      best[key] = min(best[key], time.perf_counter() - t0)
  rows = sorted({what for _, what in cases})
  result = {"config": args.config, "fusions": fusions, "jax": jax.__version__,
            "seconds": {f"{label}/{what}": best[(label, what)] for label, what in cases}}
  if _common.print_json(args, result, indent=2):
    return
  print(f"{args.config}: XLA's CPU defaults vs xla_cpu_ynn_fusions={fusions!r} "
        f"(jax {jax.__version__}), min over {args.rounds} alternating rounds")
  print(f"{'':24s}{'XLA defaults':>14s}{fusions:>24s}{'ratio':>8s}")
  for what in rows:
    a, b = best[("xla_defaults", what)], best[("fusions", what)]
    print(f"{what:24s}{a:>13.3f}s{b:>23.3f}s{a / b:>7.2f}x")


if __name__ == "__main__":
  main()

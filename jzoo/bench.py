"""python -m jzoo.bench [--only NAME] [--json] [--num N] [--train-steps N]

For each registered model: training-step throughput of every stage
(examples/s, after compile, on random batches of the config's batch size) and
sampling latency of `--num` samples with the model's default sampler settings
(after compile). Timings are medians of repeated runs measured in this process.
"""

import argparse
import json
import platform
import statistics
import sys
import time

from jzoo import cli, registry
from jzoo.errors import UserError


def _time(fn, repeats):
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def bench_training(config, stage, steps):
  """Examples/s of the jitted, sharded train step of `stage` on random data."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jzoo.parallel import mesh as mesh_lib
  from jzoo.training.loop import Trainer

  from jzoo import config as config_lib
  # Each stage at its own training batch size (the config as a whole carries one stage's).
  train = config_lib.stage_train_defaults(config, stage)
  batch = [f"train.batch_size={train.batch_size}"] if train is not None else []
  config = config_lib.with_overrides(config, [f"stage={stage}"] + batch)
  mesh = mesh_lib.make_mesh(config.mesh)
  trainer = Trainer(config, mesh)
  state = trainer.init_state(0)
  frozen_abstract, frozen_sh = trainer.frozen_abstract()
  frozen = jax.tree_util.tree_map(lambda a, s: jax.device_put(jnp.zeros(a.shape, a.dtype), s),
                                  frozen_abstract, frozen_sh)
  rng = np.random.default_rng(0)
  batch = {}
  for k, v in trainer.batch_spec.items():
    if k == "tokens":
      x = rng.integers(3, 300, v.shape).astype(np.int32)
    elif k == "mask":
      x = np.ones(v.shape, np.int32)
    elif k == "codes":  # a tokenizer's cached codes (any codebook has ids 0 and 1)
      x = rng.integers(0, 2, v.shape).astype(np.int32)
    else:
      x = rng.uniform(-1, 1, v.shape).astype(np.float32)
    batch[k] = jax.device_put(x, trainer.batch_shardings[k])
  step = trainer.jit_step(frozen_sh)
  state, metrics = step(state, batch, frozen)  # compile
  jax.block_until_ready(metrics)
  holder = [state]

  def run():
    s, m = step(holder[0], batch, frozen)
    jax.block_until_ready(m)
    holder[0] = s

  seconds = _time(run, steps)
  return {"stage": stage, "batch_size": int(config.train.batch_size), "step_s": seconds,
          "examples_per_s": config.train.batch_size / seconds}


def bench_sampling(pipe, num, repeats=3):
  """Seconds for `num` samples at the default settings, after one compiling call."""
  prompts = [pipe.default_prompt] * num
  t0 = time.perf_counter()
  pipe(prompts, batch_size=num)
  first = time.perf_counter() - t0
  seconds = _time(lambda: pipe(prompts, batch_size=num), repeats)
  return {"num": num, "first_call_s": first, "seconds": seconds,
          "defaults": pipe.model.default_request_options()}


def bench_model(name, num, train_steps):
  from jzoo import pipeline
  entry = registry.get_entry(name)
  pipe = pipeline.load(name, random_weights=not entry.bundled)
  result = {"model": name, "bundled": entry.bundled,
            "sampling": bench_sampling(pipe, num),
            "training": [bench_training(pipe.config, s, train_steps) for s in pipe.stages]}
  return result


def machine():
  import jax
  import os
  return {"platform": platform.platform(), "processor": platform.processor(),
          "cpus": os.cpu_count(), "devices": [d.device_kind for d in jax.devices()],
          "jax": jax.__version__}


@cli.main_guard
def main(argv=None):
  p = argparse.ArgumentParser(prog="python -m jzoo.bench", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--only", default=None, help="one registered model")
  p.add_argument("--num", type=int, default=16, help="samples per sampling call")
  p.add_argument("--train-steps", type=int, default=5, help="timed training steps per stage")
  p.add_argument("--json", action="store_true")
  args = p.parse_args(sys.argv[1:] if argv is None else argv)
  if args.num <= 0 or args.train_steps <= 0:
    raise UserError("--num and --train-steps must be positive")
  names = [args.only] if args.only else [n for n, e in sorted(registry.MODELS.items()) if e.bundled]
  if not names:
    raise UserError("no bundled models to benchmark; pass --only NAME (random weights are used "
                    "when a model has none)")
  results = {"machine": machine(), "models": [bench_model(n, args.num, args.train_steps) for n in names]}
  if args.json:
    print(json.dumps(results))
    return
  print(f"machine: {results['machine']['cpus']} CPUs, devices {results['machine']['devices']}, "
        f"jax {results['machine']['jax']}")
  for r in results["models"]:
    s = r["sampling"]
    print(f"{r['model']}: {s['num']} samples in {s['seconds']:.2f} s "
          f"(first call with compile {s['first_call_s']:.1f} s; {s['defaults']})")
    for t in r["training"]:
      print(f"  train {t['stage']:<14} batch {t['batch_size']:>4}  {t['step_s'] * 1e3:8.1f} ms/step  "
            f"{t['examples_per_s']:8.1f} examples/s")


if __name__ == "__main__":
  main()

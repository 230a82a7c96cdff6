"""Scores a trained model's sampling settings on `test` prompts, one JSON line per setting.

  python scripts/sweep_sampling.py runs/phenaki-tiny 64 1,2,12 0.5,2,12 0.5,4,12

Each setting is TEMPERATURE,GUIDANCE,STEPS (`sample.temperature` is rebuilt into
the config; guidance and steps are traced). Used to pick the sampling defaults
that `python -m jzoo.export --config.sample.*` bundles.
"""

import json
import sys

from jzoo import config as config_lib
from jzoo import evaluate as evaluate_lib
from jzoo import registry
from jzoo.sample import load_checkpoint_params


def main(workdir, num, *settings):
  base = registry.training_config(workdir)
  params = None
  for setting in settings:
    temperature, guidance, steps = (float(v) for v in setting.split(","))
    model = registry.build_model(config_lib.with_overrides(base, [f"sample.temperature={temperature}"]))
    params = params or load_checkpoint_params(model, workdir)
    r = evaluate_lib.evaluate(model, params, "test", int(num), seed=0, steps=int(steps),
                              guidance=guidance)
    print(json.dumps(dict(temperature=temperature, guidance=guidance, steps=int(steps),
                          accuracy=r["accuracy"], attributes=r["attributes"],
                          forms={k: v["accuracy"] for k, v in r["forms"].items()})), flush=True)


if __name__ == "__main__":
  main(*sys.argv[1:])

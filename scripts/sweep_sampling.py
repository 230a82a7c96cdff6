"""Scores a model's sampling settings on `test` prompts, one JSON line per setting.

  python scripts/sweep_sampling.py runs/phenaki-tiny 64 temperature=1,guidance=2,steps=12 \
      temperature=0.5,guidance=4,steps=12
  python scripts/sweep_sampling.py nuwa-tiny-shapes 64 top_k=8 top_k=32,temperature=0.7

MODEL is a training directory, a `python -m jzoo.export` folder or a registered model with
bundled weights; each
setting is comma-separated `sample.*` overrides of its config (the sampling keys
differ by family). Used to pick the sampling defaults that
`python -m jzoo.export --config.sample.*` bundles.
"""

import json
import os
import sys

from jzoo import config as config_lib
from jzoo import evaluate as evaluate_lib
from jzoo import registry
from jzoo.sample import load_checkpoint_params


def main(model_ref, num, *settings):
  exported = registry.exported_config(model_ref) if os.path.isdir(model_ref) else None
  from_workdir = os.path.isdir(model_ref) and exported is None
  base = (exported or registry.training_config(model_ref) if os.path.isdir(model_ref)
          else registry.load_config(model_ref))
  params = None
  for setting in settings:
    overrides = [f"sample.{kv}" for kv in setting.split(",")]
    model = registry.build_model(config_lib.with_overrides(base, overrides))
    if params is None:  # sampling settings never change the parameters
      if exported is not None:
        params = registry.load_exported_params(model_ref, model)
      elif from_workdir:
        params = load_checkpoint_params(model, model_ref)
      else:
        params = registry.load_bundled_params(model_ref, model)
    r = evaluate_lib.evaluate(model, params, "test", int(num), seed=0)
    print(json.dumps(dict(setting=setting, accuracy=r["accuracy"], attributes=r["attributes"],
                          forms={k: v["accuracy"] for k, v in r["forms"].items()})), flush=True)


if __name__ == "__main__":
  main(*sys.argv[1:])

"""Scores a model's sampling settings on `test` prompts, one JSON line per setting.

The prompts are `test` captions 500, 501, ... (`--first`, default 500): the cards score the
first 500, so settings chosen here are not fitted to the captions they are reported on.

  python scripts/sweep_sampling.py runs/phenaki-tiny 64 temperature=1,guidance=2,steps=12 \
      temperature=0.5,guidance=4,steps=12
  python scripts/sweep_sampling.py nuwa-tiny-shapes 64 top_k=8 top_k=32,temperature=0.7

MODEL is a training directory, a `python -m jzoo.export` folder or a registered model with
bundled weights; each
setting is comma-separated `sample.*` overrides of its config (the sampling keys
differ by family). Used to pick the sampling defaults that
`python -m jzoo.export --config.sample.*` bundles.
"""

import argparse
import json

import jzoo
from jzoo import evaluate as evaluate_lib


def main(model_ref, num, *settings, first=500):
  loaded = jzoo.load(model_ref)  # a directory's own config decides the model
  for setting in settings:
    # Sampling settings never change the parameters.
    pipe = loaded.with_sampling(*setting.split(","))
    r = evaluate_lib.evaluate(pipe, "test", int(num), seed=0, first=first)
    print(json.dumps(dict(setting=setting, first=first, num=int(num), accuracy=r["accuracy"],
                          attributes=r["attributes"],
                          forms={k: v["accuracy"] for k, v in r["forms"].items()})), flush=True)


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("model")
  parser.add_argument("num", type=int)
  parser.add_argument("settings", nargs="+")
  parser.add_argument("--first", type=int, default=500, help="index of the first test caption")
  args = parser.parse_args()
  main(args.model, args.num, *args.settings, first=args.first)

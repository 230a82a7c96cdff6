"""python -m jzoo.train --config FILE.py:VARIANT|NAME:VARIANT --workdir DIR [--config.KEY=VALUE ...]

Trains one stage (`config.stage`) of a model into DIR/<stage>/, resuming from
the latest checkpoint there. Train each stage of a cascade with its own
`--config.stage=...` into the same DIR; `python -m jzoo.sample --checkpoint DIR`
then samples the whole model.
"""

import argparse
import sys

from jzoo import cli
from jzoo import config as config_lib


def parse_args(argv):
  argv, overrides = config_lib.split_config_overrides(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(prog="python -m jzoo.train", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True,
                      help="configs/imagen.py:tiny_shapes or a packaged name like imagen:tiny_shapes")
  parser.add_argument("--workdir", required=True, help="model directory (checkpoints, metrics)")
  parser.add_argument("--stop_after", "--stop-after", type=int, default=None,
                      help="stop with a checkpoint at this step, keeping the schedule of train.steps")
  parser.add_argument("--max_minutes", "--max-minutes", type=float, default=None,
                      help="stop with a checkpoint after this many minutes (checked at logging "
                      "steps), keeping the schedule of train.steps")
  parser.add_argument("--fit_minutes", "--fit-minutes", type=float, default=None,
                      help="a fresh run: time the first steps, then cut train.steps (an upper "
                      "bound) so that the run, schedule complete, ends in this many minutes")
  parser.add_argument("--init_from", "--init-from", default=None,
                      help="= --config.train.init_from: a bundled model or a jzoo.export folder "
                      "whose weights a fresh stage starts from (fine-tuning), and whose other "
                      "stages stand in for those not trained in --workdir")
  parser.add_argument("--frozen_from", "--frozen-from", default=None,
                      help="= --config.train.frozen_from: like --init-from for the stages not "
                      "trained in --workdir only; the trained stage starts fresh")
  parser.add_argument("--no-progress", action="store_true", help="no progress bar")
  args = parser.parse_args(argv)
  for key in ("init_from", "frozen_from"):
    if getattr(args, key) is not None:
      overrides = [*overrides, f"train.{key}={getattr(args, key)}"]
  return args, overrides


@cli.main_guard
def main(argv=None):
  args, overrides = parse_args(argv)
  from jzoo.parallel.distributed import maybe_initialize
  maybe_initialize()
  config = config_lib.load(args.config, overrides)
  from jzoo.training.loop import train_and_evaluate
  metrics = train_and_evaluate(config, args.workdir, stop_after=args.stop_after,
                               progress=not args.no_progress, max_minutes=args.max_minutes,
                               fit_minutes=args.fit_minutes)
  if metrics:
    print(" ".join(f"{k}={v:.5g}" for k, v in sorted(metrics.items())))


if __name__ == "__main__":
  main()

"""python -m jzoo.export --workdir DIR --name MODEL [--out FOLDER] [--config.sample.KEY=VALUE ...]

Turns a training directory into a bundled model: the EMA parameters of every
stage as `<stage>.safetensors` plus the `config.json` they were trained with,
written to `jzoo/assets/models/<name>/` (or --out). This is how the bundled
models that `python -m jzoo.sample` uses by default are made. `--config.sample.*`
overrides set the bundled model's sampling defaults (e.g. the guidance weight
chosen by `python -m jzoo.evaluate`); training keys cannot change after training.
"""

import argparse
import os
import sys

from jzoo import cli, loading, registry
from jzoo import config as config_lib
from jzoo.errors import CheckpointError, UserError


@cli.main_guard
def main(argv=None):
  p = argparse.ArgumentParser(prog="python -m jzoo.export", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="model directory written by python -m jzoo.train")
  p.add_argument("--name", required=True, help="registered model name")
  p.add_argument("--out", default=None, help="output folder (default: the package's assets)")
  argv, overrides = config_lib.split_config_overrides(sys.argv[1:] if argv is None else argv)
  args = p.parse_args(argv)
  registry.get_entry(args.name)
  bad = [o for o in overrides if not o.startswith("sample.")]
  if bad:
    raise UserError(f"only --config.sample.* can change at export, not --config.{bad[0]}")
  if not os.path.isdir(args.workdir):
    raise CheckpointError(f"training directory {args.workdir!r} does not exist")
  config = loading.training_config(args.workdir)
  if config is None:
    raise CheckpointError(f"no <stage>/config.json under {args.workdir!r}; is it a jzoo.train workdir?")
  config = config_lib.with_overrides(config, overrides)
  model = registry.build_model(config)
  out = loading.export_bundle(args.workdir, args.name, model.stages, config, args.out)
  for name in sorted(os.listdir(out)):
    path = os.path.join(out, name)
    print(f"{path}  {os.path.getsize(path) / 1e6:.2f} MB")


if __name__ == "__main__":
  main()

"""python -m jzoo.export --workdir DIR --name MODEL [--out FOLDER]

Turns a training directory into a bundled model: the EMA parameters of every
stage as `<stage>.safetensors` plus the `config.json` they were trained with,
written to `jzoo/assets/models/<name>/` (or --out). This is how the bundled
models that `python -m jzoo.sample` uses by default are made.
"""

import argparse
import os
import sys

from jzoo import cli, registry
from jzoo.errors import CheckpointError


@cli.main_guard
def main(argv=None):
  p = argparse.ArgumentParser(prog="python -m jzoo.export", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="model directory written by python -m jzoo.train")
  p.add_argument("--name", required=True, help="registered model name")
  p.add_argument("--out", default=None, help="output folder (default: the package's assets)")
  args = p.parse_args(sys.argv[1:] if argv is None else argv)
  registry.get_entry(args.name)
  from jzoo.sample import _checkpoint_config
  if not os.path.isdir(args.workdir):
    raise CheckpointError(f"training directory {args.workdir!r} does not exist")
  config = _checkpoint_config(args.workdir)
  if config is None:
    raise CheckpointError(f"no <stage>/config.json under {args.workdir!r}; is it a jzoo.train workdir?")
  model = registry.build_model(config)
  out = registry.export_bundle(args.workdir, args.name, model.stages, config, args.out)
  for name in sorted(os.listdir(out)):
    path = os.path.join(out, name)
    print(f"{path}  {os.path.getsize(path) / 1e6:.2f} MB")


if __name__ == "__main__":
  main()

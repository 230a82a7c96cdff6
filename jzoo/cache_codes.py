"""python -m jzoo.cache_codes --config MODEL:VARIANT --workdir DIR --limit N [--out FOLDER]

Precomputes the frozen tokenizer's codes of the first N clips of the train split
(jzoo/vq/code_cache.py) with the tokenizer the model has in DIR (its trained
`tokenizer` stage, or the export that --config.train.frozen_from names). Train
the transformer on them with

  python -m jzoo.train --config MODEL:VARIANT --workdir DIR --config.stage=transformer \\
      --config.tokenizer.cache=FOLDER

so that the train step neither renders clips nor runs the tokenizer's encoder.
The transformer then sees these N clips over and over (the plain run draws fresh
ones): choose N well above the clips the run would read (steps x batch) when the
dataset is a stream, or the whole dataset otherwise. The default FOLDER is
DIR/code_cache. --workers renders clips in that many processes.
"""

import argparse
import os
import sys
import time

from jzoo import cli
from jzoo import config as config_lib
from jzoo.errors import UserError

_SOURCE = None  # the example source of a rendering worker process


def _init_worker(source):
  global _SOURCE
  _SOURCE = source


def _read_one(index):
  return _SOURCE[index]


@cli.main_guard
def main(argv=None):
  argv, overrides = config_lib.split_config_overrides(sys.argv[1:] if argv is None else argv)
  p = argparse.ArgumentParser(prog="python -m jzoo.cache_codes", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, help="e.g. phenaki:tiny_shapes")
  p.add_argument("--workdir", required=True, help="model directory with the tokenizer")
  p.add_argument("--out", default=None, help="cache folder (default: WORKDIR/code_cache)")
  p.add_argument("--limit", type=int, default=None,
                 help="the train split's first N examples (default: the whole split)")
  p.add_argument("--batch-size", type=int, default=64, help="clips encoded per device call")
  p.add_argument("--workers", type=int, default=1, help="processes that render clips")
  args = p.parse_args(argv)
  if args.batch_size <= 0 or args.workers <= 0 or (args.limit is not None and args.limit <= 0):
    raise UserError("--batch-size, --workers and --limit must be positive")

  import jax
  from jzoo import loading, registry
  from jzoo.data.sources import get_source
  from jzoo.vq import code_cache

  config = config_lib.load(args.config, overrides)
  model = registry.build_model(config)
  stage = "tokenizer"
  if stage not in model.stages or not hasattr(model, "code_grid"):
    raise UserError(f"{config.get('config_ref', args.config)} has no frozen tokenizer whose codes "
                    "a later stage trains on")
  spec = model.data_spec(stage)
  dataset = config.data.dataset or spec.dataset
  source = get_source(dataset, "train", resolution=spec.resolution, frames=spec.frames)
  count = len(source) if args.limit is None else min(args.limit, len(source))

  params = loading.frozen_params(model, stage, args.workdir)
  encode_fn = jax.jit(model.encode_video)
  encode = lambda pixels: encode_fn(params, pixels)  # params as an argument, not a constant
  out = args.out or os.path.join(args.workdir, "code_cache")
  started = time.monotonic()
  if args.workers > 1:
    import multiprocessing
    pool = multiprocessing.get_context("spawn").Pool(args.workers, _init_worker, (source,))
    read = lambda indices: pool.map(_read_one, indices, chunksize=8)
  else:
    pool, read = None, None
  try:
    meta = code_cache.build(out, source, count, encode, model.code_grid,
                            int(config.tokenizer.codebook_size), batch_size=args.batch_size,
                            read=read, dataset=dataset, split="train",
                            origin=loading.stage_origin(args.workdir, stage, config,
                                                        code_cache.FROZEN_FROM))
  finally:
    if pool is not None:
      pool.close()
  size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
  print(f"{out}: {meta['rows']} clips x {meta['grid']} codes ({size / 1e6:.1f} MB) in "
        f"{time.monotonic() - started:.1f} s")
  print(f"train on it with --config.tokenizer.cache={out}")


if __name__ == "__main__":
  main()

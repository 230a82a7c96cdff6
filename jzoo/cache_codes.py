"""python -m jzoo.cache_codes --config MODEL:VARIANT --workdir DIR --limit N [--out FOLDER]

Precomputes the frozen tokenizer's codes of the first N clips of the train split
(an example-keyed frozen-output cache, jzoo/data/frozen_cache.py) with the
tokenizer the model has in DIR (its trained `tokenizer` stage, or the export
that --config.train.frozen_from names). Train the transformer on them with

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
  from jzoo.data import frozen_cache
  from jzoo.data.pipeline import pixels_of
  from jzoo.data.sources import get_source
  from jzoo.stage import code_cache_input

  config = config_lib.load(args.config, overrides)
  model = registry.build_model(config)
  stage = "tokenizer"
  if stage not in model.stages or not hasattr(model, "code_grid"):
    raise UserError(f"{config.get('config_ref', args.config)} has no frozen tokenizer whose codes "
                    "a later stage trains on")
  spec = model.data_spec(stage)
  dataset = config.data.dataset or spec.dataset
  source = get_source(dataset, "train", size=spec.size, frames=spec.frames, fps=spec.fps)
  count = len(source) if args.limit is None else min(args.limit, len(source))

  params = loading.frozen_params(model, stage, args.workdir)
  encode_fn = jax.jit(model.encode_video)
  inp = code_cache_input(model.code_grid)
  provenance = loading.input_provenance(model, inp, args.workdir, config, dataset)
  out = args.out or os.path.join(args.workdir, "code_cache")
  started = time.monotonic()
  if args.workers > 1:
    import multiprocessing
    pool = multiprocessing.get_context("spawn").Pool(args.workers, _init_worker, (source,))
    read = lambda indices: pool.map(_read_one, indices, chunksize=8)
  else:
    pool, read = None, lambda indices: [source[i] for i in indices]

  def compute(batch):  # full batches: the jitted encoder compiles once
    unique = list(dict.fromkeys(batch))  # the last batch's padding repeats an index: read once
    examples = dict(zip(unique, read(unique)))
    examples = [examples[i] for i in batch]
    _, pixels = pixels_of(examples)
    return [ex["caption"] for ex in examples], {"codes": encode_fn(params, pixels)}

  try:
    meta = frozen_cache.build(out, inp, range(count), compute, provenance,
                              batch_size=args.batch_size,
                              bounds={"codes": (0, int(config.tokenizer.codebook_size) - 1)})
  finally:
    if pool is not None:
      pool.close()
  print(f"{out}: {meta['rows']} clips x {list(model.code_grid)} codes "
        f"({frozen_cache.folder_size(out) / 1e6:.1f} MB) in {time.monotonic() - started:.1f} s")
  print(f"train on it with --config.{inp.config_key}={out}")


if __name__ == "__main__":
  main()

"""python -m jzoo.cache_text --config MODEL:VARIANT --workdir DIR [--out FOLDER] [--split train]

Precomputes the frozen text encoder's embeddings of every distinct caption of a
dataset split (a caption-keyed frozen-output cache, jzoo/data/frozen_cache.py)
with the encoder the model has in DIR (its trained `text_encoder` stage, or the
public weights `config.text_encoder.weights` names). Train the conditioned stages on them with

  python -m jzoo.train --config MODEL:VARIANT --workdir DIR --config.stage=base \\
      --config.text_encoder.cache=FOLDER

so that the train step holds no encoder and does none of its FLOPs. Sampling
and export still use the encoder itself. The default FOLDER is DIR/text_cache.
"""

import argparse
import os
import sys
import time

from jzoo import cli
from jzoo import config as config_lib
from jzoo.errors import UserError


@cli.main_guard
def main(argv=None):
  argv, overrides = config_lib.split_config_overrides(sys.argv[1:] if argv is None else argv)
  p = argparse.ArgumentParser(prog="python -m jzoo.cache_text", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, help="e.g. imagen:tiny_shapes or configs/imagen.py:paper")
  p.add_argument("--workdir", required=True, help="model directory with the text encoder")
  p.add_argument("--out", default=None, help="cache folder (default: WORKDIR/text_cache)")
  p.add_argument("--split", default="train", help="dataset split whose captions are cached")
  p.add_argument("--limit", type=int, default=None, help="only the split's first N examples")
  p.add_argument("--batch-size", type=int, default=256, help="captions encoded per device call")
  args = p.parse_args(argv)
  if args.batch_size <= 0 or (args.limit is not None and args.limit <= 0):
    raise UserError("--batch-size and --limit must be positive")

  import jax
  import jax.numpy as jnp
  from jzoo import loading, registry
  from jzoo.data import frozen_cache
  from jzoo.data.sources import get_source
  from jzoo.stage import text_cache_input
  from jzoo.text.frozen import TEXT_ENCODER
  from jzoo.text.tokenizer import Tokenizer

  config = config_lib.load(args.config, overrides)
  model = registry.build_model(config)
  encoder = getattr(model, "text_encoder", None)
  conditioned = [s for s in model.stages if s != TEXT_ENCODER]
  if encoder is None or TEXT_ENCODER not in model.stages:
    raise UserError(f"{config.get('config_ref', args.config)} has no frozen text encoder to cache "
                    "(its text encoder trains with the model)")
  spec = model.data_spec(conditioned[0])
  dataset = config.data.dataset or spec.dataset
  source = get_source(dataset, args.split, size=spec.size, frames=spec.frames, fps=spec.fps)
  count = len(source) if args.limit is None else min(args.limit, len(source))
  started = time.monotonic()
  captions = [source.caption(i) for i in range(count)]
  print(f"read {count} captions of {args.split} ({len(set(captions))} distinct) in "
        f"{time.monotonic() - started:.1f} s", flush=True)

  params = loading.frozen_params(model, TEXT_ENCODER, args.workdir)
  dtype = jnp.dtype(str(config.train.dtype))
  params = jax.tree_util.tree_map(  # a bfloat16 model keeps a T5-XXL encoder at 9 GB
      lambda x: jnp.asarray(x, dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
  encode_fn = jax.jit(lambda p, t, m: encoder.encode(p, t, m).astype(jnp.float32))
  tokenizer = Tokenizer.load(config.text.tokenizer)

  def compute(batch):  # full batches: the jitted encoder compiles once
    tokens, mask = tokenizer.encode_batch(batch, spec.text_length)
    return batch, {"text": encode_fn(params, tokens, mask), "mask": mask}  # params as an argument

  inp = text_cache_input(spec.text_length, encoder.width)
  out = args.out or os.path.join(args.workdir, "text_cache")
  meta = frozen_cache.build(out, inp, captions, compute,
                            loading.input_provenance(model, inp, args.workdir, config, dataset),
                            batch_size=args.batch_size, bounds={"mask": (0, 1)})
  print(f"{out}: {meta['rows']} captions x {spec.text_length} tokens x {encoder.width} "
        f"({frozen_cache.folder_size(out) / 1e6:.1f} MB) in {time.monotonic() - started:.1f} s")
  print(f"train on it with --config.{inp.config_key}={out}")


if __name__ == "__main__":
  main()

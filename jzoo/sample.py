"""python -m jzoo.sample: text to images (PNG) or videos (GIF/MP4) with a registered model.

  python -m jzoo.sample                                   # the bundled default model, a default prompt
  python -m jzoo.sample --prompt "a small red circle in the top left corner" --out red.png
  python -m jzoo.sample --prompts-file prompts.txt --out outdir/   # outdir/0000.png, 0001.png, ...
  python -m jzoo.sample --model imagen-tiny-shapes --checkpoint runs/imagen --num 4
  python -m jzoo.sample --model phenaki-tiny-shapes --prompt "a red circle moving right" \
      --prompt "a red circle moving down"                 # story mode: one video, two segments
  python -m jzoo.sample --model phenaki-tiny-shapes --start first.png --prompt "..."  # image-to-video
  python -m jzoo.sample --list
  python -m jzoo.sample --model phenaki-tiny-shapes --config.sample.candidates=1  # any sample.* setting
"""

import argparse
import functools
import os
import sys

from jzoo import cli
from jzoo import registry
from jzoo.errors import CheckpointError, UserError
from jzoo.models.base import check_prompts
from jzoo.text.tokenizer import Tokenizer

DEFAULT_PROMPTS = {
    "text-to-image": "a large red circle in the center",
    "text-to-video": "a red circle moving right",
}


def build_parser():
  p = argparse.ArgumentParser(prog="python -m jzoo.sample", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default=registry.DEFAULT_MODEL, help="registered model name (see --list)")
  p.add_argument("--prompt", action="append", default=None,
                 help="caption; repeat for several (a video model with story mode joins them)")
  p.add_argument("--prompts-file", default=None, help="file with one prompt per line")
  p.add_argument("--out", default=None, help="output file (one output) or directory (several)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--num", type=int, default=1, help="samples per prompt")
  p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
  p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance weight")
  p.add_argument("--start", default=None,
                 help="video models: a PNG (image-to-video) or GIF (continuation) whose frames "
                      "start every video")
  p.add_argument("--checkpoint", default=None, help="model directory written by python -m jzoo.train, or a folder "
                 "written by python -m jzoo.export")
  p.add_argument("--format", choices=("png", "gif", "mp4"), default=None)
  p.add_argument("--batch-size", type=int, default=16, help="samples generated per device call")
  p.add_argument("--random-weights", action="store_true",
                 help="smoke test: sample from freshly initialised parameters")
  p.add_argument("--list", action="store_true", help="list the registered models and exit")
  return p


def list_models():
  rows = [("name", "task", "output", "params", "bundled")]
  for name, entry in sorted(registry.MODELS.items()):
    model = registry.build_model(registry.load_config(name))
    shape = "x".join(str(s) for s in model.output_shape)
    rows.append((name, model.task, shape, f"{registry.parameter_count(name):,}",
                 "yes" if entry.bundled else "no"))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  for r in rows:
    print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def read_prompts(args, task):
  if args.prompts_file is not None:
    if args.prompt:
      raise UserError("give either --prompt or --prompts-file, not both")
    if not os.path.isfile(args.prompts_file):
      raise UserError(f"prompts file {args.prompts_file!r} does not exist")
    with open(args.prompts_file) as f:
      lines = f.read().splitlines()
    while lines and not lines[-1].strip():
      lines.pop()
    if not lines:
      raise UserError(f"prompts file {args.prompts_file!r} is empty; write one prompt per line")
    return lines
  return args.prompt or [DEFAULT_PROMPTS[task]]


def output_paths(args, model_name, prompts, story, ext):
  """A file path for one output; `{out}/{i:04d}.{ext}` for several."""
  n_out = 1 if story else len(prompts) * args.num
  several = args.prompts_file is not None or args.num > 1 or n_out > 1
  if not several:
    path = args.out or os.path.join("samples", f"{model_name}-{args.seed}.{ext}")
    if os.path.isdir(path):
      raise UserError(f"--out {path!r} is a directory; give a file path like {path}/out.{ext}")
    _check_writable(os.path.dirname(os.path.abspath(path)))
    return [path]
  folder = args.out or os.path.join("samples", f"{model_name}-{args.seed}")
  if os.path.isfile(folder):
    raise UserError(f"--out {folder!r} is a file; with several outputs --out is a directory")
  _check_writable(folder)
  return [os.path.join(folder, f"{i:04d}.{ext}") for i in range(n_out)]


def _check_writable(folder):
  probe = folder
  while probe and not os.path.exists(probe):
    probe = os.path.dirname(probe)
  probe = probe or "."
  if not os.path.isdir(probe) or not os.access(probe, os.W_OK):
    raise UserError(f"cannot write to {folder!r} (no write permission under {probe!r}); "
                    "choose another --out")


def split_sampling_overrides(argv):
  """argv without its `--config.sample.KEY=VALUE` flags, and those overrides ("sample.KEY=VALUE").
  Only sampling settings can change after training; any other --config.* is refused."""
  from jzoo import config as config_lib
  rest, overrides = config_lib.split_config_overrides(argv)
  for item in overrides:
    if not item.startswith("sample."):
      raise UserError(f"--config.{item}: only sampling settings change at sampling time "
                      "(--config.sample.KEY=VALUE, e.g. --config.sample.temperature=0.5)")
  return rest, overrides


def with_sampling(model, overrides):
  """`model` rebuilt with "sample.KEY=VALUE" overrides (parameters unchanged); a ConfigError
  names an unknown key."""
  if not overrides:
    return model
  from jzoo import config as config_lib
  return registry.build_model(config_lib.with_overrides(model.config, overrides))


def load_model_and_params(args):
  import jax
  entry = registry.get_entry(args.model)
  if args.checkpoint is not None:
    if not os.path.isdir(args.checkpoint):
      raise CheckpointError(f"checkpoint directory {args.checkpoint!r} does not exist")
    exported = registry.exported_config(args.checkpoint)
    if exported is not None:  # a `python -m jzoo.export` folder
      model = registry.build_model(exported)
      return model, registry.load_exported_params(args.checkpoint, model)
    config = registry.training_config(args.checkpoint) or registry.load_config(entry.name)
    model = registry.build_model(config)
    return model, load_checkpoint_params(model, args.checkpoint)
  config = registry.load_config(entry.name)
  model = registry.build_model(config)
  if args.random_weights:
    params = {s: registry.random_params(model, s, jax.random.PRNGKey(args.seed)) for s in model.stages}
    return model, params
  if not entry.bundled:
    raise CheckpointError(f"model {entry.name!r} has no bundled weights; pass --checkpoint DIR "
                          f"(train with python -m jzoo.train --config {entry.config} --workdir DIR) "
                          "or --random-weights for a smoke test")
  return model, registry.load_bundled_params(entry.name, model)


def load_checkpoint_params(model, model_dir):
  """Every stage's EMA params from `model_dir`. A stage without a checkpoint there (a frozen text
  encoder imported from public weights) comes from the export named by `train.init_from` or
  from the model's own `load_frozen`."""
  params = {}
  for stage in model.stages:
    try:
      params[stage] = registry.stage_params(model_dir, stage, model.config)
    except CheckpointError as missing:
      users = [s for s in model.stages if stage in model.frozen_stages(s)]
      if not users:
        raise
      frozen = model.load_frozen(users[0], model_dir)
      if stage not in frozen:
        raise missing from None
      params[stage] = frozen[stage]
  return params


def generate(model, params, prompts, *, num, seed, steps, guidance, batch_size, story, start=None):
  """Returns a list of uint8 arrays, one per output, in prompt-major order.

  start: uint8 frames [F, H, W, 3] every video starts with (models with `check_start_frames`)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jzoo.models.base import Request
  from jzoo.parallel import compiler

  tokenizer = Tokenizer.load(model.config.text.tokenizer)
  check_prompts(prompts, model.text_length, tokenizer)
  options = model.default_request_options()
  steps = options["steps"] if steps is None else steps
  guidance = options["guidance"] if guidance is None else guidance
  gen = functools.partial(_jitted_generate(compiler.ynn_fusions_of(model.config)), model)
  key = jax.random.PRNGKey(seed)
  extra = {}
  start_frames = None
  if start is not None:
    model.check_start_frames(start.shape)
    start_frames = jnp.asarray(start, jnp.float32)[None] / 127.5 - 1.0

  def with_start(extra, batch):
    if start_frames is None:
      return extra
    return dict(extra, frames=jnp.broadcast_to(start_frames, (batch, *start_frames.shape[1:])))

  if story:
    tokens, mask = tokenizer.encode_batch(prompts, model.text_length)
    request = Request(tokens=jnp.asarray(tokens[:1]), mask=jnp.asarray(mask[:1]),
                      steps=jnp.int32(steps), guidance=jnp.float32(guidance),
                      extra=with_start({"story_tokens": jnp.asarray(tokens[1:, None]),
                                        "story_mask": jnp.asarray(mask[1:, None])}, 1))
    return [np.asarray(gen(params, request, key))[0]]

  flat = [p for p in prompts for _ in range(num)]
  bs = min(batch_size, len(flat))
  outputs = []
  for b, start in enumerate(range(0, len(flat), bs)):
    chunk = flat[start:start + bs]
    padded = chunk + [chunk[-1]] * (bs - len(chunk))  # one shape: no recompilation
    tokens, mask = tokenizer.encode_batch(padded, model.text_length)
    request = Request(tokens=jnp.asarray(tokens), mask=jnp.asarray(mask), steps=jnp.int32(steps),
                      guidance=jnp.float32(guidance), extra=with_start(extra, bs))
    out = np.asarray(gen(params, request, jax.random.fold_in(key, b)))
    outputs.extend(out[:len(chunk)])
  return outputs


@functools.lru_cache(maxsize=None)
def _jitted_generate(ynn_fusions=""):
  """One jitted generate for all models with the same XLA CPU options; the model is static
  (models hash by their config)."""
  from jzoo.parallel import compiler
  return compiler.jit(lambda model, params, request, rng: model.generate(params, request, rng),
                      static_argnums=0, ynn_fusions=ynn_fusions)


@cli.main_guard
def main(argv=None):
  argv, overrides = split_sampling_overrides(sys.argv[1:] if argv is None else argv)
  args = build_parser().parse_args(argv)
  if args.list:
    list_models()
    return
  registry.get_entry(args.model)  # unknown model: fail before any work
  for flag in ("num", "steps", "batch_size"):
    value = getattr(args, flag)
    if value is not None and value <= 0:
      raise UserError(f"--{flag.replace('_', '-')} must be a positive integer, got {value}")
  if args.guidance is not None and not args.guidance == args.guidance:
    raise UserError("--guidance must be a number")
  model = with_sampling(registry.build_model(registry.load_config(args.model)), overrides)
  prompts = read_prompts(args, model.task)
  # Empty or too-long prompts fail here, before any weights are loaded.
  check_prompts(prompts, model.text_length, Tokenizer.load(model.config.text.tokenizer))
  video = model.task == "text-to-video"
  story = video and args.prompt is not None and len(args.prompt) > 1
  if story and not getattr(model, "supports_story", False):
    raise UserError(f"model {args.model!r} has no story mode; give one --prompt or use --prompts-file")
  ext = args.format or ("gif" if video else "png")
  if not video and ext != "png":
    raise UserError(f"{args.model} makes images; use --format png")
  if video and ext == "png":
    raise UserError(f"{args.model} makes videos; use --format gif or --format mp4")
  start = None
  if args.start is not None:
    if not hasattr(model, "check_start_frames"):
      raise UserError(f"model {args.model!r} cannot start from given frames; drop --start")
    from jzoo.io import read_frames
    start = read_frames(args.start)
    model.check_start_frames(start.shape)
  paths = output_paths(args, args.model, prompts, story, ext)
  model, params = load_model_and_params(args)
  model = with_sampling(model, overrides)
  outputs = generate(model, params, prompts, num=args.num, seed=args.seed, steps=args.steps,
                     guidance=args.guidance, batch_size=args.batch_size, story=story, start=start)
  from jzoo.io import write_media
  for path, x in zip(paths, outputs):
    write_media(path, x, ext)
    print(path)


if __name__ == "__main__":
  main()

"""python -m jzoo.sample: text to images (PNG) or videos (GIF/MP4) with a registered model.

  python -m jzoo.sample                                   # the bundled default model, a default prompt
  python -m jzoo.sample --prompt "a small red circle in the top left corner" --out red.png
  python -m jzoo.sample --prompts-file prompts.txt --out outdir/   # outdir/0000.png, 0001.png, ...
  python -m jzoo.sample --model imagen-tiny-shapes --checkpoint runs/imagen --num 4
  python -m jzoo.sample --model phenaki-tiny-shapes --prompt "a red circle moving right" --prompt "a red circle moving down"
                                                          # story mode: one video, two segments
  python -m jzoo.sample --model phenaki-tiny-shapes --start first.png --prompt "..."  # image-to-video
  python -m jzoo.sample --model dalle2-tiny-shapes --image in.png --num 4      # image variations
  python -m jzoo.sample --model dalle2-tiny-shapes --image a.png --image2 b.png  # interpolation
  python -m jzoo.sample --model dalle2-tiny-shapes --image in.png --prompt "a red circle ..." \
      --edit "a blue circle ..." --alpha 0.5                  # text-diff edit of the image
  python -m jzoo.sample --list
  python -m jzoo.sample --model phenaki-tiny-shapes --config.sample.candidates=1  # any sample.* setting
"""

import argparse
import os
import sys

from jzoo import cli
from jzoo import loading, pipeline, registry
from jzoo.errors import UserError


def build_parser():
  p = argparse.ArgumentParser(prog="python -m jzoo.sample", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default=None,
                 help=f"registered model name (see --list; default {registry.DEFAULT_MODEL}, or with "
                      "--checkpoint the model the folder holds)")
  p.add_argument("--prompt", action="append", default=None,
                 help="caption; repeat for several (a video model with story mode joins them)")
  p.add_argument("--prompts-file", default=None, help="file with one prompt per line")
  p.add_argument("--out", default=None, help="output file (one output) or directory (several)")
  p.add_argument("--seed", type=int, default=0,
                 help="random seed (default 0); the same seed gives the same output")
  p.add_argument("--num", type=int, default=1, help="samples per prompt")
  p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
  p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance weight")
  p.add_argument("--start", default=None,
                 help="video models: a PNG (image-to-video) or GIF (continuation) whose frames "
                      "start every video")
  p.add_argument("--image", default=None,
                 help="image models with variations (unCLIP): a PNG whose variations to make")
  p.add_argument("--image2", default=None,
                 help="with --image: a second PNG; interpolate between the two images")
  p.add_argument("--edit", default=None,
                 help="with --image and --prompt (its caption): a caption to move the image towards")
  p.add_argument("--mask", default=None,
                 help="with --image and --prompt (region editing, CogView2): a PNG of the image's "
                      "size, white where to redraw the image under the prompt")
  p.add_argument("--alpha", type=float, action="append", default=None,
                 help="interpolation/edit amount in [0, 1]; repeat for several (default: "
                      "0, .25, .5, .75, 1 for --image2; .25, .5 for --edit)")
  p.add_argument("--checkpoint", default=None, help="model directory written by python -m jzoo.train, or a folder "
                 "written by python -m jzoo.export")
  p.add_argument("--format", choices=("png", "gif", "mp4"), default=None,
                 help="output format (default: png for image models, gif for video models)")
  p.add_argument("--batch-size", type=int, default=16, help="samples generated per device call")
  p.add_argument("--random-weights", action="store_true",
                 help="smoke test: sample from freshly initialised parameters")
  p.add_argument("--list", action="store_true", help="list the registered models and exit")
  return p


def list_models():
  rows = [("name", "task", "output", "params", "bundled")]
  for name, entry in sorted(registry.MODELS.items()):
    model = registry.build_model(loading.load_config(name))
    shape = "x".join(str(s) for s in model.output_shape)
    rows.append((name, model.task, shape, f"{loading.parameter_count(name):,}",
                 "yes" if entry.bundled else "no"))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  for r in rows:
    print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def read_prompts(args, default):
  if args.prompts_file is not None:
    if args.prompt:
      raise UserError("give either --prompt or --prompts-file, not both")
    if not os.path.isfile(args.prompts_file):
      raise UserError(f"prompts file {args.prompts_file!r} does not exist")
    try:
      with open(args.prompts_file, encoding="utf-8") as f:
        lines = f.read().splitlines()
    except UnicodeDecodeError as e:
      raise UserError(f"prompts file {args.prompts_file!r} is not UTF-8 text (byte {e.start}); "
                      "save it as UTF-8, one prompt per line") from None
    while lines and not lines[-1].strip():
      lines.pop()
    if not lines:
      raise UserError(f"prompts file {args.prompts_file!r} is empty; write one prompt per line")
    return lines
  return args.prompt or [default]


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


@cli.main_guard
def main(argv=None):
  argv, overrides = cli.split_sampling_overrides(sys.argv[1:] if argv is None else argv)
  args = build_parser().parse_args(argv)
  if args.list:
    list_models()
    return
  if args.model is not None:
    registry.get_entry(args.model)  # unknown model: fail before any work
  for flag in ("num", "steps", "batch_size"):
    value = getattr(args, flag)
    if value is not None and value <= 0:
      raise UserError(f"--{flag.replace('_', '-')} must be a positive integer, got {value}")
  if args.guidance is not None and not args.guidance == args.guidance:
    raise UserError("--guidance must be a number")
  pipe = pipeline.load(args.model, checkpoint=args.checkpoint, random_weights=args.random_weights,
                       seed=args.seed, sample=overrides)
  model, name = pipe.model, pipe.name
  prompts = read_prompts(args, pipe.default_prompt)
  pipe.check_prompts(prompts)  # empty or too long: an error; outside the grammar: a warning
  # Several --prompt to a video model tell a story (a model without story mode says so).
  story = args.prompt is not None and len(args.prompt) > 1 and model.makes_video
  ext = args.format or ("gif" if model.makes_video else "png")
  if not model.makes_video and ext != "png":
    raise UserError(f"{name} makes images; use --format png")
  if model.makes_video and ext == "png":
    raise UserError(f"{name} makes videos; use --format gif or --format mp4")
  if args.image is not None:
    return _image_task(args, pipe, ext)
  for flag in ("image2", "edit", "alpha"):
    if getattr(args, flag) is not None:
      raise UserError(f"--{flag} needs --image")
  start = None
  if args.start is not None:
    from jzoo.io import read_frames
    start = read_frames(args.start)
  paths = output_paths(args, name, prompts, story, ext)
  if args.prompt is None and args.prompts_file is None:
    print(f"prompt: {prompts[0]!r} (choose one with --prompt)")
  outputs = pipe(prompts, num=args.num, seed=args.seed, steps=args.steps, guidance=args.guidance,
                 batch_size=args.batch_size, story=story, start=start)
  from jzoo.io import write_media
  for path, x in zip(paths, outputs):
    write_media(path, x, ext)
    print(path)


def _image_task(args, pipe, ext):
  """--image: variations; with --image2 interpolation; with --edit a text-diff edit."""
  from jzoo.io import read_frames
  if args.image2 is not None and args.edit is not None:
    raise UserError("give --image2 (interpolation) or --edit (a text-diff edit), not both")
  for a in args.alpha or ():
    if not 0.0 <= a <= 1.0:
      raise UserError(f"--alpha must be in [0, 1], got {a}")
  image = _read_image(args.image, read_frames)
  options = dict(seed=args.seed, steps=args.steps, guidance=args.guidance)
  if args.mask is not None:
    if args.image2 is not None or args.edit is not None or args.alpha is not None:
      raise UserError("--mask edits a region; it takes no --image2, --edit or --alpha")
    if not args.prompt or len(args.prompt) != 1:
      raise UserError("--mask needs one --prompt: the caption to draw in the region")
    region = _read_image(args.mask, read_frames, flag="--mask").mean(axis=-1) > 127
    outputs = pipe.edit_region(image, region, args.prompt[0], num=args.num, seed=args.seed)
    return _write_outputs(args, pipe, outputs, ext)
  if args.image2 is not None:
    outputs = pipe.interpolate(image, _read_image(args.image2, read_frames),
                               args.alpha or (0.0, 0.25, 0.5, 0.75, 1.0), **options)
  elif args.edit is not None:
    if not args.prompt or len(args.prompt) != 1:
      raise UserError("--edit needs one --prompt: the caption of --image")
    outputs = pipe.edit(image, args.prompt[0], args.edit, args.alpha or (0.25, 0.5), **options)
  else:
    if args.alpha is not None:
      raise UserError("--alpha needs --image2 or --edit")
    outputs = pipe.variations(image, num=args.num, **options)
  _write_outputs(args, pipe, outputs, ext)


def _write_outputs(args, pipe, outputs, ext):
  from jzoo.io import write_media
  several = len(outputs) > 1
  stem = args.out or os.path.join("samples", f"{pipe.name}-{args.seed}" + ("" if several else ".png"))
  paths = ([os.path.join(stem, f"{i:04d}.png") for i in range(len(outputs))] if several
           else [stem])
  _check_writable(os.path.dirname(os.path.abspath(paths[0])))
  for path, x in zip(paths, outputs):
    write_media(path, x, ext)
    print(path)


def _read_image(path, read_frames, flag="--image"):
  """One RGB uint8 image [H, W, 3] from a file; a one-line UserError otherwise."""
  if not os.path.isfile(path):
    raise UserError(f"{flag} {path!r} does not exist")
  frames = read_frames(path)
  if len(frames) != 1:
    raise UserError(f"{flag} {path!r} has {len(frames)} frames; give a still image (PNG)")
  return frames[0]


if __name__ == "__main__":
  main()

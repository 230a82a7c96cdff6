"""python -m jzoo.evaluate: how well a model follows its captions on the shapes datasets.

Generates one sample for each of the first N captions of a split of
`shapes` (image models) or `moving_shapes` (video models), reads every sample
with the alignment evaluator (jzoo/eval/alignment.py), and writes
DIR/report.json, DIR/report.md and DIR/grid.png: accuracy overall, per
attribute and per caption form, and Fréchet distances to the split's N real
examples on the evaluator's features. A model that edits regions (CogView2) is also given one
editing task per caption (jzoo/eval/editing.py: an object of the real image replaced inside a
region around it): the report's "editing" and DIR/grid-edit.png.

  python -m jzoo.evaluate --model imagen-tiny-shapes --num 200
  python -m jzoo.evaluate --model imagen-tiny-shapes --split compositional --out evals/comp
  python -m jzoo.evaluate --model imagen-micro --random-weights --num 4 --json
  python -m jzoo.evaluate --model phenaki-tiny-shapes --config.sample.temperature=0.5  # sample.* settings
"""

import argparse
import json
import math
import os
import sys

import numpy as np

from jzoo import cli
from jzoo import registry
from jzoo.data import shapes
from jzoo.errors import UserError

SPLITS = ("test", "compositional")
UNCLIP_NUM = 100  # examples of unCLIP's embedding checks (the "among 100 test images")


def build_parser():
  p = argparse.ArgumentParser(prog="python -m jzoo.evaluate", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default=None,
                 help=f"registered model name (default {registry.DEFAULT_MODEL}, or with --checkpoint "
                      "the model the folder holds)")
  p.add_argument("--checkpoint", default=None, help="model directory written by python -m jzoo.train, or a folder "
                 "written by python -m jzoo.export")
  p.add_argument("--split", default="test", help=f"captions to evaluate on: {' or '.join(SPLITS)}")
  p.add_argument("--num", type=int, default=64, help="number of captions (the split's first N)")
  p.add_argument("--first", type=int, default=0,
                 help="index of the first caption (tune settings on captions the scores skip, "
                 "e.g. --first 500 against the cards' first 500)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
  p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance weight")
  p.add_argument("--batch-size", type=int, default=16, help="samples generated per device call")
  p.add_argument("--out", default=None, help="report directory (default evals/MODEL-SPLIT-SEED)")
  p.add_argument("--json", action="store_true", help="print the report (without samples) as one JSON object")
  p.add_argument("--random-weights", action="store_true",
                 help="smoke test: evaluate freshly initialised parameters")
  p.add_argument("--fid-weights", default=None, metavar="FILE",
                 help="also report FID against the real samples, with pytorch-fid's InceptionV3 "
                 "weights (pt_inception-2015-12-05-6726825d.pth or a safetensors copy)")
  p.add_argument("--clip", default=None, metavar="DIR",
                 help="also report the CLIP score of samples and captions, with a Hugging Face "
                 "CLIP folder (config.json, model.safetensors, tokenizer files)")
  return p


def _check_request(split, num, dataset, first=0):
  if split not in SPLITS:
    raise UserError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
  limit = shapes.split_size(dataset, split)
  if not isinstance(num, (int, np.integer)) or num <= 0:
    raise UserError(f"--num must be a positive integer, got {num}")
  if not isinstance(first, (int, np.integer)) or first < 0:
    raise UserError(f"--first must be a non-negative integer, got {first}")
  if first + num > limit:
    raise UserError(f"--first {first} --num {num} runs past the {limit} examples of "
                    f"{dataset}/{split}; lower one of them")


def dataset_of(model):
  """The shapes dataset whose captions `model` follows: moving_shapes for video models."""
  return "moving_shapes" if model.makes_video else "shapes"


def scene(dataset, split, index, output_shape):
  """Example `index` of `split` (caption, form, objects), for samples of `output_shape`."""
  if dataset == "moving_shapes":
    frames, size = output_shape[0], output_shape[-1]
    return shapes.video_scene(split, index, size, frames)
  return shapes.image_scene(split, index, output_shape[-1])


def _real(dataset, example, shape):
  if dataset == "moving_shapes":
    return shapes.render_video(example["objects"], shape[-2], shape[0])
  return shapes.render_image(example["objects"], shape[0])


def _found(result):
  """The detector's reading of a sample, JSON-ready."""
  if "objects" in result:
    return [dict(color=o["color"], shape=o["shape"], direction=o["direction"],
                 displacement=[round(v, 2) for v in o["displacement"]]) for o in result["objects"]]
  return [dict(color=d["color"], shape=d["shape"], size=d["size"], cell=list(d["cell"]),
               center=[round(v, 2) for v in d["center"]]) for d in result["detections"]]


def evaluate(pipe, split="test", num=64, seed=0, steps=None, guidance=None, out_dir=None,
             *, batch_size=16, name=None, fid_params=None, clip=None, first=0, unclip=True,
             editing=True):
  """Generates for `num` captions of `split` from index `first`, scores them; returns the report.

  pipe: a `jzoo.load` pipeline; `name` (default its name) goes into the report. With `out_dir`,
  also writes report.json, report.md and grid.png there (report["files"]).
  `fid_params` (jzoo.eval.inception.load_inception_params) adds "fid" against the real
  samples (video frames pooled); `clip` = (model, params, tokenizer) from
  jzoo.text.clip.load_clip adds "clip_score" (a video's middle frame). `unclip=False` leaves out
  an unCLIP model's embedding checks (`unclip_metrics`: 100 variations and 100 prior samples),
  `editing=False` a region editor's editing check (`editing_metrics`: one edit per caption).
  """
  from jzoo.eval import alignment, frechet
  from jzoo.eval import report as report_lib
  from jzoo.models.base import RECONSTRUCT, REGION_EDIT, VARIATIONS

  model, params, name = pipe.model, pipe.params, name or pipe.name
  dataset = dataset_of(model)
  video = dataset == "moving_shapes"
  _check_request(split, num, dataset, first)
  output_shape = tuple(int(v) for v in model.output_shape)
  if output_shape[-1] != output_shape[-2]:
    raise UserError(f"the shapes datasets are square; this model makes {output_shape} samples")
  scenes = [scene(dataset, split, first + i, output_shape) for i in range(num)]
  captions = [s["caption"] for s in scenes]
  outputs = list(pipe(captions, seed=seed, steps=steps, guidance=guidance, batch_size=batch_size))
  results = [alignment.score(x, c) for x, c in zip(outputs, captions)]
  forms = [s["form"] for s in scenes]
  summary = report_lib.summarize(results, forms)

  # Fréchet distances against the split's real examples, rendered at the samples' shape.
  real = [_real(dataset, s, outputs[0].shape[:-1]) for s in scenes]
  fd = fvd = None
  if num >= 2:
    if video:
      fd = frechet.frechet_distance(frechet.features([f for v in outputs for f in v]),
                                    frechet.features([f for v in real for f in v]))
      fvd = frechet.frechet_distance(frechet.features(outputs), frechet.features(real))
    else:
      fd = frechet.frechet_distance(frechet.features(outputs), frechet.features(real))

  options = model.default_request_options()
  report = dict(
      model=name, task=model.task, dataset=dataset, split=split, first=first, num=num, seed=seed,
      steps=options["steps"] if steps is None else steps,
      guidance=options["guidance"] if guidance is None else guidance,
      output_shape=list(outputs[0].shape[:-1]),
      accuracy=summary["accuracy"], correct=summary["correct"], attributes=summary["attributes"],
      forms=summary["forms"], frechet_distance=fd,
  )
  if video:
    report["frechet_video_distance"] = fvd
  if model.can(RECONSTRUCT):  # a visual tokenizer: what its codes keep of real samples
    psnr, recons = reconstruction_psnr(model, params, real, batch_size)
    report["tokenizer_psnr"] = psnr
    # The evaluator on the tokenizer's round trips of the real samples: the accuracy a perfect
    # generator of tokens could reach through this tokenizer.
    report["tokenizer_accuracy"] = float(np.mean(
        [alignment.score(x, c)["correct"] for x, c in zip(recons, captions)]))
  if unclip and model.can(VARIATIONS):  # unCLIP: what its CLIP image embeddings carry
    count = min(UNCLIP_NUM, shapes.split_size(dataset, split) - first)
    examples = [scene(dataset, split, first + i, output_shape) for i in range(count)]
    report["unclip"] = unclip_metrics(model, params, pipe.tokenizer,
                                      [_real(dataset, e, output_shape) for e in examples],
                                      [e["caption"] for e in examples], seed, batch_size)
  edits = None
  if editing and model.can(REGION_EDIT) and not video:  # text-guided editing: one object replaced per image
    report["editing"], edits = editing_metrics(model, params, pipe.tokenizer, scenes, real, split,
                                               first, seed, guidance, batch_size)
  if fid_params is not None:
    from jzoo.eval import fid as fid_lib
    frames = lambda xs: np.concatenate([x.reshape(-1, *x.shape[-3:]) for x in xs])
    report["fid"] = fid_lib.fid(frames(real), frames(outputs), fid_params)
  if clip is not None:
    from jzoo.text import clip as clip_lib
    images = [x[len(x) // 2] if video else x for x in outputs]
    report["clip_score"] = clip_lib.clip_score(images, captions, *clip)[0]
  report["evaluator"] = dict(
      relation_tolerance=alignment.RELATION_TOLERANCE, min_travel=alignment.MIN_TRAVEL,
      max_drift=alignment.MAX_DRIFT, min_area=alignment.MIN_AREA,
      features=f"palette coverage on a {frechet.GRID}x{frechet.GRID} grid + detector counts"
               + (" + motion" if video else ""))
  report["samples"] = [dict(index=i, caption=c, form=f, correct=r["correct"], attributes=r["attributes"],
                            found=_found(r))
                       for i, (c, f, r) in enumerate(zip(captions, forms, results), start=first)]
  if out_dir is not None:
    report["files"] = report_lib.write(out_dir, report, outputs, results)
    if edits is not None:
      from jzoo.io import write_image
      report["files"]["edit_grid"] = path = os.path.join(out_dir, "grid-edit.png")
      write_image(path, report_lib.grid_image(*edits))
  return report


def editing_metrics(model, params, tokenizer, scenes, sources, split, first, seed, guidance,
                    batch_size):
  """Text-guided editing on the evaluation's real images (`sources`, uint8, the renders of
  `scenes`; jzoo/eval/editing.py): each image's task region regenerated under its edited
  caption, read back by the evaluator. Returns the summary and (edited images, edited
  captions, results) for the edit grid."""
  import jax
  import jax.numpy as jnp
  from jzoo.eval import alignment
  from jzoo.eval import editing
  from jzoo.models.base import Request
  size = int(model.output_shape[-1])
  tasks = [editing.edit_task(s, split, first + i, size) for i, s in enumerate(scenes)]
  gen = jax.jit(model.generate)
  key = jax.random.PRNGKey(seed)
  edited = []
  for b, start in enumerate(range(0, len(tasks), batch_size)):
    chunk = tasks[start:start + batch_size]
    pad = lambda xs: _padded(xs, batch_size)
    pixels = jnp.asarray(np.stack(pad(sources[start:start + batch_size])), jnp.float32) / 127.5 - 1
    tokens, mask = tokenizer.encode_batch(pad([t["caption"] for t in chunk]), model.text_length)
    extra = {"known": pixels, "region": jnp.asarray(np.stack(pad([t["region"] for t in chunk])))}
    request = Request(tokens=jnp.asarray(tokens), mask=jnp.asarray(mask), extra=extra,
                      guidance=None if guidance is None else jnp.float32(guidance))
    edited.extend(np.asarray(gen(params, request, jax.random.fold_in(key, b)))[:len(chunk)])
  captions = [t["caption"] for t in tasks]
  results = [alignment.score(x, c) for x, c in zip(edited, captions)]
  kept = [np.array_equal(x[~t["region"]], s[~t["region"]]) for x, t, s in zip(edited, tasks, sources)]
  summary = editing.summarize([r["correct"] for r in results], kept, [t["form"] for t in tasks])
  return summary, (edited, captions, results)


def _padded(xs, n):
  """`xs` filled up to `n` items with copies of its last: every batch one shape, one compile."""
  return list(xs) + [xs[-1]] * (n - len(xs))


def unclip_metrics(model, params, tokenizer, real, captions, seed, batch_size):
  """The two checks of unCLIP's embeddings, in the model's own CLIP image space, over real
  renders and their captions (`UNCLIP_NUM` of the split from --first, whatever --num is),
  tokenized by the pipeline's own tokenizer:

  variations_closer_to_source: over pairs (i, j != i), the fraction where the variation of real
    image i is more similar to image i than to image j (variations_nearest_source: the fraction
    whose most similar real image is their source);
  prior_retrieval: the fraction of captions whose prior embedding (sampled as generation does)
    has as its nearest real image embedding one with the same caption."""
  import jax
  import jax.numpy as jnp
  from jzoo.models.base import Request
  gen = jax.jit(model.generate)
  embed = jax.jit(model.image_embedding)
  prior = jax.jit(model.sample_prior)
  clip_params = params["clip"]
  key = jax.random.PRNGKey(seed)
  variations, sources, priors = [], [], []
  for b, start in enumerate(range(0, len(real), batch_size)):
    chunk = real[start:start + batch_size]
    n = len(chunk)
    pixels = jnp.asarray(np.stack(_padded(chunk, batch_size)), jnp.float32) / 127.5 - 1.0
    tokens, mask = tokenizer.encode_batch(_padded(captions[start:start + batch_size], batch_size),
                                          model.text_length)
    tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
    rng = jax.random.fold_in(key, b)
    out = gen(params, Request(tokens=tokens, mask=mask, extra={"images": pixels}), rng)
    variations.append(np.asarray(embed(clip_params, jnp.asarray(out, jnp.float32) / 127.5 - 1))[:n])
    sources.append(np.asarray(embed(clip_params, pixels))[:n])
    priors.append(np.asarray(prior(params, tokens, mask, rng))[:n])
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  v, s, p = (unit(np.concatenate(x)) for x in (variations, sources, priors))
  sim = v @ s.T
  n = len(sim)
  closer = (np.diag(sim)[:, None] > sim) & ~np.eye(n, dtype=bool)
  nearest = np.argmax(p @ s.T, axis=1)
  return dict(
      num=n,
      variations_closer_to_source=float(closer.sum() / max(n * (n - 1), 1)),
      variations_nearest_source=float(np.mean(np.argmax(sim, axis=1) == np.arange(n))),
      prior_retrieval=float(np.mean([captions[j] == captions[i] for i, j in enumerate(nearest)])))


def reconstruction_psnr(model, params, real, batch_size):
  """Mean PSNR (dB, per sample) of `model.reconstruct` on uint8 samples, and the round trips
  as uint8."""
  import jax
  import jax.numpy as jnp
  from jzoo.models.base import to_uint8
  fn = jax.jit(model.reconstruct)
  values, recons = [], []
  for start in range(0, len(real), batch_size):
    x = jnp.asarray(np.stack(real[start:start + batch_size]), jnp.float32) / 127.5 - 1.0
    y = fn(params, x)
    err = np.asarray(jnp.mean(jnp.square(y - x), axis=tuple(range(1, x.ndim))))
    values.extend(10.0 * np.log10(4.0 / np.maximum(err, 1e-10)))
    recons.extend(np.asarray(to_uint8(y)))
  return float(np.mean(values)), recons


def headline(report):
  """One line of the numbers that matter."""
  attrs = " ".join(f"{k} {v:.2f}" for k, v in report["attributes"].items())
  parts = [f"{report['model'] or 'model'} on {report['dataset']}/{report['split']} ({report['num']} samples): "
           f"accuracy {report['accuracy']:.3f} ({report['correct']}/{report['num']})", attrs]
  if report["frechet_distance"] is not None:
    parts.append(f"FD {report['frechet_distance']:.3f}")
    if report.get("frechet_video_distance") is not None:
      parts.append(f"FVD {report['frechet_video_distance']:.3f}")
  for key, label in (("fid", "FID"), ("clip_score", "CLIP score")):
    if report.get(key) is not None:
      parts.append(f"{label} {report[key]:.2f}")
  if report.get("unclip") is not None:
    u = report["unclip"]
    parts.append(f"variations closer to their source {u['variations_closer_to_source']:.3f} "
                 f"(nearest {u['variations_nearest_source']:.3f}), prior retrieval "
                 f"{u['prior_retrieval']:.3f} (of {u['num']})")
  if report.get("editing") is not None:
    e = report["editing"]
    forms = ", ".join(f"{f} object{'s' if f == 'two' else ''} {e[f]['correct']:.3f}"
                      for f in ("one", "two") if f in e)
    parts.append(f"editing: {e['correct']:.3f} read back ({forms}), outside unchanged "
                 f"{e['outside_unchanged']:.3f}")
  if report.get("tokenizer_psnr") is not None:
    parts.append(f"tokenizer PSNR {report['tokenizer_psnr']:.2f} dB, accuracy of its round trips "
                 f"{report['tokenizer_accuracy']:.3f}")
  return " | ".join(parts)


@cli.main_guard
def main(argv=None):
  from jzoo import pipeline
  argv, overrides = cli.split_sampling_overrides(sys.argv[1:] if argv is None else argv)
  args = build_parser().parse_args(argv)
  if args.model is not None:
    registry.get_entry(args.model)  # unknown model: fail before any work
  if args.split not in SPLITS:
    raise UserError(f"unknown split {args.split!r}; choose one of: {', '.join(SPLITS)}")
  for flag in ("num", "steps", "batch_size"):
    value = getattr(args, flag)
    if value is not None and value <= 0:
      raise UserError(f"--{flag.replace('_', '-')} must be a positive integer, got {value}")
  if args.first < 0:
    raise UserError(f"--first must be a non-negative integer, got {args.first}")
  if args.guidance is not None and not math.isfinite(args.guidance):
    raise UserError(f"--guidance must be a finite number, got {args.guidance}")
  # A --checkpoint is named by its path.
  name = os.path.normpath(args.checkpoint) if args.checkpoint else args.model or registry.DEFAULT_MODEL
  out = args.out or os.path.join("evals", f"{os.path.basename(name)}-{args.split}-{args.seed}")
  if os.path.isfile(out):
    raise UserError(f"--out {out!r} is a file; give a directory for the report")
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create --out {out!r} ({e.strerror}); choose a writable directory") from None
  # The metric networks' weights load before any generation, so a bad path fails fast.
  fid_params = clip = None
  if args.fid_weights:
    from jzoo.eval import inception
    fid_params = inception.load_inception_params(args.fid_weights)
  if args.clip:
    from jzoo.text import clip as clip_lib
    clip = clip_lib.load_clip(args.clip)
  pipe = pipeline.load(args.model, checkpoint=args.checkpoint, random_weights=args.random_weights,
                       seed=args.seed, sample=overrides)
  report = evaluate(pipe, args.split, args.num, args.seed, args.steps, args.guidance, out,
                    batch_size=args.batch_size, name=name, fid_params=fid_params, clip=clip,
                    first=args.first)
  if args.json:
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}))
  else:
    print(headline(report))
    for path in report["files"].values():
      print(path)


if __name__ == "__main__":
  main()

"""The Python API users reach first: a model with its weights, ready to generate.

  import jzoo
  pipe = jzoo.load("imagen-tiny-shapes")              # a registered name, an export folder
  images = pipe(["a large red circle in the center"], seed=0)   # or a training directory
  pipe.capabilities, pipe.stages, pipe.config
  videos = jzoo.load("phenaki-tiny-shapes")(["a red circle moving right",
                                             "a red circle moving down"], story=True)

The CLIs (`jzoo.sample`, `jzoo.evaluate`, `jzoo.bench`) and the notebooks go through it.
Generation is one jitted call per batch; steps, guidance and the seed are traced, so changing
them does not recompile.
"""

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jzoo import config as config_lib
from jzoo import loading, registry
from jzoo.errors import CheckpointError
from jzoo.models import base
from jzoo.models import params as params_lib
from jzoo.parallel import compiler

# A prompt each model family can draw, by what its samples are.
DEFAULT_PROMPTS = {
    base.TEXT_TO_IMAGE: "a large red circle in the center",
    base.TEXT_TO_VIDEO: "a red circle moving right",
}
# Datasets whose captions follow the shapes grammar (docs/SHAPES.md), by what one sample is.
SHAPES_DATASETS = {"shapes": "image", "moving_shapes": "video"}


class Pipeline:
  """A model and its parameters by stage. Call it with prompts to generate uint8 arrays."""

  def __init__(self, model, params, name):
    self.model, self.params, self.name = model, params, name

  @property
  def config(self):
    return self.model.config

  @property
  def stages(self):
    return tuple(self.model.stages)

  @property
  def capabilities(self):
    return self.model.capabilities

  @property
  def output_shape(self):
    return self.model.output_shape

  @functools.cached_property
  def tokenizer(self):
    return self.model.text_tokenizer()

  @property
  def default_prompt(self):
    return DEFAULT_PROMPTS[self.model.task]

  def __repr__(self):
    caps = ", ".join(c for c in base.CAPABILITIES if c in self.capabilities)
    return f"Pipeline({self.name!r}, stages={self.stages}, capabilities=({caps}))"

  def with_sampling(self, *overrides, **settings):
    """The same weights with other sampling settings: "KEY=VALUE" strings or keywords, keys of
    `config.sample` (e.g. `candidates=1`); an unknown key is a ConfigError naming it."""
    items = [o if o.startswith("sample.") else f"sample.{o}" for o in overrides]
    items += [f"sample.{k}={v}" for k, v in settings.items()]
    if not items:
      return self
    model = registry.build_model(config_lib.with_overrides(self.config, items))
    return Pipeline(model, self.params, self.name)

  def check_prompts(self, prompts, warn=sys.stderr):
    """PromptError for an empty or too-long prompt. A model trained on the shapes captions
    still draws a prompt outside their grammar, with a one-line warning on `warn`."""
    base.check_prompts(prompts, self.model.text_length, self.tokenizer)
    if warn is not None:
      for prompt in prompts:
        problem = out_of_grammar(self.model, prompt)
        if problem:
          print(f"warning: {problem}", file=warn)

  def __call__(self, prompts, *, num=1, seed=0, steps=None, guidance=None, story=False,
               start=None, batch_size=16):
    """uint8 images [N, H, W, 3] or videos [N, T, H, W, 3], prompt-major, `num` per prompt.

    story: one video telling `prompts` in order (models that can do "story").
    start: uint8 frames [F, H, W, 3] that every video starts with (image-to-video with one
      frame, video prediction with more)."""
    if isinstance(prompts, str):
      prompts = [prompts]
    outputs = generate(self.model, self.params, list(prompts), num=num, seed=seed, steps=steps,
                       guidance=guidance, batch_size=batch_size, story=story, start=start,
                       name=self.name, tokenizer=self.tokenizer)
    return np.stack(outputs)


  # --- image-conditioned tasks (unCLIP): uint8 [H, W, 3] images in, uint8 images out ------------
  def variations(self, image, *, num=1, seed=0, steps=None, guidance=None):
    """`num` new images decoded from `image`'s CLIP image embedding."""
    self.model.require(base.VARIATIONS, self.name)
    return self._from_images(num * [{}], image, seed, steps, guidance)

  def interpolate(self, image, image_b, alphas=(0.0, 0.25, 0.5, 0.75, 1.0), *, seed=0,
                  steps=None, guidance=None):
    """One image per alpha along the spherical path between the two images' embeddings (the
    same noise for every alpha, as the paper's figures use)."""
    self.model.require(base.INTERPOLATION, self.name)
    b = _pixels(image_b, self.model)
    return self._from_images([{"images_b": b, "alpha": np.float32(a)} for a in alphas], image, seed, steps,
                             guidance, same_noise=True)

  def edit(self, image, source, target, alphas=(0.25, 0.5), *, seed=0, steps=None,
           guidance=None):
    """Text-diff edits: `image` moved from caption `source` towards `target` by each alpha."""
    self.model.require(base.INTERPOLATION, self.name)
    self.check_prompts([source, target])
    tokens, mask = self.tokenizer.encode_batch([target], self.model.text_length)
    return self._from_images([{"edit_tokens": tokens[0], "edit_mask": mask[0],
                               "alpha": np.float32(a)}
                              for a in alphas], image, seed, steps, guidance, prompt=source,
                             same_noise=True)

  def edit_region(self, image, region, prompt, *, num=1, seed=0):
    """`num` edits of `image` (uint8 [H, W, 3]): the pixels where `region` (bool [H, W]) is True
    redrawn under `prompt`, every other pixel kept (text-guided editing)."""
    model = self.model
    model.require(base.REGION_EDIT, self.name)
    region = np.asarray(region, bool)
    model.check_edit(np.shape(image), region)
    self.check_prompts([prompt])
    pixels = _pixels(image, model)
    tokens, mask = self.tokenizer.encode_batch([prompt] * num, model.text_length)
    extra = {"known": jnp.broadcast_to(pixels, (num, *pixels.shape)),
             "region": jnp.broadcast_to(jnp.asarray(region), (num, *region.shape))}
    steps, guidance = _sampler_settings(model, None, None)
    request = base.Request(tokens=jnp.asarray(tokens), mask=jnp.asarray(mask), steps=steps,
                           guidance=guidance, extra=extra)
    gen = _jitted_generate(compiler.ynn_fusions_of(model.config))
    return np.asarray(gen(model, self.params, request, jax.random.PRNGKey(seed)))

  def _from_images(self, rows, image, seed, steps, guidance, prompt=None, same_noise=False):
    """One generate call over `rows` (per-row extras), each also given `image`."""
    model = self.model
    pixels = _pixels(image, model)
    tokens, mask = self.tokenizer.encode_batch([prompt or self.default_prompt] * len(rows),
                                               model.text_length)
    extra = {"images": jnp.broadcast_to(pixels, (len(rows), *pixels.shape))}
    extra.update({key: jnp.stack([jnp.asarray(r[key]) for r in rows]) for key in rows[0]})
    if same_noise:  # every row starts from the same noise: the rows differ by their inputs only
      extra["same_noise"] = jnp.ones((len(rows),), jnp.float32)
    steps, guidance = _sampler_settings(model, steps, guidance)
    request = base.Request(tokens=jnp.asarray(tokens), mask=jnp.asarray(mask), steps=steps,
                           guidance=guidance, extra=extra)
    gen = _jitted_generate(compiler.ynn_fusions_of(model.config))
    return np.asarray(gen(model, self.params, request, jax.random.PRNGKey(seed)))


def _sampler_settings(model, steps, guidance):
  """A request's traced steps and guidance: the given ones, else the model's defaults."""
  options = model.default_request_options()
  return (jnp.int32(options["steps"] if steps is None else steps),
          jnp.float32(options["guidance"] if guidance is None else guidance))


def _pixels(image, model):
  """uint8 [H, W, 3] -> float [H, W, 3] in [-1, 1]; a one-line UserError for anything else."""
  from jzoo.errors import UserError
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise UserError(f"an image must be uint8 [H, W, 3] RGB, got {image.dtype} {image.shape}")
  return jnp.asarray(image, jnp.float32) / 127.5 - 1.0


def out_of_grammar(model, prompt):
  """Why `prompt` is outside the caption grammar the model was trained on, or None (also for a
  model trained on other captions)."""
  spec = model.data_spec(model.stages[-1])
  kind = SHAPES_DATASETS.get(model.config.data.get("dataset", "") or spec.dataset)
  if kind is None:
    return None
  from jzoo.eval.alignment import parse_caption
  try:
    parsed = parse_caption(prompt)
  except ValueError:
    parsed = None
  if parsed is not None and parsed["kind"] == kind:
    return None
  return (f"{prompt!r} is outside the {kind} captions this model was trained on "
          "(docs/SHAPES.md); generating anyway")


def load(name_or_dir=None, *, checkpoint=None, random_weights=False, seed=0, sample=()):
  """A Pipeline: a registered model's bundled weights, or a folder of weights.

  name_or_dir: a registered name (`python -m jzoo.sample --list`), a folder written by
    `python -m jzoo.export`, or a training directory of `python -m jzoo.train`; default: the
    zoo's default model, or with `checkpoint`, the model the folder holds.
  checkpoint: a folder of weights for the named model; a CheckpointError says which model a
    folder of another model holds.
  random_weights: freshly initialised parameters (smoke tests).
  sample: "KEY=VALUE" settings of `config.sample` to change.
  """
  if name_or_dir is not None and name_or_dir not in registry.MODELS:
    if not os.path.isdir(name_or_dir):
      registry.get_entry(name_or_dir)  # the unknown-model error, naming the registered ones
    name_or_dir, checkpoint = None, name_or_dir
  if checkpoint is not None:
    model, params, held = _from_folder(checkpoint, name_or_dir)
    if name_or_dir is not None and held != name_or_dir and not _same_family(model, name_or_dir):
      raise CheckpointError(f"{checkpoint!r} holds {held!r} ({model.config.model} weights), not "
                            f"{name_or_dir!r}; pass --model {held} or drop --model")
    pipe = Pipeline(model, params, name_or_dir or held)
  else:
    entry = registry.get_entry(name_or_dir or registry.DEFAULT_MODEL)
    model = registry.build_model(loading.load_config(entry.name))
    if random_weights:
      params = _random_params(model, seed)
    elif not entry.bundled and all(model.stage(s).untrainable for s in model.stages):
      raise CheckpointError(f"model {entry.name!r} runs public weights you bring: pass "
                            f"--checkpoint DIR, their folder (docs/models/{entry.name}.md)")
    elif not entry.bundled:
      raise CheckpointError(f"model {entry.name!r} has no bundled weights; pass --checkpoint DIR "
                            f"(train with python -m jzoo.train --config {entry.config} --workdir DIR) "
                            "or --random-weights for a smoke test")
    else:
      params = loading.load_bundled_params(entry.name, model)
    pipe = Pipeline(model, params, entry.name)
  return pipe.with_sampling(*sample)


def _from_folder(folder, name=None):
  """(model, params, the name of the model it holds) of an export folder or a training dir (one
  without its config.json, from an old run, is read with registered model `name`'s config)."""
  if not os.path.isdir(folder):
    raise CheckpointError(f"checkpoint directory {folder!r} does not exist")
  imported = loading.imported_config(folder)
  exported = loading.exported_config(folder)
  if imported is not None:  # public weights in another library's layout (Karlo's)
    model = registry.build_model(imported)
    params = {stage: model.external_weights(stage) for stage in model.stages}
  elif exported is not None:  # a `python -m jzoo.export` folder
    model = registry.build_model(exported)
    params = loading.load_exported_params(folder, model)
  else:
    config = loading.training_config(folder)
    if config is None and name is not None:
      config = loading.load_config(name)
    if config is None:
      raise CheckpointError(f"{folder!r} holds no model: neither a python -m jzoo.export folder "
                            "(config.json) nor a python -m jzoo.train directory (<stage>/config.json)")
    model = registry.build_model(config)
    params = loading.checkpoint_params(model, folder)
  return model, params, _name_of(model.config, folder)


def _name_of(config, folder):
  """The registered name of a folder's config (family and variant), else the folder's name."""
  variant = config.get("variant", "")
  for name, entry in registry.MODELS.items():
    if entry.config == f"{config.model}:{variant}":
      return name
  return os.path.basename(os.path.normpath(folder))


def _same_family(model, name):
  return registry.get_entry(name).config.split(":")[0] == model.config.model


def _random_params(model, seed):
  return {s: params_lib.random_params(model, s, jax.random.PRNGKey(seed)) for s in model.stages}


def generate(model, params, prompts, *, num=1, seed=0, steps=None, guidance=None, batch_size=16,
             story=False, start=None, name=None, tokenizer=None):
  """A list of uint8 arrays, one per output, in prompt-major order (`Pipeline.__call__`).
  `tokenizer`: the model's, when the caller holds it loaded."""
  name = name or type(model).__name__
  if story:
    model.require(base.STORY, name, "; give one prompt at a time")
  if start is not None:
    model.require(base.IMAGE_TO_VIDEO if len(start) == 1 and model.can(base.IMAGE_TO_VIDEO)
                  else base.VIDEO_PREDICTION, name, "; drop the start frames")
    model.check_start_frames(np.shape(start))
  tokenizer = tokenizer or model.text_tokenizer()
  base.check_prompts(prompts, model.text_length, tokenizer)
  steps, guidance = _sampler_settings(model, steps, guidance)
  gen = functools.partial(_jitted_generate(compiler.ynn_fusions_of(model.config)), model)
  key = jax.random.PRNGKey(seed)
  start_frames = None if start is None else jnp.asarray(start, jnp.float32)[None] / 127.5 - 1.0

  def request(tokens, mask, extra):
    if start_frames is not None:
      extra = dict(extra, frames=jnp.broadcast_to(start_frames,
                                                  (len(tokens), *start_frames.shape[1:])))
    return base.Request(tokens=jnp.asarray(tokens), mask=jnp.asarray(mask), steps=steps,
                        guidance=guidance, extra=extra)

  if story:
    tokens, mask = tokenizer.encode_batch(prompts, model.text_length)
    story_prompts = {"story_tokens": jnp.asarray(tokens[1:, None]),
                     "story_mask": jnp.asarray(mask[1:, None])}
    return [np.asarray(gen(params, request(tokens[:1], mask[:1], story_prompts), key))[0]]

  flat = [p for p in prompts for _ in range(num)]
  bs = min(batch_size, len(flat))
  outputs = []
  for b, first in enumerate(range(0, len(flat), bs)):
    chunk = flat[first:first + bs]
    padded = chunk + [chunk[-1]] * (bs - len(chunk))  # one shape: no recompilation
    tokens, mask = tokenizer.encode_batch(padded, model.text_length)
    out = np.asarray(gen(params, request(tokens, mask, {}), jax.random.fold_in(key, b)))
    outputs.extend(out[:len(chunk)])
  return outputs


@functools.lru_cache(maxsize=None)
def _jitted_generate(ynn_fusions=""):
  """One jitted generate for all models with the same XLA CPU options; the model is static
  (models hash by their config)."""
  return compiler.jit(lambda model, params, request, rng: model.generate(params, request, rng),
                      static_argnums=0, ynn_fusions=ynn_fusions)

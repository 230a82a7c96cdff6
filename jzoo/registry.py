"""Model names -> config, pipeline (model class) and bundled weights.

A bundled model lives in `jzoo/assets/models/<name>/`: `config.json` (the
config it was trained with) and one `<stage>.safetensors` per stage (EMA
parameters, stored as float16 and loaded as float32), written by
`python -m jzoo.export` from a training directory.
"""

import dataclasses
import functools
import importlib
import json
import os

import jax
import ml_collections
import numpy as np

from jzoo import config as config_lib
from jzoo.errors import CheckpointError, ConfigError, UserError
from jzoo.io import tree_files

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")


@dataclasses.dataclass(frozen=True)
class Entry:
  name: str
  config: str  # "family:variant" of a packaged config
  description: str = ""

  @property
  def weights_dir(self):
    return os.path.join(ASSETS, "models", self.name)

  @property
  def bundled(self):
    return os.path.isfile(os.path.join(self.weights_dir, "config.json"))


MODELS = {e.name: e for e in [
    Entry("imagen-tiny-shapes", "imagen:tiny_shapes", "Imagen cascade (T5 + 32px base + 64px SR) on shapes"),
    Entry("imagen-micro", "imagen:micro", "Imagen micro cascade for tests and smoke runs"),
    Entry("phenaki-tiny-shapes", "phenaki:tiny_shapes",
          "Phenaki (T5 + C-ViViT + MaskGIT) on moving_shapes, 16 frames at 32px, story mode"),
    Entry("phenaki-micro", "phenaki:micro", "Phenaki micro model for tests and smoke runs"),
    Entry("nuwa-tiny-shapes", "nuwa:tiny_shapes",
          "NUWA (VQ-GAN + 3D Nearby Attention encoder-decoder) on moving_shapes, 16 frames at 32px"),
    Entry("nuwa-micro", "nuwa:micro", "NUWA micro model for tests and smoke runs"),
]}

DEFAULT_MODEL = "imagen-tiny-shapes"


def get_entry(name):
  if name not in MODELS:
    raise UserError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}")
  return MODELS[name]


def build_model(config):
  """The Model object of a config (`jzoo.models.<config.model>.build(config)`)."""
  # A bare name is a zoo family (jzoo.models.<name>); a dotted path is the user's own model module.
  module_name = config.model if "." in config.model else f"jzoo.models.{config.model}"
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name != module_name:
      raise
    raise ConfigError(f"config.model {config.model!r} is not a jzoo model family or an importable "
                      "module with a build(config) function") from None
  return module.build(config)


def load_config(name):
  """The config of a registered model: the bundled config.json when weights are bundled."""
  entry = get_entry(name)
  if entry.bundled:
    with open(os.path.join(entry.weights_dir, "config.json")) as f:
      return config_from_json(f.read())
  return config_lib.load(entry.config)


def config_from_json(text):
  data = json.loads(text)
  config = ml_collections.ConfigDict(_tuplify(data))
  config.lock()
  return config


def training_config(model_dir):
  """The config a training directory ran with (the first `<stage>/config.json`), or None."""
  for name in sorted(os.listdir(model_dir)):
    path = os.path.join(model_dir, name, "config.json")
    if os.path.isfile(path):
      with open(path) as f:
        return config_from_json(f.read())
  return None


def _tuplify(x):
  # JSON turns tuples (axis rules, channel multipliers) into lists; configs use tuples.
  if isinstance(x, dict):
    return {k: _tuplify(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(_tuplify(v) for v in x)
  return x


def load_bundled_params(name, model):
  return load_exported_params(get_entry(name).weights_dir, model)


def exported_config(folder):
  """The config of a `python -m jzoo.export` folder (config.json beside <stage>.safetensors),
  or None when `folder` is not one."""
  path = os.path.join(folder, "config.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return config_from_json(f.read())


def init_folder(config, keys=("init_from", "frozen_from")):
  """The export folder (a bundled model or a folder written by python -m jzoo.export) that the
  first set of `config.train.<keys>` names, or None. With the default keys: where the stages not
  trained in the workdir come from."""
  train = config.train if "train" in config else {}
  key = next((k for k in keys if train.get(k, "")), None)
  if key is None:
    return None
  source = train[key]
  if source in MODELS and MODELS[source].bundled:
    return MODELS[source].weights_dir
  if exported_config(source) is None:
    raise UserError(f"train.{key} {source!r} is neither a bundled model nor a folder written "
                    "by python -m jzoo.export (config.json + <stage>.safetensors)")
  return source


def stage_origin(model_dir, stage, config, otherwise):
  """Which weights a frozen `stage` has for a model in `model_dir`, in words (its latest checkpoint
  there, else the export `train.init_from`/`frozen_from` names): a cache of what the stage
  computes records it, and training checks it, so a retrained stage's cache is not read by
  mistake. `otherwise`: how else to give the stage, for the error when it has neither."""
  from jzoo.training import checkpoint
  step = checkpoint.latest_step(model_dir, stage)
  if step is not None:
    return f"{stage} checkpoint step {step}"
  folder = init_folder(config)
  if folder:
    return "export " + os.path.abspath(folder)
  raise CheckpointError(f"no {stage} checkpoint in {os.path.abspath(model_dir)}; train it first "
                        f"(--config.stage={stage}) or {otherwise}")


def load_exported_stage(folder, stage):
  """One stage's params from an export folder, or None when it has none."""
  path = os.path.join(folder, f"{stage}.safetensors")
  return tree_files.load_tree(path) if os.path.isfile(path) else None


def stage_params(model_dir, stage, config):
  """EMA params of `stage`: its latest checkpoint in `model_dir`, else (a stage not trained
  there) the export folder of `config.train.init_from` or `frozen_from`."""
  from jzoo.training import checkpoint
  try:
    return checkpoint.load_params(model_dir, stage)
  except CheckpointError:
    folder = init_folder(config)
    params = load_exported_stage(folder, stage) if folder else None
    if params is None:
      raise
    return params


def load_exported_params(folder, model):
  params = {stage: load_exported_stage(folder, stage) for stage in model.stages}
  return {stage: p for stage, p in params.items() if p is not None}


def export_bundle(model_dir, name, stages, config, out_dir=None):
  """Writes config.json + <stage>.safetensors (EMA params) for `stages` from a training dir."""
  from jzoo.training import checkpoint
  out_dir = out_dir or os.path.join(ASSETS, "models", name)
  os.makedirs(out_dir, exist_ok=True)
  for stage in stages:
    # float16 on disk keeps bundled models a few MB; they load back as float32.
    tree_files.save_tree(os.path.join(out_dir, f"{stage}.safetensors"),
                         stage_params(model_dir, stage, config), dtype=np.float16)
  # Every stage is in the bundle: it stands alone, without the training machine's exports and
  # caches.
  config = config_lib.with_overrides(
      config, [f"train.{k}=" for k in ("init_from", "frozen_from") if config.train.get(k)]
      + [f"{s}.cache=" for s in ("text_encoder", "tokenizer") if config.get(s, {}).get("cache")])
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    f.write(config.to_json(indent=2))
  return out_dir


def abstract_params(model, stage, rng=None):
  """ShapeDtypeStructs of a stage's parameters, built without allocating anything."""
  import flax.linen as nn
  batch = abstract_batch(model, stage)
  rng = jax.random.PRNGKey(0) if rng is None else rng
  variables = jax.eval_shape(lambda r, b: model.init(stage, r, b), rng, batch)
  return nn.unbox(variables["params"])


def abstract_batch(model, stage, batch_size=1):
  spec = model.data_spec(stage)
  if spec.codes:  # a frozen tokenizer's cached codes instead of pixels
    pixels = ("codes", (batch_size, *spec.codes), np.int32)
  elif spec.frames:
    pixels = ("video", (batch_size, spec.frames, spec.resolution, spec.resolution, 3), np.float32)
  else:
    pixels = ("image", (batch_size, spec.resolution, spec.resolution, 3), np.float32)
  if spec.text_width:
    text = ("text", jax.ShapeDtypeStruct((batch_size, spec.text_length, spec.text_width), np.float32))
  else:
    text = ("tokens", jax.ShapeDtypeStruct((batch_size, spec.text_length), np.int32))
  return {
      pixels[0]: jax.ShapeDtypeStruct(pixels[1], pixels[2]),
      text[0]: text[1],
      "mask": jax.ShapeDtypeStruct((batch_size, spec.text_length), np.int32),
  }


@functools.lru_cache(maxsize=None)
def parameter_count(name):
  from jzoo.models.base import count_params
  model = build_model(load_config(name))
  return sum(count_params(abstract_params(model, s)) for s in model.stages)


def random_params(model, stage, rng):
  """Freshly initialised parameters of a stage (smoke tests; no training)."""
  return _jitted_init()(model, stage, rng)


@functools.lru_cache(maxsize=None)
def _jitted_init():
  import flax.linen as nn
  import jax.numpy as jnp

  def init(model, stage, rng):
    batch = {k: jnp.zeros(v.shape, v.dtype) for k, v in abstract_batch(model, stage).items()}
    return nn.unbox(model.init(stage, rng, batch)["params"])

  return jax.jit(init, static_argnums=(0, 1))

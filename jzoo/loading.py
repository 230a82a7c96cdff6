"""Configs and weights on disk: bundled models, `python -m jzoo.export` folders and training
directories, and writing export bundles.

A bundled model lives in `jzoo/assets/models/<name>/`: `config.json` (the config it was trained
with) and one `<stage>.safetensors` per stage (EMA parameters, stored as float16 and loaded as
float32), written by `python -m jzoo.export` from a training directory. Old bundles' configs are
brought up to today's keys once, here, by `jzoo.config.migrate`.
"""

import functools
import json
import os

import ml_collections
import numpy as np

from jzoo import config as config_lib
from jzoo import registry
from jzoo.errors import CheckpointError, UserError
from jzoo.io import checkpoint, tree_files
from jzoo.models import params as params_lib


def load_config(name):
  """The config of a registered model: the bundled config.json when weights are bundled."""
  entry = registry.get_entry(name)
  if entry.bundled:
    with open(os.path.join(entry.weights_dir, "config.json")) as f:
      return config_from_json(f.read())
  return config_lib.load(entry.config)


def config_from_json(text):
  data = json.loads(text)
  config = ml_collections.ConfigDict(_tuplify(config_lib.migrate(data)))
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
  return load_exported_params(registry.get_entry(name).weights_dir, model)


def exported_config(folder):
  """The config of a `python -m jzoo.export` folder (config.json beside <stage>.safetensors),
  or None when `folder` is not one."""
  path = os.path.join(folder, "config.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return config_from_json(f.read())


# Folders of public weights that a zoo config imports whole: {file that marks the layout:
# (the config, its key that takes the folder)}. The config's model checks the folder.
IMPORTED_LAYOUTS = {"model_index.json": ("dalle2:karlo", "karlo.folder")}


def imported_config(folder):
  """The config that imports `folder` (a diffusers pipeline folder: dalle2:karlo with
  `karlo.folder` set), or None when it is no such folder."""
  for marker, (name, key) in IMPORTED_LAYOUTS.items():
    if os.path.isfile(os.path.join(folder, marker)):
      return config_lib.load(name, [f"{key}={os.path.abspath(folder)}"])
  return None


def init_folder(config, keys=("init_from", "frozen_from")):
  """The export folder (a bundled model or a folder written by python -m jzoo.export) that the
  first set of `config.train.<keys>` names, or None. With the default keys: where the stages not
  trained in the workdir come from."""
  train = config.train if "train" in config else {}
  key = next((k for k in keys if train.get(k, "")), None)
  if key is None:
    return None
  source = train[key]
  if source in registry.MODELS and registry.MODELS[source].bundled:
    return registry.MODELS[source].weights_dir
  if exported_config(source) is None:
    raise UserError(f"train.{key} {source!r} is neither a bundled model nor a folder written "
                    "by python -m jzoo.export (config.json + <stage>.safetensors)")
  return source


# How else a model gets a frozen stage it has not trained: the end of stage_origin's error.
FROZEN_FROM = "start from an export (--config.train.frozen_from=EXPORT)"


def stage_origin(model_dir, stage, config, otherwise):
  """Which weights a frozen `stage` has for a model in `model_dir`, in words (its latest checkpoint
  there, else the export `train.init_from`/`frozen_from` names): a cache of what the stage
  computes records it, and training checks it, so a retrained stage's cache is not read by
  mistake. `otherwise`: how else to give the stage, for the error when it has neither."""
  step = checkpoint.latest_step(model_dir, stage)
  if step is not None:
    return f"{stage} checkpoint step {step}"
  folder = init_folder(config)
  if folder:
    return "export " + os.path.abspath(folder)
  raise CheckpointError(f"no {stage} checkpoint in {os.path.abspath(model_dir)}; train it first "
                        f"({checkpoint.train_command(stage, model_dir, config)}) or {otherwise}")


def load_exported_stage(folder, stage):
  """One stage's params from an export folder, or None when it has none."""
  path = os.path.join(folder, f"{stage}.safetensors")
  return tree_files.load_tree(path) if os.path.isfile(path) else None


def stage_params(model_dir, stage, config):
  """EMA params of `stage`: its latest checkpoint in `model_dir`, else (a stage not trained
  there) the export folder of `config.train.init_from` or `frozen_from`."""
  try:
    return checkpoint.load_params(model_dir, stage, config=config)
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
  out_dir = out_dir or registry.get_entry(name).weights_dir
  os.makedirs(out_dir, exist_ok=True)
  for stage in stages:
    # float16 on disk keeps bundled models a few MB; they load back as float32.
    tree_files.save_tree(os.path.join(out_dir, f"{stage}.safetensors"),
                         stage_params(model_dir, stage, config), dtype=np.float16)
  # Every stage is in the bundle: it stands alone, without the training machine's exports and
  # frozen-output caches (every config key a stage's DataSpec inputs name).
  model = registry.build_model(config)
  cache_keys = sorted({i.config_key for s in model.stages for i in model.data_spec(s).inputs})
  config = config_lib.with_overrides(
      config, [f"train.{k}=" for k in ("init_from", "frozen_from", "teacher_from") if config.train.get(k)]
      + [f"{key}=" for key in cache_keys if config_value(config, key)])
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    f.write(config.to_json(indent=2))
  return out_dir


def frozen_params(model, stage, model_dir):
  """One frozen stage's parameters: from the weight files the config names when the model has
  them (`model.external_weights`: public T5 weights, the perceptual network), else the stage's
  checkpoint in `model_dir`, else the export `train.init_from`/`frozen_from` names."""
  params = model.external_weights(stage)
  return params if params is not None else stage_params(model_dir, stage, model.config)


def load_frozen(model, stage, model_dir):
  """Parameters of `model.frozen_stages(stage)`, by stage name."""
  return {dep: frozen_params(model, dep, model_dir) for dep in model.frozen_stages(stage)}


def text_encoder_origin(model, model_dir):
  """Which weights a model's frozen text encoder has, in words (public weights it imports, or
  its stage's origin): a text-embedding cache records it and training checks it."""
  from jzoo.text.frozen import TEXT_ENCODER
  return model.text_encoder.source() or stage_origin(model_dir, TEXT_ENCODER, model.config,
                                                     "set --config.text_encoder.weights")


def config_value(config, key):
  """The value of a dotted config key ("tokenizer.cache"), or None where the config lacks it."""
  value = config
  for part in filter(None, str(key).split(".")):
    if not hasattr(value, "keys") or part not in value:
      return None
    value = value[part]
  return value


def tokenizer_name(name_or_path):
  """A text tokenizer in words: a packaged name as is, a file as its absolute path."""
  from jzoo.text.tokenizer import PACKAGED
  name = str(name_or_path)
  return name if name in PACKAGED else os.path.abspath(os.path.expanduser(name))


def input_provenance(model, input, model_dir, config, dataset):
  """What a frozen-output cache of `input` (a `jzoo.stage.Input` of the trained stage's
  DataSpec) must have been made from, for `FrozenCache.check` (the cache CLIs record the same):

    source         the producing stage's weights, in words (text_encoder_origin / stage_origin)
    tokenizer      caption-keyed: the text tokenizer (the rows' token masks are its)
    dataset/split  example-keyed: the examples the rows are (training reads "train")
    codebook_size  where the producing stage's config block has one (the codes' range)
  """
  from jzoo.text.frozen import TEXT_ENCODER
  if input.stage == TEXT_ENCODER and getattr(model, "text_encoder", None) is not None:
    source = text_encoder_origin(model, model_dir)
  else:
    source = stage_origin(model_dir, input.stage, config, FROZEN_FROM)
  provenance = {"source": source}
  if input.keyed_by == "caption":
    provenance["tokenizer"] = tokenizer_name(config.text.tokenizer)
  else:
    provenance.update(dataset=str(dataset), split="train")
  block = config_value(config, input.config_key.rpartition(".")[0])
  if block is not None and hasattr(block, "keys") and "codebook_size" in block:
    provenance["codebook_size"] = int(block.codebook_size)
  return provenance


def checkpoint_params(model, model_dir):
  """Every stage's EMA params from a training directory. A stage without a checkpoint there (a
  frozen text encoder imported from public weights) comes from the export named by
  `train.init_from`, or from the weight files its config names."""
  params = {}
  for stage in model.stages:
    try:
      params[stage] = stage_params(model_dir, stage, model.config)
    except CheckpointError:
      external = model.external_weights(stage)
      if external is None:
        raise
      params[stage] = external
  return params


@functools.lru_cache(maxsize=None)
def parameter_count(name):
  model = registry.build_model(load_config(name))
  return sum(params_lib.count_params(params_lib.abstract_params(model, s)) for s in model.stages)

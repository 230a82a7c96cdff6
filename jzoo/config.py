"""Loading ml_collections configs: `FILE.py:VARIANT` or a packaged `NAME:VARIANT`, plus overrides.

  load("configs/imagen.py:micro")            # a file in a checkout
  load("imagen:micro")                        # the packaged jzoo.configs.imagen (works from a wheel)
  load("imagen:micro", ["train.steps=100"])   # --config.train.steps=100
"""

import ast
import importlib
import importlib.util
import os

import ml_collections

from jzoo.errors import ConfigError


def _import_config_module(ref):
  if ref.endswith(".py") or os.sep in ref:
    if not os.path.isfile(ref):
      raise ConfigError(f"config file {ref!r} does not exist; pass FILE.py:VARIANT or NAME:VARIANT "
                        f"with NAME one of {packaged_configs()}")
    spec = importlib.util.spec_from_file_location(f"_jzoo_config_{abs(hash(ref))}", ref)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
  try:
    return importlib.import_module(f"jzoo.configs.{ref}")
  except ModuleNotFoundError as e:
    if e.name != f"jzoo.configs.{ref}":
      raise
    raise ConfigError(f"no packaged config {ref!r}; choose one of {packaged_configs()} "
                      "or pass a file path like configs/imagen.py:micro") from None


def packaged_configs():
  import jzoo.configs
  folder = os.path.dirname(jzoo.configs.__file__)
  return sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py") and not f.startswith("_"))


def load(spec, overrides=()):
  """Returns the locked ConfigDict named by `spec` with `overrides` ("a.b=value") applied."""
  ref, _, variant = spec.partition(":")
  module = _import_config_module(ref)
  try:
    config = module.get_config(variant or None)
  except (KeyError, ValueError) as e:
    raise ConfigError(f"config {ref!r} has no variant {variant!r}: {e}") from None
  config = ml_collections.ConfigDict(config)
  # `--config.stage=X` rebuilds the config as VARIANT,stage=X where the config file supports it,
  # so that stage-specific defaults (steps, batch size, learning rate) apply under the overrides.
  stages = [o.partition("=")[2] for o in overrides if o.startswith("stage=")]
  if stages and "stage=" not in variant:
    base = variant or config.get("variant", "")
    try:
      config = ml_collections.ConfigDict(module.get_config(f"{base},stage={stages[-1]}"))
    except (KeyError, ValueError) as e:
      raise ConfigError(f"config {ref!r}: {e}") from None
  with config.unlocked():
    config.config_ref = f"{ref}:{variant}" if variant else ref
  apply_overrides(config, overrides)
  _follow_stage_train_overrides(config, overrides)
  config.lock()
  return config


# A stage's training block (configs/_common.py:stage_train) -> the keys it sets for the run.
_STAGE_TRAIN_KEYS = {"steps": "train.steps", "batch_size": "train.batch_size",
                     "lr": "optim.lr", "warmup_steps": "optim.warmup_steps"}


def _follow_stage_train_overrides(config, overrides):
  """An override of the running stage's own training block (`tokenizer.train.batch_size=32`
  while training `tokenizer`) reaches the run, as that block's defaults did; a direct
  `train.*` / `optim.*` override still wins."""
  stage = config.get("stage")
  if not stage:
    return
  prefixes = (f"stages.{stage}.train.", f"{stage}.train.")
  explicit = {o.partition("=")[0] for o in overrides}
  for item in overrides:
    key, _, text = item.partition("=")
    for prefix in prefixes:
      target = _STAGE_TRAIN_KEYS.get(key[len(prefix):]) if key.startswith(prefix) else None
      if target and target not in explicit:
        apply_overrides(config, [f"{target}={text}"])


def _parse_value(text, current):
  if isinstance(current, str):
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  if isinstance(current, bool) and isinstance(value, str):
    if value.lower() in ("true", "false"):
      return value.lower() == "true"
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if isinstance(current, tuple) and isinstance(value, list):
    return tuple(value)
  return value


def apply_overrides(config, overrides):
  """Applies "a.b.c=value" strings in place. Unknown keys and wrong types are ConfigErrors."""
  for item in overrides:
    key, eq, text = item.partition("=")
    if not eq:
      raise ConfigError(f"override {item!r} needs the form --config.KEY=VALUE")
    *parents, leaf = key.split(".")
    node = config
    for i, name in enumerate(parents):
      if not isinstance(node, ml_collections.ConfigDict) or name not in node:
        raise ConfigError(f"unknown config key {'.'.join(parents[:i + 1])!r} in --config.{item}")
      node = node[name]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      known = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else ""
      raise ConfigError(f"unknown config key {key!r} in --config.{item}; known keys here: {known}")
    current = node[leaf]
    value = _parse_value(text, current)
    try:
      with node.ignore_type() if current is None else _nullcontext():
        node[leaf] = value
    except TypeError as e:
      raise ConfigError(f"--config.{item}: {e}") from None


def stage_train_defaults(config, stage):
  """The per-stage training block (steps, batch_size, lr, warmup_steps) a family's config keeps
  for `stage` (`config.stages.<stage>.train` or `config.<stage>.train`), or None."""
  stages = config.get("stages")
  if stages is not None and stage in stages and "train" in stages[stage]:
    return stages[stage].train
  block = config.get(stage)
  if isinstance(block, ml_collections.ConfigDict) and "train" in block:
    return block.train
  return None


def with_overrides(config, overrides):
  """A copy of `config` with "a.b=value" overrides applied (the original is untouched)."""
  new = config.copy_and_resolve_references()
  with new.unlocked():
    apply_overrides(new, overrides)
  return new


class _nullcontext:
  def __enter__(self):
    return None

  def __exit__(self, *a):
    return False


def split_config_overrides(argv):
  """Splits `--config.a.b=v` / `--config.a.b v` arguments from the rest of argv."""
  rest, overrides = [], []
  i = 0
  argv = list(argv)
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--config."):
      body = arg[len("--config."):]
      if "=" not in body:
        if i + 1 >= len(argv):
          raise ConfigError(f"{arg} needs a value: {arg}=VALUE")
        body = f"{body}={argv[i + 1]}"
        i += 1
      overrides.append(body)
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


# Keys added to a family's config after models of it were exported, with the values that keep an
# older export's behaviour. `migrate` adds them once, when a config is read from disk, so model
# code reads every key directly. ("*" in a path: every block at that level.)
_TOKENIZER_LOSS = {
    "tokenizer.reconstruction_loss": "l2", "tokenizer.codebook_ema": 0.0,
    "tokenizer.perceptual_weight": 0.0, "tokenizer.perceptual_weights": "",
    "tokenizer.adversarial_weight": 0.0, "tokenizer.adversarial_start": 0,
    "tokenizer.discriminator_channels": 64, "tokenizer.discriminator_layers": 3,
}
ADDED_KEYS = {
    "imagen": {"text_encoder.cache": "", "stages.*.text_positions": False},
    "phenaki": {"text_encoder.cache": "", "tokenizer.cache": "", **_TOKENIZER_LOSS,
                "transformer.text_positions": False, "sample.candidates": 1, "sample.cpu_rows": 0},
    "nuwa": {**_TOKENIZER_LOSS, "transformer.condition_frames": 0,
             "transformer.condition_layers": 0, "transformer.condition_radius": (1, 1, 1)},
    "cogview2": {"sr.text": False, "coglm.text_drop": 0.0},
    "dalle2": {"clip.hard_negatives": False, "stages.*.variance": "fixed",
               "stages.*.vlb_weight": 0.001},
}


def migrate(data):
  """A config read from disk (a plain dict, e.g. an old bundle's config.json) brought up to
  today's keys: the keys every config shares from `configs._common.base_config`, the family's
  from ADDED_KEYS. Keys it has are kept; returns a new dict."""
  from jzoo.configs import _common
  data = _merge_missing(data, _common.base_config(data.get("model", ""), data.get("stage", "")).to_dict())
  for path, value in ADDED_KEYS.get(data.get("model"), {}).items():
    _add(data, path.split("."), value)
  return data


def _merge_missing(data, defaults):
  out = dict(data)
  for key, value in defaults.items():
    if key not in out:
      out[key] = value
    elif isinstance(value, dict) and isinstance(out[key], dict):
      out[key] = _merge_missing(out[key], value)
  return out


def _add(block, path, value):
  head, rest = path[0], path[1:]
  targets = list(block.values()) if head == "*" else [block[head]] if head in block else []
  if not rest:
    if head != "*":
      block.setdefault(head, value)
    return
  for target in targets:
    if isinstance(target, dict):
      _add(target, rest, value)


def build(cls, block, **given):
  """`cls(...)` (a flax module, any dataclass) from a config block: every field of `cls` the block
  has is read from it, so a new key is one line in the config and one field in the module. `given`
  supplies the fields the block names differently or lacks (dtype, a size from another block) and
  wins over the block. Lists become tuples (module fields must hash)."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  kwargs = {}
  for field in dataclasses.fields(cls):
    if field.name in ("parent", "name") or not field.init:
      continue
    if field.name in given:
      kwargs[field.name] = given.pop(field.name)
    elif field.name in block:
      value = block[field.name]
      kwargs[field.name] = tuple(value) if isinstance(value, (list, tuple)) else value
    elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
      raise ConfigError(f"the config has no {field.name!r} for {cls.__name__}; add it to the "
                        "model's config block")
  if given:
    raise TypeError(f"{cls.__name__} has no field {sorted(given)[0]!r}")
  return cls(**kwargs)

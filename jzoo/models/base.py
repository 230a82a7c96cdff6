"""The one contract every system of the zoo implements.

A `Model` is built from its config. The CLIs (`jzoo.train`, `jzoo.sample`,
`jzoo.evaluate`, `jzoo.bench`, `jzoo.plan`) only ever talk to this interface:

  model = build_model(config)
  model.stages                       # trainable stages in training order, e.g. ("base", "sr64")
  model.stage_table[stage]           # its jzoo.stage.Stage: data spec, init, loss, frozen stages
  model.data_spec(stage)             # what the stage trains on (jzoo.stage.DataSpec)
  variables = model.init(stage, rng, batch)          # flax variables, params boxed with logical axis names
  loss, metrics = model.loss(stage, params, batch, rng, frozen)
  pixels = model.generate(params_by_stage, request, rng)   # uint8 [B,H,W,3] or [B,T,H,W,3]

Batches are dicts of arrays whose leading axis is the batch (DataSpec.batch_shapes):
  "image": float32 [B, H, W, 3] in [-1, 1]   (image datasets)
  "video": float32 [B, T, H, W, 3] in [-1, 1] (video datasets)
  "tokens": int32 [B, L]   sentencepiece ids of the caption, 0-padded
  "mask":   int32 [B, L]   1 where a token is real
plus the arrays of the spec's `inputs`, computed by other, frozen stages and read from their
caches ("text" [B, L, D] embeddings, "codes" [B, t, h, w], ...).

`frozen` holds the parameters of the stages this stage depends on but does
not train (a text encoder, a visual tokenizer): no gradients, no optimizer
state. `frozen_stages(stage)` names them; `jzoo.loading.load_frozen` loads them.
`capabilities` declares what `generate` serves (text-to-video, story, ...).
"""

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from jzoo.errors import CapabilityError, ConfigError, PromptError
from jzoo.stage import (DataSpec, Input, Stage, code_cache_input,  # noqa: F401  (the contract)
                        text_cache_input)

# What a model can generate: it declares its capabilities (`Model.capabilities`) and the CLIs and
# `jzoo.load` pipelines dispatch on them, so a request it cannot serve is a one-line error.
TEXT_TO_IMAGE = "text-to-image"
TEXT_TO_VIDEO = "text-to-video"
IMAGE_TO_VIDEO = "image-to-video"          # request.extra["frames"]: one given first frame
VIDEO_PREDICTION = "video-prediction"      # request.extra["frames"]: the first F frames
STORY = "story"                            # request.extra["story_tokens"/"story_mask"]
INFILL = "infill"                          # request.extra["known"/"known_mask"]: given regions
VARIATIONS = "image-variations"            # new images from an image's embedding (unCLIP)
INTERPOLATION = "interpolation"            # between two prompts or images
RECONSTRUCT = "reconstruct"                # a visual tokenizer's round trip (model.reconstruct)
REGION_EDIT = "region-edit"                # request.extra["known"] pixels + ["region"] bool
                                           # [B, H, W]: the region redrawn under the caption, the
                                           # rest kept (CogView2's text-guided editing)
CAPABILITIES = (TEXT_TO_IMAGE, TEXT_TO_VIDEO, IMAGE_TO_VIDEO, VIDEO_PREDICTION, STORY, INFILL,
                VARIATIONS, INTERPOLATION, RECONSTRUCT, REGION_EDIT)


@dataclasses.dataclass
class Request:
  """A generation request. Arrays only, so that `generate` jits; options are traced scalars.

  tokens/mask: [B, L] for the prompts (B samples). `story_tokens`/`story_mask`
  ([S, B, L]) hold further prompts for systems with story mode. `steps` and
  `guidance` are traced, so changing them does not recompile.
  """
  tokens: Any
  mask: Any
  steps: Any = None
  guidance: Any = None
  extra: dict = dataclasses.field(default_factory=dict)


jax.tree_util.register_dataclass(
    Request, data_fields=["tokens", "mask", "steps", "guidance", "extra"], meta_fields=[])


class Model:
  """Base class: subclasses set `stage_table` and `capabilities` in `__init__` and implement
  `generate` and `output_shape`."""

  capabilities: frozenset = frozenset({TEXT_TO_IMAGE})
  stage_table: dict = {}  # {stage name: Stage}, in training order

  @property
  def stages(self) -> Sequence[str]:
    """Trainable stages in training order, e.g. ("text_encoder", "base", "sr")."""
    return tuple(self.stage_table)

  @property
  def task(self) -> str:
    """What one sample is: TEXT_TO_VIDEO for a model that makes videos, else TEXT_TO_IMAGE."""
    return TEXT_TO_VIDEO if TEXT_TO_VIDEO in self.capabilities else TEXT_TO_IMAGE

  @property
  def makes_video(self) -> bool:
    return self.task == TEXT_TO_VIDEO

  def can(self, capability) -> bool:
    return capability in self.capabilities

  def require(self, capability, name=None, hint=""):
    """CapabilityError naming what the model can do unless it declares `capability`."""
    if capability not in self.capabilities:
      can = ", ".join(c for c in CAPABILITIES if c in self.capabilities)
      raise CapabilityError(f"model {name or type(self).__name__} cannot do {capability}; it can: "
                            f"{can}{hint}")

  def __init__(self, config):
    self.config = config

  # Models compare equal when their configs do, so `jax.jit(..., static_argnums=model)` reuses
  # compiled programs across instances built from the same config.
  def _key(self):
    return (type(self), self.config.to_json())

  def __eq__(self, other):
    return isinstance(other, Model) and self._key() == other._key()

  def __hash__(self):
    return hash(self._key())

  def _check_stage(self, stage):
    """ConfigError naming the stages when `stage` is not one of this model's."""
    if stage not in self.stages:
      raise ConfigError(f"{type(self).__name__} has no stage {stage!r}; "
                        f"choose one of {list(self.stages)}")

  def stage(self, name) -> Stage:
    self._check_stage(name)
    return self.stage_table[name]

  # --- data ---------------------------------------------------------------
  def data_spec(self, stage) -> DataSpec:
    """What `stage` trains on."""
    return self.stage(stage).data

  @property
  def text_length(self) -> int:
    return int(self.config.text.length)

  def text_tokenizer(self):
    """The prompts' tokenizer: `config.text.tokenizer` (sentencepiece); a model whose imported
    weights bring their own (Karlo's CLIP BPE) returns that."""
    from jzoo.text.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top
    return Tokenizer.load(self.config.text.tokenizer)

  @property
  def output_shape(self):
    """(H, W) for images, (T, H, W) for videos: what `generate` returns per sample."""
    raise NotImplementedError

  # --- training -----------------------------------------------------------
  def init(self, stage, rng, batch):
    """Returns flax variables ({"params": ...}) for `stage`; params carry logical axis names."""
    return self.stage(stage).init(rng, batch)

  def loss(self, stage, params, batch, rng, frozen):
    """Returns (scalar loss, dict of scalar metrics). Pure; jitted by the trainer."""
    return self.stage(stage).loss(params, batch, rng, frozen)

  def frozen_stages(self, stage) -> Sequence[str]:
    """Stages whose parameters `loss(stage, ...)` reads but does not train."""
    return tuple(self.stage(stage).frozen)

  # Stage components (a frozen text encoder, a tokenizer stage) a model holds in `components`
  # answer for the frozen dependencies and weight files they bring.
  components: Sequence[Any] = ()

  def frozen_abstract_params(self, stage):
    """Abstract params of a frozen dependency that is not a stage of this model (the
    tokenizers' perceptual network), else None (the trainer then builds the stage's)."""
    return self._ask_components("frozen_abstract_params", stage)

  def external_weights(self, stage):
    """Parameters of `stage` read from weight files the config names, or None when the stage's
    weights come from training (its checkpoint or an export; `jzoo.loading.frozen_params`):
    public T5 weights for an imported text encoder, the tokenizers' perceptual network."""
    return self._ask_components("external_weights", stage)

  def _ask_components(self, method, stage):
    for component in self.components:
      answer = getattr(component, method)(stage)
      if answer is not None:
        return answer
    return None

  # --- sampling -----------------------------------------------------------
  def default_request_options(self):
    """Defaults for `steps` and `guidance` (the CLI's defaults)."""
    return {"steps": int(self.config.sample.steps), "guidance": float(self.config.sample.guidance)}

  def generate(self, params, request: Request, rng):
    """params: {stage: params}. Returns uint8 [B,H,W,3] (images) or [B,T,H,W,3] (videos)."""
    raise NotImplementedError

  @property
  def axis_rules(self):
    return tuple(tuple(r) for r in self.config.axis_rules)


def cascade_stages(config, example):
  """`config.cascade` as a tuple, each name with its `config.stages` block (a cascaded diffusion
  model's stages, lowest resolution first); `example` names a first stage for the error."""
  cascade = tuple(config.cascade)
  if not cascade:
    raise ConfigError(f"config.cascade is empty; name at least {example}")
  for name in cascade:
    if name not in config.stages:
      raise ConfigError(f"cascade stage {name!r} has no config.stages.{name} block")
  return cascade


def to_uint8(x):
  """[-1, 1] floats to uint8 pixels."""
  return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def check_prompts(prompts, max_tokens, tokenizer):
  """Raises PromptError for empty prompts or prompts longer than the model's text length."""
  for p in prompts:
    if not p or not p.strip():
      raise PromptError("empty prompt: pass a caption such as --prompt 'a small red circle in the center'")
  tokenizer.encode_batch(prompts, max_tokens)  # raises PromptError for a prompt that is too long

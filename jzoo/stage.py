"""What a stage is: the data it trains on (`DataSpec`, with the `Input`s other stages produce)
and its init / loss / frozen dependencies (`Stage`). Models compose stages (jzoo.models.base);
the input pipeline, the caches and the trainer read the specs. Plain dataclasses, importable from
every layer (the text encoders and tokenizers build their own stages)."""

import dataclasses
from typing import Any, Callable, Optional, Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class Input:
  """Arrays a stage's batches carry that another, frozen stage computed once, read from a
  frozen-output cache (jzoo.data.frozen_cache) instead of running that stage in the train step.

  stage:      the stage that produces them ("text_encoder", "tokenizer", "clip", ...)
  keyed_by:   "caption" (one row per distinct caption, looked up by the batch's captions) or
              "example" (one row per example of the train split, read by the example's index)
  arrays:     ((batch key, per-example shape, dtype), ...) as the batch carries them
  config_key: the config key that names the cache folder ("text_encoder.cache")
  command:    the CLI that builds the cache, named in errors
  """
  stage: str
  keyed_by: str
  arrays: tuple
  config_key: str
  command: str

  def __post_init__(self):
    if self.keyed_by not in ("caption", "example"):
      raise ValueError(f"Input.keyed_by must be 'caption' or 'example', got {self.keyed_by!r}")

  @property
  def names(self):
    return tuple(name for name, _, _ in self.arrays)


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """What a stage trains on: the dataset, the pixels' geometry, the text, and the arrays other
  stages produce (`inputs`)."""
  dataset: str  # "shapes", "moving_shapes", "folder:/path/to/dir" or "tfds:NAME[/CONFIG]"
  height: int  # pixels
  width: Optional[int] = None  # None: height (square)
  frames: Optional[int] = None  # None for images
  # Frames per second of the clips; None: the dataset's own rate (sources.py says how each
  # dataset samples a rate).
  fps: Optional[float] = None
  text_length: int = 32  # tokens per caption, padded/truncated-with-error
  pixels: bool = True  # batches carry "image"/"video" (False: an input replaces them, e.g. codes)
  tokens: bool = True  # batches carry the caption's "tokens" and "mask" (False: an input's)
  # Batches also carry "negative_tokens"/"negative_mask": each caption's relation-swapped twin
  # (jzoo.data.shapes.relation_swapped), or the caption itself where it names no relation.
  negatives: bool = False
  inputs: Tuple[Input, ...] = ()

  def __post_init__(self):
    if self.width is None:
      object.__setattr__(self, "width", self.height)

  @property
  def size(self):
    """(height, width) in pixels."""
    return (int(self.height), int(self.width))

  @property
  def resolution(self):
    """The side of a square spec (the shapes datasets render square canvases)."""
    if self.height != self.width:
      raise ValueError(f"this stage trains on {self.height}x{self.width} pixels, not a square")
    return int(self.height)

  def input(self, name):
    """The input that carries the batch key `name`, or None."""
    return next((i for i in self.inputs if name in i.names), None)

  def batch_shapes(self, batch_size=1):
    """{batch key: (shape, dtype)} of one batch of this spec."""
    shapes = {}
    if self.pixels:
      h, w = self.size
      if self.frames:
        shapes["video"] = ((batch_size, self.frames, h, w, 3), np.float32)
      else:
        shapes["image"] = ((batch_size, h, w, 3), np.float32)
    if self.tokens:
      shapes["tokens"] = ((batch_size, self.text_length), np.int32)
      shapes["mask"] = ((batch_size, self.text_length), np.int32)
    if self.negatives:
      shapes["negative_tokens"] = ((batch_size, self.text_length), np.int32)
      shapes["negative_mask"] = ((batch_size, self.text_length), np.int32)
    for i in self.inputs:
      for name, shape, dtype in i.arrays:
        shapes[name] = ((batch_size, *shape), np.dtype(dtype))
    return shapes


def text_cache_input(text_length, width):
  """A frozen text encoder's embeddings of each distinct caption (python -m jzoo.cache_text)."""
  return Input("text_encoder", "caption",
               (("text", (text_length, width), "float32"), ("mask", (text_length,), "int32")),
               "text_encoder.cache", "python -m jzoo.cache_text")


def code_cache_input(grid):
  """A frozen visual tokenizer's codes of each train example (python -m jzoo.cache_codes)."""
  return Input("tokenizer", "example", (("codes", tuple(grid), "int32"),), "tokenizer.cache",
               "python -m jzoo.cache_codes")


@dataclasses.dataclass(frozen=True, eq=False)
class Stage:
  """One trainable stage of a model: what it trains on, its variables, its loss and the frozen
  stages the loss reads. A model composes its stages in `stage_table` (training order), and
  `Model.data_spec / init / loss / frozen_stages` hand each call to the stage's entry, so a model
  has no `if stage == ...` ladders. Components build theirs (FrozenTextEncoder.stage,
  TokenizerStage.stage); a model's own stages point at its methods."""
  data: DataSpec
  init: Callable[..., Any]  # (rng, batch) -> flax variables, params boxed with logical axis names
  loss: Callable[..., Any]  # (params, batch, rng, frozen) -> (scalar loss, dict of metrics)
  frozen: Tuple[str, ...] = ()  # stages (or frozen dependencies) `loss` reads but does not train
  # Why the stage cannot be trained here ("" when it can): its weights only come from files
  # (an imported network), and `loss` raises a ConfigError that says so.
  untrainable: str = ""

"""The zoo's name table: model names -> packaged config, model family and bundled-weights folder.

Reading configs and weights from disk is `jzoo.loading`; a model ready to generate is
`jzoo.load(name)` (`jzoo.pipeline`).
"""

import dataclasses
import importlib
import os

from jzoo.errors import ConfigError, UserError

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
    Entry("dalle2-tiny-shapes", "dalle2:tiny_shapes",
          "DALL-E 2 (unCLIP: CLIP + diffusion prior + 32px decoder + 64px upsampler) on shapes"),
    Entry("dalle2-micro", "dalle2:micro", "DALL-E 2 (unCLIP) micro model for tests and smoke runs"),
    Entry("cogview2-tiny-shapes", "cogview2:tiny_shapes",
          "CogView2 (VQ-GAN + CogLM over 8x8 tokens + local-attention SR to 16x16 + LoPAR) on shapes"),
    Entry("cogview2-micro", "cogview2:micro", "CogView2 micro model for tests and smoke runs"),
    Entry("dalle2-karlo", "dalle2:karlo",
          "Kakao Brain's Karlo unCLIP from your folder in diffusers' layout (--checkpoint DIR)"),
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

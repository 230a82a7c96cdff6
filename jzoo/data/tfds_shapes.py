"""TFDS builders for `shapes` and `moving_shapes` (SHAPES.md), generated locally from `shapes.py`.

Importing this module registers the builders, after which (no TensorFlow
needed; the files are ArrayRecord, read by random access):

  import jzoo.data.tfds_shapes  # registers "shapes" and "moving_shapes"
  builder = tfds.builder("shapes/64px", data_dir=DIR)
  builder.download_and_prepare()          # renders the splits; nothing is downloaded
  test = builder.as_data_source(split="test")
  test[0]  # {"image": uint8 [64,64,3], "caption": str, "form": str, "index": int}
  # or: tfds.data_source("shapes/64px", split="test", data_dir=DIR)

Example `index` of a split equals `shapes.image_example(split, index, S)`
(resp. `video_example`). Configs fix the resolution (and frames) and how many
examples each split holds; `micro` keeps a few of each (a prefix of the
spec's splits) for tests. Other sizes: pass `config=ShapesConfig(...)`.
`tfds.load`/`as_dataset` need TensorFlow, which jzoo does not depend on.
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from jzoo.data import shapes

_CITATION = "jzoo shapes datasets, specification v1 (SHAPES.md)"
_HOMEPAGE = "https://github.com/jzoo/jzoo"


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
  """resolution: canvas side S; frames: clip length (videos); *_size: examples per split."""
  resolution: int = 64
  frames: int = 0
  train_size: int = 100_000
  test_size: int = 2_000
  compositional_size: int = 2_000


def _split_sizes(config):
  return {"train": config.train_size, "test": config.test_size,
          "compositional": config.compositional_size}


def _text():
  return tfds.features.Text()


class _LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Generated on this machine, stored as ArrayRecord (random access without TensorFlow)."""

  # Nothing is downloaded, so there is no checksums file to look up. This also
  # skips tfds 4.9.10's `code_path`, which imports the `importlib_resources`
  # backport that tfds does not install on Python >= 3.9.
  code_path = None

  def __init__(self, **kwargs):
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _pixels_info(self, key, shape):
    """Features: uint8 pixels under `key` ("image" or "video"), caption, form ("one"|"two"), index."""
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            key: tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding="zlib"),
            "caption": _text(),
            "form": _text(),
            "index": tfds.features.Scalar(dtype=np.int64),
        }),
        supervised_keys=None,
        disable_shuffling=True,  # record i of a split is example i
        homepage=_HOMEPAGE,
        citation=_CITATION,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # procedurally generated: nothing to download
    return {split: self._generate_examples(split, n)
            for split, n in _split_sizes(self.builder_config).items()}


class Shapes(_LocalBuilder):
  """Captioned images of coloured shapes: size, position and relation captions (SHAPES.md)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "SHAPES.md specification v1."}
  BUILDER_CONFIGS = [
      ShapesConfig(name="64px", description="64x64 images, 100k train", resolution=64),
      ShapesConfig(name="32px", description="32x32 images, 100k train", resolution=32),
      ShapesConfig(name="128px", description="128x128 images, 100k train", resolution=128),
      ShapesConfig(name="micro", description="16x16, a few examples per split (tests)",
                   resolution=16, train_size=24, test_size=8, compositional_size=8),
  ]
  DEFAULT_CONFIG_NAME = "64px"

  def _info(self):
    s = self.builder_config.resolution
    return self._pixels_info("image", (s, s, 3))

  def _generate_examples(self, split, num):
    s = self.builder_config.resolution
    for i in range(num):
      ex = shapes.image_example(split, i, s)
      yield i, {"image": ex["image"], "caption": ex["caption"], "form": ex["form"], "index": i}


class MovingShapes(_LocalBuilder):
  """Captioned clips of coloured shapes moving left/right/up/down (SHAPES.md)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "SHAPES.md specification v1."}
  BUILDER_CONFIGS = [
      ShapesConfig(name="32px_16f", description="16 frames of 32x32, 50k train", resolution=32,
                   frames=16, train_size=50_000),
      ShapesConfig(name="64px_16f", description="16 frames of 64x64, 50k train", resolution=64,
                   frames=16, train_size=50_000),
      ShapesConfig(name="micro", description="4 frames of 16x16, a few examples per split (tests)",
                   resolution=16, frames=4, train_size=12, test_size=4, compositional_size=4),
  ]
  DEFAULT_CONFIG_NAME = "32px_16f"

  def _info(self):
    c = self.builder_config
    return self._pixels_info("video", (c.frames, c.resolution, c.resolution, 3))

  def _generate_examples(self, split, num):
    c = self.builder_config
    for i in range(num):
      ex = shapes.video_example(split, i, c.resolution, c.frames)
      yield i, {"video": ex["video"], "caption": ex["caption"], "form": ex["form"], "index": i}

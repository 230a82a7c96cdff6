"""TFDS builders for shapes / moving_shapes: prepared locally, read back equal to shapes.py."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jzoo.data import shapes
from jzoo.data import sources
from jzoo.data import tfds_shapes
from jzoo.errors import DataError


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("tfds")
  for name in ("shapes/micro", "moving_shapes/micro"):
    tfds.builder(name, data_dir=str(path)).download_and_prepare()
  return str(path)


def _text(x):
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def test_registered():
  assert tfds.builder_cls("shapes") is tfds_shapes.Shapes
  assert tfds.builder_cls("moving_shapes") is tfds_shapes.MovingShapes


def test_shapes_micro_equals_renderer(data_dir):
  builder = tfds.builder("shapes/micro", data_dir=data_dir)
  assert builder.is_prepared()
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
      "train": 24, "test": 8, "compositional": 8}
  for split in ("train", "test", "compositional"):
    source = builder.as_data_source(split=split)
    for i in range(len(source)):
      ex, ref = source[i], shapes.image_example(split, i, 16)
      assert int(ex["index"]) == i
      assert ex["image"].dtype == np.uint8 and ex["image"].shape == (16, 16, 3)
      np.testing.assert_array_equal(ex["image"], ref["image"])
      assert _text(ex["caption"]) == ref["caption"] and _text(ex["form"]) == ref["form"]


def test_moving_shapes_micro_equals_renderer(data_dir):
  source = tfds.data_source("moving_shapes/micro", split="compositional", data_dir=data_dir)
  assert len(source) == 4
  for i in range(4):
    ex, ref = source[i], shapes.video_example("compositional", i, 16, 4)
    assert ex["video"].shape == (4, 16, 16, 3)
    np.testing.assert_array_equal(ex["video"], ref["video"])
    assert _text(ex["caption"]) == ref["caption"]


def test_custom_config(tmp_path):
  config = tfds_shapes.ShapesConfig(name="custom", resolution=24, train_size=3, test_size=2,
                                    compositional_size=1)
  builder = tfds.builder("shapes", config=config, data_dir=str(tmp_path))
  builder.download_and_prepare()
  ex = builder.as_data_source(split="compositional")[0]
  np.testing.assert_array_equal(ex["image"], shapes.image_example("compositional", 0, 24)["image"])


def test_get_source_tfds(data_dir):
  source = sources.get_source("tfds:shapes/micro", "test", resolution=16, data_dir=data_dir)
  assert len(source) == 8
  ex = source[5]
  assert set(ex) == {"image", "caption"} and isinstance(ex["caption"], str)
  np.testing.assert_array_equal(ex["image"], shapes.image_example("test", 5, 16)["image"])
  # Another resolution is resized (shorter side) and centre-cropped.
  small = sources.get_source("tfds:shapes/micro", "test", resolution=8, data_dir=data_dir)
  assert small[0]["image"].shape == (8, 8, 3)
  train = sources.get_source("tfds:shapes/micro", "train", resolution=16, data_dir=data_dir, train_size=10)
  assert len(train) == 10
  video = sources.get_source("tfds:moving_shapes/micro", "train", resolution=16, frames=4, data_dir=data_dir)
  ex = video[2]
  np.testing.assert_array_equal(ex["video"], shapes.video_example("train", 2, 16, 4)["video"])
  assert ex["caption"] == shapes.video_example("train", 2, 16, 4)["caption"]


def test_get_source_tfds_errors(tmp_path):
  with pytest.raises(DataError, match="no_such_dataset"):
    sources.get_source("tfds:no_such_dataset", "train", resolution=16, data_dir=str(tmp_path))
  # A real registered dataset that is not prepared is never downloaded.
  with pytest.raises(DataError, match="not prepared"):
    sources.get_source("tfds:mnist", "train", resolution=16, data_dir=str(tmp_path))

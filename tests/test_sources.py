"""get_source geometry and timing: size=(H, W) or resolution, fps, and their errors per dataset."""

import os

from etils import epath
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jzoo.data import shapes
from jzoo.data import sources
from jzoo.data import tfds_shapes
from jzoo.errors import DataError


class JzooTestClips(tfds_shapes._LocalBuilder):  # pylint: disable=protected-access
  """Two 6-frame 8x8 clips, frame k grey 40·k, at 4 fps: "rated" says so in a per-example "fps"
  feature, "meta" in its metadata, "norate" nowhere."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n) for n in ("norate", "rated", "meta")]
  pkg_dir_path = epath.Path(os.path.dirname(__file__))  # tests/ is no package for tfds to find

  def _info(self):
    features = {"video": tfds.features.Tensor(shape=(6, 8, 8, 3), dtype=np.uint8),
                "caption": tfds.features.Text()}
    if self.builder_config.name == "rated":
      features["fps"] = tfds.features.Scalar(dtype=np.float32)
    meta = tfds.core.MetadataDict(fps=4.0) if self.builder_config.name == "meta" else None
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(features),
                                          metadata=meta, disable_shuffling=True)

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    video = np.broadcast_to((40 * np.arange(6, dtype=np.uint8))[:, None, None, None], (6, 8, 8, 3))
    for i in range(2):
      ex = {"video": np.ascontiguousarray(video), "caption": f"clip {i}"}
      if self.builder_config.name == "rated":
        ex["fps"] = 4.0
      yield i, ex


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds"))
  for name in ("shapes/micro", "moving_shapes/micro", "jzoo_test_clips/norate",
               "jzoo_test_clips/rated", "jzoo_test_clips/meta"):
    tfds.builder(name, data_dir=path).download_and_prepare()
  return path


def _grey(video):
  return [int(round(f.mean())) for f in video]


def test_size_or_resolution():
  a = sources.get_source("shapes", "test", resolution=16)
  b = sources.get_source("shapes", "test", size=(16, 16))
  assert a.size == b.size == (16, 16) and a.fps is None
  np.testing.assert_array_equal(a[3]["image"], b[3]["image"])
  for kwargs in ({}, {"resolution": 16, "size": (16, 16)}):
    with pytest.raises(TypeError, match="exactly one of resolution"):
      sources.get_source("shapes", "test", **kwargs)
  with pytest.raises(DataError, match="positive"):
    sources.get_source("shapes", "test", size=(16, 0))
  with pytest.raises(DataError, match="fps must be a positive"):
    sources.get_source("moving_shapes", "test", resolution=16, fps=-1)


@pytest.mark.parametrize("dataset", ["shapes", "moving_shapes"])
def test_shapes_are_square(dataset):
  with pytest.raises(DataError) as err:
    sources.get_source(dataset, "test", size=(16, 24))
  message = str(err.value)
  assert "square canvases (SHAPES.md)" in message and "height == width" in message
  assert "16x24" in message and "\n" not in message


def test_moving_shapes_fps():
  # 16 frames by default, i.e. 8 fps: the 2-second clip of SHAPES.md at jzoo's writing rate.
  default = sources.get_source("moving_shapes", "test", resolution=16)
  assert default.frames == 16 and default.fps == 8.0 == 16 / sources.MOVING_SHAPES_SECONDS
  explicit = sources.get_source("moving_shapes", "test", resolution=16, fps=8)
  np.testing.assert_array_equal(default[1]["video"], explicit[1]["video"])
  plain = sources.get_source("moving_shapes", "test", resolution=16, frames=4)
  rated = sources.get_source("moving_shapes", "test", resolution=16, frames=4, fps=2.0)
  assert plain.fps == rated.fps == 2.0
  for i in (0, 5):
    ref = shapes.video_example("test", i, 16, 4)
    for source in (plain, rated):
      np.testing.assert_array_equal(source[i]["video"], ref["video"])
      assert source[i]["caption"] == ref["caption"]
  for frames, fps in ((4, 4), (None, 16), (8, 8)):
    with pytest.raises(DataError) as err:
      sources.get_source("moving_shapes", "test", resolution=16, frames=frames, fps=fps)
    message = str(err.value)
    assert "2-second motion" in message and "frames=8 -> fps=4" in message
    assert "change frames" in message and "\n" not in message
  with pytest.raises(DataError, match="image dataset"):
    sources.get_source("shapes", "test", resolution=16, fps=8)


def test_tfds_size(data_dir):
  # A 16x16 image resized to cover 8x12 (scale 12/16) is 12x12, then centre-cropped to 8 rows.
  source = sources.get_source("tfds:shapes/micro", "test", size=(8, 12), data_dir=data_dir)
  assert source.size == (8, 12) and source.fps is None
  image = shapes.image_example("test", 2, 16)["image"]
  from PIL import Image  # pylint: disable=g-import-not-at-top
  ref = np.asarray(Image.fromarray(image).resize((12, 12), Image.BICUBIC))[2:10]
  np.testing.assert_array_equal(source[2]["image"], ref)
  video = sources.get_source("tfds:moving_shapes/micro", "train", size=(8, 12), frames=4,
                             data_dir=data_dir)
  assert video[0]["video"].shape == (4, 8, 12, 3)


def test_tfds_fps(data_dir):
  # moving_shapes/micro has 4 frames, a 2 s clip: 2 fps. fps=2 gives the stored clip.
  def get(**kwargs):
    return sources.get_source("tfds:moving_shapes/micro", "train", resolution=16,
                              data_dir=data_dir, **kwargs)
  stored = shapes.video_example("train", 1, 16, 4)["video"]
  np.testing.assert_array_equal(get(frames=4, fps=2)[1]["video"], stored)
  np.testing.assert_array_equal(get(frames=4)[1]["video"], stored)
  # 4 fps from 2 fps: times k/4 s, nearest of the frames at 0, .5, 1, 1.5 s (ties to the earlier).
  np.testing.assert_array_equal(get(frames=8, fps=4)[1]["video"], stored[[0, 0, 1, 1, 2, 2, 3, 3]])
  # A per-example "fps" feature or metadata (4 fps; frame k grey 40·k): 2 fps takes every other
  # frame and repeats the last one past the clip's end (1.5 s long).
  for config in ("rated", "meta"):
    rated = sources.get_source(f"tfds:jzoo_test_clips/{config}", "train", resolution=8, frames=5,
                               fps=2, data_dir=data_dir)
    assert rated.fps == 2.0 and _grey(rated[0]["video"]) == [0, 80, 160, 200, 200]
  norate = "tfds:jzoo_test_clips/norate"
  assert _grey(sources.get_source(norate, "train", resolution=8, frames=6,
                                  data_dir=data_dir)[1]["video"]) == [0, 40, 80, 120, 160, 200]
  with pytest.raises(DataError, match="gives no frame rate .* leave fps unset"):
    sources.get_source(norate, "train", resolution=8, frames=6, fps=4, data_dir=data_dir)
  with pytest.raises(DataError, match="video setting"):
    sources.get_source("tfds:shapes/micro", "test", resolution=16, fps=4, data_dir=data_dir)

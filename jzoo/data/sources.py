"""Random-access example sources, the input pipeline's view of every dataset.

`get_source(dataset, split, resolution=..., frames=...)` returns an object
with `len(source)`, `source[i] -> {"image": uint8 [H,W,3] | "video":
uint8 [T,H,W,3], "caption": str}` and `source.caption(i)` (the caption alone,
without decoding or rendering pixels where the format allows), for

  "shapes", "moving_shapes"   SHAPES.md, rendered on the fly (any resolution;
                              `train_size` sets the length of the train stream)
  "tfds:NAME[/CONFIG]"        a TFDS dataset read with `tfds.data_source`
                              (ArrayRecord, no TensorFlow); `data_dir` optional
  "folder:/path"              captioned files in a folder (see folder.py)

Each source is a Grain random-access data source (`grain.python.RandomAccessDataSource`:
`len`, `[i]` for any integer type) that pickles (a TFDS split reopens its ArrayRecord files),
so the input pipeline (pipeline.py) can read it in Grain's worker processes.
"""

import numpy as np
from PIL import Image

from jzoo.data import folder as folder_lib
from jzoo.data import shapes
from jzoo.errors import DataError

CHOICES = ("shapes", "moving_shapes", "tfds:NAME[/CONFIG]", "folder:/path")
DEFAULT_FRAMES = 16
CAPTION_KEYS = ("caption", "text", "captions")


class ShapesSource:
  """`shapes` images of one split at `resolution`, rendered when read."""

  def __init__(self, split, resolution, train_size=None):
    _check_split(split)
    self.split, self.resolution = split, int(resolution)
    self._len = int(train_size) if (split == "train" and train_size) else shapes.split_size("shapes", split)

  def __len__(self):
    return self._len

  def __getitem__(self, index):
    ex = shapes.image_example(self.split, _index(index, self._len), self.resolution)
    return {"image": ex["image"], "caption": ex["caption"]}

  def caption(self, index):
    return shapes.image_scene(self.split, _index(index, self._len), self.resolution)["caption"]


class MovingShapesSource:
  """`moving_shapes` clips of one split at `resolution` x `frames`, rendered when read."""

  def __init__(self, split, resolution, frames=DEFAULT_FRAMES, train_size=None):
    _check_split(split)
    self.split, self.resolution, self.frames = split, int(resolution), int(frames)
    if self.frames < 2:
      raise DataError(f"moving_shapes needs at least 2 frames, got {frames}")
    self._len = (int(train_size) if (split == "train" and train_size)
                 else shapes.split_size("moving_shapes", split))

  def __len__(self):
    return self._len

  def __getitem__(self, index):
    ex = shapes.video_example(self.split, _index(index, self._len), self.resolution, self.frames)
    return {"video": ex["video"], "caption": ex["caption"]}

  def caption(self, index):
    return shapes.video_scene(self.split, _index(index, self._len), self.resolution,
                              self.frames)["caption"]


class TfdsSource:
  """A prepared TFDS split read by random access; pixels resized/cropped to `resolution` if needed."""

  def __init__(self, name, split, resolution, frames=None, data_dir=None, train_size=None):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    from jzoo.data import tfds_shapes  # pylint: disable=g-import-not-at-top,unused-import  (registers)
    self.name, self.resolution, self.frames = name, int(resolution), frames
    if split == "train" and train_size:
      split = f"train[:{int(train_size)}]"
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # tfds raises DatasetNotFoundError, ValueError, ...
      raise DataError(f"cannot open TFDS dataset {name!r}: {' '.join(str(e).split())[:300]}") from None
    if isinstance(builder, (tfds_shapes.Shapes, tfds_shapes.MovingShapes)):
      builder.download_and_prepare()  # rendered locally; nothing is downloaded
    elif not builder.is_prepared():
      raise DataError(f"TFDS dataset {name!r} is not prepared in {builder.data_dir}; prepare it "
                      "first (e.g. `tfds build`) or pass its data_dir; jzoo never downloads data")
    try:
      self._source = builder.as_data_source(split=split)
    except Exception as e:
      raise DataError(f"cannot read split {split!r} of TFDS dataset {name!r}: "
                      f"{' '.join(str(e).split())[:300]}") from None
    keys = set(builder.info.features.keys())
    self._pixels = "video" if "video" in keys else "image" if "image" in keys else None
    self._caption = next((k for k in CAPTION_KEYS if k in keys), None)
    if self._pixels is None or self._caption is None:
      raise DataError(f"TFDS dataset {name!r} needs an 'image' or 'video' and a 'caption' or 'text' "
                      f"feature; it has {sorted(keys)}")
    if self._pixels == "video" and not self.frames:
      self.frames = DEFAULT_FRAMES

  def __len__(self):
    return len(self._source)

  def __getitem__(self, index):
    ex = self._source[_index(index, len(self))]
    caption = self._caption_of(ex)
    pixels = np.asarray(ex[self._pixels])
    if self._pixels == "image":
      return {"image": self._fit(pixels), "caption": caption}
    if pixels.shape[0] != self.frames:
      pixels = pixels[folder_lib.sample_indices(pixels.shape[0], self.frames)]
    return {"video": np.stack([self._fit(f) for f in pixels]), "caption": caption}

  def caption(self, index):
    return self._caption_of(self._source[_index(index, len(self))])

  def _caption_of(self, ex):
    caption = ex[self._caption]
    if isinstance(caption, np.ndarray):  # several captions per item: take the first
      caption = caption.reshape(-1)[0] if caption.size else b""
    elif isinstance(caption, (list, tuple)):
      caption = caption[0] if caption else b""
    if isinstance(caption, bytes):
      caption = caption.decode("utf-8")
    return str(caption)

  def _fit(self, image):
    if image.shape[:2] == (self.resolution, self.resolution) and image.shape[-1] == 3:
      return image.astype(np.uint8)
    return folder_lib.resize_and_crop(Image.fromarray(np.squeeze(image).astype(np.uint8)),
                                      self.resolution)


def _check_split(split):
  if split not in shapes.SPLITS:
    raise DataError(f"unknown split {split!r} of the shapes datasets; expected one of {shapes.SPLITS}")


def _index(index, length):
  index = int(index)
  if not 0 <= index < length:
    raise IndexError(f"index {index} out of range [0, {length})")
  return index


def get_source(dataset, split, *, resolution, frames=None, train_size=None, data_dir=None):
  """The examples of `split` of `dataset` (see the module docstring) at `resolution` (and `frames`)."""
  dataset = str(dataset).strip()
  if dataset == "shapes":
    if frames:
      raise DataError("'shapes' is an image dataset; use 'moving_shapes' for videos")
    return ShapesSource(split, resolution, train_size)
  if dataset == "moving_shapes":
    return MovingShapesSource(split, resolution, frames or DEFAULT_FRAMES, train_size)
  if dataset.startswith("tfds:") and dataset[5:]:
    return TfdsSource(dataset[5:], split, resolution, frames, data_dir=data_dir, train_size=train_size)
  if dataset.startswith("folder:") and dataset[7:]:
    # A user's folder has no splits: every split reads the whole folder.
    return folder_lib.FolderSource(dataset[7:], resolution=resolution, frames=frames)
  raise DataError(f"unknown dataset {dataset!r}; expected one of: {', '.join(CHOICES)}")

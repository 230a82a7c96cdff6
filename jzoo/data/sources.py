"""Random-access example sources, the input pipeline's view of every dataset.

`get_source(dataset, split, size=(H, W) | resolution=S, frames=..., fps=...)` returns
an object with `len(source)`, `source[i] -> {"image": uint8 [H,W,3] | "video":
uint8 [T,H,W,3], "caption": str}`, `source.caption(i)` (the caption alone,
without decoding or rendering pixels where the format allows) and `source.fps`
(the clips' frame rate; None for images or where each clip keeps its own), for

  "shapes", "moving_shapes"   SHAPES.md, rendered on the fly (square canvases of
                              any side; `train_size` sets the length of the
                              train stream)
  "tfds:NAME[/CONFIG]"        a TFDS dataset read with `tfds.data_source`
                              (ArrayRecord, no TensorFlow); `data_dir` optional
  "folder:/path"              captioned files in a folder (see folder.py)

Pixels that are not (H, W) already are scaled to just cover it and centre-cropped.
`fps` None keeps each dataset's own timing (a clip's T frames sampled over its whole
length); a rate samples frame k at time k/fps where the dataset has a frame rate
(MP4/GIF folders; TFDS videos with an "fps" feature or metadata entry, or the
moving_shapes builder), and is a DataError where it has none. A moving_shapes
clip lasts MOVING_SHAPES_SECONDS, so its rate is frames / 2 s and nothing else.

Each source is a Grain random-access data source (`grain.python.RandomAccessDataSource`:
`len`, `[i]` for any integer type) that pickles (a TFDS split reopens its ArrayRecord files),
so the input pipeline (pipeline.py) can read it in Grain's worker processes.
"""

import math

import numpy as np
from PIL import Image

from jzoo.data import folder as folder_lib
from jzoo.data import shapes
from jzoo.errors import DataError

CHOICES = ("shapes", "moving_shapes", "tfds:NAME[/CONFIG]", "folder:/path")
DEFAULT_FRAMES = 16
# SHAPES.md defines a moving_shapes clip as one motion (0.5·S between its first and last
# frame) and gives it no duration; jzoo writes videos at 8 fps (jzoo/io/media.py), where the
# default 16 frames play for 2 s. So a clip is that 2-second motion whatever its T frames: their
# rate is T / 2 s, and another rate would be another speed, which the spec does not define.
MOVING_SHAPES_SECONDS = 2.0
CAPTION_KEYS = ("caption", "text", "captions")


class ShapesSource:
  """`shapes` images of one split at `resolution`, rendered when read."""

  fps = None  # images

  def __init__(self, split, resolution, train_size=None):
    _check_split(split)
    self.split, self.resolution = split, int(resolution)
    self.size = (self.resolution, self.resolution)
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
    self.size = (self.resolution, self.resolution)
    if self.frames < 2:
      raise DataError(f"moving_shapes needs at least 2 frames, got {frames}")
    self.fps = self.frames / MOVING_SHAPES_SECONDS
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
  """A prepared TFDS split read by random access; pixels resized/cropped to `size` if needed."""

  def __init__(self, name, split, size, frames=None, data_dir=None, train_size=None, fps=None):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    from jzoo.data import tfds_shapes  # pylint: disable=g-import-not-at-top,unused-import  (registers)
    self.name, self.size, self.frames, self.fps = name, tuple(size), frames, fps
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
    # The clips' own frame rate, where the dataset says it: per example ("fps" feature), for the
    # whole dataset (metadata), or by definition (moving_shapes).
    self._rate = None
    if self._pixels == "video" and "fps" not in keys:
      meta = builder.info.metadata or {}
      if isinstance(builder, tfds_shapes.MovingShapes):
        self._rate = builder.builder_config.frames / MOVING_SHAPES_SECONDS
      elif meta.get("fps"):
        self._rate = float(meta["fps"])
    if fps is not None:
      if self._pixels != "video":
        raise DataError(f"fps={fps:g} is a video setting, but TFDS dataset {name!r} has images")
      if self._rate is None and "fps" not in keys:
        raise DataError(f"TFDS dataset {name!r} gives no frame rate (no 'fps' feature or "
                        f"metadata), so fps={fps:g} cannot be sampled; leave fps unset (frames "
                        "sampled over each whole clip)")

  def __len__(self):
    return len(self._source)

  def __getitem__(self, index):
    ex = self._source[_index(index, len(self))]
    caption = self._caption_of(ex)
    pixels = np.asarray(ex[self._pixels])
    if self._pixels == "image":
      return {"image": self._fit(pixels), "caption": caption}
    if self.fps is not None:
      rate = float(ex["fps"]) if self._rate is None else self._rate
      pixels = pixels[folder_lib.time_indices(np.arange(pixels.shape[0]) / rate, self.frames,
                                              self.fps)]
    elif pixels.shape[0] != self.frames:
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
    if image.shape[:2] == self.size and image.shape[-1] == 3:
      return image.astype(np.uint8)
    return folder_lib.resize_and_crop(Image.fromarray(np.squeeze(image).astype(np.uint8)),
                                      self.size)


def _check_split(split):
  if split not in shapes.SPLITS:
    raise DataError(f"unknown split {split!r} of the shapes datasets; expected one of {shapes.SPLITS}")


def _index(index, length):
  index = int(index)
  if not 0 <= index < length:
    raise IndexError(f"index {index} out of range [0, {length})")
  return index


def _square_side(dataset, size):
  h, w = size
  if h != w:
    raise DataError(f"the shapes datasets render square canvases (SHAPES.md), so {dataset!r} "
                    f"cannot give {h}x{w} pixels; use height == width")
  return h


def _moving_shapes_frames(frames, fps):
  """`frames`, checked against `fps`: a clip is one MOVING_SHAPES_SECONDS motion at frames / 2 s."""
  frames = int(frames or DEFAULT_FRAMES)
  seconds, rate = MOVING_SHAPES_SECONDS, frames / MOVING_SHAPES_SECONDS
  if fps is not None and not math.isclose(fps, rate, rel_tol=1e-6):
    raise DataError(f"a moving_shapes clip is one {seconds:g}-second motion, so fps must be "
                    f"frames/{seconds:g} = {rate:g} for frames={frames}, not {fps:g} (e.g. frames=8 "
                    "-> fps=4); change frames instead, or leave fps unset")
  return frames


def get_source(dataset, split, *, resolution=None, size=None, frames=None, fps=None,
               train_size=None, data_dir=None):
  """The examples of `split` of `dataset` (see the module docstring) at `size` = (height, width)
  or a square `resolution` (exactly one), with `frames` per clip at `fps` (None: the dataset's own
  timing)."""
  size = folder_lib.pixel_size(resolution, size)
  fps = folder_lib.check_fps(fps)
  dataset = str(dataset).strip()
  if dataset == "shapes":
    if frames or fps is not None:
      raise DataError("'shapes' is an image dataset; use 'moving_shapes' for videos")
    return ShapesSource(split, _square_side(dataset, size), train_size)
  if dataset == "moving_shapes":
    return MovingShapesSource(split, _square_side(dataset, size),
                              _moving_shapes_frames(frames, fps), train_size)
  if dataset.startswith("tfds:") and dataset[5:]:
    return TfdsSource(dataset[5:], split, size, frames, data_dir=data_dir, train_size=train_size,
                      fps=fps)
  if dataset.startswith("folder:") and dataset[7:]:
    # A user's folder has no splits: every split reads the whole folder.
    return folder_lib.FolderSource(dataset[7:], size=size, frames=frames, fps=fps)
  raise DataError(f"unknown dataset {dataset!r}; expected one of: {', '.join(CHOICES)}")

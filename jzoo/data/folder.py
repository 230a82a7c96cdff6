"""Users' own captioned images or videos in a folder, read by index.

Images (`frames=None`): every `NAME.{png,jpg,jpeg,webp,gif}` with a caption
file `NAME.txt` next to it (a GIF gives its first frame).

Videos (`frames=T`): every `NAME.{mp4,gif}` with `NAME.txt` next to it, and
every folder of frames (image files, in natural order: frame2 before frame10)
with its caption in `NAME.txt` next to the folder or `caption.txt` inside it.

The folder is searched recursively, in sorted order, so item `i` is stable.
Each image (frame) is resized so that its shorter side is `resolution`, then
centre-cropped to a square. A clip gives `T` frames sampled uniformly over its
whole length (frame `round(k·(n-1)/(T-1))` for k = 0..T-1; clips shorter than
`T` frames repeat frames).
"""

import os
import re

import numpy as np
from PIL import Image, ImageSequence

from jzoo.errors import DataError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".gif")
VIDEO_EXTS = (".mp4", ".gif")
FRAME_EXTS = (".png", ".jpg", ".jpeg", ".webp")
CAPTION_IN_FOLDER = "caption.txt"


def _natural_key(name):
  return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _one_line(err):
  return " ".join(str(err).split())


def resize_and_crop(image, resolution):
  """PIL image -> uint8 [R,R,3]: shorter side resized to R (bicubic), then centre crop."""
  image = image.convert("RGB")
  w, h = image.size
  scale = resolution / min(w, h)
  nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
  if (nw, nh) != (w, h):
    image = image.resize((nw, nh), Image.BICUBIC)
  left, top = (nw - resolution) // 2, (nh - resolution) // 2
  return np.asarray(image.crop((left, top, left + resolution, top + resolution)), np.uint8)


def sample_indices(num_available, frames):
  """Uniform temporal sampling of `frames` indices over [0, num_available)."""
  if frames == 1:
    return np.zeros(1, np.int64)
  return np.round(np.linspace(0, num_available - 1, frames)).astype(np.int64)


def _read_caption(path):
  try:
    with open(path, encoding="utf-8") as f:
      return " ".join(f.read().split())
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f"cannot read caption file {path}: {_one_line(e)}") from None


def _read_gif_frames(path, first_only):
  with Image.open(path) as im:
    frames = []
    for frame in ImageSequence.Iterator(im):
      frames.append(frame.convert("RGB"))
      if first_only:
        break
  return frames


def _read_mp4_frames(path, frames):
  import imageio.v2 as imageio  # pylint: disable=g-import-not-at-top
  with imageio.get_reader(path, "ffmpeg") as reader:
    n = reader.count_frames()
    if n <= 0:
      raise ValueError("no frames")
    wanted = sample_indices(n, frames)
    keep = {}
    for i, frame in enumerate(reader):
      if i in wanted:
        keep[i] = Image.fromarray(frame)
      if i >= wanted[-1]:
        break
  # A container may report more frames than it decodes: clamp to the last one read.
  last = max(keep)
  return [keep.get(int(i), keep[last]) for i in wanted]


class FolderSource:
  """Captioned items of a folder: `len(src)`, `src[i] -> {"image"|"video": uint8, "caption": str}`."""

  def __init__(self, root, *, resolution, frames=None):
    self.root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    self.resolution = int(resolution)
    self.frames = None if frames is None else int(frames)
    if not os.path.exists(self.root):
      raise DataError(f"data folder not found: {self.root}")
    if not os.path.isdir(self.root):
      raise DataError(f"not a folder: {self.root} (give a folder of captioned "
                      f"{'videos' if self.frames else 'images'})")
    self.items = self._scan()  # [(kind, path, caption)] with kind in image|gif|mp4|frames
    if not self.items:
      if self.frames:
        expected = ("videos: NAME.mp4 or NAME.gif with a same-named NAME.txt caption, or a folder "
                    "NAME/ of frames with NAME.txt next to it or caption.txt inside")
      else:
        expected = "images: NAME.png/.jpg/.jpeg/.webp/.gif each with a same-named NAME.txt caption"
      raise DataError(f"no captioned items in {self.root}; expected {expected}")

  def _scan(self):
    items = []
    video = self.frames is not None

    def visit(folder):
      try:
        names = sorted(os.listdir(folder), key=_natural_key)
      except OSError as e:
        raise DataError(f"cannot list folder {folder}: {_one_line(e)}") from None
      files = {n for n in names if os.path.isfile(os.path.join(folder, n))}
      for name in names:
        path = os.path.join(folder, name)
        stem, ext = os.path.splitext(name)
        ext = ext.lower()
        caption = os.path.join(folder, stem + ".txt")
        if name in files:
          if stem + ".txt" not in files:
            continue
          if video and ext in VIDEO_EXTS:
            items.append(("gif" if ext == ".gif" else "mp4", path, caption))
          elif not video and ext in IMAGE_EXTS:
            items.append(("image", path, caption))
        elif os.path.isdir(path):
          if self._is_frame_folder(path):
            if video:
              inside = os.path.join(path, CAPTION_IN_FOLDER)
              items.append(("frames", path, inside if os.path.isfile(inside) else path + ".txt"))
            continue  # a clip's frames are not separate images
          visit(path)

    visit(self.root)
    return items

  @staticmethod
  def _is_frame_folder(path):
    try:
      names = os.listdir(path)
    except OSError:
      return False
    frames = [n for n in names if os.path.splitext(n)[1].lower() in FRAME_EXTS]
    has_caption = (os.path.isfile(os.path.join(path, CAPTION_IN_FOLDER))
                   or os.path.isfile(path.rstrip(os.sep) + ".txt"))
    # Frames without their own NAME.txt captions: not a folder of captioned images.
    own_captions = any(os.path.splitext(n)[0] + ".txt" in names for n in frames)
    return bool(frames) and has_caption and not own_captions

  def __len__(self):
    return len(self.items)

  def caption(self, index):
    return _read_caption(self.items[index][2])

  def __getitem__(self, index):
    kind, path, caption_path = self.items[index]
    caption = _read_caption(caption_path)
    current = path  # the file named in errors
    try:
      if kind == "image":
        with Image.open(path) as im:
          im.seek(0)  # first frame of an animated file
          return {"image": resize_and_crop(im, self.resolution), "caption": caption}
      if kind == "gif":
        frames = _read_gif_frames(path, first_only=False)
        frames = [frames[i] for i in sample_indices(len(frames), self.frames)]
      elif kind == "mp4":
        frames = _read_mp4_frames(path, self.frames)
      else:
        names = sorted((n for n in os.listdir(path) if os.path.splitext(n)[1].lower() in FRAME_EXTS),
                       key=_natural_key)
        frames = []
        for i in sample_indices(len(names), self.frames):
          current = os.path.join(path, names[i])
          with Image.open(current) as im:
            im.load()
            frames.append(im)
    except DataError:
      raise
    except Exception as e:  # PIL/ffmpeg raise many types for broken files
      raise DataError(f"cannot read {current}: {_one_line(e) or type(e).__name__}") from None
    video = np.stack([resize_and_crop(f, self.resolution) for f in frames])
    return {"video": video, "caption": caption}

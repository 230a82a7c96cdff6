"""Users' own captioned images or videos in a folder, read by index.

Images (`frames=None`): every `NAME.{png,jpg,jpeg,webp,gif}` with a caption
file `NAME.txt` next to it (a GIF gives its first frame).

Videos (`frames=T`): every `NAME.{mp4,gif}` with `NAME.txt` next to it, and
every folder of frames (image files, in natural order: frame2 before frame10)
with its caption in `NAME.txt` next to the folder or `caption.txt` inside it.

The folder is searched recursively, in sorted order, so item `i` is stable.
Each image (frame) is scaled so that it just covers `size` = (height, width)
(a square `resolution` R is (R, R)), then centre-cropped to it. With `fps`
unset a clip gives `T` frames sampled uniformly over its whole length (frame
`round(k·(n-1)/(T-1))` for k = 0..T-1; clips shorter than `T` frames repeat
frames). With `fps` set, frame k of the clip is the file's frame nearest to
time k/fps from its start (MP4: the container's frame rate; GIF: its frames'
durations), so a clip keeps its real speed; one shorter than T/fps seconds
repeats its last frame. Frame folders have no rate, so they need `fps` unset.
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


def pixel_size(resolution=None, size=None):
  """(height, width) from exactly one of a square side `resolution` or `size` = (height, width)."""
  if (resolution is None) == (size is None):
    raise TypeError("give exactly one of resolution=SIDE (square) or size=(HEIGHT, WIDTH), "
                    f"got resolution={resolution!r}, size={size!r}")
  if size is None:
    size = (resolution, resolution)
  try:
    h, w = (int(x) for x in size)
  except (TypeError, ValueError):
    raise DataError(f"size must be (height, width), got {size!r}") from None
  if h <= 0 or w <= 0:
    raise DataError(f"height and width must be positive, got {h}x{w}")
  return h, w


def check_fps(fps):
  """None, or `fps` as a positive finite float."""
  if fps is None:
    return None
  try:
    rate = float(fps)
  except (TypeError, ValueError):
    rate = float("nan")
  if not (np.isfinite(rate) and rate > 0):
    raise DataError(f"fps must be a positive number of frames per second, got {fps!r}")
  return rate


def resize_and_crop(image, size):
  """PIL image -> uint8 [H,W,3]: scaled (bicubic) to just cover `size` = (H, W) (an int: a square),
  then centre crop."""
  height, width = (size, size) if np.isscalar(size) else size
  image = image.convert("RGB")
  w, h = image.size
  # The larger of the two ratios makes both sides cover; for a square it is R / shorter side.
  scale = max(width / w, height / h)
  nw, nh = max(width, round(w * scale)), max(height, round(h * scale))
  if (nw, nh) != (w, h):
    image = image.resize((nw, nh), Image.BICUBIC)
  left, top = (nw - width) // 2, (nh - height) // 2
  return np.asarray(image.crop((left, top, left + width, top + height)), np.uint8)


def sample_indices(num_available, frames):
  """Uniform temporal sampling of `frames` indices over [0, num_available)."""
  if frames == 1:
    return np.zeros(1, np.int64)
  return np.round(np.linspace(0, num_available - 1, frames)).astype(np.int64)


def time_indices(starts, frames, fps):
  """Indices of the frames (start times `starts`, seconds, increasing) nearest to times k/fps,
  k = 0..frames-1. Past the clip's end the nearest is its last frame, so a short clip repeats it."""
  starts = np.asarray(starts, np.float64)
  times = np.arange(frames) / float(fps)
  # Rounded to the nanosecond so that float noise cannot break ties, which go to the earlier frame.
  return np.argmin(np.round(np.abs(times[:, None] - starts[None, :]), 9), axis=1).astype(np.int64)


def _read_caption(path):
  try:
    with open(path, encoding="utf-8") as f:
      return " ".join(f.read().split())
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f"cannot read caption file {path}: {_one_line(e)}") from None


def _read_gif_frames(path):
  """RGB frames of a GIF and their display times in ms (None where a frame gives none)."""
  with Image.open(path) as im:
    frames, durations = [], []
    for frame in ImageSequence.Iterator(im):
      frames.append(frame.convert("RGB"))
      durations.append(frame.info.get("duration"))
  return frames, durations


def _sample_gif(path, frames, fps):
  clip, durations = _read_gif_frames(path)
  if fps is None:
    return [clip[i] for i in sample_indices(len(clip), frames)]
  if None in durations or sum(durations) <= 0:
    raise DataError(f"{path} has no frame durations, so no frame rate to sample fps={fps:g} from; "
                    "leave fps unset (frames sampled over the whole clip)")
  starts = np.cumsum([0] + durations[:-1]) / 1000.0  # each frame shows from the end of the last
  return [clip[i] for i in time_indices(starts, frames, fps)]


def _read_mp4_frames(path, frames, fps=None):
  import imageio.v2 as imageio  # pylint: disable=g-import-not-at-top
  with imageio.get_reader(path, "ffmpeg") as reader:
    n = reader.count_frames()
    if n <= 0:
      raise ValueError("no frames")
    if fps is None:
      wanted = sample_indices(n, frames)
    else:
      rate = reader.get_meta_data().get("fps")
      if not rate or not np.isfinite(rate) or rate <= 0:
        raise DataError(f"{path} reports no frame rate to sample fps={fps:g} from; leave fps unset")
      wanted = time_indices(np.arange(n) / float(rate), frames, fps)
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

  def __init__(self, root, *, resolution=None, size=None, frames=None, fps=None):
    self.root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    self.size = pixel_size(resolution, size)
    self.frames = None if frames is None else int(frames)
    self.fps = check_fps(fps)  # None: each clip sampled over its whole length
    if self.fps is not None and self.frames is None:
      raise DataError(f"fps={fps} is a video setting, but frames is unset (a folder of images); "
                      "set frames for videos or leave fps unset")
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
    if self.fps is not None:
      still = next((path for kind, path, _ in self.items if kind == "frames"), None)
      if still:  # checked up front: a long run should not stop at its first frame folder
        raise DataError(f"{still} is a folder of frames, which has no frame rate to sample "
                        f"fps={self.fps:g} from; leave fps unset or give MP4/GIF files")

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
          return {"image": resize_and_crop(im, self.size), "caption": caption}
      if kind == "gif":
        frames = _sample_gif(path, self.frames, self.fps)
      elif kind == "mp4":
        frames = _read_mp4_frames(path, self.frames, self.fps)
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
    video = np.stack([resize_and_crop(f, self.size) for f in frames])
    return {"video": video, "caption": caption}

"""PNG / GIF / MP4 writers, a PNG/GIF reader, and grids. uint8 [H,W,3] images or [T,H,W,3] videos."""

import os
import warnings

import numpy as np
from PIL import Image

from jzoo.errors import UserError


def _check_uint8(x, ndim, what):
  x = np.asarray(x)
  if x.dtype != np.uint8 or x.ndim != ndim or x.shape[-1] not in (1, 3, 4):
    raise ValueError(f"{what} must be uint8 with shape {'[T,H,W,C]' if ndim == 4 else '[H,W,C]'}, "
                     f"got {x.dtype} {x.shape}")
  return x


def _prepare(path):
  folder = os.path.dirname(os.path.abspath(path))
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create output folder {folder!r} ({e.strerror}); choose a writable --out") from None
  if not os.access(folder, os.W_OK):
    raise UserError(f"output folder {folder!r} is not writable; choose a writable --out")


def read_frames(path):
  """uint8 RGB frames [T, H, W, 3] of a PNG/JPEG image (T = 1) or an animated GIF."""
  if not os.path.isfile(path):
    raise UserError(f"{path!r} does not exist; give a PNG image or a GIF video")
  try:
    with Image.open(path) as im:
      frames = []
      for i in range(getattr(im, "n_frames", 1)):
        im.seek(i)
        frames.append(np.asarray(im.convert("RGB")))
  except OSError:
    raise UserError(f"cannot read {path!r} as an image or GIF") from None
  return np.stack(frames)


def write_image(path, image):
  image = _check_uint8(image, 3, "image")
  _prepare(path)
  Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(path)
  return path


def write_gif(path, video, fps=8):
  video = _check_uint8(video, 4, "video")
  _prepare(path)
  frames = [Image.fromarray(f) for f in video]
  frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0,
                 optimize=False, disposal=1)
  return path


def write_mp4(path, video, fps=8):
  """H.264 MP4 through imageio-ffmpeg. Frames are padded to even sides (yuv420p needs them)."""
  import imageio.v2 as imageio
  video = _check_uint8(video, 4, "video")
  _prepare(path)
  t, h, w, c = video.shape
  video = np.pad(video, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
  with warnings.catch_warnings():
    # imageio starts ffmpeg through subprocess, which JAX's fork hook warns about; the child
    # execs ffmpeg at once and runs no Python, so the deadlock the warning is about cannot occur.
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
    with imageio.get_writer(path, fps=fps, codec="libx264", quality=9, macro_block_size=1,
                            pixelformat="yuv420p") as writer:
      for frame in video:
        writer.append_data(frame)
  return path


def write_media(path, x, fmt=None, fps=8):
  """Writes an image (PNG) or a video (GIF or MP4, from `fmt` or the path's extension)."""
  x = np.asarray(x)
  fmt = fmt or os.path.splitext(path)[1].lstrip(".").lower() or ("png" if x.ndim == 3 else "gif")
  if x.ndim == 3:
    if fmt != "png":
      raise UserError(f"an image is written as png, not {fmt}; use --format png")
    return write_image(path, x)
  if fmt == "gif":
    return write_gif(path, x, fps)
  if fmt == "mp4":
    return write_mp4(path, x, fps)
  raise UserError(f"a video is written as gif or mp4, not {fmt}; use --format gif or --format mp4")


def image_grid(images, cols=None, pad=2, pad_value=0):
  """Tiles uint8 [N,H,W,C] into one [rows*(H+pad)-pad, cols*(W+pad)-pad, C] image."""
  images = np.asarray(images)
  n, h, w, c = images.shape
  cols = cols or int(np.ceil(np.sqrt(n)))
  rows = int(np.ceil(n / cols))
  grid = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, c), pad_value, images.dtype)
  for i, img in enumerate(images):
    r, col = divmod(i, cols)
    grid[r * (h + pad):r * (h + pad) + h, col * (w + pad):col * (w + pad) + w] = img
  return grid


def video_grid(videos, cols=None, pad=2, pad_value=0):
  """Tiles uint8 [N,T,H,W,C] into one video [T, ...] of grids."""
  videos = np.asarray(videos)
  return np.stack([image_grid(videos[:, t], cols, pad, pad_value) for t in range(videos.shape[1])])

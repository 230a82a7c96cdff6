"""Folder datasets: discovery, resize + centre crop, temporal sampling, error messages."""

import numpy as np
import pytest
from PIL import Image

from jzoo.data import folder
from jzoo.data import sources
from jzoo.errors import DataError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _save(path, array):
  Image.fromarray(np.asarray(array, np.uint8)).save(path)


def _solid(value, h=12, w=12):
  return np.full((h, w, 3), value, np.uint8)


def _stripes(h, w, widths, colors):
  """Vertical stripes of the given widths (columns) and colours."""
  image = np.zeros((h, w, 3), np.uint8)
  x = 0
  for width, color in zip(widths, colors):
    image[:, x:x + width] = color
    x += width
  return image


def _gif(path, values):
  frames = [Image.fromarray(_solid((v, v, v))) for v in values]
  frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


@pytest.fixture
def image_dir(tmp_path):
  d = tmp_path / "images"
  (d / "sub").mkdir(parents=True)
  # Landscape 40x20: red | green | blue. Shorter side -> 10 gives 20x10; the centre crop is green.
  _save(d / "wide.png", _stripes(20, 40, (10, 20, 10), (RED, GREEN, BLUE)))
  (d / "wide.txt").write_text("a green square\n")
  # Portrait 16x48 (w x h): top third red, middle blue, bottom green; crop keeps the middle.
  tall = np.zeros((48, 16, 3), np.uint8)
  tall[:16], tall[16:32], tall[32:] = RED, BLUE, GREEN
  _save(d / "sub" / "tall.jpg", tall)
  (d / "sub" / "tall.txt").write_text("  a blue\n  square  ")
  _gif(d / "anim.gif", [200, 40, 90])
  (d / "anim.txt").write_text("first frame")
  _save(d / "uncaptioned.png", _solid(RED))  # no .txt: not an item
  (d / "notes.txt").write_text("a caption without an image")
  return d


def test_images(image_dir):
  source = folder.FolderSource(image_dir, resolution=8)
  # Sorted, recursive: anim.gif, sub/tall.jpg, wide.png.
  assert len(source) == 3
  captions = [source[i]["caption"] for i in range(3)]
  assert captions == ["first frame", "a blue square", "a green square"]
  anim, tall, wide = (source[i]["image"] for i in range(3))
  for image in (anim, tall, wide):
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8
  assert (anim == 200).all()  # a GIF's first frame
  # Centre crops: uniform interiors (bicubic may ring only at the crop's outer columns/rows).
  np.testing.assert_array_equal(wide[:, 1:-1], np.broadcast_to(GREEN, (8, 6, 3)))
  np.testing.assert_allclose(tall[1:-1].reshape(-1, 3).mean(0), BLUE, atol=3)  # JPEG
  assert set(source[0]) == {"image", "caption"}


def test_resize_and_crop_takes_the_centre():
  # 4x4 blocks of random colours, 96 wide x 64 high. Shorter side 64 -> 16 (4x down), longer
  # 96 -> 24; the centre crop is block columns 4..19.
  blocks = np.random.default_rng(0).integers(0, 256, (16, 24, 3)).astype(np.uint8)
  big = np.repeat(np.repeat(blocks, 4, 0), 4, 1)
  out = folder.resize_and_crop(Image.fromarray(big), 16).astype(int)
  assert out.shape == (16, 16, 3)
  error = {shift: np.abs(out - blocks[:, shift:shift + 16]).mean() for shift in (3, 4, 5)}
  assert error[4] < 25 and error[4] < 0.5 * min(error[3], error[5]), error


@pytest.fixture
def video_dir(tmp_path):
  d = tmp_path / "videos"
  d.mkdir()
  _gif(d / "clip.gif", [0, 30, 60, 90, 120, 150, 180])  # 7 frames
  (d / "clip.txt").write_text("a gif")
  walk = d / "walk"  # 13 frames named frame0..frame12: natural order, caption next to the folder
  walk.mkdir()
  for i in range(13):
    _save(walk / f"frame{i}.png", _solid((i * 10, 0, 0), 20, 30))
  (d / "walk.txt").write_text("frames with a caption next to them")
  jump = d / "jump"  # 2 frames, caption inside
  jump.mkdir()
  _save(jump / "a.png", _solid(GREEN))
  _save(jump / "b.png", _solid(BLUE))
  (jump / "caption.txt").write_text("a short clip")
  return d


def test_videos(video_dir):
  source = folder.FolderSource(video_dir, resolution=6, frames=4)
  assert len(source) == 3
  clip, jump, walk = (source[i] for i in range(3))
  assert [clip["caption"], jump["caption"], walk["caption"]] == [
      "a gif", "a short clip", "frames with a caption next to them"]
  for ex in (clip, jump, walk):
    assert ex["video"].shape == (4, 6, 6, 3) and ex["video"].dtype == np.uint8
  # Uniform sampling over the whole clip: frame round(k (n-1)/(T-1)).
  assert [int(f[..., 0].mean()) for f in clip["video"]] == [0, 60, 120, 180]  # n=7: 0, 2, 4, 6
  assert [int(f[..., 0].mean()) for f in walk["video"]] == [0, 40, 80, 120]  # n=13: 0, 4, 8, 12
  # A clip shorter than T repeats frames: n=2 -> 0, 0, 1, 1.
  assert [tuple(f[0, 0]) for f in jump["video"]] == [GREEN, GREEN, BLUE, BLUE]
  # In image mode a GIF gives its first frame, and a clip's frames are not captioned images.
  images = folder.FolderSource(video_dir, resolution=6)
  assert len(images) == 1 and images[0]["caption"] == "a gif" and (images[0]["image"] == 0).all()


def test_mp4(tmp_path):
  from jzoo.io import media
  d = tmp_path / "mp4"
  d.mkdir()
  values = [0, 35, 70, 105, 140, 175, 210, 245]
  media.write_mp4(str(d / "clip.mp4"), np.stack([_solid((v, v, v), 16, 16) for v in values]))
  (d / "clip.txt").write_text("an mp4")
  ex = folder.FolderSource(d, resolution=8, frames=4)[0]
  assert ex["caption"] == "an mp4" and ex["video"].shape == (4, 8, 8, 3)
  # n=8 -> frames 0, 2, 5, 7 (lossy codec: approximately).
  np.testing.assert_allclose([f.mean() for f in ex["video"]], [0, 70, 175, 245], atol=8)


def test_errors(tmp_path):
  missing = tmp_path / "missing"
  with pytest.raises(DataError, match=f"not found: {missing}"):
    folder.FolderSource(missing, resolution=8)
  empty = tmp_path / "empty"
  empty.mkdir()
  _save(empty / "x.png", _solid(RED))  # an image without a caption
  with pytest.raises(DataError) as err:
    folder.FolderSource(empty, resolution=8)
  assert "no captioned items" in str(err.value) and ".txt" in str(err.value) and "\n" not in str(err.value)
  with pytest.raises(DataError, match="of frames with NAME.txt"):
    folder.FolderSource(empty, resolution=8, frames=4)
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / "bad.png").write_bytes(b"\x89PNG not really")
  (broken / "bad.txt").write_text("a caption")
  source = folder.FolderSource(broken, resolution=8)
  with pytest.raises(DataError, match="bad.png") as err:
    source[0]
  assert "\n" not in str(err.value)
  frames = tmp_path / "frames"
  (frames / "clip").mkdir(parents=True)
  _save(frames / "clip" / "0.png", _solid(RED))
  (frames / "clip" / "1.png").write_bytes(b"garbage")
  (frames / "clip.txt").write_text("a clip")
  with pytest.raises(DataError, match="1.png"):
    folder.FolderSource(frames, resolution=8, frames=2)[0]


def test_get_source(image_dir, tmp_path):
  source = sources.get_source(f"folder:{image_dir}", "train", resolution=8)
  assert len(source) == 3 and source[2]["caption"] == "a green square"
  with pytest.raises(DataError) as err:
    sources.get_source("imagenet", "train", resolution=8)
  message = str(err.value)
  assert all(choice in message for choice in ("shapes", "moving_shapes", "tfds:", "folder:"))
  with pytest.raises(DataError, match="not found"):
    sources.get_source(f"folder:{tmp_path / 'nope'}", "train", resolution=8)


def _old_resize_and_crop(image, resolution):
  """resize_and_crop before (height, width) sizes: square outputs must stay bit-identical to it."""
  image = image.convert("RGB")
  w, h = image.size
  scale = resolution / min(w, h)
  nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
  if (nw, nh) != (w, h):
    image = image.resize((nw, nh), Image.BICUBIC)
  left, top = (nw - resolution) // 2, (nh - resolution) // 2
  return np.asarray(image.crop((left, top, left + resolution, top + resolution)), np.uint8)


def test_square_is_unchanged():
  rng = np.random.default_rng(1)
  for (h, w), side in (((37, 53), 16), ((64, 21), 9), ((20, 20), 20), ((10, 7), 24), ((33, 33), 8)):
    image = Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8))
    old = _old_resize_and_crop(image, side)
    np.testing.assert_array_equal(folder.resize_and_crop(image, side), old)
    np.testing.assert_array_equal(folder.resize_and_crop(image, (side, side)), old)


@pytest.mark.parametrize("size, top, left", [
    # 4x4-pixel blocks, 64 high x 128 wide: both sizes scale it by 1/4 (one pixel a block, 16 x 32),
    # then the centre crop starts at block column 4, resp. block row 2.
    ((16, 24), 0, 4),
    ((12, 32), 2, 0),
])
def test_resize_and_crop_non_square(size, top, left):
  blocks = np.random.default_rng(0).integers(0, 256, (16, 32, 3)).astype(np.uint8)
  out = folder.resize_and_crop(Image.fromarray(np.repeat(np.repeat(blocks, 4, 0), 4, 1)), size)
  assert out.shape == (*size, 3)
  def error(t, l):
    return np.abs(out.astype(int) - blocks[t:t + size[0], l:l + size[1]]).mean()
  # A crop one block off along the cropped side fits much worse.
  off = [(top, left + d) if left else (top + d, left) for d in (-1, 1)]
  assert error(top, left) < 25 and all(error(top, left) < 0.5 * error(*o) for o in off), off


def test_non_square_folder(image_dir, video_dir):
  source = folder.FolderSource(image_dir, size=(6, 4))
  assert source.size == (6, 4) and source.fps is None
  anim, tall, wide = (source[i]["image"] for i in range(3))
  assert anim.shape == tall.shape == wide.shape == (6, 4, 3)
  # wide.png, 40x20 (w x h), red | green | blue: covering 4 wide x 6 high scales it to 12x6, whose
  # centre 4 columns (4..7) are all green.
  np.testing.assert_array_equal(wide[:, 1:-1], np.broadcast_to(GREEN, (6, 2, 3)))
  videos = folder.FolderSource(video_dir, size=(4, 6), frames=3)
  assert all(videos[i]["video"].shape == (3, 4, 6, 3) for i in range(3))
  # Square sizes read the same either way.
  np.testing.assert_array_equal(folder.FolderSource(image_dir, size=(8, 8))[2]["image"],
                                folder.FolderSource(image_dir, resolution=8)[2]["image"])
  got = sources.get_source(f"folder:{image_dir}", "train", size=(6, 4))[2]["image"]
  np.testing.assert_array_equal(got, wide)


def _numbered_dir(tmp_path, write, name):
  """A folder with one clip of 16 frames, frame k grey 15·k, written by `write(path, video)`."""
  d = tmp_path / name
  d.mkdir()
  video = np.stack([_solid((15 * k,) * 3, 16, 16) for k in range(16)])
  path = str(d / f"clip.{name}")
  write(path, video)
  (d / "clip.txt").write_text("numbered")
  return d


def _numbers(video):
  return [int(round(f.mean() / 15)) for f in video]


def test_mp4_fps(tmp_path):
  from jzoo.io import media
  d = _numbered_dir(tmp_path, lambda p, v: media.write_mp4(p, v, fps=8), "mp4")
  def frames(n, fps):
    source = sources.get_source(f"folder:{d}", "train", resolution=8, frames=n, fps=fps)
    return _numbers(source[0]["video"])
  assert frames(4, 8) == [0, 1, 2, 3]  # the file's own rate
  assert frames(4, 4) == [0, 2, 4, 6]  # frame k at k/4 s
  assert frames(5, 3) == [0, 3, 5, 8, 11]  # nearest to k·8/3
  # 16 frames at 8 fps last 2 s: later times repeat the last frame.
  assert frames(6, 2) == [0, 4, 8, 12, 15, 15]
  assert frames(4, None) == [0, 5, 10, 15]  # unset: over the whole clip, as before


def test_gif_fps(tmp_path):
  def write(path, video):  # 50 ms a frame (20 fps), but frame 1 shows for 250 ms
    durations = [50] * len(video)
    durations[1] = 250
    frames = [Image.fromarray(f) for f in video]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0)
  d = _numbered_dir(tmp_path, write, "gif")
  source = folder.FolderSource(d, resolution=8, frames=6, fps=10)
  assert source.fps == 10.0
  # Frames start at 0, 50, 300, 350, ... ms; times 0, 100, ..., 500 ms take the nearest start
  # (100 ms: frame 1, from 50; 200 ms: frame 2, from 300, is nearer; 500 ms: 300 + 4·50, frame 6).
  assert _numbers(source[0]["video"]) == [0, 1, 2, 2, 4, 6]
  assert _numbers(folder.FolderSource(d, resolution=8, frames=4)[0]["video"]) == [0, 5, 10, 15]


def test_fps_errors(image_dir, video_dir):
  with pytest.raises(DataError, match=r"jump is a folder of frames.*leave fps unset or give MP4"):
    folder.FolderSource(video_dir, resolution=8, frames=4, fps=8)
  with pytest.raises(DataError, match="video setting"):
    folder.FolderSource(image_dir, resolution=8, fps=8)
  with pytest.raises(TypeError, match="exactly one of"):
    folder.FolderSource(image_dir)

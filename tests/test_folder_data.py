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

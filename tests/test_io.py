import warnings

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from jzoo.errors import UserError
from jzoo.io import image_grid, video_grid, write_media


def _video(t=4, h=16, w=18):
  rng = np.random.default_rng(0)
  return rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def test_png_roundtrip_is_exact(tmp_path):
  img = _video(1)[0]
  path = write_media(str(tmp_path / "a" / "x.png"), img)
  np.testing.assert_array_equal(np.asarray(Image.open(path)), img)


def test_gif_has_all_frames(tmp_path):
  # Flat colours survive GIF's 256-colour palette exactly.
  video = np.zeros((5, 8, 8, 3), np.uint8)
  for t in range(5):
    video[t, :, : t + 1] = (255, 0, 0)
  path = write_media(str(tmp_path / "v.gif"), video)
  frames = iio.imread(path, index=None)
  assert frames.shape[0] == 5
  np.testing.assert_array_equal(frames[..., :3], video)


def test_mp4_decodes_to_the_same_number_of_frames(tmp_path):
  video = np.repeat(np.linspace(0, 255, 16, dtype=np.uint8)[None, None, :, None], 3, -1)
  video = np.broadcast_to(video, (6, 16, 16, 3)).copy()
  import jax
  jax.numpy.zeros(1).block_until_ready()  # JAX running: its fork hook is armed
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    path = write_media(str(tmp_path / "v.mp4"), video, "mp4")
  assert not [w for w in caught if "fork" in str(w.message)]  # ffmpeg starts quietly
  frames = _read_mp4(path)
  assert frames.shape[:3] == (6, 16, 16)
  assert np.abs(frames.astype(int) - video.astype(int)).mean() < 8


def _read_mp4(path):
  import imageio.v2 as imageio
  with imageio.get_reader(path, "ffmpeg") as reader:
    return np.stack([frame for frame in reader.iter_data()])


def test_wrong_format_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match="png"):
    write_media(str(tmp_path / "x.gif"), _video(1)[0], "gif")
  with pytest.raises(UserError, match="gif or mp4"):
    write_media(str(tmp_path / "x.png"), _video(), "png")


def test_grids():
  imgs = np.stack([np.full((4, 4, 3), i, np.uint8) for i in range(5)])
  g = image_grid(imgs, cols=3, pad=1)
  assert g.shape == (2 * 5 - 1, 3 * 5 - 1, 3)
  assert g[0, 0, 0] == 0 and g[0, 5, 0] == 1 and g[5, 5, 0] == 4 and g[5, 10, 0] == 0
  v = video_grid(np.stack([_video(3, 4, 4)] * 2), cols=2, pad=0)
  assert v.shape == (3, 4, 8, 3)


def test_tree_files_roundtrip_and_float16_storage(tmp_path):
  from jzoo.io import tree_files
  tree = {"a": {"kernel": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)},
          "steps": np.arange(3, dtype=np.int32)}
  tree_files.save_tree(str(tmp_path / "full.safetensors"), tree)
  back = tree_files.load_tree(str(tmp_path / "full.safetensors"))
  np.testing.assert_array_equal(back["a"]["kernel"], tree["a"]["kernel"])
  tree_files.save_tree(str(tmp_path / "half.safetensors"), tree, dtype=np.float16)
  half = tree_files.load_tree(str(tmp_path / "half.safetensors"))
  assert half["a"]["kernel"].dtype == np.float32 and half["steps"].dtype == np.int32
  np.testing.assert_allclose(half["a"]["kernel"], tree["a"]["kernel"], atol=1e-3)
  assert (tmp_path / "half.safetensors").stat().st_size < (tmp_path / "full.safetensors").stat().st_size


def test_tree_files_keep_scalar_leaves_scalar(tmp_path):
  # CLIP's learned temperature is a 0-d parameter; a bundle that stored it 1-d would not match
  # the config's architecture when a later stage reads it frozen.
  from jzoo.io import tree_files
  tree_files.save_tree(str(tmp_path / "s.safetensors"), {"logit_scale": np.float32(2.5)})
  back = tree_files.load_tree(str(tmp_path / "s.safetensors"))["logit_scale"]
  assert back.shape == () and float(back) == 2.5

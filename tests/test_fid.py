"""FID InceptionV3: parity with pytorch-fid, the weight readers, the FID itself.

The reference features in tests/golden/fid_inception_golden.npz were made by
scripts/make_fid_golden.py with pytorch-fid 0.3.0's InceptionV3 holding
`inception.random_state_dict(0)`; the same NumPy recipe rebuilds the weights here.
"""

import os
import pickle

import numpy as np
import pytest
import safetensors.numpy
from flax import traverse_util

from jzoo.errors import CheckpointError
from jzoo.eval import fid
from jzoo.eval import inception
from jzoo.io import weight_files

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
IMAGES = ("image_299", "image_64x48", "image_330x310")  # as is, upsampled, downsampled


@pytest.fixture(scope="module")
def golden():
  return np.load(os.path.join(GOLDEN, "fid_inception_golden.npz"))


@pytest.fixture(scope="module")
def state_dict(golden):
  return inception.random_state_dict(int(golden["seed"]))


@pytest.fixture(scope="module")
def params(state_dict):
  return inception.params_from_state_dict(state_dict)


# --- parity with pytorch-fid ------------------------------------------------------


def test_features_match_pytorch_fid(golden, params):
  # A list: the three images differ in size and are resized one by one, as in pytorch-fid.
  feats = fid.inception_features([golden[k] for k in IMAGES], params)
  ref = golden["features"]
  assert feats.shape == (3, inception.FEATURE_DIM) and feats.dtype == np.float32
  # Features are O(0.5) and differ between images by ~0.06 on average.
  np.testing.assert_allclose(feats, ref, atol=2e-5, rtol=0)  # measured max diff: 2.1e-6


@pytest.mark.parametrize("case", ["up", "down"])
def test_resize_matches_torch_interpolate(golden, case):
  x, ref = golden[f"resize_{case}_in"], golden[f"resize_{case}_out"]
  out = np.asarray(inception.preprocess(x, size=ref.shape[1]))
  np.testing.assert_allclose(out, ref, atol=1e-6, rtol=0)


def test_uint8_is_scaled_like_to_tensor(golden):
  image = golden["image_64x48"][None]
  np.testing.assert_allclose(np.asarray(inception.preprocess(image)),
                             np.asarray(inception.preprocess(image / 255.0)), atol=1e-6)


# --- reading weights --------------------------------------------------------------


def _tiny_expected():
  """The tensors scripts/make_fid_golden.py's tiny_state_dict() saved."""
  return {
      "conv.weight": np.arange(54, dtype=np.float32).reshape(2, 3, 3, 3) / 8,
      "bn.running_var": np.array([0.25, 0.5, 1.75], np.float32),
      "transposed": np.arange(12, dtype=np.float32).reshape(3, 4).T,
      "slice": np.arange(10, dtype=np.float64)[2:8:2],
      "half": np.array([1.5, -2.0], np.float16),
      "bn.num_batches_tracked": np.array(7, np.int64),
  }


@pytest.mark.parametrize("name", ["fid_inception_tiny.pth", "fid_inception_tiny_legacy.pth"])
def test_torch_reader_is_exact(name):
  got = weight_files.read_torch_state_dict(os.path.join(GOLDEN, name))
  expected = _tiny_expected()
  assert list(got) == list(expected)  # the OrderedDict's order
  for k, v in expected.items():
    assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
    np.testing.assert_array_equal(got[k], v)


@pytest.mark.parametrize("where", [0, 3])  # the magic number's pickle, the state_dict's
def test_torch_reader_refuses_code(tmp_path, where):
  parts = [0x1950A86A20F9469CFC6C, 1001, {}, {}]
  parts[where] = os.system
  path = tmp_path / "evil.pth"
  path.write_bytes(b"".join(pickle.dumps(p) for p in parts))
  with pytest.raises(CheckpointError, match="posix.system is not allowed"):
    weight_files.read_torch_state_dict(path)


def test_safetensors_round_trip(tmp_path, state_dict, params):
  path = tmp_path / "inception.safetensors"
  extra = {"fc.weight": np.zeros((1008, 2048), np.float32), "fc.bias": np.zeros(1008, np.float32),
           "Conv2d_1a_3x3.bn.num_batches_tracked": np.array(0, np.int64)}  # ignored, as in the .pth
  safetensors.numpy.save_file(state_dict | extra, str(path))
  loaded = traverse_util.flatten_dict(inception.load_inception_params(path))
  flat = traverse_util.flatten_dict(params)
  assert loaded.keys() == flat.keys()
  for k in flat:
    np.testing.assert_array_equal(loaded[k], flat[k])
  # OIHW -> HWIO
  torch_kernel = state_dict["Mixed_6b.branch7x7_2.conv.weight"]
  np.testing.assert_array_equal(flat["Mixed_6b", "branch7x7_2", "conv", "kernel"],
                                torch_kernel.transpose(2, 3, 1, 0))


def test_missing_file_says_where_to_get_weights(tmp_path):
  path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
  with pytest.raises(CheckpointError) as e:
    inception.load_inception_params(path)
  msg = str(e.value)
  assert str(path) in msg and "no such file" in msg and inception.WEIGHTS_URL in msg
  assert "\n" not in msg


@pytest.mark.parametrize("edit,needle", [
    ("missing", "missing tensor Mixed_7c.branch_pool.bn.running_var"),
    ("extra", "unexpected tensor AuxLogits.fc.weight"),
    ("shape", "tensor Mixed_5b.branch1x1.conv.weight has shape (64, 192, 3, 3)"),
])
def test_wrong_keys_name_the_tensor(tmp_path, state_dict, edit, needle):
  state = dict(state_dict)
  if edit == "missing":
    del state["Mixed_7c.branch_pool.bn.running_var"]
  elif edit == "extra":
    state["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)
  else:
    state["Mixed_5b.branch1x1.conv.weight"] = np.zeros((64, 192, 3, 3), np.float32)
  path = tmp_path / "bad.safetensors"
  safetensors.numpy.save_file(state, str(path))
  with pytest.raises(CheckpointError) as e:
    inception.load_inception_params(path)
  assert needle in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_unreadable_file(tmp_path):
  path = tmp_path / "weights.pth"
  path.write_bytes(b"not a torch file")
  with pytest.raises(CheckpointError, match="not a readable PyTorch state_dict"):
    inception.load_inception_params(path)


# --- FID ------------------------------------------------------------------------


def test_fid_is_zero_on_itself_and_positive_for_a_shift(golden, params):
  # Three images per set, so the network compiled for the parity test is reused. Each
  # Fréchet distance of 2048-d features costs seconds (dense eigendecompositions), so two.
  base = golden["image_299"][None].astype(np.float32) / 255
  rng = np.random.default_rng(3)
  a = np.clip(base + rng.normal(0, 0.05, (3, 299, 299, 3)), 0, 1).astype(np.float32)
  b = np.clip(a + 0.2, 0, 1)
  same, shifted = fid.fid(a, a, params), fid.fid(a, b, params)
  assert same < 1e-6 * shifted
  # FID is the squared distance of the means plus a non-negative covariance term.
  fa, fb = fid.inception_features(a, params), fid.inception_features(b, params)
  assert shifted >= 0.999 * ((fa.mean(0) - fb.mean(0)) ** 2).sum() > 0


def test_batches_do_not_change_features(golden, params):
  images = np.stack([golden["image_299"]] * 3)
  images[1] = 255 - images[1]
  whole = fid.inception_features(images, params)
  batched = fid.inception_features(images, params, batch_size=2)  # 2 + a padded last batch
  np.testing.assert_allclose(batched, whole, atol=1e-5, rtol=0)

"""LPIPS-VGG: parity with the lpips package (distances and gradients), the weight loader.

The references in tests/golden/lpips_golden.npz were made by scripts/make_lpips_golden.py
with lpips 0.1.4's `LPIPS(net='vgg')` holding `lpips.random_state_dict(0)`; the same
NumPy recipe rebuilds the weights here.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from flax import traverse_util

from jzoo.errors import CheckpointError
from jzoo.nn import lpips

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
SIZES = ("64", "48")  # 3 pairs of 64x64, 1 pair of 48x40 (odd pooling: 5x3 -> 2x1 at relu5_3)


def _images(u8):
  return u8.astype(np.float32) / 127.5 - 1  # as the golden script


@pytest.fixture(scope="module")
def golden():
  return np.load(os.path.join(GOLDEN, "lpips_golden.npz"))


@pytest.fixture(scope="module")
def state_dict(golden):
  return lpips.random_state_dict(int(golden["seed"]))


@pytest.fixture(scope="module")
def params(state_dict):
  return lpips.params_from_state_dict(state_dict)


# --- parity with the lpips package --------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_distances_match_lpips(golden, params, size):
  d = np.asarray(lpips.lpips(_images(golden["x" + size]), _images(golden["y" + size]), params))
  ref = golden["d" + size]
  assert d.shape == ref.shape and d.dtype == np.float32
  # Distances are 0.02-0.06; measured max diff 1.5e-8 (2.3e-7 of the largest).
  np.testing.assert_allclose(d, ref, atol=1e-5 * np.abs(ref).max(), rtol=0)


@pytest.mark.parametrize("size", SIZES)
def test_gradient_matches_lpips_under_jit(golden, params, size):
  y = _images(golden["y" + size])
  grad = jax.jit(jax.grad(lambda x: lpips.lpips(x, y, params).sum()))(_images(golden["x" + size]))
  ref = golden["grad" + size]
  # In L2 norm, not elementwise: a ReLU whose pre-activation is within rounding of zero falls
  # on either side with the CPU's convolution kernels. The 48x40 pair has one, relu3_1
  # channel 78 at (11, 2): +2.8e-7 in float32 on a Zen 3, +8e-9 in float64 from the same
  # float32 input, -4.8e-8 from the exact one. Switched on (Zen 3) it moves the gradient by
  # 3.5e-3 in L2 norm and 1.3% of the largest entry, in a 14x20-pixel patch; switched off
  # (an AVX-512 Xeon, as lpips) the max diff was 5.9e-6 of the largest entry. A wrong
  # pooling, normalisation or lin layout is off by O(1).
  assert np.linalg.norm(np.asarray(grad) - ref) < 1e-2 * np.linalg.norm(ref)


def test_zero_on_itself_and_symmetric(golden, params):
  x, y = _images(golden["x64"]), _images(golden["y64"])
  same = np.asarray(lpips.lpips(x, x, params))
  assert np.all(np.abs(same) < 1e-9)  # measured 3.5e-16: the batched trunk's rounding
  np.testing.assert_allclose(lpips.lpips(y, x, params), lpips.lpips(x, y, params),
                             atol=1e-7, rtol=0)


def test_normalize_gradient_is_finite_at_zero():
  # An all-zero feature vector: torch's sqrt backward gives NaN here.
  g = jax.grad(lambda v: lpips.normalize_tensor(v).sum())(jnp.zeros((2, 5)))
  assert np.all(np.isfinite(g))


# --- reading weights --------------------------------------------------------------


def _flat_equal(a, b):
  a, b = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])


def _parts(state_dict):
  trunk = {k: v for k, v in state_dict.items() if k.startswith("features.")}
  lin = {k: v for k, v in state_dict.items() if k.startswith("lin")}
  return trunk, lin


@pytest.fixture(scope="module")
def trunk_file(tmp_path_factory, state_dict):
  """The recipe's trunk as a safetensors file, with a torchvision classifier tensor to ignore."""
  path = tmp_path_factory.mktemp("lpips") / "vgg16.safetensors"
  extra = {"classifier.6.bias": np.zeros(1000, np.float32)}
  safetensors.numpy.save_file(_parts(state_dict)[0] | extra, str(path))
  return path


def test_lin_pth_loads(trunk_file, state_dict, params):
  # The released vgg.pth's names and shapes, legacy torch.save format like that file.
  lin_path = os.path.join(GOLDEN, "lpips_lin_tiny.pth")
  _flat_equal(lpips.load_lpips_params(trunk_file, lin_path), params)
  kernel = params["lin3"]["kernel"]
  assert kernel.shape == (512, 1)
  np.testing.assert_array_equal(kernel[:, 0], state_dict["lin3.model.1.weight"].reshape(-1))
  # OIHW -> HWIO
  np.testing.assert_array_equal(params["vgg"]["features_12"]["kernel"],
                                state_dict["features.12.weight"].transpose(2, 3, 1, 0))


def test_one_safetensors_file_with_both(tmp_path, state_dict, params):
  path = tmp_path / "lpips_vgg.safetensors"
  safetensors.numpy.save_file(state_dict, str(path))
  _flat_equal(lpips.load_lpips_params(path), params)


@pytest.mark.parametrize("which", ["vgg", "lin"])
def test_missing_file_says_where_to_get_weights(tmp_path, trunk_file, which):
  lin_path = os.path.join(GOLDEN, "lpips_lin_tiny.pth")
  if which == "vgg":
    missing, url = tmp_path / "vgg16-397923af.pth", lpips.VGG_URL
    args = (missing, lin_path)
  else:
    missing, url = tmp_path / "vgg.pth", lpips.LIN_URL
    args = (trunk_file, missing)
  with pytest.raises(CheckpointError) as e:
    lpips.load_lpips_params(*args)
  msg = str(e.value)
  assert str(missing) in msg and "no such file" in msg and url in msg and "\n" not in msg


@pytest.mark.parametrize("edit,needle", [
    ("missing", "missing tensor lin4.model.1.weight"),
    ("extra", "unexpected tensor lin5.model.1.weight"),
    ("shape", "tensor lin0.model.1.weight has shape (1, 64), expected (1, 64, 1, 1)"),
])
def test_wrong_keys_name_the_tensor(tmp_path, trunk_file, state_dict, edit, needle):
  lin = dict(_parts(state_dict)[1])
  if edit == "missing":
    del lin["lin4.model.1.weight"]
  elif edit == "extra":
    lin["lin5.model.1.weight"] = np.zeros((1, 512, 1, 1), np.float32)
  else:
    lin["lin0.model.1.weight"] = lin["lin0.model.1.weight"].reshape(1, 64)
  path = tmp_path / "lin.safetensors"
  safetensors.numpy.save_file(lin, str(path))
  with pytest.raises(CheckpointError) as e:
    lpips.load_lpips_params(trunk_file, path)
  msg = str(e.value)
  assert needle in msg and str(path) in msg and "\n" not in msg


def test_trunk_file_alone_is_not_enough(trunk_file):
  with pytest.raises(CheckpointError, match="missing tensor lin0.model.1.weight"):
    lpips.load_lpips_params(trunk_file)

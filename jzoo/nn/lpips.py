"""LPIPS (Zhang et al. 2018) with the VGG16 trunk, in Flax, and its weight loader.

This is the `lpips` package 0.1.4's `LPIPS(net='vgg', version='0.1')` in eval
mode, the perceptual loss of VQ-GAN (taming-transformers ships the same
linear-layer file, md5 d507d7349b931f0638a25a48a722f98a):

  x, y in [-1, 1] -> ScalingLayer -> VGG16 `features` up to relu1_2, relu2_2,
  relu3_3, relu4_3, relu5_3 -> unit-normalise each feature vector over channels
  -> squared difference -> 1x1 "lin" layer (no bias; its dropout is off in eval)
  -> spatial mean -> sum over the 5 layers  =  one distance per image pair.

Layout is NHWC. The function is differentiable, so it serves as a training loss.

Weights are read from local files only (jzoo never downloads):
  * the trunk: torchvision's ImageNet VGG16, `vgg16-397923af.pth` (VGG_URL), names
    `features.N.weight/bias` (its `classifier.*` is ignored);
  * the lin layers: the lpips package's `weights/v0.1/vgg.pth` (LIN_URL), names
    `lin0.model.1.weight` ... `lin4.model.1.weight`;
  both read without torch by jzoo.eval.inception's reader, or either or both from
  safetensors files with the same names (one file may hold both sets).
"""

import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jzoo.errors import CheckpointError
from jzoo.io.weight_files import read_safetensors, read_torch_state_dict

VGG_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
LIN_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth"

# ScalingLayer: ImageNet mean/std expressed for inputs in [-1, 1].
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
# torchvision vgg16 `features`: (index of each conv, its width); "M" is a 2x2/2 max pool.
# The indices are the state_dict names. The five LPIPS taps are after each block's last ReLU.
_BLOCKS = (((0, 64), (2, 64)),
           ((5, 128), (7, 128)),
           ((10, 256), (12, 256), (14, 256)),
           ((17, 512), (19, 512), (21, 512)),
           ((24, 512), (26, 512), (28, 512)))
CHANNELS = tuple(block[-1][1] for block in _BLOCKS)  # (64, 128, 256, 512, 512)

# As in inception.py: the default TF32/bf16 float32 passes on GPU/TPU would move the
# distances far more than the port's own rounding.
_PRECISION = jax.lax.Precision.HIGHEST

# ----------------------------------------------------------------------------
# The network.


class VGG16Features(nn.Module):
  """torchvision VGG16 `features` -> the 5 LPIPS taps (relu1_2, ..., relu5_3), NHWC."""

  @nn.compact
  def __call__(self, x):
    taps = []
    for i, block in enumerate(_BLOCKS):
      if i:  # the max pool that opens slices 2-5 (floors odd sizes, like ceil_mode=False)
        x = nn.max_pool(x, (2, 2), (2, 2), padding="VALID")
      for index, width in block:
        x = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), precision=_PRECISION,
                    name=f"features_{index}")(x)
        x = nn.relu(x)
      taps.append(x)
    return taps


def normalize_tensor(x, eps=1e-10):
  """x / (||x|| + eps) over channels (the last axis), as lpips.normalize_tensor.

  An all-zero feature vector (all ReLUs off) has norm 0, where torch's sqrt gradient
  is inf and its backward gives NaN; here the norm's gradient is taken as 0 there, so
  the gradient stays finite (it is then zeroed by the ReLU anyway). Values are unchanged.
  """
  sq = jnp.sum(x * x, axis=-1, keepdims=True)
  positive = sq > 0
  norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
  return x / (norm + eps)


class LPIPS(nn.Module):
  """LPIPS-VGG distance: x, y float [N, H, W, 3] in [-1, 1] -> [N] float32.

  H, W >= 16 so that relu5_3 is not empty (lpips' own minimum).
  """

  @nn.compact
  def __call__(self, x, y):
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    n = x.shape[0]
    shift, scale = jnp.asarray(SHIFT, jnp.float32), jnp.asarray(SCALE, jnp.float32)
    # One trunk pass over both images: half the kernel launches, same per-image math.
    taps = VGG16Features(name="vgg")((jnp.concatenate([x, y]) - shift) / scale)
    total = 0.0
    for k, tap in enumerate(taps):
      diff = (normalize_tensor(tap[:n]) - normalize_tensor(tap[n:])) ** 2
      lin = nn.Dense(1, use_bias=False, precision=_PRECISION, name=f"lin{k}")(diff)
      total = total + lin.mean(axis=(1, 2))[:, 0]  # spatial_average
    return total


@jax.jit
def lpips(x, y, params):
  """LPIPS-VGG distances [N] of image pairs x, y [N, H, W, 3] in [-1, 1] (jit- and grad-safe)."""
  return LPIPS().apply({"params": params}, x, y)


# ----------------------------------------------------------------------------
# PyTorch state_dict <-> Flax params.

_IGNORED_PREFIX = "classifier."  # torchvision's VGG16 file has the classifier too


def _vgg_names():
  """{torch name: (Flax path, torch shape)} of the trunk."""
  out, width_in = {}, 3
  for block in _BLOCKS:
    for index, width in block:
      path = ("vgg", f"features_{index}")
      out[f"features.{index}.weight"] = (path + ("kernel",), (width, width_in, 3, 3))
      out[f"features.{index}.bias"] = (path + ("bias",), (width,))
      width_in = width
  return out


def _lin_names():
  """{torch name: (Flax path, torch shape)} of the lin layers (`model.0` is the dropout)."""
  return {f"lin{k}.model.1.weight": ((f"lin{k}", "kernel"), (1, c, 1, 1))
          for k, c in enumerate(CHANNELS)}


def torch_shapes():
  """{state_dict name: shape} that the loader expects: trunk then lin layers."""
  return {name: shape for name, (_, shape) in (_vgg_names() | _lin_names()).items()}


def _check(state, names, source, hint):
  """CheckpointError for a missing, unexpected or misshapen tensor of `names` in `state`."""
  for name in names:
    if name not in state:
      raise CheckpointError(f"{source}: missing tensor {name}; expected {hint}")
  for name, value in state.items():
    if name not in names:
      raise CheckpointError(f"{source}: unexpected tensor {name}; expected {hint}")
    if tuple(np.shape(value)) != names[name][1]:
      raise CheckpointError(f"{source}: tensor {name} has shape {tuple(np.shape(value))}, "
                            f"expected {names[name][1]}")


def params_from_state_dict(state_dict):
  """{torch name: array} (trunk + lin layers) -> LPIPS params (float32 numpy, HWIO kernels)."""
  flat = {}
  for name, (path, _) in (_vgg_names() | _lin_names()).items():
    value = np.asarray(state_dict[name], np.float32)
    if name.startswith("lin"):
      value = value.reshape(1, -1).T  # [1, C, 1, 1] -> Dense kernel [C, 1]
    elif value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    flat[path] = value
  return traverse_util.unflatten_dict(flat)


def random_state_dict(seed=0):
  """A reproducible random LPIPS-VGG state_dict {name: float32 array}, NumPy only.

  The parity tests and scripts/make_lpips_golden.py share it. Names are drawn in
  sorted order from np.random.default_rng(seed): conv weights N(0, 2/fan_in) (He,
  keeps activations O(1) through 13 ReLU convs), conv biases N(0, 0.1^2), lin
  weights U(0, 0.2) (non-negative with mean 0.1, like the released ones).
  """
  rng = np.random.default_rng(seed)
  out = {}
  for name, shape in sorted(torch_shapes().items()):
    if name.startswith("lin"):
      value = rng.uniform(0.0, 0.2, shape)
    elif name.endswith(".weight"):
      value = rng.standard_normal(shape) * math.sqrt(2.0 / math.prod(shape[1:]))
    else:
      value = 0.1 * rng.standard_normal(shape)
    out[name] = value.astype(np.float32)
  return out


# ----------------------------------------------------------------------------
# Loading.

_VGG_HINT = f"torchvision's VGG16 ImageNet weights vgg16-397923af.pth from {VGG_URL}"
_LIN_HINT = (f"the lpips package's v0.1 vgg.pth from {LIN_URL} "
             f"(or lpips/weights/v0.1/vgg.pth in `pip install lpips`)")


def _read(path, hint):
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise CheckpointError(f"{path}: no such file; get {hint} (jzoo does not download weights)")
  state = read_safetensors(path) if path.endswith(".safetensors") else read_torch_state_dict(path)
  return {k: v for k, v in state.items() if not k.startswith(_IGNORED_PREFIX)}


def load_lpips_params(vgg_path, lin_path=None):
  """LPIPS-VGG params from the trunk file and the lin-layer file, or from one file with both.

  Each file is a torch.save .pth or a .safetensors with the state_dict names
  (`features.N.weight/bias`, `lin{k}.model.1.weight`). With lin_path None,
  vgg_path must hold both sets (e.g. a safetensors made as docs/metrics/lpips.md shows).
  """
  if lin_path is None:
    state = _read(vgg_path, f"{_VGG_HINT} and {_LIN_HINT}, merged as docs/metrics/lpips.md shows")
    _check(state, _vgg_names() | _lin_names(), os.fspath(vgg_path),
           "VGG16 features.* and lpips lin*.model.1.weight tensors")
  else:
    trunk, lin = _read(vgg_path, _VGG_HINT), _read(lin_path, _LIN_HINT)
    _check(trunk, _vgg_names(), os.fspath(vgg_path), _VGG_HINT)
    _check(lin, _lin_names(), os.fspath(lin_path), _LIN_HINT)
    state = trunk | lin
  return params_from_state_dict(state)

"""InceptionV3 of pytorch-fid (the FID network), in Flax, and its weight loader.

This is pytorch-fid 0.3.0's `fid_inception_v3()` as used by its `InceptionV3([3])`
wrapper (resize_input=True, normalize_input=True): the TensorFlow FID graph
ported to PyTorch. It differs from torchvision's InceptionV3 in the pool
branches of the Inception blocks: average pools that do not count the padding
(TensorFlow's), and a max pool in the last block (Mixed_7c). The output is the
2048-d pool3 feature; the classifier is not built.

Layout is NHWC. Batch norm is frozen (eval mode, eps=0.001), so its running
statistics live in the one `params` tree next to scale and bias.

Weights are read from local files only (jzoo never downloads):
  * pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (WEIGHTS_URL), read
    without torch by a restricted unpickler (zip and legacy torch.save formats);
  * a safetensors file with the same state_dict names.
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

WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               "pt_inception-2015-12-05-6726825d.pth")
SIZE = 299  # pytorch-fid resizes every image to SIZE x SIZE
FEATURE_DIM = 2048

# Full precision: the TF32/bf16 passes that GPUs and TPUs use by default for float32
# would move the features far more than the ported network's own rounding does.
_PRECISION = jax.lax.Precision.HIGHEST

# ----------------------------------------------------------------------------
# Preprocessing.


def preprocess(images, size=SIZE):
  """uint8 [0, 255] or float [0, 1] images [N, H, W, 3] -> float32 [N, size, size, 3] in [-1, 1].

  As pytorch-fid: to [0, 1] (ToTensor's x / 255), bilinear resize like
  `F.interpolate(mode="bilinear", align_corners=False)`, then 2x - 1. Without
  antialiasing, jax.image.resize samples the same half-pixel positions with the
  same edge clamping, for up- and downsampling alike.
  """
  x = jnp.asarray(images)
  x = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
  if x.shape[1:3] != (size, size):
    x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), method="linear",
                         antialias=False)
  return 2.0 * x - 1.0


# ----------------------------------------------------------------------------
# The network. Module names are the PyTorch ones, so the state_dict maps 1:1.


class FrozenBatchNorm(nn.Module):
  """BatchNorm2d in eval mode; the running statistics are parameters (nothing is trained)."""

  epsilon: float = 1e-3

  @nn.compact
  def __call__(self, x):
    shape = (x.shape[-1],)
    scale = self.param("scale", nn.initializers.ones, shape)
    bias = self.param("bias", nn.initializers.zeros, shape)
    mean = self.param("mean", nn.initializers.zeros, shape)
    var = self.param("var", nn.initializers.ones, shape)
    return (x - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + bias


class BasicConv2d(nn.Module):
  """torchvision's BasicConv2d: conv without bias, batch norm, ReLU."""

  features: int
  kernel_size: tuple = (1, 1)
  strides: int = 1
  padding: tuple = (0, 0)

  @nn.compact
  def __call__(self, x):
    ph, pw = self.padding
    x = nn.Conv(self.features, self.kernel_size, strides=self.strides,
                padding=((ph, ph), (pw, pw)), use_bias=False, precision=_PRECISION,
                name="conv")(x)
    return nn.relu(FrozenBatchNorm(name="bn")(x))


def _conv(name, features, kernel=1, strides=1, padding=0):
  """A BasicConv2d named like its PyTorch attribute; ints mean square kernels/paddings."""
  pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)
  return BasicConv2d(features, pair(kernel), strides, pair(padding), name=name)


def _tf_avg_pool(x):
  """3x3/1 average pool, padding 1, that averages only real pixels (TensorFlow's)."""
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x):
  return nn.max_pool(x, (3, 3), (2, 2), padding="VALID")


class InceptionA(nn.Module):
  """FIDInceptionA (Mixed_5b/c/d)."""

  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = _conv("branch1x1", 64)(x)
    b5 = _conv("branch5x5_2", 64, 5, padding=2)(_conv("branch5x5_1", 48)(x))
    b3 = _conv("branch3x3dbl_1", 64)(x)
    b3 = _conv("branch3x3dbl_2", 96, 3, padding=1)(b3)
    b3 = _conv("branch3x3dbl_3", 96, 3, padding=1)(b3)
    bp = _conv("branch_pool", self.pool_features)(_tf_avg_pool(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """torchvision's InceptionB (Mixed_6a), unchanged in pytorch-fid."""

  @nn.compact
  def __call__(self, x):
    b3 = _conv("branch3x3", 384, 3, strides=2)(x)
    bd = _conv("branch3x3dbl_1", 64)(x)
    bd = _conv("branch3x3dbl_2", 96, 3, padding=1)(bd)
    bd = _conv("branch3x3dbl_3", 96, 3, strides=2)(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  """FIDInceptionC (Mixed_6b/c/d/e)."""

  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = _conv("branch1x1", 192)(x)
    b7 = _conv("branch7x7_1", c7)(x)
    b7 = _conv("branch7x7_2", c7, (1, 7), padding=(0, 3))(b7)
    b7 = _conv("branch7x7_3", 192, (7, 1), padding=(3, 0))(b7)
    bd = _conv("branch7x7dbl_1", c7)(x)
    bd = _conv("branch7x7dbl_2", c7, (7, 1), padding=(3, 0))(bd)
    bd = _conv("branch7x7dbl_3", c7, (1, 7), padding=(0, 3))(bd)
    bd = _conv("branch7x7dbl_4", c7, (7, 1), padding=(3, 0))(bd)
    bd = _conv("branch7x7dbl_5", 192, (1, 7), padding=(0, 3))(bd)
    bp = _conv("branch_pool", 192)(_tf_avg_pool(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """torchvision's InceptionD (Mixed_7a), unchanged in pytorch-fid."""

  @nn.compact
  def __call__(self, x):
    b3 = _conv("branch3x3_2", 320, 3, strides=2)(_conv("branch3x3_1", 192)(x))
    b7 = _conv("branch7x7x3_1", 192)(x)
    b7 = _conv("branch7x7x3_2", 192, (1, 7), padding=(0, 3))(b7)
    b7 = _conv("branch7x7x3_3", 192, (7, 1), padding=(3, 0))(b7)
    b7 = _conv("branch7x7x3_4", 192, 3, strides=2)(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """FIDInceptionE_1 (pool="avg", Mixed_7b) and FIDInceptionE_2 (pool="max", Mixed_7c)."""

  pool: str

  @nn.compact
  def __call__(self, x):
    b1 = _conv("branch1x1", 320)(x)
    b3 = _conv("branch3x3_1", 384)(x)
    b3 = jnp.concatenate([_conv("branch3x3_2a", 384, (1, 3), padding=(0, 1))(b3),
                          _conv("branch3x3_2b", 384, (3, 1), padding=(1, 0))(b3)], axis=-1)
    bd = _conv("branch3x3dbl_1", 448)(x)
    bd = _conv("branch3x3dbl_2", 384, 3, padding=1)(bd)
    bd = jnp.concatenate([_conv("branch3x3dbl_3a", 384, (1, 3), padding=(0, 1))(bd),
                          _conv("branch3x3dbl_3b", 384, (3, 1), padding=(1, 0))(bd)], axis=-1)
    if self.pool == "avg":
      pooled = _tf_avg_pool(x)
    else:  # pytorch-fid: the TF graph max-pools here (likely a bug there, kept for parity)
      pooled = nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)))
    bp = _conv("branch_pool", 192)(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """pytorch-fid's FID InceptionV3 up to pool3: preprocessed [N, H, W, 3] -> [N, 2048].

  Takes the output of `preprocess` (any H, W >= 75 works; FID uses 299).
  """

  @nn.compact
  def __call__(self, x):
    x = _conv("Conv2d_1a_3x3", 32, 3, strides=2)(x)
    x = _conv("Conv2d_2a_3x3", 32, 3)(x)
    x = _conv("Conv2d_2b_3x3", 64, 3, padding=1)(x)
    x = _max_pool_3x3_s2(x)
    x = _conv("Conv2d_3b_1x1", 80)(x)
    x = _conv("Conv2d_4a_3x3", 192, 3)(x)
    x = _max_pool_3x3_s2(x)
    for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
      x = InceptionA(pool_features, name=name)(x)
    x = InceptionB(name="Mixed_6a")(x)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(c7, name=name)(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE("avg", name="Mixed_7b")(x)
    x = InceptionE("max", name="Mixed_7c")(x)
    return x.mean(axis=(1, 2))  # AdaptiveAvgPool2d(1)


# ----------------------------------------------------------------------------
# PyTorch state_dict <-> Flax params.

_BN_NAMES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
_FLAX_TO_TORCH = {v: k for k, v in _BN_NAMES.items()} | {"kernel": "weight"}
# In pytorch-fid's file but not needed for pool3 features.
_IGNORED = ("fc.weight", "fc.bias")


def param_shapes():
  """Flat {Flax path tuple: shape} of InceptionV3's parameters (abstract, no memory)."""
  tree = jax.eval_shape(lambda: InceptionV3().init(jax.random.PRNGKey(0),
                                                   jnp.zeros((1, 75, 75, 3))))
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(tree["params"]).items()}


def torch_name(path):
  """Flax path ('Mixed_5b', 'branch1x1', 'conv', 'kernel') -> 'Mixed_5b.branch1x1.conv.weight'."""
  return ".".join(path[:-1] + (_FLAX_TO_TORCH[path[-1]],))


def torch_shapes():
  """{PyTorch state_dict name: shape} that the loader expects (conv weights are OIHW)."""
  out = {}
  for path, shape in param_shapes().items():
    out[torch_name(path)] = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape
  return out


def params_from_state_dict(state_dict, source="state_dict"):
  """PyTorch-named arrays {name: array} -> InceptionV3 params (float32 numpy, HWIO kernels).

  `fc.*` and BN `num_batches_tracked` are ignored; anything else missing, extra or
  of the wrong shape is a CheckpointError naming the tensor and `source`.
  """
  state = {k: v for k, v in state_dict.items()
           if k not in _IGNORED and not k.endswith(".num_batches_tracked")}
  expected = torch_shapes()
  for name in sorted(expected):
    if name not in state:
      raise CheckpointError(f"{source}: missing tensor {name}; is this pytorch-fid's "
                            f"pt_inception-2015-12-05 weights file?")
  for name in sorted(state):
    if name not in expected:
      raise CheckpointError(f"{source}: unexpected tensor {name}; is this pytorch-fid's "
                            f"pt_inception-2015-12-05 weights file?")
    if tuple(np.shape(state[name])) != expected[name]:
      raise CheckpointError(f"{source}: tensor {name} has shape {tuple(np.shape(state[name]))}, "
                            f"expected {expected[name]}")
  flat = {}
  for path in param_shapes():
    value = np.asarray(state[torch_name(path)], np.float32)
    flat[path] = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value  # OIHW -> HWIO
  return traverse_util.unflatten_dict(flat)


def random_state_dict(seed=0):
  """A reproducible random pytorch-fid state_dict {name: float32 array}, NumPy only.

  The parity tests and scripts/make_fid_golden.py share it. Names are drawn in
  sorted order from np.random.default_rng(seed): conv weights N(0, 2/fan_in)
  (He), BN weight and running_var U(0.8, 1.2), BN bias and running_mean
  N(0, 0.1^2). Variances near 1 keep activations O(1) through the ~50 layers.
  """
  rng = np.random.default_rng(seed)
  out = {}
  for name, shape in sorted(torch_shapes().items()):
    if name.endswith("conv.weight"):
      value = rng.standard_normal(shape) * math.sqrt(2.0 / math.prod(shape[1:]))
    elif name.endswith(("bn.weight", "bn.running_var")):
      value = rng.uniform(0.8, 1.2, shape)
    else:  # bn.bias, bn.running_mean
      value = 0.1 * rng.standard_normal(shape)
    out[name] = value.astype(np.float32)
  return out


def load_inception_params(path):
  """InceptionV3 params from pytorch-fid's .pth weights or a safetensors file of the same names."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise CheckpointError(f"{path}: no such file; download pytorch-fid's Inception weights "
                          f"from {WEIGHTS_URL} (jzoo does not download them)")
  state = read_safetensors(path) if path.endswith(".safetensors") else read_torch_state_dict(path)
  return params_from_state_dict(state, source=path)

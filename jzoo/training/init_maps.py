"""Parameter mappings for `train.init_map`: how an export's params of one architecture become the
starting params of another (an image model's weights starting a video model).

A mapping takes (the source params, host arrays; the target's abstract params, ShapeDtypeStructs)
and returns the new tree. Target leaves missing from the result keep their fresh init
(loop._fill_missing); leaves whose shapes still differ are an error when placed.
"""

import numpy as np

from jzoo.errors import ConfigError


def identity(source, target):
  del target
  return source


def inflate_conv3d(source, target):
  """2D conv kernels [kh, kw, cin, cout] where the target has 3D ones [kt, kh, kw, cin, cout]
  become 3D kernels with an identity temporal kernel (centre tap = the 2D kernel, the others 0):
  each frame is convolved alone, exactly as the image model did (with SAME temporal padding and
  odd kt)."""

  def inflate(kernel, want):
    kernel = np.asarray(kernel)
    if kernel.ndim != 4 or len(want.shape) != 5 or tuple(want.shape[1:]) != kernel.shape:
      return kernel
    out = np.zeros(want.shape, kernel.dtype)
    out[want.shape[0] // 2] = kernel
    return out

  return _map_common(inflate, source, target)


def _map_common(fn, source, target):
  """`source` with fn(leaf, target leaf) applied where both trees have the leaf."""
  if not isinstance(source, dict):
    return source if isinstance(target, dict) else fn(source, target)
  if not isinstance(target, dict):
    return source
  return {k: _map_common(fn, v, target[k]) if k in target else v for k, v in source.items()}


INIT_MAPS = {"identity": identity, "inflate_conv3d": inflate_conv3d}


def get(name):
  """The mapping `train.init_map` names ("" = identity)."""
  fn = INIT_MAPS.get(name or "identity")
  if fn is None:
    raise ConfigError(f"unknown train.init_map {name!r}; choose one of {', '.join(INIT_MAPS)}")
  return fn

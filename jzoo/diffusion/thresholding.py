"""Keeping predicted clean images in the data range during sampling (Imagen, section 2.3).

  static   clip x0 to [-1, 1].
  dynamic  per sample, s = the `percentile` quantile of |x0|, s = max(s, 1);
           clip x0 to [-s, s] and divide by s. Saturated pixels are pushed
           inwards, which lets large guidance weights work.
"""

import math

import jax.numpy as jnp

from jzoo.errors import ConfigError
from jzoo.nn import selection

THRESHOLDING = ("none", "static", "dynamic")


def static_threshold(x0):
  return jnp.clip(x0, -1.0, 1.0)


def upper_quantile(flat, q):
  """jnp.quantile(flat, q, axis=1) (linear interpolation), from the two order statistics around
  it, found without sorting (`selection.kth_largest`): a sort per row was 30% of the tiny Imagen
  SR stage's sampling time on a CPU, and `lax.top_k` is a sort there too."""
  n = flat.shape[1]
  pos = float(q) * (n - 1)
  lo = int(math.floor(pos))
  hi = min(lo + 1, n - 1)
  # ascending index i is the (n - i)-th largest
  v_lo, v_hi = jnp.moveaxis(selection.kth_largest(flat, (n - lo, n - hi)), -1, 0)
  return v_lo + (pos - lo) * (v_hi - v_lo)


def dynamic_threshold(x0, percentile=0.995):
  flat = jnp.abs(x0.reshape(x0.shape[0], -1)).astype(jnp.float32)
  s = upper_quantile(flat, percentile)
  s = jnp.maximum(s, 1.0).reshape((-1,) + (1,) * (x0.ndim - 1))
  return (jnp.clip(x0, -s, s) / s).astype(x0.dtype)


def threshold(x0, method="dynamic", percentile=0.995):
  if method == "none":
    return x0
  if method == "static":
    return static_threshold(x0)
  if method == "dynamic":
    return dynamic_threshold(x0, percentile)
  raise ConfigError(f"unknown thresholding {method!r}; choose one of {THRESHOLDING}")

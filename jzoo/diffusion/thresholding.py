"""Keeping predicted clean images in the data range during sampling (Imagen, section 2.3).

  static   clip x0 to [-1, 1].
  dynamic  per sample, s = the `percentile` quantile of |x0|, s = max(s, 1);
           clip x0 to [-s, s] and divide by s. Saturated pixels are pushed
           inwards, which lets large guidance weights work.
"""

import jax.numpy as jnp

from jzoo.errors import ConfigError

THRESHOLDING = ("none", "static", "dynamic")


def static_threshold(x0):
  return jnp.clip(x0, -1.0, 1.0)


def dynamic_threshold(x0, percentile=0.995):
  flat = jnp.abs(x0.reshape(x0.shape[0], -1)).astype(jnp.float32)
  s = jnp.quantile(flat, percentile, axis=1)
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

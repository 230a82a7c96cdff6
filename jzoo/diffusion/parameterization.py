"""What the network predicts: eps (noise), v (velocity) or x0 (the clean signal), and conversions.

With z = alpha x + sigma eps (alpha^2 + sigma^2 = 1):
  eps:  x = (z - sigma eps) / alpha
  v:    v = alpha eps - sigma x  (Salimans & Ho 2022);  x = alpha z - sigma v,  eps = sigma z + alpha v
  x0:   eps = (z - alpha x) / sigma
"""

import jax.numpy as jnp

from jzoo.errors import ConfigError

PARAMETERIZATIONS = ("eps", "v", "x0")


def check(kind):
  if kind not in PARAMETERIZATIONS:
    raise ConfigError(f"unknown parameterization {kind!r}; choose one of {PARAMETERIZATIONS}")
  return kind


def to_x0_eps(kind, out, z, alpha, sigma):
  """The (x0, eps) implied by the network output `out` at z. alpha/sigma broadcast against z."""
  if kind == "eps":
    return (z - sigma * out) / alpha, out
  if kind == "v":
    return alpha * z - sigma * out, sigma * z + alpha * out
  if kind == "x0":
    return out, (z - alpha * out) / sigma
  raise ConfigError(f"unknown parameterization {kind!r}; choose one of {PARAMETERIZATIONS}")


def target(kind, x0, eps, alpha, sigma):
  """The regression target of the network for clean x0 and noise eps."""
  if kind == "eps":
    return eps
  if kind == "v":
    return alpha * eps - sigma * x0
  if kind == "x0":
    return x0
  raise ConfigError(f"unknown parameterization {kind!r}; choose one of {PARAMETERIZATIONS}")


def eps_from_x0(x0, z, alpha, sigma):
  return (z - alpha * x0) / sigma


def broadcast_to(v, x):
  """[B] -> [B, 1, ..., 1] matching x's rank."""
  v = jnp.asarray(v)
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))

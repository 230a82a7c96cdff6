"""Embeddings of noise levels (diffusion time, augmentation level) and pooled text."""

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jzoo.nn import layers


def sinusoidal(x, dim, max_period=10000.0):
  """Transformer-style sin/cos features of a [B] array -> float32 [B, dim]."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = x.astype(jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def logsnr_to_level(logsnr):
  """Maps a log-SNR to the cosine schedule's time in [0, 1]: bounded and smooth for any log-SNR.

  Networks see this instead of the raw log-SNR so that one input scale serves every schedule."""
  return jnp.arctan(jnp.exp(-0.5 * logsnr.astype(jnp.float32))) * (2.0 / math.pi)


class NoiseLevelEmbedding(nn.Module):
  """log-SNR [B] -> sinusoidal features of 1000 * level -> MLP -> [B, features]."""
  features: int
  frequencies: int = 128
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, logsnr):
    h = sinusoidal(1000.0 * logsnr_to_level(logsnr), self.frequencies)
    h = layers.dense(self.features, ("embed", "mlp"), dtype=self.dtype, name="dense_0")(h)
    h = layers.dense(self.features, ("mlp", "embed"), dtype=self.dtype, name="dense_1")(nn.silu(h))
    return h


def masked_mean(x, mask):
  """Mean of [B, L, D] over the positions where mask [B, L] is 1; zeros where no position is."""
  m = mask.astype(jnp.float32)[..., None]
  total = jnp.sum(x.astype(jnp.float32) * m, axis=1)
  return total / jnp.maximum(jnp.sum(m, axis=1), 1.0)

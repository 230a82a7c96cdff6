"""The residual block of diffusion U-Nets (DDPM / improved DDPM / Imagen).

GroupNorm -> SiLU -> conv -> GroupNorm, modulated by the conditioning
embedding as (1 + scale) * h + shift -> SiLU -> dropout -> conv (zero init),
plus a 1x1 conv on the input when the width changes.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jzoo.nn import layers


class ResBlock(nn.Module):
  features: int
  dropout: float = 0.0
  norm_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, emb, deterministic=True):
    h = nn.silu(layers.GroupNorm(self.norm_groups, self.dtype, name="norm_0")(x))
    h = layers.conv(self.features, 3, dtype=self.dtype, name="conv_0")(h)
    scale_shift = layers.dense(2 * self.features, ("embed", "mlp"), dtype=self.dtype,
                               name="cond")(nn.silu(emb))
    scale, shift = jnp.split(scale_shift[:, None, None, :], 2, axis=-1)
    h = layers.GroupNorm(self.norm_groups, self.dtype, name="norm_1")(h) * (1 + scale) + shift
    h = nn.Dropout(self.dropout)(nn.silu(h), deterministic=deterministic)
    h = layers.conv(self.features, 3, dtype=self.dtype, init_scale=0.0, name="conv_1")(h)
    if x.shape[-1] != self.features:
      x = layers.conv(self.features, 1, dtype=self.dtype, name="skip")(x)
    return layers.constrain_image(x + h)

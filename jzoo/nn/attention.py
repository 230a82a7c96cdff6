"""Multi-head attention for image feature maps: self-attention and masked cross-attention to text.

Attention tensors are [B, length, heads, head_dim]; logits and softmax run in
float32 whatever the compute dtype.

The blocks run `jzoo.nn.patterns.attention` (Full; the cross-attention's text
padding as `kv_valid`): on CPU that is `jax.nn.dot_product_attention`, bit for
bit `dot_product_attention` in float32, and the platform's fused kernel on
TPU/GPU. `dot_product_attention` (dense mask, finite -1e10 fill) stays for
CLIP, whose numerics are pinned to transformers', and for dense masks the op
does not express.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jzoo.nn import layers, patterns

_MASKED = -1e10  # finite: a fully masked row is an average of the values, not NaN


def dot_product_attention(q, k, v, mask=None):
  """softmax(q k^T / sqrt(d)) v. q [B,Q,H,D], k/v [B,K,H,D], mask broadcastable to [B,H,Q,K]."""
  scale = 1.0 / np.sqrt(q.shape[-1]).astype(np.float32)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32)) * scale
  if mask is not None:
    logits = jnp.where(mask, logits, _MASKED)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


_FAN_IN = nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=0, out_axis=(1, 2))


class HeadsProjection(nn.Module):
  """[..., in] -> [..., heads, head_dim] with a bias-free [in, heads, head_dim] kernel.

  Shared by every attention of the zoo (U-Nets, T5, transformers): heads get
  their own kernel axis so that tensor parallelism can shard them."""
  heads: int
  head_dim: int
  dtype: Any = jnp.float32
  kernel_init: Any = _FAN_IN

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init,
                                                               ("embed", "heads", "kv")),
                        (x.shape[-1], self.heads, self.head_dim), jnp.float32)
    return jnp.einsum("...e,ehd->...hd", x.astype(self.dtype), kernel.astype(self.dtype))


class OutProjection(nn.Module):
  """[..., heads, head_dim] -> [..., features] with a [heads, head_dim, features] kernel.

  By default zero-initialised with a bias, so a new residual block starts as the identity."""
  features: int
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.zeros
  use_bias: bool = True

  @nn.compact
  def __call__(self, y):
    kernel = self.param("kernel", nn.with_logical_partitioning(
        self.kernel_init, ("heads", "kv", "embed")), (*y.shape[-2:], self.features), jnp.float32)
    out = jnp.einsum("...hd,hde->...e", y.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                        (self.features,), jnp.float32)
      out = out + bias.astype(self.dtype)
    return out


def _heads(channels, head_dim):
  if channels % head_dim:
    raise ValueError(f"{channels} channels do not split into heads of {head_dim}")
  return channels // head_dim


class SelfAttentionBlock(nn.Module):
  """x + Attention(GroupNorm(x)) over the H*W positions of a [B, H, W, C] map."""
  head_dim: int = 64
  norm_groups: int = 32
  dtype: Any = jnp.float32
  impl: str = "auto"  # of `jzoo.nn.patterns.attention`

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    heads = _heads(c, self.head_dim)
    y = layers.GroupNorm(self.norm_groups, self.dtype, name="norm")(x).reshape(b, h * w, c)
    q = HeadsProjection(heads, self.head_dim, self.dtype, name="query")(y)
    k = HeadsProjection(heads, self.head_dim, self.dtype, name="key")(y)
    v = HeadsProjection(heads, self.head_dim, self.dtype, name="value")(y)
    q, k, v = (nn.with_logical_constraint(t, ("batch", "length", "heads", "kv")) for t in (q, k, v))
    y = patterns.attention(q, k, v, patterns.Full(), impl=self.impl)
    y = OutProjection(c, self.dtype, name="out")(y)
    return x + y.reshape(b, h, w, c).astype(x.dtype)


class CrossAttentionBlock(nn.Module):
  """x + Attention(GroupNorm(x) -> text tokens). Padded tokens are masked out.

  A learned null key/value is always attendable, so a caption with every token
  masked (classifier-free guidance's unconditional pass) is well defined and
  means "no text".
  """
  head_dim: int = 64
  norm_groups: int = 32
  dtype: Any = jnp.float32
  impl: str = "auto"  # of `jzoo.nn.patterns.attention`

  @nn.compact
  def __call__(self, x, context, context_mask):
    b, h, w, c = x.shape
    heads = _heads(c, self.head_dim)
    y = layers.GroupNorm(self.norm_groups, self.dtype, name="norm")(x).reshape(b, h * w, c)
    q = HeadsProjection(heads, self.head_dim, self.dtype, name="query")(y)
    k = HeadsProjection(heads, self.head_dim, self.dtype, name="key")(context)
    v = HeadsProjection(heads, self.head_dim, self.dtype, name="value")(context)
    null_init = nn.with_logical_partitioning(nn.initializers.normal(1.0), ("heads", "kv"))
    null_k = self.param("null_key", null_init, (heads, self.head_dim), jnp.float32)
    null_v = self.param("null_value", null_init, (heads, self.head_dim), jnp.float32)
    null_shape = (b, 1, heads, self.head_dim)
    k = jnp.concatenate([jnp.broadcast_to(null_k.astype(k.dtype), null_shape), k], axis=1)
    v = jnp.concatenate([jnp.broadcast_to(null_v.astype(v.dtype), null_shape), v], axis=1)
    valid = jnp.concatenate([jnp.ones((b, 1), bool), context_mask > 0], axis=1)
    y = patterns.attention(q, k, v, patterns.Full(), kv_valid=valid, impl=self.impl)
    y = OutProjection(c, self.dtype, name="out")(y)
    return x + y.reshape(b, h, w, c).astype(x.dtype)

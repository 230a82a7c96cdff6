"""Convolutions, dense layers and norms whose parameters carry logical axis names.

Thin factories over `flax.linen` layers: parameters are float32, compute runs
in `dtype`, and every kernel, bias and scale is wrapped in
`nn.with_logical_partitioning` with names from `jzoo.parallel.rules`.
"""

import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

CONV_AXES = (None, None, "conv_in", "conv_out")
BHWC = ("batch", "height", "width", "embed")


def _scaled(init, scale):
  if scale == 1.0:
    return init
  return lambda *a, **k: init(*a, **k) * scale


def conv(features, kernel_size=3, strides=1, *, dtype=jnp.float32, init_scale=1.0,
         out_axis: Optional[str] = "conv_out", name=None):
  """A 'SAME' 2-D convolution. `init_scale=0` gives a zero-initialised (identity-residual) conv.

  `out_axis=None` for tiny output widths (RGB) that no mesh axis divides."""
  k = (kernel_size, kernel_size)
  s = (strides, strides)
  init = nn.initializers.zeros if init_scale == 0 else _scaled(
      nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"), init_scale)
  return nn.Conv(features, k, s, padding="SAME", dtype=dtype, param_dtype=jnp.float32,
                 kernel_init=nn.with_logical_partitioning(init, (None, None, "conv_in", out_axis)),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (out_axis,)),
                 name=name)


def dense(features, axes=("embed", "mlp"), *, dtype=jnp.float32, init_scale=1.0, use_bias=True,
          name=None):
  """A dense layer with a [in, out] kernel named `axes` and an `axes[1]` bias."""
  init = nn.initializers.zeros if init_scale == 0 else _scaled(
      nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"), init_scale)
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=nn.with_logical_partitioning(init, axes),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)),
                  name=name)


def gelu_exact(x):
  """The exact (erf) GELU, x Phi(x), as 0.5 x (1 + erf(x / sqrt 2)): the same values as
  `jax.nn.gelu(approximate=False)` (to 1e-6), whose erfc form XLA:CPU differentiates about 2.5x
  slower (dalle2:tiny_shapes' prior train step: 235 -> 167 ms here; docs/benchmarks.md)."""
  return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(math.sqrt(0.5), x.dtype)))


def num_groups(channels, groups):
  """The largest group count <= `groups` that divides `channels`."""
  return math.gcd(channels, groups)


class _NormScaleBias(nn.Module):
  """A per-channel scale and bias, where flax's `nn.GroupNorm` kept them (`GroupNorm_0/scale`),
  so checkpoints from before `GroupNorm` computed its statistics itself still load."""

  @nn.compact
  def __call__(self, channels):
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                       (channels,), jnp.float32)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
                      (channels,), jnp.float32)
    return scale, bias


class GroupNorm(nn.Module):
  """GroupNorm over all axes but the batch, with statistics in float32; returns `dtype`.

  The same statistics as flax's `nn.GroupNorm` (mean and mean square, var = E[x^2] - E[x]^2),
  summed per channel over the contiguous positions first and per group after: flax's
  reduction over [H, W, C/G] with the groups kept is strided, and on the CPU it made
  GroupNorm + SiLU 2-3.5x slower (forward and backward) at the U-Nets' shapes."""
  groups: int = 32
  dtype: Any = jnp.float32
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x):
    b, c = x.shape[0], x.shape[-1]
    g = num_groups(c, self.groups)
    scale, bias = _NormScaleBias(name="GroupNorm_0")(c)
    x = x.astype(jnp.float32)
    per_channel = x.reshape(b, -1, c)
    count = per_channel.shape[1] * (c // g)

    def group_mean(v):  # [B, C] channel sums -> [B, C] group means, repeated per channel
      v = v.reshape(b, g, c // g).sum(-1) / count
      return jnp.repeat(v, c // g, axis=-1)

    mean = group_mean(per_channel.sum(1))
    var = jnp.maximum(group_mean(jnp.square(per_channel).sum(1)) - jnp.square(mean), 0.0)
    shape = (b,) + (1,) * (x.ndim - 2) + (c,)
    inv = (jax.lax.rsqrt(var + self.epsilon) * scale).reshape(shape)
    return ((x - mean.reshape(shape)) * inv + bias).astype(self.dtype)


class LayerNorm(nn.Module):
  """LayerNorm over the last axis with statistics in float32; returns `dtype`."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, param_dtype=jnp.float32,
                     scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                     bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))(
                         x.astype(jnp.float32))
    return y.astype(self.dtype)


def gather_rows(table, ids):
  """table[ids] from the whole table, all-gathered first like any FSDP weight.

  From a table sharded on vocab (tensor) and embed (fsdp) into batch-sharded rows, the SPMD
  partitioner has no efficient plan: it warns "Involuntary full rematerialization" and
  replicates the gather's output and its gradient instead."""
  return jnp.take(nn.with_logical_constraint(table, (None, None)), ids, axis=0)


class Embed(nn.Embed):
  """`nn.Embed` (the same "embedding" parameter) whose lookup is `gather_rows`; by default the
  table starts at N(0, 0.02) and is partitioned ("vocab", "embed")."""
  embedding_init: Any = nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                     ("vocab", "embed"))

  def __call__(self, inputs):
    if not jnp.issubdtype(inputs.dtype, jnp.integer):
      raise ValueError(f"Embed takes integer ids, got {inputs.dtype}")
    return gather_rows(jnp.asarray(self.embedding, self.dtype), inputs)


def add_text_positions(module, context):
  """`context` [B, L, D] plus a learned embedding per text position, a parameter
  "text_position" [L, D] of the calling (compact) `module`.

  Cross-attention and a pooled mean are blind to the order of the text tokens, so a model
  conditioned on a frozen encoder that barely encodes word order cannot tell "a red circle
  to the left of a blue square" from its swap without this. Unit-scale init, like the tokens'
  entries: at 0.02 a fine-tuning run left it where it started (norm 0.23 against 11)."""
  positions = module.param("text_position", nn.with_logical_partitioning(
      nn.initializers.normal(1.0), ("length", "embed")), context.shape[1:], jnp.float32)
  return context + positions.astype(context.dtype)


def constrain_image(x):
  """Logical sharding constraint on a [B, H, W, C] activation (a no-op without a mesh)."""
  return nn.with_logical_constraint(x, BHWC)


def upsample_nearest(x, factor=2):
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, factor, w, factor, c))
  return x.reshape(b, h * factor, w * factor, c)


def downsample_area(x, factor):
  """Box-filter downsampling by an integer factor (the average over each factor x factor patch)."""
  if factor == 1:
    return x
  b, h, w, c = x.shape
  if h % factor or w % factor:
    raise ValueError(f"cannot area-downsample {h}x{w} by {factor}")
  return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def resize(x, size: Sequence[int], method="linear"):
  """Resizes [B, H, W, C] images to `size` = (H', W') (bilinear by default, antialiased down)."""
  b, _, _, c = x.shape
  return jax.image.resize(x, (b, *size, c), method=method, antialias=True)


def dtype_of(name):
  """A compute dtype from a config string ('float32', 'bfloat16')."""
  try:
    return jnp.dtype(name)
  except TypeError:
    from jzoo.errors import ConfigError
    raise ConfigError(f"unknown dtype {name!r}; use float32 or bfloat16") from None

"""T5 text encoder (T5 v1.1 / Flan-T5 and original T5) in Flax linen.

Architecture (Raffel et al. 2020; v1.1 changes from the t5x release notes):
token embedding without scaling, pre-norm blocks with T5's RMS layer norm (no
mean subtraction, no bias), self-attention without the 1/sqrt(d) logit scaling
(folded into the query initializer, as in t5x), one relative position bias
table computed once and shared by all layers, a gated-GELU feed-forward
(v1.1/Flan) or ReLU (original T5), no biases anywhere, and a final norm.

Parameter tree, following t5x's `examples/t5/network.py` so that a t5x
checkpoint's `target` maps onto it key for key:

  token_embedder/embedding                         [vocab, embed]
  encoder/relpos_bias/rel_embedding                [heads, buckets]
  encoder/layers_{i}/pre_attention_layer_norm/scale [embed]
  encoder/layers_{i}/attention/{query,key,value}/kernel [embed, heads, kv]
  encoder/layers_{i}/attention/out/kernel          [heads, kv, embed]
  encoder/layers_{i}/pre_mlp_layer_norm/scale      [embed]
  encoder/layers_{i}/mlp/{wi_0,wi_1}/kernel        [embed, mlp]   (gated-gelu)
  encoder/layers_{i}/mlp/wi/kernel                 [embed, mlp]   (relu)
  encoder/layers_{i}/mlp/wo/kernel                 [mlp, embed]
  encoder/encoder_norm/scale                       [embed]

One deliberate difference from t5x: t5x's DenseGeneral stores attention
kernels flattened to 2-D ([embed, heads*kv] and [heads*kv, embed], logical
axis "joined_kv"). jzoo keeps them 3-D so that "heads" can be sharded on its
own; `jzoo.text.t5_import` reshapes t5x's 2-D kernels on load.

Padding: the mask only removes padded *keys* (as Hugging Face does), so the
outputs at padded positions are defined but meaningless; consumers must use
the mask (cross-attention masks, masked mean pooling).
"""

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jzoo.errors import ConfigError
from jzoo.nn.attention import HeadsProjection, OutProjection
from jzoo.nn.layers import gather_rows

_LARGE_NEGATIVE = -1e10  # t5x's attention mask bias; finite so all-pad rows stay finite.


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Encoder hyper-parameters. The defaults are t5-v1_1-small."""
  vocab_size: int = 32128
  d_model: int = 512
  d_kv: int = 64
  d_ff: int = 1024
  num_heads: int = 6
  num_layers: int = 8
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  feed_forward: str = "gated-gelu"  # "gated-gelu" (v1.1 / Flan) or "relu" (original T5)
  layer_norm_epsilon: float = 1e-6
  dropout_rate: float = 0.0
  dtype: str = "float32"  # compute dtype; parameters are always float32

  def __post_init__(self):
    if self.feed_forward not in ("gated-gelu", "relu"):
      raise ConfigError(
          f"T5 feed_forward must be 'gated-gelu' or 'relu', got {self.feed_forward!r}")
    if self.dtype not in ("float32", "bfloat16", "float16"):
      raise ConfigError(f"T5 dtype must be float32, bfloat16 or float16, got {self.dtype!r}")


def _v1_1(d_model, d_ff, num_heads, num_layers):
  return T5Config(d_model=d_model, d_kv=64, d_ff=d_ff, num_heads=num_heads,
                  num_layers=num_layers, feed_forward="gated-gelu")


def _v1_0(d_model, d_kv, d_ff, num_heads, num_layers):
  return T5Config(d_model=d_model, d_kv=d_kv, d_ff=d_ff, num_heads=num_heads,
                  num_layers=num_layers, feed_forward="relu")


# Sizes from the released config.json files (google/t5-v1_1-*, google/flan-t5-*,
# t5-*). Flan-T5 has the same architecture as T5 v1.1 (different weights).
_V1_1_SIZES = {
    "small": (512, 1024, 6, 8),
    "base": (768, 2048, 12, 12),
    "large": (1024, 2816, 16, 24),
    "xl": (2048, 5120, 32, 24),
    "xxl": (4096, 10240, 64, 24),
}
T5_PRESETS: dict[str, T5Config] = {}
for _size, _dims in _V1_1_SIZES.items():
  T5_PRESETS[f"t5-v1_1-{_size}"] = _v1_1(*_dims)
  T5_PRESETS[f"flan-t5-{_size}"] = _v1_1(*_dims)
T5_PRESETS.update({
    "t5-small": _v1_0(512, 64, 2048, 8, 6),
    "t5-base": _v1_0(768, 64, 3072, 12, 12),
    "t5-large": _v1_0(1024, 64, 4096, 16, 24),
    "t5-3b": _v1_0(1024, 128, 16384, 32, 24),
    "t5-11b": _v1_0(1024, 128, 65536, 128, 24),
})


def t5_config_from_ml_collections(cfg: Any, strict: bool = False) -> T5Config:
  """Builds a T5Config from a ConfigDict or dict.

  The optional key `preset` names an entry of T5_PRESETS to start from; the
  other keys that are T5Config fields override it. Other keys (a `config.text`
  block also holds `length`, `tokenizer`, `checkpoint`, ...) are ignored,
  unless `strict`, where they raise ConfigError.
  """
  items = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
  preset = items.pop("preset", None) or None
  if preset is not None:
    if preset not in T5_PRESETS:
      raise ConfigError(
          f"unknown T5 preset {preset!r}; choose one of {', '.join(sorted(T5_PRESETS))}")
    base = T5_PRESETS[preset]
  else:
    base = T5Config()
  fields = {f.name: f for f in dataclasses.fields(T5Config)}
  unknown = sorted(k for k in items if k not in fields)
  if strict and unknown:
    raise ConfigError(f"unknown T5 config keys {unknown}; known: {sorted(fields)} and 'preset'")
  overrides = {}
  for k, v in items.items():
    if k in fields:
      ftype = type(getattr(base, k))
      try:
        overrides[k] = ftype(v)
      except (TypeError, ValueError) as e:
        raise ConfigError(f"T5 config key {k!r}: cannot use {v!r} as {ftype.__name__}") from e
  return dataclasses.replace(base, **overrides)


def _dtype(config: T5Config):
  return jnp.dtype(config.dtype)


def _param(module, name, init, shape, axes):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


class RMSNorm(nn.Module):
  """T5 layer norm: scale * x / rms(x); statistics in float32."""
  epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = _param(self, "scale", nn.initializers.ones, (x.shape[-1],), ("norm",))
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
    return (x * scale).astype(self.dtype)


class Embed(nn.Module):
  """Token embedding [vocab, embed] with a tied `attend` for logits."""
  num_embeddings: int
  features: int
  dtype: Any = jnp.float32

  def setup(self):
    # t5x: variance_scaling(1.0, "fan_in", "normal", out_axis=0) -> std 1/sqrt(embed).
    init = nn.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)
    self.embedding = _param(self, "embedding", init,
                            (self.num_embeddings, self.features), ("vocab", "embed"))

  def __call__(self, tokens):
    return gather_rows(jnp.asarray(self.embedding, self.dtype), tokens)

  def attend(self, x):
    return jnp.einsum("...d,vd->...v", x, jnp.asarray(self.embedding, self.dtype))


def relative_position_bucket(relative_position, bidirectional=True, num_buckets=32,
                             max_distance=128):
  """T5's bucketing of `memory_position - query_position` (numpy, a constant)."""
  ret = 0
  n = -relative_position
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(np.int32) * num_buckets
    n = np.abs(n)
  else:
    n = np.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  with np.errstate(divide="ignore"):
    val_if_large = max_exact + (
        np.log(n.astype(np.float32) / max_exact + np.finfo(np.float32).eps)
        / np.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(np.int32)
  val_if_large = np.minimum(val_if_large, num_buckets - 1)
  return ret + np.where(is_small, n, val_if_large)


class RelativePositionBiases(nn.Module):
  """Per-head additive attention bias [1, heads, q_len, k_len] from bucketed offsets."""
  num_buckets: int
  max_distance: int
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, qlen, klen, bidirectional=True):
    table = _param(self, "rel_embedding", nn.initializers.normal(1.0),
                   (self.num_heads, self.num_buckets), ("heads", "relpos"))
    rel = np.arange(klen)[None, :] - np.arange(qlen)[:, None]
    buckets = relative_position_bucket(rel, bidirectional, self.num_buckets, self.max_distance)
    # One-hot contraction rather than a gather: shards cleanly and is tiny.
    one_hot = jnp.asarray(buckets[None] == np.arange(self.num_buckets)[:, None, None],
                          jnp.float32)
    values = jnp.einsum("hn,nqk->hqk", table, one_hot)
    return values[None].astype(self.dtype)


class MultiHeadAttention(nn.Module):
  """T5 self-attention: no logit scaling, no biases; logits and softmax in float32."""
  num_heads: int
  head_dim: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, bias, deterministic=True):
    embed = x.shape[-1]
    heads, kv = self.num_heads, self.head_dim
    # t5x's initializers: fan_in over `embed`; the 1/sqrt(kv) logit scale folded into query.
    base = nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=0, out_axis=(1, 2))
    query_init = lambda *a: base(*a) / np.sqrt(kv).astype(np.float32)
    out_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=(0, 1),
                                                out_axis=2)
    q = HeadsProjection(heads, kv, self.dtype, query_init, name="query")(x)
    k = HeadsProjection(heads, kv, self.dtype, base, name="key")(x)
    v = HeadsProjection(heads, kv, self.dtype, base, name="value")(x)
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))
    k = nn.with_logical_constraint(k, ("batch", "length", "heads", "kv"))
    v = nn.with_logical_constraint(v, ("batch", "length", "heads", "kv"))

    logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32))
    weights = jax.nn.softmax(logits + bias.astype(jnp.float32), axis=-1).astype(self.dtype)
    if not deterministic and self.dropout_rate > 0:
      weights = nn.Dropout(self.dropout_rate)(weights, deterministic=False)
    y = jnp.einsum("bhqk,bkhd->bqhd", weights, v)

    return OutProjection(embed, self.dtype, out_init, use_bias=False, name="out")(y)


class Dense(nn.Module):
  """Bias-free dense layer with a 2-D kernel and logical axis names."""
  features: int
  kernel_axes: tuple
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
    kernel = _param(self, "kernel", init, (x.shape[-1], self.features), self.kernel_axes)
    return jnp.einsum("...i,io->...o", x, jnp.asarray(kernel, self.dtype))


class MlpBlock(nn.Module):
  """Feed-forward: gelu(x wi_0) * (x wi_1) -> wo (gated-gelu) or relu(x wi) -> wo."""
  config: T5Config

  @nn.compact
  def __call__(self, x, deterministic=True):
    c, dtype = self.config, _dtype(self.config)
    if c.feed_forward == "gated-gelu":
      # tanh-approximate GELU ("gelu_new" in Hugging Face; nn.gelu's default in t5x).
      h = nn.gelu(Dense(c.d_ff, ("embed", "mlp"), dtype, name="wi_0")(x), approximate=True)
      h = h * Dense(c.d_ff, ("embed", "mlp"), dtype, name="wi_1")(x)
    else:
      h = nn.relu(Dense(c.d_ff, ("embed", "mlp"), dtype, name="wi")(x))
    h = nn.Dropout(c.dropout_rate, broadcast_dims=(-2,))(h, deterministic=deterministic)
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    return Dense(x.shape[-1], ("mlp", "embed"), dtype, name="wo")(h)


class EncoderLayer(nn.Module):
  """Pre-norm residual block: x + attn(norm(x)); x + mlp(norm(x))."""
  config: T5Config

  @nn.compact
  def __call__(self, x, bias, deterministic=True):
    c, dtype = self.config, _dtype(self.config)
    h = RMSNorm(c.layer_norm_epsilon, dtype, name="pre_attention_layer_norm")(x)
    h = MultiHeadAttention(c.num_heads, c.d_kv, c.dropout_rate, dtype, name="attention")(
        h, bias, deterministic)
    x = x + nn.Dropout(c.dropout_rate)(h, deterministic=deterministic)
    h = RMSNorm(c.layer_norm_epsilon, dtype, name="pre_mlp_layer_norm")(x)
    h = MlpBlock(c, name="mlp")(h, deterministic)
    x = x + nn.Dropout(c.dropout_rate)(h, deterministic=deterministic)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class EncoderStack(nn.Module):
  """t5x's `encoder` scope: relative position bias, layers_{i}, encoder_norm."""
  config: T5Config

  @nn.compact
  def __call__(self, x, mask, deterministic=True):
    c, dtype = self.config, _dtype(self.config)
    length = x.shape[1]
    bias = RelativePositionBiases(c.relative_attention_num_buckets,
                                  c.relative_attention_max_distance, c.num_heads,
                                  jnp.float32, name="relpos_bias")(length, length, True)
    # Padded keys get a large negative bias; [B, 1, 1, L] broadcasts over heads and queries.
    key_bias = jnp.where(mask[:, None, None, :] > 0, 0.0, _LARGE_NEGATIVE).astype(jnp.float32)
    bias = bias + key_bias
    x = nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)
    for i in range(c.num_layers):
      x = EncoderLayer(c, name=f"layers_{i}")(x, bias, deterministic)
    x = RMSNorm(c.layer_norm_epsilon, dtype, name="encoder_norm")(x)
    return nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)


class T5Encoder(nn.Module):
  """T5 encoder. `__call__(tokens [B,L] int, mask [B,L]) -> [B, L, d_model]` (final-normed).

  `attend(x)` gives tied-embedding logits [..., vocab]; `mlm_logits` runs the
  encoder and applies them (scaled by d_model**-0.5 as t5x does for tied
  logits), for pretraining a small encoder with a masked-token objective.
  Call them with `model.apply(variables, ..., method=T5Encoder.mlm_logits)`.
  """
  config: T5Config

  def setup(self):
    c = self.config
    self.token_embedder = Embed(c.vocab_size, c.d_model, _dtype(c))
    self.encoder = EncoderStack(c)

  def __call__(self, tokens, mask, deterministic=True):
    x = self.token_embedder(tokens.astype(jnp.int32))
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    return self.encoder(x, mask, deterministic)

  def attend(self, x):
    return self.token_embedder.attend(x)

  def mlm_logits(self, tokens, mask, deterministic=True):
    x = self(tokens, mask, deterministic)
    return self.attend(x / jnp.sqrt(x.shape[-1]).astype(x.dtype)).astype(jnp.float32)


def encode(config: T5Config, params: Mapping, tokens, mask):
  """Frozen-encoder convenience: `T5Encoder(config).apply({'params': params}, ...)`."""
  return T5Encoder(config).apply({"params": params}, tokens, mask)


def num_params(config: T5Config) -> int:
  """Parameter count of the encoder (with embeddings), computed abstractly."""
  shapes = jax.eval_shape(
      lambda: T5Encoder(config).init(jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32),
                                     jnp.ones((1, 2), jnp.int32)))
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(nn.unbox(shapes)))

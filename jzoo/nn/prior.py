"""The unCLIP diffusion prior: a causal transformer from CLIP text to a CLIP image embedding.

The structure is diffusers' `PriorTransformer` (Kakao Brain's Karlo prior), module for
module, so a Karlo checkpoint maps onto it by a name table (`params_from_diffusers`). One
forward pass, with W = heads * head_dim:

  sequence  [text tokens (L) | text emb | time emb | x_t | learned query], each projected
            to W (`encoder_hidden_states_proj`, `embedding_proj`, `time_embedding`,
            `proj_in`, `prd_embedding`), plus a learned `positional_embedding` [L + 4, W]
  mask      additive, as diffusers: -10000 above the diagonal (causal) plus -10000 on the
            padded text keys (the two add up where both hold)
  blocks    pre-LayerNorm self-attention and GELU feed-forward (diffusers'
            `BasicTransformerBlock` with `attention_bias=True`, `activation_fn="gelu"`)
  out       `norm_out` LayerNorm, then `proj_to_clip_embeddings` of the last (query) token

Karlo's prior (kakaobrain/karlo-v1-alpha, prior/config.json: diffusers'
`PriorTransformer()` defaults, see `scripts/convert_kakao_brain_unclip_to_diffusers.py`):
  num_attention_heads 32, attention_head_dim 64, num_layers 20, embedding_dim 768,
  num_embeddings 77, additional_embeddings 4, dropout 0.0, time_embed_act_fn "silu",
  norm_in_type None, embedding_proj_norm_type None, encoder_hid_proj_type "linear",
  added_emb_type "prd"; `clip_mean` / `clip_std` hold the ViT-L/14 image-embedding
  statistics (ViT-L-14_stats.th). It predicts the normalised clean image embedding
  (prior_scheduler: prediction_type "sample", see jzoo.diffusion.discrete) and the
  pipeline denormalises the sampled latent (`post_process_latents` = `denormalize`).

One deliberate difference: diffusers applies no mask at all (not even the causal one) when
`attention_mask` is None; here `text_mask=None` means every text token is valid and the
causal mask still holds, as in every Karlo call.
"""

import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jzoo.errors import CheckpointError
from jzoo.nn import embeddings, layers

TIME_EMBEDDINGS = ("timesteps", "logsnr")
_MASK = -10000.0  # diffusers' additive fill: finite, and it adds up where causal and padding meet


def _param(module, name, init, axes, shape):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


def _dense(features, axes, dtype, name):  # a torch Linear: its weight is this kernel, transposed
  return layers.dense(features, axes, dtype=dtype, name=name)


class _LayerNorm(nn.Module):
  """torch's LayerNorm(eps=1e-5): statistics in float32, returns `dtype`.

  Its own scale / bias (not `layers.LayerNorm`'s nested LayerNorm_0), so a diffusers
  `norm1.weight` is `norm1/scale`: the name table stays one rule."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = _param(self, "scale", nn.initializers.ones, ("norm",), (c,))
    bias = _param(self, "bias", nn.initializers.zeros, ("norm",), (c,))
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
    return ((x - mean) * jax.lax.rsqrt(var + 1e-5) * scale + bias).astype(self.dtype)


def timestep_features(t, dim):
  """diffusers' Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0): [cos | sin]."""
  half = dim // 2
  e = embeddings.sinusoidal(t, 2 * half)  # [sin | cos], frequencies exp(-log(1e4) i / half)
  e = jnp.concatenate([e[:, half:], e[:, :half]], axis=-1)
  return jnp.pad(e, ((0, 0), (0, dim % 2)))


class _TimestepEmbedding(nn.Module):
  """diffusers' TimestepEmbedding: linear_1, SiLU, linear_2."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h):
    h = _dense(self.features, ("embed", "mlp"), self.dtype, "linear_1")(h.astype(self.dtype))
    return _dense(self.features, ("mlp", "embed"), self.dtype, "linear_2")(nn.silu(h))


class _Attention(nn.Module):
  """diffusers' Attention (self, biased q/k/v) with an additive float32 bias [B, S, S]."""
  num_heads: int
  head_dim: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, bias, deterministic):
    b, s, w = x.shape
    inner = self.num_heads * self.head_dim
    split = lambda y: y.reshape(b, s, self.num_heads, self.head_dim)
    q, k, v = (split(_dense(inner, ("embed", "heads"), self.dtype, n)(x))
               for n in ("to_q", "to_k", "to_v"))
    scale = np.float32(1.0 / np.sqrt(self.head_dim))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32))
    weights = jax.nn.softmax(logits * scale + bias[:, None], axis=-1).astype(self.dtype)
    o = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, s, inner)
    o = _dense(w, ("heads", "embed"), self.dtype, "to_out_0")(o)
    return nn.Dropout(self.dropout)(o, deterministic=deterministic)


class _GELU(nn.Module):
  """diffusers' GELU: `proj` then exact (erf) GELU."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = _dense(self.features, ("embed", "mlp"), self.dtype, "proj")(x)
    return layers.gelu_exact(h)


class _FeedForward(nn.Module):
  """diffusers' FeedForward(activation_fn="gelu"): net.0 (GELU, 4x), dropout, net.2."""
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic):
    w = x.shape[-1]
    h = _GELU(4 * w, self.dtype, name="net_0")(x)
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    return _dense(w, ("mlp", "embed"), self.dtype, "net_2")(h)


class _Block(nn.Module):
  """diffusers' BasicTransformerBlock without cross-attention: norm1/attn1, norm3/ff."""
  num_heads: int
  head_dim: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, bias, deterministic):
    h = _LayerNorm(self.dtype, name="norm1")(x)
    x = x + _Attention(self.num_heads, self.head_dim, self.dropout, self.dtype,
                       name="attn1")(h, bias, deterministic)
    h = _LayerNorm(self.dtype, name="norm3")(x)
    return x + _FeedForward(self.dropout, self.dtype, name="ff")(h, deterministic)


class DiffusionPrior(nn.Module):
  """unCLIP prior: (x_t, time, text emb, text tokens, mask) -> predicted image embedding [B, D].

  `time` is an integer diffusion step for "timesteps" (Karlo), a log-SNR for "logsnr"."""
  embed_dim: int
  num_layers: int
  num_heads: int
  head_dim: int
  text_length: int
  additional_embeddings: int = 4
  text_width: int = 0  # width of the text token states; 0 = embed_dim
  time_embedding: str = "timesteps"
  norm_in: bool = False  # diffusers' norm_in_type="layer" (not Karlo)
  latent_stats: bool = False  # clip_mean / clip_std parameters (Karlo's)
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_t, time, text_emb, text_tokens, text_mask=None, deterministic=True):
    if self.additional_embeddings != 4:
      raise ValueError("DiffusionPrior's sequence adds exactly 4 tokens (text emb, time emb, "
                       f"x_t, query), got additional_embeddings={self.additional_embeddings}")
    if self.time_embedding not in TIME_EMBEDDINGS:
      raise ValueError(f"unknown time_embedding {self.time_embedding!r}; "
                       f"choose one of {TIME_EMBEDDINGS}")
    b, length = text_tokens.shape[:2]
    width = self.num_heads * self.head_dim
    text_width = self.text_width or self.embed_dim
    if length > self.text_length or text_tokens.shape[-1] != text_width:
      raise ValueError(f"text tokens [B, <= {self.text_length}, {text_width}] expected, got "
                       f"{text_tokens.shape}")
    if text_mask is None:
      text_mask = jnp.ones((b, length), jnp.bool_)
    # Shorter text pads with masked tokens: the same as diffusers on the padded input.
    extra = self.text_length - length
    text_tokens = jnp.pad(text_tokens, ((0, 0), (0, extra), (0, 0)))
    text_mask = jnp.pad(text_mask.astype(jnp.bool_), ((0, 0), (0, extra)))
    if self.latent_stats:  # only read by normalize / denormalize
      _param(self, "clip_mean", nn.initializers.zeros, ("norm",), (self.embed_dim,))
      _param(self, "clip_std", nn.initializers.ones, ("norm",), (self.embed_dim,))

    time = jnp.broadcast_to(jnp.asarray(time), (b,))
    if self.time_embedding == "timesteps":
      temb = _TimestepEmbedding(width, self.dtype, name="time_embedding")(
          timestep_features(time, width))
    else:
      temb = embeddings.NoiseLevelEmbedding(width, dtype=self.dtype, name="time_embedding")(
          time.astype(jnp.float32))
    cast = lambda a: a.astype(self.dtype)
    proj = lambda name: layers.dense(width, (None, "embed"), dtype=self.dtype, name=name)
    query = _param(self, "prd_embedding", nn.initializers.normal(0.01), ("embed",), (width,))
    positions = _param(self, "positional_embedding", nn.initializers.normal(0.01),
                       ("length", "embed"), (self.text_length + self.additional_embeddings, width))
    h = jnp.concatenate([
        proj("encoder_hidden_states_proj")(cast(text_tokens)),
        proj("embedding_proj")(cast(text_emb))[:, None], cast(temb)[:, None],
        proj("proj_in")(cast(x_t))[:, None],
        jnp.broadcast_to(cast(query), (b, 1, width))], axis=1)
    h = h + cast(positions)[None]
    h = nn.with_logical_constraint(h, ("batch", "length", "embed"))
    bias = self.attention_bias(text_mask)
    if self.norm_in:
      h = _LayerNorm(self.dtype, name="norm_in")(h)
    for i in range(self.num_layers):
      h = _Block(self.num_heads, self.head_dim, self.dropout, self.dtype,
                 name=f"transformer_blocks_{i}")(h, bias, deterministic)
    h = _LayerNorm(self.dtype, name="norm_out")(h)
    out = layers.dense(self.embed_dim, ("embed", None), dtype=self.dtype,
                       name="proj_to_clip_embeddings")(h[:, -1])
    return out.astype(jnp.float32)

  def attention_bias(self, text_mask):
    """Additive float32 [B, S, S]: padded text keys and future positions get -10000 each."""
    s = self.text_length + self.additional_embeddings
    pad = (1.0 - text_mask.astype(jnp.float32)) * _MASK
    pad = jnp.pad(pad, ((0, 0), (0, self.additional_embeddings)))
    causal = jnp.triu(jnp.full((s, s), _MASK, jnp.float32), 1)
    return pad[:, None, :] + causal[None]

  def _stats(self):
    return (self.get_variable("params", "clip_mean"), self.get_variable("params", "clip_std"))

  def normalize(self, x):
    """Image embedding -> the prior's latent space: (x - clip_mean) / clip_std.

    Call as `prior.apply(params, x, method=DiffusionPrior.normalize)`."""
    if not self.latent_stats:
      return x
    mean, std = self._stats()
    return (x - mean) / std

  def denormalize(self, x):
    """diffusers' `post_process_latents`: x * clip_std + clip_mean."""
    if not self.latent_stats:
      return x
    mean, std = self._stats()
    return x * std + mean


# diffusers option -> the value this module supports (None: any).
_FIXED = {"time_embed_act_fn": "silu", "embedding_proj_norm_type": None,
          "encoder_hid_proj_type": "linear", "added_emb_type": "prd", "additional_embeddings": 4}


def config_from_diffusers(config):
  """DiffusionPrior kwargs from a PriorTransformer config.json dict (`latent_stats=True`)."""
  for key, value in _FIXED.items():
    if config.get(key, value) != value:
      raise CheckpointError(f"PriorTransformer {key}={config[key]!r} is not supported "
                            f"(DiffusionPrior implements {key}={value!r})")
  heads = int(config.get("num_attention_heads", 32))
  head_dim = int(config.get("attention_head_dim", 64))
  embed = int(config.get("embedding_dim", 768))
  for key, want in (("time_embed_dim", heads * head_dim), ("embedding_proj_dim", embed),
                    ("clip_embed_dim", embed)):
    if config.get(key) not in (None, want):
      raise CheckpointError(f"PriorTransformer {key}={config[key]} is not supported "
                            f"(DiffusionPrior uses {want})")
  if config.get("norm_in_type") not in (None, "layer"):
    raise CheckpointError(f"PriorTransformer norm_in_type={config['norm_in_type']!r} is not "
                          "supported (None or 'layer')")
  return dict(embed_dim=embed, num_layers=int(config.get("num_layers", 20)), num_heads=heads,
              head_dim=head_dim, text_length=int(config.get("num_embeddings", 77)),
              additional_embeddings=4, text_width=embed, time_embedding="timesteps",
              norm_in=config.get("norm_in_type") == "layer", latent_stats=True,
              dropout=float(config.get("dropout", 0.0)))


def _torch_key(path):
  """Flax path ('transformer_blocks_0', 'attn1', 'to_out_0', 'kernel') -> diffusers key."""
  parts = [re.sub(r"^(transformer_blocks|to_out|net)_(\d+)$", r"\1.\2", p) for p in path[:-1]]
  leaf = {"kernel": "weight", "scale": "weight"}.get(path[-1], path[-1])
  return ".".join(parts + [leaf])


def params_from_diffusers(state_dict, module):
  """A PriorTransformer state dict (name -> array) as `module`'s params {"params": ...}.

  Every parameter of `module` must be in the state dict with a matching size; Linear
  weights are transposed. Keys the module has no use for (none in Karlo's) are ignored."""
  if module.time_embedding != "timesteps":
    raise CheckpointError("diffusers' PriorTransformer weights need time_embedding='timesteps'")
  width = module.text_width or module.embed_dim
  b, length = 1, module.text_length
  abstract = jax.eval_shape(
      lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((b, module.embed_dim)),
                          jnp.zeros((b,), jnp.int32), jnp.zeros((b, module.embed_dim)),
                          jnp.zeros((b, length, width)), jnp.ones((b, length), jnp.bool_)))
  abstract = nn.unbox(abstract)["params"]
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
    names = tuple(p.key for p in path)
    key = _torch_key(names)
    if key not in state_dict:
      raise CheckpointError(f"PriorTransformer checkpoint has no {key!r} (for {'/'.join(names)})")
    value = np.asarray(state_dict[key], np.float32)
    if names[-1] == "kernel":
      value = value.T
    if value.size != int(np.prod(leaf.shape)) or (value.ndim == len(leaf.shape)
                                                  and value.shape != leaf.shape):
      raise CheckpointError(f"PriorTransformer {key!r} has shape {tuple(state_dict[key].shape)}, "
                            f"the model wants {tuple(leaf.shape)}: wrong config?")
    flat[names] = jnp.asarray(value.reshape(leaf.shape))
  params = {}
  for names, value in flat.items():
    node = params
    for n in names[:-1]:
      node = node.setdefault(n, {})
    node[names[-1]] = value
  return {"params": params}

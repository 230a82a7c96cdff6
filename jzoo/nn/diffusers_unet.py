"""diffusers' `UNet2DConditionModel`, `UNet2DModel` and unCLIP's `UnCLIPTextProjModel` in Flax
linen, config-driven from a diffusers config.json, loaded from diffusion_pytorch_model.safetensors.

Written for Kakao Brain's Karlo (unCLIP, kakaobrain/karlo-v1-alpha) and, later, DeepFloyd IF,
whose U-Nets use the same block family: `ResnetDownsampleBlock2D` / `ResnetUpsampleBlock2D`
(ResnetBlock2D stacks whose down/upsamplers are ResnetBlock2Ds with an average pool / nearest
upsample inside), `SimpleCrossAttnDownBlock2D` / `SimpleCrossAttnUpBlock2D` /
`UNetMidBlock2DSimpleCrossAttn` (a ResnetBlock2D then an attention whose keys and values are
the projected encoder states prepended to the image's own: `AttnAddedKVProcessor`), and
`UNetMidBlock2D` without attention. Other block types and config options raise a one-line
`CheckpointError` naming the key.

Numerics follow diffusers exactly (float32 parity < 1e-4 in tests/test_diffusers_unet.py):
  * GroupNorm/LayerNorm take torch's two-pass variance and the config's eps (the attention's
    group_norm and norm_cross use 1e-5 whatever norm_eps is, as diffusers' `Attention` does);
    `layers.GroupNorm` has a one-pass variance and nests its parameters, so it is not reused.
  * the timestep sinusoid is diffusers' `get_timestep_embedding` (freq_shift divides by
    half - shift; flip_sin_to_cos puts cos first), which `embeddings.sinusoidal` is only at
    shift 0.
  * the attention mask is diffusers': additive (1 - mask) * -10000 on the encoder positions,
    0 on the image's own positions (what `prepare_attention_mask`'s padding gives).
  * attention_head_dim is the head *width* in these blocks (heads = channels // head_dim), and
    the up blocks index the per-block list without reversing it (diffusers does the same).

Layout: images are NHWC; conv kernels OIHW -> HWIO and Linear [out, in] -> [in, out] on load.
The parameter tree mirrors diffusers' names (`down_blocks.1.attentions.0.to_q.weight` ->
`down_blocks_1/attentions_0/to_q/kernel`). Parameters are float32 with logical axis names
(jzoo.parallel.rules); compute runs in `dtype`; norms and softmax in float32.

Karlo's configs (kakaobrain/karlo-v1-alpha, as mirrored at fusing/karlo-image-variations-diffusers,
diffusers 0.12.0.dev0; `_name_or_path` keys dropped):

decoder (UNet2DConditionModel):
  act_fn silu, attention_head_dim 64, block_out_channels [320, 640, 960, 1280],
  center_input_sample false, class_embed_type "identity", cross_attention_dim 1536,
  down_block_types [ResnetDownsampleBlock2D, SimpleCrossAttnDownBlock2D x3],
  downsample_padding 1, dual_cross_attention false, flip_sin_to_cos true, freq_shift 0,
  in_channels 3, layers_per_block 3, mid_block_scale_factor 1,
  mid_block_type UNetMidBlock2DSimpleCrossAttn, norm_eps 1e-05, norm_num_groups 32,
  num_class_embeds null, only_cross_attention false, out_channels 6 (learned variance),
  resnet_time_scale_shift "scale_shift", sample_size 64,
  up_block_types [SimpleCrossAttnUpBlock2D x3, ResnetUpsampleBlock2D],
  upcast_attention false, use_linear_projection false
text_proj (UnCLIPTextProjModel):
  clip_embeddings_dim 768, clip_extra_context_tokens 4, cross_attention_dim 1536,
  time_embed_dim 1280
super_res_first and super_res_last (UNet2DModel, the same config; sample_size 256 / null):
  act_fn silu, add_attention false, attention_head_dim 8, block_out_channels
  [320, 640, 960, 1280], center_input_sample false, down_block_types
  [ResnetDownsampleBlock2D x4], downsample_padding 1, flip_sin_to_cos true, freq_shift 0,
  in_channels 6, layers_per_block 3, mid_block_scale_factor 1, norm_eps 1e-05,
  norm_num_groups 32, out_channels 3, resnet_time_scale_shift "default",
  time_embedding_type "positional", up_block_types [ResnetUpsampleBlock2D x4]

Karlo's pipeline feeds the decoder `class_labels` = the text proj's additive time embedding and
`attention_mask` = the text mask with clip_extra_context_tokens ones in front.

For IF (not checked against IF's weights yet): encoder_hid_dim (a `text_proj` Linear),
addition_embed_type "text" (TextTimeEmbedding's attention pooling), class_embed_type
"timestep", cross_attention_norm, resnet_skip_time_act, resnet_out_scale_factor,
time_embedding_act_fn, timestep_post_act and gelu/mish/relu activations are implemented.
"""

import dataclasses
import json
import math
import os
import re
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jzoo.errors import CheckpointError
from jzoo.io.weight_files import checked_params, open_safetensors
from jzoo.nn import layers

_named = nn.with_logical_partitioning
_MASK_BIAS = -10000.0  # diffusers' additive mask value (not -inf)

_ACTIVATIONS = {
    "silu": nn.silu, "swish": nn.silu, "mish": lambda x: x * jnp.tanh(nn.softplus(x)),
    "gelu": layers.gelu_exact, "relu": nn.relu,
}

DOWN_BLOCKS = ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D")
UP_BLOCKS = ("ResnetUpsampleBlock2D", "SimpleCrossAttnUpBlock2D")
MID_BLOCKS = ("UNetMidBlock2DSimpleCrossAttn", "UNetMidBlock2D", None)


# --- configs ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """What a diffusers UNet2DConditionModel / UNet2DModel config.json makes the network compute,
  with per-block options expanded to one entry per down block (as diffusers expands them)."""
  class_name: str = "UNet2DConditionModel"
  in_channels: int = 4
  out_channels: int = 4
  center_input_sample: bool = False
  flip_sin_to_cos: bool = True
  freq_shift: float = 0.0
  down_block_types: tuple = ()
  up_block_types: tuple = ()
  mid_block_type: Optional[str] = "UNetMidBlock2DSimpleCrossAttn"
  mid_block_layers: int = 1  # UNetMidBlock2D: 0 in UNet2DConditionModel, 1 in UNet2DModel
  block_out_channels: tuple = ()
  layers_per_block: tuple = ()
  only_cross_attention: tuple = ()
  mid_block_only_cross_attention: bool = False
  mid_block_scale_factor: float = 1.0
  act_fn: str = "silu"
  time_act_fn: str = "silu"  # TimestepEmbedding's activation (UNet2DModel: always silu)
  norm_num_groups: int = 32
  norm_eps: float = 1e-5
  cross_attention_dim: tuple = ()
  attention_head_dim: tuple = ()
  resnet_time_scale_shift: str = "default"
  resnet_skip_time_act: bool = False
  resnet_out_scale_factor: float = 1.0
  time_embed_dim: int = 0
  time_embedding_act_fn: Optional[str] = None
  timestep_post_act: Optional[str] = None
  class_embed_type: Optional[str] = None
  encoder_hid_dim: Optional[int] = None
  addition_embed_type: Optional[str] = None
  addition_embed_type_num_heads: int = 64
  cross_attention_norm: Optional[str] = None
  conv_in_kernel: int = 3
  conv_out_kernel: int = 3

  @property
  def cross_attention(self):
    return self.class_name == "UNet2DConditionModel"


@dataclasses.dataclass(frozen=True)
class TextProjConfig:
  """UnCLIPTextProjModel's config.json."""
  clip_embeddings_dim: int = 768
  clip_extra_context_tokens: int = 4
  time_embed_dim: int = 1280
  cross_attention_dim: int = 1536


# diffusers' __init__ defaults for the keys read here.
_COND_DEFAULTS = dict(
    in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, only_cross_attention=False,
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=1280,
    attention_head_dim=8, num_attention_heads=None, class_embed_type=None,
    addition_embed_type=None, num_class_embeds=None, resnet_time_scale_shift="default",
    resnet_skip_time_act=False, resnet_out_scale_factor=1.0, time_embedding_type="positional",
    time_embedding_dim=None, time_embedding_act_fn=None, timestep_post_act=None,
    time_cond_proj_dim=None, conv_in_kernel=3, conv_out_kernel=3, encoder_hid_dim=None,
    encoder_hid_dim_type=None, class_embeddings_concat=False,
    mid_block_only_cross_attention=None, cross_attention_norm=None,
    addition_embed_type_num_heads=64, attention_type="default",
    projection_class_embeddings_input_dim=None, addition_time_embed_dim=None,
)
_UNET2D_DEFAULTS = dict(
    in_channels=3, out_channels=3, center_input_sample=False, time_embedding_type="positional",
    time_embedding_dim=None, freq_shift=0, flip_sin_to_cos=True,
    down_block_types=("DownBlock2D",) + ("AttnDownBlock2D",) * 3, mid_block_type="UNetMidBlock2D",
    up_block_types=("AttnUpBlock2D",) * 3 + ("UpBlock2D",),
    block_out_channels=(224, 448, 672, 896), layers_per_block=2, mid_block_scale_factor=1,
    act_fn="silu", attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5,
    resnet_time_scale_shift="default", add_attention=True, class_embed_type=None,
    num_class_embeds=None,
)
# Keys that change nothing these blocks compute (they configure blocks not implemented here,
# training-only dropout, or a sample size the network does not depend on).
_IGNORED = {
    "sample_size", "dropout", "downsample_padding", "use_linear_projection", "upcast_attention",
    "dual_cross_attention", "transformer_layers_per_block", "reverse_transformer_layers_per_block",
    "downsample_type", "upsample_type", "attn_norm_num_groups", "num_train_timesteps",
}
# Keys implemented only at these values.
_ONLY = {
    "time_embedding_type": ("positional",), "num_attention_heads": (None,),
    "num_class_embeds": (None,), "time_cond_proj_dim": (None,), "class_embeddings_concat": (False,),
    "attention_type": ("default",), "encoder_hid_dim_type": (None, "text_proj"),
    "class_embed_type": (None, "identity", "timestep"), "addition_embed_type": (None, "text"),
    "resnet_time_scale_shift": ("default", "scale_shift"),
    "cross_attention_norm": (None, "layer_norm", "group_norm"),
    "projection_class_embeddings_input_dim": (None,), "addition_time_embed_dim": (None,),
}


def _per_block(value, n, key, where):
  if isinstance(value, (list, tuple)):
    if len(value) != n:
      raise CheckpointError(f"{where}: {key} has {len(value)} entries for {n} down blocks")
    return tuple(value)
  return (value,) * n


def _act(name, key, where):
  if name is not None and name not in _ACTIVATIONS:
    raise CheckpointError(f"{where}: {key}={name!r} is not supported ({', '.join(_ACTIVATIONS)})")
  return name


def _unet_config(d, class_name, where):
  defaults = _COND_DEFAULTS if class_name == "UNet2DConditionModel" else _UNET2D_DEFAULTS
  unknown = sorted(k for k in d if k not in defaults and k not in _IGNORED)
  if unknown:
    raise CheckpointError(f"{where}: config key {unknown[0]!r} is not supported by "
                          f"jzoo.nn.diffusers_unet ({class_name})")
  c = {**defaults, **d}
  for key, allowed in _ONLY.items():
    if key in c and c[key] not in allowed:
      raise CheckpointError(f"{where}: {key}={c[key]!r} is not supported (only "
                            f"{', '.join(map(repr, allowed))})")
  if c.get("encoder_hid_dim") is not None and c.get("encoder_hid_dim_type") is None:
    c["encoder_hid_dim_type"] = "text_proj"  # diffusers' rule
  if c.get("encoder_hid_dim_type") is not None and c.get("encoder_hid_dim") is None:
    raise CheckpointError(f"{where}: encoder_hid_dim_type needs encoder_hid_dim")
  if class_name == "UNet2DModel" and c["class_embed_type"] == "timestep":
    raise CheckpointError(f"{where}: class_embed_type='timestep' is not supported for UNet2DModel")
  if class_name == "UNet2DModel" and c["mid_block_type"] is not None and c["add_attention"]:
    raise CheckpointError(f"{where}: add_attention=true (UNetMidBlock2D attention) is not "
                          "supported; only add_attention=false")
  strip = lambda t: t[7:] if t is not None and t.startswith("UNetRes") else t
  down = tuple(strip(t) for t in c["down_block_types"])
  up = tuple(strip(t) for t in c["up_block_types"])
  for key, types, ok in (("down_block_types", down, DOWN_BLOCKS), ("up_block_types", up, UP_BLOCKS),
                         ("mid_block_type", (c["mid_block_type"],), MID_BLOCKS)):
    for t in types:
      if t not in ok:
        raise CheckpointError(f"{where}: {key} {t!r} is not supported (only "
                              f"{', '.join(str(b) for b in ok)})")
  n = len(down)
  if len(up) != n or len(c["block_out_channels"]) != n:
    raise CheckpointError(f"{where}: {n} down_block_types, {len(up)} up_block_types and "
                          f"{len(c['block_out_channels'])} block_out_channels must match")
  if c["norm_num_groups"] is None:
    raise CheckpointError(f"{where}: norm_num_groups=null is not supported")
  if class_name == "UNet2DModel" and c["mid_block_type"] not in ("UNetMidBlock2D", None):
    raise CheckpointError(f"{where}: mid_block_type {c['mid_block_type']!r} is not supported "
                          "for UNet2DModel")
  cond = class_name == "UNet2DConditionModel"
  only_cross = c["only_cross_attention"] if cond else False
  mid_only = c["mid_block_only_cross_attention"] if cond else None
  if mid_only is None:
    mid_only = only_cross if isinstance(only_cross, bool) else False
  head_dim = c["attention_head_dim"]
  blocks = tuple(c["block_out_channels"])
  head_dims = tuple(h if h is not None else blocks[i]
                    for i, h in enumerate(_per_block(head_dim, n, "attention_head_dim", where)))
  return UNetConfig(
      class_name=class_name, in_channels=int(c["in_channels"]), out_channels=int(c["out_channels"]),
      center_input_sample=bool(c["center_input_sample"]),
      flip_sin_to_cos=bool(c["flip_sin_to_cos"]),
      freq_shift=float(c["freq_shift"]), down_block_types=down, up_block_types=up,
      mid_block_type=c["mid_block_type"], mid_block_layers=1 if not cond else 0,
      block_out_channels=blocks,
      layers_per_block=_per_block(c["layers_per_block"], n, "layers_per_block", where),
      only_cross_attention=_per_block(only_cross, n, "only_cross_attention", where),
      mid_block_only_cross_attention=bool(mid_only),
      mid_block_scale_factor=float(c["mid_block_scale_factor"]),
      act_fn=_act(c["act_fn"], "act_fn", where), time_act_fn=c["act_fn"] if cond else "silu",
      norm_num_groups=int(c["norm_num_groups"]), norm_eps=float(c["norm_eps"]),
      cross_attention_dim=_per_block(c.get("cross_attention_dim"), n, "cross_attention_dim", where),
      attention_head_dim=head_dims, resnet_time_scale_shift=c["resnet_time_scale_shift"],
      resnet_skip_time_act=bool(c.get("resnet_skip_time_act", False)),
      resnet_out_scale_factor=float(c.get("resnet_out_scale_factor", 1.0)),
      time_embed_dim=int(c["time_embedding_dim"] or blocks[0] * 4),
      time_embedding_act_fn=_act(c.get("time_embedding_act_fn"), "time_embedding_act_fn", where),
      timestep_post_act=_act(c.get("timestep_post_act"), "timestep_post_act", where),
      class_embed_type=c["class_embed_type"], encoder_hid_dim=c.get("encoder_hid_dim"),
      addition_embed_type=c.get("addition_embed_type"),
      addition_embed_type_num_heads=int(c.get("addition_embed_type_num_heads", 64)),
      cross_attention_norm=c.get("cross_attention_norm"),
      conv_in_kernel=int(c.get("conv_in_kernel", 3)),
      conv_out_kernel=int(c.get("conv_out_kernel", 3)))


def config_from_diffusers(json_dict, where="config.json"):
  """A diffusers config.json (as a dict) -> UNetConfig or TextProjConfig, by its _class_name."""
  d = {k: v for k, v in json_dict.items() if not k.startswith("_")}
  class_name = json_dict.get("_class_name")
  if class_name in ("UNet2DConditionModel", "UNet2DModel"):
    return _unet_config(d, class_name, where)
  if class_name == "UnCLIPTextProjModel":
    fields = {f.name for f in dataclasses.fields(TextProjConfig)}
    unknown = sorted(set(d) - fields)
    if unknown:
      raise CheckpointError(f"{where}: config key {unknown[0]!r} is not supported by "
                            "jzoo.nn.diffusers_unet (UnCLIPTextProjModel)")
    for key in ("time_embed_dim", "cross_attention_dim"):
      if key not in d:
        raise CheckpointError(f"{where}: UnCLIPTextProjModel config needs {key}")
    return TextProjConfig(**{k: int(v) for k, v in d.items()})
  raise CheckpointError(f"{where}: _class_name {class_name!r} is not one of UNet2DConditionModel, "
                        "UNet2DModel, UnCLIPTextProjModel")


# --- layers -------------------------------------------------------------------------


def timestep_embedding(timesteps, dim, flip_sin_to_cos, freq_shift, max_period=10000.0):
  """diffusers' get_timestep_embedding: float32 [B, dim]."""
  half = dim // 2
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
  args = timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
  sin, cos = jnp.sin(args), jnp.cos(args)
  emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class GroupNorm(nn.Module):
  """torch.nn.GroupNorm over channels-last [B, ..., C]: two-pass float32 statistics."""
  groups: int
  eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    if c % self.groups:
      raise ValueError(f"GroupNorm: {c} channels do not split into {self.groups} groups")
    scale = self.param("scale", _named(nn.initializers.ones, ("norm",)), (c,), jnp.float32)
    bias = self.param("bias", _named(nn.initializers.zeros, ("norm",)), (c,), jnp.float32)
    g = x.astype(jnp.float32).reshape(x.shape[0], -1, self.groups, c // self.groups)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = jnp.square(g - mean).mean(axis=(1, 3), keepdims=True)
    y = ((g - mean) * jax.lax.rsqrt(var + self.eps)).reshape(x.shape)
    return (y * scale + bias).astype(self.dtype)


def _layer_norm(name, eps=1e-5):
  # torch's LayerNorm: two-pass variance; float32 statistics.
  return nn.LayerNorm(epsilon=eps, use_fast_variance=False, dtype=jnp.float32,
                      param_dtype=jnp.float32, name=name,
                      scale_init=_named(nn.initializers.ones, ("norm",)),
                      bias_init=_named(nn.initializers.zeros, ("norm",)))


def _dense(features, axes=("embed", "mlp"), dtype=jnp.float32, name=None):
  return layers.dense(features, axes, dtype=dtype, name=name)


class TimestepEmbedding(nn.Module):
  """linear_1 -> act -> linear_2 (-> post_act)."""
  features: int
  act: str = "silu"
  post_act: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = _dense(self.features, ("embed", "mlp"), self.dtype, "linear_1")(x.astype(self.dtype))
    h = _dense(self.features, ("mlp", "embed"), self.dtype, "linear_2")(_ACTIVATIONS[self.act](h))
    return h if self.post_act is None else _ACTIVATIONS[self.post_act](h)


@dataclasses.dataclass(frozen=True)
class ResnetOptions:
  groups: int = 32
  eps: float = 1e-5
  time_norm: str = "default"  # default: add the time embedding; scale_shift: FiLM after norm2
  act: str = "silu"
  output_scale_factor: float = 1.0
  skip_time_act: bool = False


class ResnetBlock2D(nn.Module):
  """diffusers' ResnetBlock2D (pre-norm; `up`/`down` resample inside, after norm1)."""
  out_channels: int
  opts: ResnetOptions = ResnetOptions()
  up: bool = False
  down: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, temb):
    o, dtype, out = self.opts, self.dtype, self.out_channels
    act = _ACTIVATIONS[o.act]
    h = act(GroupNorm(o.groups, o.eps, dtype, name="norm1")(x))
    if self.up:
      x, h = layers.upsample_nearest(x), layers.upsample_nearest(h)
    elif self.down:
      x, h = layers.downsample_area(x, 2), layers.downsample_area(h, 2)
    h = layers.conv(out, 3, dtype=dtype, name="conv1")(h)
    t = temb if o.skip_time_act else act(temb)
    width = 2 * out if o.time_norm == "scale_shift" else out
    t = _dense(width, ("embed", "mlp"), dtype, "time_emb_proj")(t)[:, None, None, :]
    if o.time_norm == "scale_shift":
      scale, shift = jnp.split(t, 2, axis=-1)
      h = GroupNorm(o.groups, o.eps, dtype, name="norm2")(h) * (1 + scale) + shift
    else:
      h = GroupNorm(o.groups, o.eps, dtype, name="norm2")(h + t)
    h = layers.conv(out, 3, dtype=dtype, name="conv2")(act(h))
    if x.shape[-1] != out:
      x = layers.conv(out, 1, dtype=dtype, name="conv_shortcut")(x)
    return ((x.astype(dtype) + h) / o.output_scale_factor).astype(dtype)


class AddedKVAttention(nn.Module):
  """diffusers' Attention(added_kv_proj_dim=...) under AttnAddedKVProcessor: a residual
  attention over the group-normed image whose keys/values are the projected encoder states
  followed (unless only_cross_attention) by the image's own.

  x [B,H,W,C], context [B,L,D], context_bias [B,L] additive (0 or -10000) or None. (With
  only_cross_attention and a mask, diffusers' mask padding fails on shapes; here the mask
  covers the L encoder positions.)"""
  heads: int
  head_dim: int
  groups: int
  only_cross_attention: bool = False
  cross_attention_norm: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, context, context_bias=None):
    b, hh, ww, c = x.shape
    dtype, inner = self.dtype, self.heads * self.head_dim
    if self.cross_attention_norm == "layer_norm":
      context = _layer_norm("norm_cross")(context).astype(dtype)
    elif self.cross_attention_norm == "group_norm":
      context = GroupNorm(32, 1e-5, dtype, name="norm_cross")(context)
    context = context.astype(dtype)
    h = GroupNorm(self.groups, 1e-5, dtype, name="group_norm")(x).reshape(b, hh * ww, c)

    def proj(name, t, features=inner, axes=("embed", "heads")):
      y = _dense(features, axes, dtype, name)(t)
      return y.reshape(*y.shape[:2], self.heads, self.head_dim)

    q = proj("to_q", h)
    k, v = proj("add_k_proj", context), proj("add_v_proj", context)
    bias = context_bias
    if not self.only_cross_attention:
      k = jnp.concatenate([k, proj("to_k", h)], axis=1)
      v = jnp.concatenate([v, proj("to_v", h)], axis=1)
      if bias is not None:  # the image's own positions are never masked
        bias = jnp.pad(bias, ((0, 0), (0, hh * ww)))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32))
    logits = logits * np.float32(self.head_dim ** -0.5)
    if bias is not None:
      logits = logits + bias.astype(jnp.float32)[:, None, None, :]
    weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, hh * ww, inner)
    out = _dense(c, ("heads", "embed"), dtype, "to_out_0")(out)
    return out.reshape(b, hh, ww, c) + x.astype(dtype)


@dataclasses.dataclass(frozen=True)
class AttentionOptions:
  head_dim: int
  groups: int
  only_cross_attention: bool = False
  cross_attention_norm: Optional[str] = None


def _attention(channels, a: AttentionOptions, dtype, name):
  return AddedKVAttention(channels // a.head_dim, a.head_dim, a.groups, a.only_cross_attention,
                          a.cross_attention_norm, dtype, name=name)


class DownBlock(nn.Module):
  """ResnetDownsampleBlock2D (attention=None) or SimpleCrossAttnDownBlock2D.
  Returns (h, the skip states it adds)."""
  out_channels: int
  num_layers: int
  add_downsample: bool
  opts: ResnetOptions
  attention: Optional[AttentionOptions] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h, temb, context=None, context_bias=None):
    skips = []
    for i in range(self.num_layers):
      h = ResnetBlock2D(self.out_channels, self.opts, dtype=self.dtype,
                        name=f"resnets_{i}")(h, temb)
      if self.attention is not None:
        h = _attention(self.out_channels, self.attention, self.dtype, f"attentions_{i}")(
            h, context, context_bias)
      skips.append(h)
    if self.add_downsample:
      h = ResnetBlock2D(self.out_channels, self.opts, down=True, dtype=self.dtype,
                        name="downsamplers_0")(h, temb)
      skips.append(h)
    return h, skips


class UpBlock(nn.Module):
  """ResnetUpsampleBlock2D (attention=None) or SimpleCrossAttnUpBlock2D."""
  out_channels: int
  num_layers: int
  add_upsample: bool
  opts: ResnetOptions
  attention: Optional[AttentionOptions] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h, skips, temb, context=None, context_bias=None):
    """`skips`: this block's num_layers skip states, the last one first consumed."""
    for i in range(self.num_layers):
      h = jnp.concatenate([h, skips[-1 - i].astype(h.dtype)], axis=-1)
      h = ResnetBlock2D(self.out_channels, self.opts, dtype=self.dtype,
                        name=f"resnets_{i}")(h, temb)
      if self.attention is not None:
        h = _attention(self.out_channels, self.attention, self.dtype, f"attentions_{i}")(
            h, context, context_bias)
    if self.add_upsample:
      h = ResnetBlock2D(self.out_channels, self.opts, up=True, dtype=self.dtype,
                        name="upsamplers_0")(h, temb)
    return h


class MidBlock(nn.Module):
  """UNetMidBlock2DSimpleCrossAttn (attention set) or UNetMidBlock2D without attention:
  a resnet, then num_layers x (attention, resnet)."""
  num_layers: int
  opts: ResnetOptions
  attention: Optional[AttentionOptions] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h, temb, context=None, context_bias=None):
    c = h.shape[-1]
    h = ResnetBlock2D(c, self.opts, dtype=self.dtype, name="resnets_0")(h, temb)
    for i in range(self.num_layers):
      if self.attention is not None:
        h = _attention(c, self.attention, self.dtype, f"attentions_{i}")(h, context, context_bias)
      h = ResnetBlock2D(c, self.opts, dtype=self.dtype, name=f"resnets_{i + 1}")(h, temb)
    return h


class AttentionPooling(nn.Module):
  """IF's attention pooling (diffusers' AttentionPooling): [B, L, D] -> [B, D]."""
  heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, _, d = x.shape
    pos = self.param("positional_embedding", _named(nn.initializers.normal(d ** -0.5),
                                                    (None, "embed")), (1, d), jnp.float32)
    cls = x.mean(axis=1, keepdims=True) + pos.astype(x.dtype)
    x = jnp.concatenate([cls, x], axis=1)
    split = lambda t: t.reshape(b, t.shape[1], self.heads, d // self.heads)
    q = split(_dense(d, ("embed", "heads"), self.dtype, "q_proj")(cls))
    k = split(_dense(d, ("embed", "heads"), self.dtype, "k_proj")(x))
    v = split(_dense(d, ("embed", "heads"), self.dtype, "v_proj")(x))
    scale = np.float32(1 / math.sqrt(math.sqrt(d // self.heads)))
    w = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32) * scale, k.astype(jnp.float32) * scale)
    w = jax.nn.softmax(w, axis=-1).astype(self.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, d)


class TextTimeEmbedding(nn.Module):
  """addition_embed_type="text": norm1 -> attention pooling -> proj -> norm2."""
  features: int
  heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = _layer_norm("norm1")(x).astype(self.dtype)
    h = AttentionPooling(self.heads, self.dtype, name="pool")(h)
    h = _dense(self.features, ("embed", "mlp"), self.dtype, "proj")(h)
    return _layer_norm("norm2")(h).astype(self.dtype)


# --- the U-Nets ---------------------------------------------------------------------


class _UNet(nn.Module):
  config: UNetConfig
  dtype: Any = jnp.float32

  def _resnet_options(self):
    c = self.config
    return ResnetOptions(c.norm_num_groups, c.norm_eps, c.resnet_time_scale_shift, c.act_fn,
                         c.resnet_out_scale_factor, c.resnet_skip_time_act)

  def _attn(self, block_type, head_dim, only_cross):
    if not block_type.startswith(("SimpleCrossAttn", "UNetMidBlock2DSimpleCrossAttn")):
      return None
    c = self.config
    return AttentionOptions(head_dim, c.norm_num_groups, bool(only_cross), c.cross_attention_norm)

  def _run(self, x, timesteps, context=None, class_labels=None, attention_mask=None):
    c, dtype = self.config, self.dtype
    n = len(c.block_out_channels)
    factor = 2 ** (n - 1)
    if x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(f"{x.shape[1]}x{x.shape[2]} images do not halve {n - 1} times; "
                       f"use sizes divisible by {factor}")
    x = x.astype(dtype)
    if c.center_input_sample:
      x = 2 * x - 1.0
    timesteps = jnp.broadcast_to(jnp.asarray(timesteps), (x.shape[0],))
    t_emb = timestep_embedding(timesteps, c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift)
    emb = TimestepEmbedding(c.time_embed_dim, c.time_act_fn, c.timestep_post_act, dtype,
                            name="time_embedding")(t_emb)
    if c.class_embed_type is not None:
      if class_labels is None:
        raise ValueError(f"class_embed_type={c.class_embed_type!r}: pass class_labels")
      if c.class_embed_type == "timestep":
        labels = timestep_embedding(jnp.broadcast_to(class_labels, (x.shape[0],)),
                                    c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift)
        emb = emb + TimestepEmbedding(c.time_embed_dim, c.act_fn, dtype=dtype,
                                      name="class_embedding")(labels)
      else:  # identity: Karlo adds the text proj's time embedding here
        emb = emb + class_labels.astype(dtype)
    elif class_labels is not None:
      raise ValueError("this U-Net has no class embedding: pass class_labels=None")
    if c.addition_embed_type == "text":
      emb = emb + TextTimeEmbedding(c.time_embed_dim, c.addition_embed_type_num_heads, dtype,
                                    name="add_embedding")(context.astype(dtype))
    if c.time_embedding_act_fn is not None:
      emb = _ACTIVATIONS[c.time_embedding_act_fn](emb)

    bias = None
    if c.cross_attention:
      if c.encoder_hid_dim is not None:
        context = _dense(c.cross_attention_dim[0], ("embed", "mlp"), dtype,
                         "encoder_hid_proj")(context.astype(dtype))
      context = context.astype(dtype)
      if attention_mask is not None:
        bias = (1.0 - attention_mask.astype(jnp.float32)) * _MASK_BIAS

    opts = self._resnet_options()
    h = layers.conv(c.block_out_channels[0], c.conv_in_kernel, dtype=dtype, name="conv_in")(x)
    skips = [h]
    for i, kind in enumerate(c.down_block_types):
      block = DownBlock(c.block_out_channels[i], c.layers_per_block[i], i < n - 1, opts,
                        self._attn(kind, c.attention_head_dim[i], c.only_cross_attention[i]),
                        dtype, name=f"down_blocks_{i}")
      h, new = block(h, emb, context, bias)
      skips.extend(new)
    if c.mid_block_type is not None:
      if c.class_name == "UNet2DModel":  # UNet2DModel's mid resnets take no skip_time_act/scale
        mid_opts = dataclasses.replace(opts, output_scale_factor=c.mid_block_scale_factor)
      else:
        mid_opts = dataclasses.replace(
            opts, output_scale_factor=c.mid_block_scale_factor,
            skip_time_act=c.resnet_skip_time_act and c.mid_block_type != "UNetMidBlock2D")
      layers_ = 1 if c.mid_block_type == "UNetMidBlock2DSimpleCrossAttn" else c.mid_block_layers
      h = MidBlock(layers_, mid_opts,
                   self._attn(c.mid_block_type, c.attention_head_dim[-1],
                              c.mid_block_only_cross_attention),
                   dtype, name="mid_block")(h, emb, context, bias)
    rev = lambda t: tuple(reversed(t))
    for i, kind in enumerate(c.up_block_types):
      # attention_head_dim[i], not reversed: diffusers' indexing.
      num = rev(c.layers_per_block)[i] + 1
      block = UpBlock(rev(c.block_out_channels)[i], num, i < n - 1, opts,
                      self._attn(kind, c.attention_head_dim[i], rev(c.only_cross_attention)[i]),
                      dtype, name=f"up_blocks_{i}")
      h = block(h, skips[-num:], emb, context, bias)
      skips = skips[:-num]
    h = _ACTIVATIONS[c.act_fn if c.cross_attention else "silu"](
        GroupNorm(c.norm_num_groups, c.norm_eps, dtype, name="conv_norm_out")(h))
    return layers.conv(c.out_channels, c.conv_out_kernel, dtype=dtype, out_axis=None,
                       name="conv_out")(h)


class UNet2DCondition(_UNet):
  """diffusers' UNet2DConditionModel: x [B,H,W,C], timesteps [B] (or a scalar),
  encoder_hidden_states [B,L,D], class_labels [B,E] (identity) / [B] (timestep),
  attention_mask [B,L] (1 = attend) -> [B,H,W,out_channels]."""

  @nn.compact
  def __call__(self, x, timesteps, encoder_hidden_states, class_labels=None, attention_mask=None):
    if not self.config.cross_attention:
      raise ValueError(f"UNet2DCondition takes a UNet2DConditionModel config, "
                       f"not {self.config.class_name}")
    return self._run(x, timesteps, encoder_hidden_states, class_labels, attention_mask)


class UNet2D(_UNet):
  """diffusers' UNet2DModel: x [B,H,W,C], timesteps [B] (or a scalar), class_labels [B,E]
  (identity) -> [B,H,W,out_channels]."""

  @nn.compact
  def __call__(self, x, timesteps, class_labels=None):
    if self.config.cross_attention:
      raise ValueError("UNet2D takes a UNet2DModel config, not UNet2DConditionModel")
    return self._run(x, timesteps, class_labels=class_labels)


class UnCLIPTextProj(nn.Module):
  """unCLIP's UnCLIPTextProjModel: (image_embeddings [B,E], prompt_embeds [B',E],
  text_encoder_hidden_states [B',L,E], do_classifier_free_guidance) ->
  (encoder_hidden_states [B',extra+L,D], additive_clip_time_embeddings [B',T]).

  With guidance the learned unconditional embedding is put before the image embeddings
  (B' = 2B: the prompt inputs already hold the unconditional half first)."""
  config: TextProjConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, image_embeddings, prompt_embeds, text_encoder_hidden_states,
               do_classifier_free_guidance: bool = False):
    c, dtype = self.config, self.dtype
    uncond = self.param("learned_classifier_free_guidance_embeddings",
                        _named(nn.initializers.zeros, ("embed",)), (c.clip_embeddings_dim,),
                        jnp.float32)
    image = image_embeddings.astype(dtype)
    if do_classifier_free_guidance:
      image = jnp.concatenate(
          [jnp.broadcast_to(uncond.astype(dtype), image.shape), image], axis=0)
    if image.shape[0] != prompt_embeds.shape[0]:
      raise ValueError(f"{image.shape[0]} image embeddings (after guidance) for "
                       f"{prompt_embeds.shape[0]} prompt embeddings")
    prompt = prompt_embeds.astype(dtype)
    time = (_dense(c.time_embed_dim, ("embed", "mlp"), dtype, "embedding_proj")(prompt)
            + _dense(c.time_embed_dim, ("embed", "mlp"), dtype,
                     "clip_image_embeddings_project_to_time_embeddings")(image))
    n, d = c.clip_extra_context_tokens, c.cross_attention_dim
    # diffusers views the projection as [B, D, n] and transposes: token t is every n-th entry.
    extra = _dense(n * d, ("embed", "mlp"), dtype, "clip_extra_context_tokens_proj")(image)
    extra = extra.reshape(-1, d, n).transpose(0, 2, 1)
    text = _dense(d, ("embed", "mlp"), dtype, "encoder_hidden_states_proj")(
        text_encoder_hidden_states.astype(dtype))
    text = _layer_norm("text_encoder_hidden_states_norm")(text).astype(dtype)
    return jnp.concatenate([extra, text], axis=1), time


# --- loading ------------------------------------------------------------------------


def module_from_config(config, dtype=jnp.float32):
  if isinstance(config, TextProjConfig):
    return UnCLIPTextProj(config, dtype)
  if config.cross_attention:
    return UNet2DCondition(config, dtype)
  return UNet2D(config, dtype)


def example_inputs(module):
  """The smallest inputs `module` runs on (for init and shape evaluation)."""
  c = module.config
  if isinstance(c, TextProjConfig):
    e = jnp.zeros((1, c.clip_embeddings_dim))
    return (e, e, jnp.zeros((1, 1, c.clip_embeddings_dim)), False)
  s = 2 ** (len(c.block_out_channels) - 1)
  x, t = jnp.zeros((1, s, s, c.in_channels)), jnp.zeros((1,))
  labels = {"identity": jnp.zeros((1, c.time_embed_dim)), "timestep": jnp.zeros((1,)),
            None: None}[c.class_embed_type]
  if not c.cross_attention:
    return (x, t, labels)
  context = jnp.zeros((1, 1, c.encoder_hid_dim or c.cross_attention_dim[0]))
  return (x, t, context, labels)


def init_params(module, rng=None):
  """Boxed (logically partitioned) random parameters."""
  rng = jax.random.PRNGKey(0) if rng is None else rng
  return module.init(rng, *example_inputs(module))["params"]


def param_shapes(module) -> dict:
  """Flat {path tuple: shape} of the module's parameters (abstract, no memory)."""
  tree = jax.eval_shape(lambda: init_params(module))
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(nn.unbox(tree)).items()}


def _flax_path(key, expected):
  """diffusers tensor name -> its Flax path: `.N` joins its list's name, `weight` becomes
  kernel or scale."""
  path = tuple(re.sub(r"\.(\d+)(?=\.|$)", r"_\1", key).split("."))
  if path[-1] == "weight":
    for leaf in ("kernel", "scale"):
      if (*path[:-1], leaf) in expected:
        return (*path[:-1], leaf)
  return path


def _to_flax(path, array):
  if path[-1] == "kernel" and array.ndim == 2:  # Linear [out, in] -> [in, out]
    return array.T
  if path[-1] == "kernel" and array.ndim == 4:  # Conv2d OIHW -> HWIO
    return array.transpose(2, 3, 1, 0)
  return array


def params_from_diffusers(state_dict, module_or_config, source="state_dict") -> dict:
  """Flax params (float32 numpy) from a diffusers state_dict {name: array}, checked name by
  name and shape by shape against the module (or config) it is for."""
  module = module_or_config if isinstance(module_or_config, nn.Module) else \
      module_from_config(module_or_config)
  return checked_params(state_dict, state_dict.__getitem__, param_shapes(module), _flax_path,
                        _to_flax, source,
                        unexpected=f"not a weight of this {type(module).__name__} config",
                        missing=("weight", "the weights do not match config.json"))


_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json")


def read_diffusers_folder(folder):
  """(config.json as a dict, its path, {tensor name: array}, the weights' description) of a
  diffusers model folder: config.json and diffusion_pytorch_model.safetensors (single or
  sharded). Pickled weights are refused with a one-line error."""
  folder = os.fspath(folder)
  config_path = os.path.join(folder, "config.json")
  if not os.path.isfile(config_path):
    raise CheckpointError(f"{folder}: no config.json (a diffusers model folder is needed)")
  try:
    with open(config_path) as f:
      raw = json.load(f)
  except ValueError as e:
    raise CheckpointError(f"{config_path}: not valid JSON ({e})") from e
  weights = next((os.path.join(folder, n) for n in _WEIGHTS
                  if os.path.exists(os.path.join(folder, n))), None)
  if weights is None:
    bins = [n for n in os.listdir(folder) if n.endswith(".bin")]
    extra = (f" ({bins[0]} is a pickle, which jzoo does not load: convert it to safetensors, e.g. "
             "diffusers' save_pretrained(..., safe_serialization=True))") if bins else ""
    raise CheckpointError(f"{folder}: no diffusion_pytorch_model.safetensors{extra}")
  tensors, _, source = open_safetensors(weights)
  return raw, config_path, {k: f.get(k) for k, f in tensors.items()}, source


def load_diffusers_folder(folder, dtype=jnp.float32):
  """(module, params) from a diffusers U-Net or text-proj folder (e.g. karlo-v1-alpha/decoder)."""
  raw, config_path, state, source = read_diffusers_folder(folder)
  module = module_from_config(config_from_diffusers(raw, config_path), dtype)
  return module, params_from_diffusers(state, module, source)

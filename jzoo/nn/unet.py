"""Imagen's Efficient U-Net (Saharia et al. 2022, section 2.4 and appendix F), text-conditioned.

Differences from the DDPM / improved-DDPM U-Net that it derives from:
  * parameters move to low resolutions: `num_res_blocks` grows as resolution falls;
  * U-Net skip connections are scaled by 1/sqrt(2) before concatenation;
  * each down level downsamples *before* its blocks and each up level upsamples
    *after* its blocks, so the blocks of a level run at the lower resolution.

Conditioning: the noise level (log-SNR) is embedded with sinusoids and an MLP;
a masked mean of the text tokens is added to that embedding; the text tokens
are cross-attended at the levels marked in `cross_attention`. The super-
resolution variant also takes the (noise-augmented) upsampled low-resolution
image, concatenated to the input channels, and its augmentation level, embedded
like the timestep and added to the embedding.

`layout="adm"` gives instead the improved-DDPM / ADM U-Net (Nichol & Dhariwal
2021) that Imagen's 64x64 base model adapts: a skip connection after every
block, num_res_blocks + 1 blocks per up level, attention after every block of
an attention level, downsampling after / upsampling before a level's blocks
(skips are scaled by 1/sqrt(2) here too, and the same conditioning is used).

Attention in the efficient layout comes once per level side, after its blocks
(and in the middle block); the mid block is ResBlock-attention-ResBlock.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jzoo.nn import layers
from jzoo.nn.attention import CrossAttentionBlock, SelfAttentionBlock
from jzoo.nn.embeddings import NoiseLevelEmbedding, masked_mean
from jzoo.nn.resblocks import ResBlock

_SKIP_SCALE = np.float32(1.0 / np.sqrt(2.0))
_REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the block in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,
}


class EfficientUNet(nn.Module):
  """x [B,H,W,C], logsnr [B], text [B,L,D], text_mask [B,L] -> prediction [B,H,W,out_channels].

  Level i runs at resolution H / 2**i with `channels * channel_mult[i]` channels
  and `num_res_blocks[i]` residual blocks on each side of the U.
  """
  channels: int = 128
  channel_mult: Sequence[int] = (1, 2, 4, 8)
  num_res_blocks: Sequence[int] = (2, 4, 8, 8)
  self_attention: Sequence[bool] = (False, False, False, True)
  cross_attention: Sequence[bool] = (False, False, False, True)
  head_dim: int = 64
  text_dim: int = 512  # width the text tokens are projected to before cross-attention
  # A learned embedding per text position, added to the projected tokens. Without it the U-Net
  # is invariant to permuting the text tokens (cross-attention and the pooled mean are), so word
  # order reaches it only through the text encoder's contextual outputs.
  text_positions: bool = False
  emb_dim: int = 0  # conditioning embedding width; 0 = 4 * channels
  # False: no text input at all (unCLIP's upsamplers); `text`/`text_mask` are then ignored.
  text_conditioning: bool = True
  # unCLIP's decoder (Ramesh et al. 2022, section 2.1): the CLIP image embedding `image_embed`
  # [B, E] is projected to this many extra context tokens, placed before the text's, and added
  # to the conditioning embedding. 0: no image embedding.
  image_embed_tokens: int = 0
  dropout: float = 0.0
  norm_groups: int = 32
  mid_block: bool = True  # a ResBlock-attention-ResBlock at the lowest resolution
  super_resolution: bool = False
  out_channels: int = 3
  layout: str = "efficient"  # efficient | adm
  remat: str = "none"  # none | full | dots
  dtype: Any = jnp.float32

  def _check(self):
    n = len(self.channel_mult)
    for name in ("num_res_blocks", "self_attention", "cross_attention"):
      if len(getattr(self, name)) != n:
        raise ValueError(f"U-Net {name} has {len(getattr(self, name))} entries for {n} levels")
    if self.layout not in ("efficient", "adm"):
      raise ValueError(f"unknown U-Net layout {self.layout!r}; use efficient or adm")
    if self.remat not in ("none", *_REMAT_POLICIES):
      raise ValueError(f"unknown remat policy {self.remat!r}; use none, full or dots")

  def _res_block_cls(self):
    if self.remat == "none":
      return ResBlock
    # Arguments after self: x (1), emb (2), deterministic (3, static).
    return nn.remat(ResBlock, policy=_REMAT_POLICIES[self.remat], static_argnums=(3,))

  @nn.compact
  def __call__(self, x, logsnr, text, text_mask, low_res=None, aug_logsnr=None,
               deterministic=True, image_embed=None):
    self._check()
    dtype = self.dtype
    emb_dim = self.emb_dim or 4 * self.channels
    block_cls = self._res_block_cls()

    def res_block(h, features, name):
      return block_cls(features, self.dropout, self.norm_groups, dtype, name=name)(
          h, emb, deterministic)

    def attend(h, level, prefix):
      if self.self_attention[level]:
        h = SelfAttentionBlock(self.head_dim, self.norm_groups, dtype,
                               name=f"{prefix}_self_attn")(h)
      if self.cross_attention[level]:
        h = CrossAttentionBlock(self.head_dim, self.norm_groups, dtype,
                                name=f"{prefix}_cross_attn")(h, context, text_mask)
      return h

    # Conditioning: noise level, pooled text, (unCLIP) image embedding and (SR) augmentation
    # level share one embedding.
    emb = NoiseLevelEmbedding(emb_dim, dtype=dtype, name="time_embed")(logsnr)
    context = None
    if self.text_conditioning:
      context = layers.LayerNorm(dtype, name="text_norm")(text)
      context = layers.dense(self.text_dim, ("embed", "mlp"), dtype=dtype,
                             name="text_proj")(context)
      if self.text_positions:
        context = layers.add_text_positions(self, context)
      context = nn.with_logical_constraint(context, ("batch", "length", "embed"))
      pooled = masked_mean(context, text_mask).astype(dtype)
      emb = emb + layers.dense(emb_dim, ("embed", "mlp"), dtype=dtype, name="text_pool")(pooled)
    if self.image_embed_tokens:
      if image_embed is None:
        raise ValueError("this U-Net has image_embed_tokens: pass image_embed [B, E]")
      context, text_mask = self._image_embed_context(image_embed, context, text_mask)
      emb = emb + layers.dense(emb_dim, ("embed", "mlp"), dtype=dtype,
                               name="image_embed_time")(image_embed.astype(dtype))
    if context is None and any(self.cross_attention):
      raise ValueError("cross_attention needs text_conditioning or image_embed_tokens")
    if self.super_resolution:
      if low_res is None or aug_logsnr is None:
        raise ValueError("a super-resolution U-Net needs low_res and aug_logsnr")
      emb = emb + NoiseLevelEmbedding(emb_dim, dtype=dtype, name="aug_embed")(aug_logsnr)
      x = jnp.concatenate([x, low_res.astype(x.dtype)], axis=-1)

    widths = [self.channels * m for m in self.channel_mult]
    h = layers.conv(widths[0], 3, dtype=dtype, name="conv_in")(x.astype(dtype))
    if self.layout == "efficient":
      h = self._efficient(h, widths, res_block, attend)
    else:
      h = self._adm(h, widths, res_block, attend)
    h = nn.silu(layers.GroupNorm(self.norm_groups, dtype, name="norm_out")(h))
    out = layers.conv(self.out_channels, 3, dtype=dtype, init_scale=0.0, out_axis=None,
                      name="conv_out")(h)
    return out.astype(jnp.float32)

  def _image_embed_context(self, image_embed, context, mask):
    """[image tokens; text tokens] and their mask: the image tokens are always attended."""
    b, n = image_embed.shape[0], self.image_embed_tokens
    tokens = layers.dense(n * self.text_dim, ("embed", "mlp"), dtype=self.dtype,
                          name="image_embed_tokens")(image_embed.astype(self.dtype))
    tokens = tokens.reshape(b, n, self.text_dim)
    ones = jnp.ones((b, n), jnp.int32)
    if context is None:
      return tokens, ones
    return (jnp.concatenate([tokens, context.astype(tokens.dtype)], axis=1),
            jnp.concatenate([ones, mask.astype(jnp.int32)], axis=1))

  def _mid(self, h, widths, res_block, attend):
    if self.mid_block:
      h = res_block(h, widths[-1], "mid_res_0")
      h = attend(h, len(widths) - 1, "mid")
      h = res_block(h, widths[-1], "mid_res_1")
    return h

  def _efficient(self, h, widths, res_block, attend):
    dtype = self.dtype
    skips = []
    for i, width in enumerate(widths):  # DBlocks: downsample, then the blocks
      if i > 0:
        h = layers.conv(width, 3, strides=2, dtype=dtype, name=f"down_{i}_downsample")(h)
      for j in range(self.num_res_blocks[i]):
        h = res_block(h, width, f"down_{i}_res_{j}")
      h = layers.constrain_image(attend(h, i, f"down_{i}"))
      skips.append(h)
    h = self._mid(h, widths, res_block, attend)
    for i in reversed(range(len(widths))):  # UBlocks: the blocks, then upsample
      h = jnp.concatenate([h, skips[i] * _SKIP_SCALE.astype(dtype)], axis=-1)
      for j in range(self.num_res_blocks[i]):
        h = res_block(h, widths[i], f"up_{i}_res_{j}")
      h = layers.constrain_image(attend(h, i, f"up_{i}"))
      if i > 0:
        h = layers.conv(widths[i - 1], 3, dtype=dtype, name=f"up_{i}_upsample")(
            layers.upsample_nearest(h))
    return h

  def _adm(self, h, widths, res_block, attend):
    dtype = self.dtype
    skips = [h]
    for i, width in enumerate(widths):  # blocks, then downsample
      for j in range(self.num_res_blocks[i]):
        h = layers.constrain_image(attend(res_block(h, width, f"down_{i}_res_{j}"), i,
                                          f"down_{i}_{j}"))
        skips.append(h)
      if i < len(widths) - 1:
        h = layers.conv(width, 3, strides=2, dtype=dtype, name=f"down_{i}_downsample")(h)
        skips.append(h)
    h = self._mid(h, widths, res_block, attend)
    for i in reversed(range(len(widths))):  # upsample, then blocks (one more than going down)
      for j in range(self.num_res_blocks[i] + 1):
        h = jnp.concatenate([h, skips.pop() * _SKIP_SCALE.astype(dtype)], axis=-1)
        h = layers.constrain_image(attend(res_block(h, widths[i], f"up_{i}_res_{j}"), i,
                                          f"up_{i}_{j}"))
      if i > 0:
        h = layers.conv(widths[i], 3, dtype=dtype, name=f"up_{i}_upsample")(
            layers.upsample_nearest(h))
    return h

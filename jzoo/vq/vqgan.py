"""The VQ-GAN image / video tokenizer of NUWA (Wu et al. 2021, "NUWA: Visual Synthesis
Pre-training for Neural visUal World creAtion", section 3.1).

NUWA represents images, sketches and videos as 3D grids of discrete tokens
[T, h, w] and generates them with a 3D nearby-attention transformer. The
tokens come from a VQ-GAN (Esser et al. 2021): a convolutional encoder
downsamples an image by a factor f = 2 ** (len(channel_mult) - 1), a vector
quantizer maps every latent pixel to one of `codebook_size` codes, and a
convolutional decoder maps the codes back to pixels. NUWA tokenizes a video
frame by frame with the same 2D VQ-GAN and stacks the per-frame token grids
in time, so a video [B, T, H, W, 3] becomes codes [B, T, H / f, W / f], and an
image [B, H, W, 3] is the T-less case [B, H / f, W / f].

Architecture (`VQGAN`):
  * Encoder: conv_in -> for each level of `channel_mult`, `num_res_blocks`
    residual blocks (GroupNorm -> swish -> conv, twice, plus a skip) then a
    stride-2 conv (not after the last level) -> a middle residual block ->
    GroupNorm -> swish -> conv to `embed_dim`.
  * Quantizer: `jzoo.vq.quantizer.VectorQuantizer` of width `embed_dim`
    (factorized to `code_dim` for the lookup, l2-normalised codes).
  * Decoder: the mirror image: conv_in -> middle residual block -> per level
    (deepest first) residual blocks then nearest 2x upsampling + conv (not after
    the shallowest level) -> GroupNorm -> swish -> conv to RGB. The output is
    linear (no tanh), like C-ViViT's: it keeps gradients alive at saturated
    pixels; callers clip to [-1, 1] when they make pixels.

Frames are folded into the batch before the encoder and unfolded after, so
nothing mixes frames: the codes of frame t depend only on frame t, and the
pixels of frame t only on the codes of frame t.

Training loss (`jzoo.vq.tokenizer_stage.TokenizerStage.loss`): L2 or L1 reconstruction + VQ loss, +
LPIPS-VGG from weight files the user gives (`jzoo.vq.perceptual`), + the
PatchGAN hinge term (`jzoo.vq.discriminator`), each configurable; it works
unchanged on images and videos. `codebook_ema > 0` gives the EMA codebook
update of VQ-VAE instead of the gradient-trained codebook. Departures from
taming-transformers are listed in those modules (GroupNorm discriminator, a
fixed adversarial weight).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jzoo.nn import layers
from jzoo.vq.quantizer import VectorQuantizer


class ResBlock(nn.Module):
  """GroupNorm -> swish -> conv -> GroupNorm -> swish -> conv, plus the input (through a 1x1 conv
  when the width changes). Unconditional, unlike `jzoo.nn.resblocks.ResBlock` (which needs a
  conditioning embedding)."""
  features: int
  norm_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = nn.swish(layers.GroupNorm(self.norm_groups, self.dtype, name="norm_0")(x))
    h = layers.conv(self.features, 3, dtype=self.dtype, name="conv_0")(h)
    h = nn.swish(layers.GroupNorm(self.norm_groups, self.dtype, name="norm_1")(h))
    h = layers.conv(self.features, 3, dtype=self.dtype, name="conv_1")(h)
    if x.shape[-1] != self.features:
      x = layers.conv(self.features, 1, dtype=self.dtype, name="skip")(x)
    return layers.constrain_image(x.astype(self.dtype) + h)


class Encoder(nn.Module):
  """Images [N, H, W, 3] -> latents [N, H / f, W / f, embed_dim]."""
  channels: int
  channel_mult: Sequence[int]
  num_res_blocks: int
  embed_dim: int
  norm_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    block = lambda n, name: ResBlock(n, self.norm_groups, self.dtype, name=name)
    x = layers.conv(self.channels, 3, dtype=self.dtype, name="conv_in")(x.astype(self.dtype))
    last = len(self.channel_mult) - 1
    for level, mult in enumerate(self.channel_mult):
      for i in range(self.num_res_blocks):
        x = block(self.channels * mult, f"down_{level}_block_{i}")(x)
      if level != last:
        x = layers.conv(x.shape[-1], 3, strides=2, dtype=self.dtype,
                        name=f"down_{level}_downsample")(x)
    x = block(x.shape[-1], "mid_block")(x)
    x = nn.swish(layers.GroupNorm(self.norm_groups, self.dtype, name="norm_out")(x))
    return layers.conv(self.embed_dim, 3, dtype=self.dtype, name="conv_out")(x)


class Decoder(nn.Module):
  """Latents [N, h, w, embed_dim] -> images float32 [N, h * f, w * f, 3] (linear output)."""
  channels: int
  channel_mult: Sequence[int]
  num_res_blocks: int
  norm_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z):
    block = lambda n, name: ResBlock(n, self.norm_groups, self.dtype, name=name)
    width = self.channels * self.channel_mult[-1]
    x = layers.conv(width, 3, dtype=self.dtype, name="conv_in")(z.astype(self.dtype))
    x = block(width, "mid_block")(x)
    for level in reversed(range(len(self.channel_mult))):
      for i in range(self.num_res_blocks):
        x = block(self.channels * self.channel_mult[level], f"up_{level}_block_{i}")(x)
      if level != 0:
        x = layers.upsample_nearest(x, 2)
        x = layers.conv(x.shape[-1], 3, dtype=self.dtype, name=f"up_{level}_upsample")(x)
    x = nn.swish(layers.GroupNorm(self.norm_groups, self.dtype, name="norm_out")(x))
    x = layers.conv(3, 3, dtype=self.dtype, out_axis=None, name="conv_out")(x)
    return x.astype(jnp.float32)


class VQGAN(nn.Module):
  """Images [B, H, W, 3] / videos [B, T, H, W, 3] in [-1, 1] <-> codes int32 [B, (T,) H/f, W/f].

  f = 2 ** (len(channel_mult) - 1) (`downsample_factor`). Videos are tokenized frame by frame.
  Defaults are a 256px, f = 16 VQ-GAN (taming-transformers' layout with NUWA's 16x16 tokens)."""
  channels: int = 128
  channel_mult: Sequence[int] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  codebook_size: int = 8192
  code_dim: int = 32
  embed_dim: int = 256
  commitment: float = 0.25  # weight of the commitment term of the VQ loss
  norm_groups: int = 32
  dtype: Any = jnp.float32
  codebook_ema: float = 0.0  # > 0: EMA codebook with this decay (VectorQuantizer.ema_decay)

  def setup(self):
    if not self.channel_mult:
      raise ValueError("channel_mult needs at least one level")
    self.encoder = Encoder(self.channels, tuple(self.channel_mult), self.num_res_blocks,
                           self.embed_dim, self.norm_groups, self.dtype, name="encoder")
    self.quantizer = VectorQuantizer(self.codebook_size, self.code_dim, self.embed_dim,
                                     commitment=self.commitment, ema_decay=self.codebook_ema,
                                     dtype=self.dtype, name="quantizer")
    self.decoder = Decoder(self.channels, tuple(self.channel_mult), self.num_res_blocks,
                           self.norm_groups, self.dtype, name="decoder")

  @property
  def downsample_factor(self):
    """f: an H x W frame becomes (H / f) x (W / f) tokens."""
    return 2 ** (len(self.channel_mult) - 1)

  @nn.nowrap
  def _fold(self, x, pixel_rank):
    """[B, (T,) ...] -> ([B * T, ...], unfold) where the trailing `pixel_rank` axes are kept."""
    lead = x.shape[:x.ndim - pixel_rank]
    if len(lead) not in (1, 2):
      raise ValueError(f"expected a batch of images or of videos, got shape {x.shape}")
    folded = x.reshape((-1,) + x.shape[len(lead):])
    return folded, lambda y: y.reshape(lead + y.shape[1:])

  def encode(self, x):
    """x [B, H, W, 3] or [B, T, H, W, 3] -> (codes int32 [B, (T,) h, w],
    z_q [B, (T,) h, w, embed_dim], aux) with h, w = H / f, W / f."""
    height, width = x.shape[-3:-1]
    f = self.downsample_factor
    if x.shape[-1] != 3 or height % f or width % f:
      raise ValueError(f"VQGAN needs [..., H, W, 3] frames with H and W multiples of {f}, "
                       f"got shape {x.shape}")
    frames, unfold = self._fold(x, 3)
    z_q, codes, aux = self.quantizer(self.encoder(frames))
    return unfold(codes), unfold(z_q), aux

  def decode(self, z_q):
    """z_q [B, (T,) h, w, embed_dim] -> pixels float32 [B, (T,) h * f, w * f, 3] (linear)."""
    frames, unfold = self._fold(z_q, 3)
    return unfold(self.decoder(frames))

  def code_vectors(self):
    """The codebook as the lookup sees it, float32 [codebook_size, code_dim] (CogView2's code
    clusters are k-means over these)."""
    return self.quantizer.codes_table()

  def decode_codes(self, codes):
    """codes int32 [B, (T,) h, w] -> pixels float32 [B, (T,) H, W, 3].

    The output is linear (no tanh): clip to [-1, 1] to make pixels."""
    return self.decode(self.quantizer.decode_codes(codes))

  def __call__(self, x):
    """x -> (reconstruction float32 (x's shape), codes, aux): training and `init`."""
    codes, z_q, aux = self.encode(x)
    return self.decode(z_q), codes, aux

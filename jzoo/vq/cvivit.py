"""C-ViViT, the causal video tokenizer of Phenaki (Villegas et al. 2022, "Phenaki: Variable Length
Video Generation From Open Domain Textual Descriptions", section 2.1).

Phenaki generates videos of any length, one chunk of frames after another, so
its tokenizer must (a) handle any number of frames and (b) never let a token
depend on later frames, so that the tokens of a prefix do not change when the
video is extended. C-ViViT gets both from a factorized, causal-in-time
transformer autoencoder. A video [B, T, H, W, 3] in [-1, 1] with
T = 1 + temporal_patch * k frames becomes 1 + k time steps of
h x w = (H / p) x (W / p) discrete tokens:

  * Patches: the first frame is cut into p x p image patches with a linear
    embedding of its own; the other frames into non-overlapping
    temporal_patch x p x p tubelets (2 x 8 x 8 in the paper, so 11 frames at
    128px give (1 + 5) x 16 x 16 tokens). A lone first frame is an image, so
    the same model tokenizes images and videos.
  * Encoder: learned spatial position embeddings, a spatial transformer over
    each time step's h * w tokens (all-to-all within a frame), learned temporal
    position embeddings (up to `max_time_tokens` time steps), then a temporal
    transformer over each spatial position's time steps with a causal mask.
  * Quantizer: a factorized, l2-normalised vector quantizer (`quantizer.py`,
    as in ViT-VQGAN) maps every token to one of `codebook_size` codes.
  * Decoder: the mirror image (causal temporal transformer, then spatial
    transformer, each after its own position embeddings), then two linear
    "unpatch" heads: the first time step -> one frame, every later one ->
    temporal_patch frames. The output is linear (no tanh): it keeps gradients
    alive at saturated pixels; callers clip to [-1, 1] when they make pixels.

Causality: the patching never mixes time steps, the spatial transformers and
the quantizer act on one time step at a time, and the temporal transformers
are causal; so the tokens (and the decoded frames) of time step t depend only
on the frames (codes) of time steps <= t.

Training loss (`tokenizer_loss`, with `TokenizerStage.loss` adding the options):
L2 (or L1) reconstruction + the VQ loss, optionally + LPIPS-VGG per frame from
weight files the user gives (`jzoo.vq.perceptual`) and a per-frame PatchGAN
hinge term (`jzoo.vq.discriminator`), and optionally an EMA codebook
(`codebook_ema`). Not implemented: the paper's I3D perceptual term and its
StyleGAN video discriminator.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jzoo.nn import layers
from jzoo.nn.patterns import Full
from jzoo.nn.transformer import Transformer
from jzoo.vq.quantizer import VectorQuantizer

VIDEO_TOKENS = ("batch", "frames", "height", "width", "embed")


def _position_init(stddev=0.02):
  return nn.with_logical_partitioning(nn.initializers.normal(stddev), (None, "embed"))


def tokenizer_loss(outputs, video, reconstruction_loss="l2", perceptual=None):
  """(reconstruction, codes, aux) of a tokenizer's `__call__` and the target video ->
  (loss, metrics).

  loss = mean squared ("l2") or absolute ("l1") error + aux["vq_loss"], plus
  weight * LPIPS when `perceptual` = (LPIPS params, weight) (jzoo.vq.perceptual). `psnr` is
  that of the batch's MSE on [-1, 1] data (peak-to-peak 2): 10 log10(4 / mse). An
  EMA codebook's new state (`aux["state"]`) is passed on as metrics["state_updates"]
  under the quantizer's name, for the trainer to write over the parameters."""
  reconstruction, _, aux = outputs
  error = reconstruction.astype(jnp.float32) - video.astype(jnp.float32)
  mse = jnp.mean(jnp.square(error))
  if reconstruction_loss not in ("l1", "l2"):
    raise ValueError(f"reconstruction_loss must be 'l1' or 'l2', got {reconstruction_loss!r}")
  loss = (mse if reconstruction_loss == "l2" else jnp.mean(jnp.abs(error))) + aux["vq_loss"]
  metrics = dict(mse=mse, psnr=10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10)),
                 vq_loss=aux["vq_loss"], codebook_usage=aux["codebook_usage"],
                 perplexity=aux["perplexity"])
  if perceptual is not None:
    from jzoo.vq import perceptual as perceptual_lib  # pylint: disable=g-import-not-at-top
    params, weight = perceptual
    metrics["perceptual"] = perceptual_lib.distance(params, reconstruction, video)
    loss = loss + weight * metrics["perceptual"]
  if "state" in aux:
    metrics["state_updates"] = {"quantizer": aux["state"]}
  return loss, metrics


class CViViT(nn.Module):
  """Video [B, T, H, W, 3] <-> codes int32 [B, 1 + (T - 1) / temporal_patch, H / p, W / p].

  Defaults are the paper's 128px tokenizer (8x8 patches, 2-frame tubelets,
  width 512, 4 spatial + 4 temporal layers, 8192 codes of dimension 32)."""
  patch_size: int = 8
  temporal_patch: int = 2
  width: int = 512
  num_heads: int = 8
  head_dim: int = 64
  mlp_dim: int = 2048
  spatial_layers: int = 4
  temporal_layers: int = 4  # in the encoder and again in the decoder
  codebook_size: int = 8192
  code_dim: int = 32
  commitment: float = 0.25  # weight of the commitment term of the VQ loss
  codebook_ema: float = 0.0  # > 0: EMA codebook with this decay (VectorQuantizer.ema_decay)
  max_time_tokens: int = 16
  image_size: int = 128
  dtype: Any = jnp.float32
  remat: str = "none"  # "none" | "full", for every transformer

  def setup(self):
    p, tp, e = self.patch_size, self.temporal_patch, self.width
    if self.image_size % p:
      raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {p}")
    grid = (self.image_size // p) ** 2
    dense = lambda n, axes, name: layers.dense(n, axes, dtype=self.dtype, name=name)
    stack = lambda n, name, causal=False: Transformer(
        n, self.num_heads, self.head_dim, self.mlp_dim, remat=self.remat, dtype=self.dtype,
        pattern=Full(causal), name=name)

    self.embed_image = dense(e, (None, "embed"), "embed_image")  # first frame: p x p patches
    self.embed_tubelet = dense(e, (None, "embed"), "embed_tubelet")  # tp x p x p tubelets
    self.encoder_spatial_position = self.param("encoder_spatial_position", _position_init(),
                                               (grid, e), jnp.float32)
    self.encoder_temporal_position = self.param("encoder_temporal_position", _position_init(),
                                                (self.max_time_tokens, e), jnp.float32)
    self.encoder_spatial = stack(self.spatial_layers, "encoder_spatial")
    self.encoder_temporal = stack(self.temporal_layers, "encoder_temporal", causal=True)

    self.quantizer = VectorQuantizer(self.codebook_size, self.code_dim, e,
                                     commitment=self.commitment, ema_decay=self.codebook_ema,
                                     dtype=self.dtype, name="quantizer")

    self.decoder_temporal_position = self.param("decoder_temporal_position", _position_init(),
                                                (self.max_time_tokens, e), jnp.float32)
    self.decoder_spatial_position = self.param("decoder_spatial_position", _position_init(),
                                               (grid, e), jnp.float32)
    self.decoder_temporal = stack(self.temporal_layers, "decoder_temporal", causal=True)
    self.decoder_spatial = stack(self.spatial_layers, "decoder_spatial")
    self.unembed_image = dense(p * p * 3, ("embed", None), "unembed_image")
    self.unembed_tubelet = dense(tp * p * p * 3, ("embed", None), "unembed_tubelet")

  # Frame counts (plain Python on static shapes).

  @nn.nowrap
  def num_time_tokens(self, frames):
    """1 + k for T = 1 + k * temporal_patch frames; ValueError for any other T."""
    if frames < 1 or (frames - 1) % self.temporal_patch:
      raise ValueError(f"C-ViViT needs 1 + k·{self.temporal_patch} frames (k >= 0: the first "
                       f"frame, then tubelets of {self.temporal_patch}), got {frames}")
    return 1 + (frames - 1) // self.temporal_patch

  @nn.nowrap
  def num_frames(self, time_tokens):
    """The number of frames that `time_tokens` time steps decode to."""
    return 1 + self.temporal_patch * (time_tokens - 1)

  def _check_time(self, t):
    if t > self.max_time_tokens:
      raise ValueError(f"{t} time tokens ({self.num_frames(t)} frames) exceed max_time_tokens="
                       f"{self.max_time_tokens}; raise it or tokenize shorter chunks")

  # Blocks shared by the encoder and the decoder.

  def _spatial(self, x, transformer, position):
    """Adds per-(h, w) positions, then attends all-to-all within each time step."""
    b, t, h, w, e = x.shape
    x = x + position.astype(x.dtype).reshape(1, 1, h, w, e)
    x = transformer(x.reshape(b * t, h * w, e))
    return nn.with_logical_constraint(x.reshape(b, t, h, w, e), VIDEO_TOKENS)

  def _temporal(self, x, transformer, position):
    """Adds per-time-step positions, then attends causally along time at each (h, w)."""
    b, t, h, w, e = x.shape
    x = x + position[:t].astype(x.dtype).reshape(1, t, 1, 1, e)
    x = x.transpose(0, 2, 3, 1, 4).reshape(b * h * w, t, e)
    x = transformer(x)  # causal along time: the temporal stacks' pattern
    x = x.reshape(b, h, w, t, e).transpose(0, 3, 1, 2, 4)
    return nn.with_logical_constraint(x, VIDEO_TOKENS)

  # Patches.

  def _patchify(self, video):
    """[B, T, H, W, 3] -> tokens [B, 1 + k, h, w, E]."""
    b, frames, height, width, c = video.shape
    p, tp = self.patch_size, self.temporal_patch
    if (height, width) != (self.image_size, self.image_size):
      raise ValueError(f"C-ViViT was built for {self.image_size}x{self.image_size} frames, got "
                       f"{height}x{width}")
    k = self.num_time_tokens(frames) - 1
    h, w = height // p, width // p
    x = video.astype(self.dtype)
    first = x[:, :1].reshape(b, 1, h, p, w, p, c).transpose(0, 1, 2, 4, 3, 5, 6)
    rest = x[:, 1:].reshape(b, k, tp, h, p, w, p, c).transpose(0, 1, 3, 5, 2, 4, 6, 7)
    tokens = jnp.concatenate([self.embed_image(first.reshape(b, 1, h, w, p * p * c)),
                              self.embed_tubelet(rest.reshape(b, k, h, w, tp * p * p * c))],
                             axis=1)
    return nn.with_logical_constraint(tokens, VIDEO_TOKENS)

  def _unpatchify(self, x):
    """Tokens [B, t, h, w, E] -> video float32 [B, 1 + temporal_patch (t - 1), H, W, 3]."""
    b, t, h, w, _ = x.shape
    p, tp = self.patch_size, self.temporal_patch
    first = self.unembed_image(x[:, :1]).reshape(b, 1, h, w, p, p, 3)
    first = first.transpose(0, 1, 2, 4, 3, 5, 6).reshape(b, 1, h * p, w * p, 3)
    rest = self.unembed_tubelet(x[:, 1:]).reshape(b, t - 1, h, w, tp, p, p, 3)
    rest = rest.transpose(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, (t - 1) * tp, h * p, w * p, 3)
    return jnp.concatenate([first, rest], axis=1).astype(jnp.float32)

  # The tokenizer.

  def encode(self, video):
    """video [B, T, H, W, 3] -> (codes int32 [B, t, h, w], z_q [B, t, h, w, E], aux)."""
    x = self._patchify(video)
    self._check_time(x.shape[1])
    x = self._spatial(x, self.encoder_spatial, self.encoder_spatial_position)
    x = self._temporal(x, self.encoder_temporal, self.encoder_temporal_position)
    z_q, codes, aux = self.quantizer(x)
    return codes, z_q, aux

  def decode(self, z_q):
    """Quantized tokens [B, t, h, w, E] -> video float32 [B, 1 + temporal_patch (t-1), H, W, 3]."""
    self._check_time(z_q.shape[1])
    x = self._temporal(z_q, self.decoder_temporal, self.decoder_temporal_position)
    x = self._spatial(x, self.decoder_spatial, self.decoder_spatial_position)
    return self._unpatchify(x)

  def decode_codes(self, codes):
    """codes int32 [B, t, h, w] -> video float32 [B, 1 + temporal_patch (t - 1), H, W, 3]."""
    return self.decode(self.quantizer.decode_codes(codes))

  def __call__(self, video):
    """video -> (reconstruction float32 [B, T, H, W, 3], codes, aux): training and `init`."""
    codes, z_q, aux = self.encode(video)
    return self.decode(z_q), codes, aux

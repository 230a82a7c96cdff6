"""NUWA (Wu et al. 2021, "NÜWA: Visual Synthesis Pre-training for Neural visUal World creAtion"):
a 3D transformer encoder-decoder with 3D Nearby Attention over VQ-GAN tokens.

Architecture (section 3 of the paper):
  * Data as 3D token grids: text is 1×1×L, an image h×w×1, a video h×w×t,
    tokenised frame by frame by a VQ-GAN (jzoo.vq.vqgan, the `tokenizer` stage).
  * Condition encoders: the caption's tokens, embedded, through ordinary 1D
    self-attention layers (text has no neighbourhood to exploit); with
    `transformer.condition_frames = F > 0`, also a visual condition, the
    tokens of the video's first F frames, through layers of (non-causal) 3DNA
    self-attention.
  * Decoder over the target tokens in raster order (t, h, w): each layer has
    causal 3D nearby self-attention (3DNA: a token sees only earlier tokens in
    a (2rt+1)×(2rh+1)×(2rw+1) box around it, jzoo.kernels.nearby_attention),
    3DNA cross-attention to the visual condition when there is one (a target
    token at (i, j, l) sees the condition tokens in a box around
    (i·Tc/T, j·Hc/H, l·Wc/W)), full cross-attention to the text, and an MLP.
    Cost grows with the boxes, not with the video.
  * Training: next-token cross-entropy over the target grid (teacher forcing).
  * Sampling: autoregressive with top-k (jzoo.sampling.autoregressive), one token
    at a time in a `lax.fori_loop`; every layer keeps a key/value cache of the grid, and a new
    token attends to the cached keys of its box only, so each step costs
    O(box) whatever the length. Tokens can be given instead of sampled: the
    first frames (video prediction) or any region (image completion).

With `tokenizer.frames = 1` the same model is a text-to-image model on
`shapes` (an image is a one-frame video).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jzoo import config as config_lib
from jzoo.errors import ConfigError
from jzoo.models.base import (INFILL, RECONSTRUCT, TEXT_TO_IMAGE, TEXT_TO_VIDEO, VIDEO_PREDICTION,
                              DataSpec, Model, Request, Stage, to_uint8)
from jzoo.nn import layers, patterns
# window_offsets: re-exported, the notebooks draw the 3DNA box with it.
from jzoo.nn.token_transformer import NUWA_NAMES, TokenTransformer, window_offsets  # noqa: F401
from jzoo.nn.transformer import Transformer, heads_for
from jzoo.sampling import autoregressive
from jzoo.text.encoder import InModelTextEncoder
from jzoo.vq.tokenizer_stage import TokenizerStage
from jzoo.vq.vqgan import VQGAN

TOKENIZER = "tokenizer"
TRANSFORMER = "transformer"


class NUWATransformer(nn.Module):
  """Text encoder (+ 3DNA encoder of the first `condition_frames` frames' codes) + 3DNA decoder
  over a [t, h, w] grid of `codebook_size` codes.

  The decoder (and the visual condition's encoder) is a configuration of
  `jzoo.nn.token_transformer.TokenTransformer` (causal Nearby self-attention, BOS shift, text by
  cross-attention with a learned null key/value) with NUWA's names in this module's own scope, so
  checkpoints load as they are. The caption's encoder is NUWA's own (text_embedding,
  text_position, text_encoder) and feeds the decoder's `text`."""
  vocab_size: int
  text_length: int
  codebook_size: int
  grid: tuple  # (t, h, w)
  width: int
  encoder_layers: int
  decoder_layers: int
  head_dim: int
  mlp_dim: int
  radius: tuple
  impl: str = "auto"
  dropout: float = 0.0
  remat: str = "none"
  dtype: jnp.dtype = jnp.float32
  condition_frames: int = 0  # > 0: the first frames' codes are a visual condition
  condition_layers: int = 0
  condition_radius: tuple = (1, 1, 1)

  def decoder(self, **kw):
    """The decoder's TokenTransformer (unbound with parent=None)."""
    return TokenTransformer(
        self.codebook_size, self.width, self.decoder_layers, self.head_dim, self.mlp_dim,
        grid=tuple(self.grid), pattern=patterns.Nearby(tuple(self.radius)), text="cross",
        causal=True, dropout=self.dropout, remat=self.remat, impl=self.impl, dtype=self.dtype,
        # The condition frames are the video's first frames: they share its code embedding and
        # positions, and are encoded with non-causal 3DNA.
        condition_radius=tuple(self.condition_radius) if self.condition_frames else None,
        condition_layers=self.condition_layers if self.condition_frames else 0,
        names=NUWA_NAMES, **kw)

  def setup(self):
    e, heads = self.width, heads_for(self.width, self.head_dim)
    pos_init = nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed"))
    self.text_embedding = layers.Embed(self.vocab_size, e, dtype=self.dtype)
    self.text_position = self.param("text_position", pos_init, (self.text_length, e))
    self.text_encoder = Transformer(self.encoder_layers, heads, self.head_dim, self.mlp_dim,
                                    dropout=self.dropout, remat=self.remat, dtype=self.dtype)
    self.net = self.decoder()
    nn.share_scope(self, self.net)

  @property
  def bos(self):
    return self.codebook_size

  def encode_text(self, tokens, mask, deterministic=True):
    x = self.text_embedding(tokens) + self.text_position[:tokens.shape[1]].astype(self.dtype)
    pad = (mask > 0)[:, None, None, :]
    return self.text_encoder(x, pad, deterministic=deterministic)

  def encode_condition(self, codes, deterministic=True):
    """The visual condition: codes [B, condition_frames, h, w] -> [B, condition_frames, h, w, E]."""
    return self.net.encode_condition(codes, deterministic)

  def __call__(self, tokens, mask, codes, deterministic=True):
    """Teacher forcing: logits [B, t, h, w, V] of each code given the codes before it (and, with
    a visual condition, the first `condition_frames` frames of `codes`)."""
    text = self.encode_text(tokens, mask, deterministic)
    condition = codes[:, :self.condition_frames] if self.condition_frames else None
    return self.net(codes, text, mask, deterministic, condition=condition)

  def init_cache(self, batch):
    return self.decoder(parent=None).init_cache(batch)

  def step(self, text, mask, previous, n, caches, visual=None):
    """Logits [B, V] of the code at raster index n, given the code at n - 1 (`previous`, BOS
    for n = 0), the caches of codes < n and the encoded visual condition (if any). Each layer
    reads only its box of the caches (`patterns.decode_step`): O(box) a token."""
    return self.net.step(previous, n, caches, text, mask, visual)


class NUWA(Model):
  def __init__(self, config):
    super().__init__(config)
    self.dtype = layers.dtype_of(config.train.dtype)
    tk, tr = config.tokenizer, config.transformer
    # Given tokens (request.extra "known") complete an image or video; a video config also
    # predicts from given first frames.
    self.capabilities = frozenset(
        {TEXT_TO_IMAGE, INFILL, RECONSTRUCT} if int(tk.frames) == 1
        else {TEXT_TO_VIDEO, VIDEO_PREDICTION, INFILL, RECONSTRUCT})
    self.tokenizer = config_lib.build(VQGAN, tk, dtype=self.dtype)
    self.tokenizer_stage = TokenizerStage(self.tokenizer, tk)
    self.components = (self.tokenizer_stage,)
    f = 2 ** (len(tk.channel_mult) - 1)
    if tk.resolution % f:
      raise ConfigError(f"tokenizer.resolution {tk.resolution} is not a multiple of the VQ-GAN's "
                        f"downsampling factor {f}")
    side = tk.resolution // f
    self.grid = (int(tk.frames), side, side)
    if len(tr.radius) != 3:
      raise ConfigError(f"transformer.radius must be (rt, rh, rw), got {tr.radius}")
    self.condition_frames = int(tr.condition_frames)
    if self.condition_frames and not 0 < self.condition_frames < self.grid[0]:
      raise ConfigError(f"transformer.condition_frames must be 0 (text only) or 1 to "
                        f"{self.grid[0] - 1} (first frames of the video), got {self.condition_frames}")
    self.transformer = config_lib.build(
        NUWATransformer, tr, text_length=self.text_length, codebook_size=tk.codebook_size,
        grid=self.grid, impl=tr.attention_impl, remat=str(config.train.remat), dtype=self.dtype)
    heads_for(tr.width, tr.head_dim)
    # The caption's encoder is part of the transformer stage and trains with it.
    self.text_encoder = InModelTextEncoder(self.transformer, "encode_text", tr.width)
    if self.video:
      data = DataSpec("moving_shapes", int(tk.resolution), frames=int(tk.frames),
                      text_length=self.text_length)
    else:
      data = DataSpec("shapes", int(tk.resolution), text_length=self.text_length)
    self.stage_table = {
        TOKENIZER: self.tokenizer_stage.stage(data),
        TRANSFORMER: Stage(data, init=self._init_transformer, loss=self._transformer_loss,
                           frozen=(TOKENIZER,)),
    }

  @property
  def video(self):
    return self.makes_video

  @property
  def output_shape(self):
    r = int(self.config.tokenizer.resolution)
    return (self.grid[0], r, r) if self.video else (r, r)

  def _pixels(self, batch):
    return batch["video"] if self.video else batch["image"]

  # --- training --------------------------------------------------------------
  def _init_transformer(self, rng, batch):
    b = batch["tokens"].shape[0]
    codes = jnp.zeros((b, *self.grid), jnp.int32)
    return self.transformer.init(rng, batch["tokens"], batch["mask"], codes)

  def _transformer_loss(self, params, batch, rng, frozen):
    codes = jax.lax.stop_gradient(self.encode(frozen[TOKENIZER], self._pixels(batch)))
    logits = self.transformer.apply({"params": params}, batch["tokens"], batch["mask"], codes,
                                    deterministic=False, rngs={"dropout": rng})
    # The condition frames are given at sampling time: only the frames after them are predicted.
    logits = logits[:, self.condition_frames:].astype(jnp.float32)
    codes = codes[:, self.condition_frames:]
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, codes))
    accuracy = jnp.mean(jnp.argmax(logits, -1) == codes)
    return loss, {"cross_entropy": loss, "accuracy": accuracy}

  # --- tokens <-> pixels -----------------------------------------------------
  def encode(self, params, pixels):
    """float [B, (T,) H, W, 3] in [-1, 1] -> codes int32 [B, t, h, w]."""
    codes, _, _ = self.tokenizer.apply({"params": params}, pixels, method=VQGAN.encode)
    return codes if self.video else codes[:, None]

  def decode(self, params, codes):
    """codes [B, t, h, w] -> float [B, (T,) H, W, 3] in [-1, 1]."""
    codes = codes if self.video else codes[:, 0]
    x = self.tokenizer.apply({"params": params}, codes, method=VQGAN.decode_codes)
    return jnp.clip(x.astype(jnp.float32), -1.0, 1.0)

  def reconstruct(self, params, pixels):
    """The VQ-GAN's round trip (reported by jzoo.evaluate)."""
    return self.decode(params[TOKENIZER], self.encode(params[TOKENIZER], pixels))

  def check_start_frames(self, shape):
    """ConfigError unless frames of `shape` [F, H, W, 3] can start a video (video prediction)."""
    r = int(self.config.tokenizer.resolution)
    if not self.video:
      raise ConfigError("this NUWA config makes images; start frames need a video config")
    if tuple(shape[1:]) != (r, r, 3):
      raise ConfigError(f"start frames are {shape[1]}x{shape[2]}; this model makes {r}x{r} videos")
    low = max(1, self.condition_frames)
    if not low <= shape[0] < self.grid[0]:
      raise ConfigError(f"give {low} to {self.grid[0] - 1} start frames, got {shape[0]}")

  # --- sampling --------------------------------------------------------------
  def default_request_options(self):
    return {"steps": int(np.prod(self.grid)), "guidance": 1.0}

  def generate(self, params, request: Request, rng):
    """uint8 [B, (T,) H, W, 3]. request.extra may hold "known" pixels [B, (T,) H, W, 3] with
    "known_mask" bool [B, t, h, w] over the token grid (those tokens are given, not sampled:
    image completion), or "frames" [B, F, H, W, 3], the first F frames (video prediction).
    `steps` and `guidance` do not apply (one step per token, no guidance)."""
    return to_uint8(self.generate_pixels(params, request, rng))

  def generate_pixels(self, params, request, rng):
    extra = request.extra or {}
    b = request.tokens.shape[0]
    known, known_mask = self._known_tokens(params, extra, b)
    codes = self.sample_codes(params[TRANSFORMER], request.tokens, request.mask, known,
                              known_mask, rng)
    return self.decode(params[TOKENIZER], codes)

  def _known_tokens(self, params, extra, b):
    known = jnp.zeros((b, *self.grid), jnp.int32)
    known_mask = jnp.zeros((b, *self.grid), bool)
    if self.condition_frames and "frames" not in extra:
      raise ConfigError(f"this NUWA predicts videos from their first {self.condition_frames} "
                        "frame(s): give them (python -m jzoo.sample --start FILE)")
    if "frames" in extra:
      self.check_start_frames(extra["frames"].shape[1:])
      f = extra["frames"].shape[1]
      codes = self.tokenizer.apply({"params": params[TOKENIZER]}, extra["frames"],
                                   method=VQGAN.encode)[0]
      known = known.at[:, :f].set(codes)
      known_mask = known_mask.at[:, :f].set(True)
    if "known" in extra:
      known = self.encode(params[TOKENIZER], extra["known"])
      known_mask = extra["known_mask"].astype(bool)
    return known, known_mask

  def sample_codes(self, params, tokens, mask, known, known_mask, rng):
    """Autoregressive top-k sampling with the key/value caches; codes int32 [B, t, h, w].
    With a visual condition, `known`'s first `condition_frames` frames are it."""
    s = self.config.sample
    model = self.transformer
    b = tokens.shape[0]
    text = self.text_encoder.encode(params, tokens, mask)
    visual = None
    if self.condition_frames:  # the given first frames, encoded once
      visual = model.apply({"params": params}, known[:, :self.condition_frames],
                           method=NUWATransformer.encode_condition)
    step = lambda caches, previous, n: model.apply(
        {"params": params}, text, mask, previous, n, caches, visual, method=NUWATransformer.step)
    codes = autoregressive.sample(
        step, model.init_cache(b), int(np.prod(self.grid)), rng,
        given_tokens=known.reshape(b, -1), given=known_mask.reshape(b, -1),
        temperature=float(s.temperature), top_k=int(s.top_k), bos=model.bos)
    return codes.reshape(b, *self.grid)


def build(config):
  return NUWA(config)

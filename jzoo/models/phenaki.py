"""Phenaki (Villegas et al. 2022, "Phenaki: Variable Length Video Generation From Open Domain
Textual Descriptions"): a causal video tokenizer and a masked transformer over its tokens.

Architecture (section 2 of the paper):
  * Text: a frozen T5 encoder (jzoo.text.frozen: public weights, or a small
    encoder pretrained here on the captions in the `text_encoder` stage).
  * C-ViViT (jzoo.vq.cvivit, the `tokenizer` stage): the first frame is
    patched on its own and the rest in tubelets, a spatial transformer per
    time step and a causal temporal transformer, then vector quantisation; so
    a clip of any length 1 + k·temporal_patch encodes its prefix the same way
    and an image is a one-frame video.
  * MaskGIT transformer (the `transformer` stage): a bidirectional
    transformer over the video tokens with cross-attention to the text
    embeddings, trained to predict masked tokens under the cosine schedule; 10%
    of captions are dropped so that sampling can use classifier-free guidance.
  * Generation: iterative parallel decoding (jzoo.sampling.maskgit) from an
    all-masked grid, or with the first time tokens given (image-to-video,
    video continuation). Story mode: each further prompt generates a new
    segment whose first time tokens are the re-encoded last frames of the
    previous one, so segments join smoothly into one long video.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jzoo import config as config_lib
from jzoo.diffusion import guidance as guidance_lib
from jzoo.errors import ConfigError
from jzoo.models.base import (IMAGE_TO_VIDEO, RECONSTRUCT, STORY, TEXT_TO_VIDEO, VIDEO_PREDICTION,
                              DataSpec, Model, Request, Stage, code_cache_input, to_uint8)
from jzoo.nn import layers
from jzoo.nn.token_loss import masked_cross_entropy
from jzoo.nn.token_transformer import TokenTransformer
from jzoo.nn.transformer import heads_for
from jzoo.parallel import compiler
from jzoo.sampling import maskgit
from jzoo.text.frozen import TEXT_ENCODER, FrozenTextEncoder
from jzoo.vq.cvivit import CViViT
from jzoo.vq.tokenizer_stage import TokenizerStage

TOKENIZER = "tokenizer"
TRANSFORMER = "transformer"


class MaskGITTransformer(nn.Module):
  """Video tokens [B, t, h, w] (id `codebook_size` = [MASK]) + text -> logits [B, t, h, w, V].

  A configuration of `jzoo.nn.token_transformer.TokenTransformer` (not causal: MaskGIT; Full
  attention; text by cross-attention) in this module's own scope, so the parameter names are
  the same and checkpoints load as they are."""
  codebook_size: int
  width: int
  num_layers: int
  head_dim: int
  mlp_dim: int
  max_time_tokens: int
  grid_size: int  # h = w of the token grid
  text_positions: bool = False  # a learned embedding per text position (layers.add_text_positions)
  dropout: float = 0.0
  remat: str = "none"
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.net = TokenTransformer(
        self.codebook_size, self.width, self.num_layers, self.head_dim, self.mlp_dim,
        grid=(self.max_time_tokens, self.grid_size, self.grid_size), text="cross",
        text_positions=self.text_positions, causal=False, dropout=self.dropout,
        remat=self.remat, dtype=self.dtype)
    nn.share_scope(self, self.net)

  def __call__(self, tokens, text, text_mask, deterministic=True):
    return self.net(tokens, text, text_mask, deterministic)


class Phenaki(Model):
  # Start frames: one (image-to-video) or 1 + temporal_patch·j (continuation); a story continues
  # each prompt from the end of the previous segment.
  capabilities = frozenset({TEXT_TO_VIDEO, IMAGE_TO_VIDEO, VIDEO_PREDICTION, STORY, RECONSTRUCT})

  def __init__(self, config):
    super().__init__(config)
    self.dtype = layers.dtype_of(config.train.dtype)
    self.text_encoder = FrozenTextEncoder(config)
    tk, tr = config.tokenizer, config.transformer
    if tk.resolution % tk.patch_size:
      raise ConfigError(f"tokenizer.resolution {tk.resolution} is not a multiple of "
                        f"tokenizer.patch_size {tk.patch_size}")
    remat = str(config.train.remat)
    self.tokenizer = config_lib.build(CViViT, tk, image_size=tk.resolution, remat=remat,
                                      dtype=self.dtype)
    self.tokenizer_stage = TokenizerStage(self.tokenizer, tk)
    self.components = (self.text_encoder, self.tokenizer_stage)
    try:
      self.time_tokens = self.tokenizer.num_time_tokens(int(tk.frames))
    except ValueError as e:
      raise ConfigError(f"tokenizer.frames: {e}") from None
    if self.time_tokens > tk.max_time_tokens:
      raise ConfigError(f"tokenizer.frames={tk.frames} needs {self.time_tokens} time tokens; "
                        f"raise tokenizer.max_time_tokens ({tk.max_time_tokens})")
    self.grid = tk.resolution // tk.patch_size
    self.transformer = config_lib.build(
        MaskGITTransformer, tr, codebook_size=tk.codebook_size,
        max_time_tokens=tk.max_time_tokens, grid_size=self.grid, remat=remat, dtype=self.dtype)
    heads_for(tr.width, tr.head_dim)
    clips = DataSpec("moving_shapes", int(tk.resolution), frames=int(tk.frames),
                     text_length=self.text_length)
    if self.codes_cached:  # the codes replace the clips, and the tokenizer is not needed
      clips = dataclasses.replace(clips, pixels=False, inputs=(code_cache_input(self.code_grid),))
    self.stage_table = {
        # Only the captions matter to the text encoder: the smallest clips render fastest.
        TEXT_ENCODER: self.text_encoder.stage(
            DataSpec("moving_shapes", int(config.text_encoder.resolution), frames=2,
                     text_length=self.text_length), next_stage=TOKENIZER),
        TOKENIZER: self.tokenizer_stage.stage(dataclasses.replace(clips, pixels=True, inputs=())),
        TRANSFORMER: Stage(
            self.text_encoder.conditioned_spec(clips), init=self._init_transformer,
            loss=self._transformer_loss,
            frozen=self.text_encoder.frozen_stages() + (() if self.codes_cached else (TOKENIZER,))),
    }

  @property
  def mask_id(self):
    return int(self.config.tokenizer.codebook_size)

  # --- data ------------------------------------------------------------------
  @property
  def codes_cached(self):
    """True when the transformer trains on precomputed codes (`tokenizer.cache`, a folder written
    by python -m jzoo.cache_codes): its train step then holds no tokenizer."""
    return bool(self.config.tokenizer.cache)

  @property
  def code_grid(self):
    """Codes per clip: (time, height, width) tokens."""
    return (self.time_tokens, self.grid, self.grid)

  @property
  def output_shape(self):
    tk = self.config.tokenizer
    return (int(tk.frames), int(tk.resolution), int(tk.resolution))

  # --- training --------------------------------------------------------------
  def _init_transformer(self, rng, batch):
    b, length = batch["mask"].shape
    tokens = jnp.zeros((b, *self.code_grid), jnp.int32)
    text = jnp.zeros((b, length, self.text_encoder.width), self.dtype)
    return self.transformer.init(rng, tokens, text, batch["mask"])

  def _transformer_loss(self, params, batch, rng, frozen):
    drop_rng, mask_rng, dropout_rng = jax.random.split(rng, 3)
    text = self.text_encoder.embeddings(frozen, batch)
    text_mask = guidance_lib.drop_condition(drop_rng, batch["mask"],
                                            float(self.config.transformer.text_drop))
    if "codes" in batch:  # precomputed by the frozen tokenizer (jzoo.data.frozen_cache)
      codes = batch["codes"]
    else:
      codes = jax.lax.stop_gradient(self.encode_video(frozen[TOKENIZER], batch["video"]))
    b = codes.shape[0]
    flat = codes.reshape(b, -1)
    masked = maskgit.training_mask(mask_rng, jnp.zeros(flat.shape, bool))
    inputs = jnp.where(masked, self.mask_id, flat).reshape(codes.shape)
    logits = self.transformer.apply({"params": params}, inputs, text, text_mask,
                                    deterministic=False, rngs={"dropout": dropout_rng})
    loss, accuracy = masked_cross_entropy(logits.reshape(b, flat.shape[1], -1), flat, masked)
    return loss, {"masked_ce": loss, "masked_accuracy": accuracy,
                  "mask_fraction": jnp.mean(masked.astype(jnp.float32))}

  def check_start_frames(self, shape):
    """ConfigError unless frames of `shape` [F, H, W, 3] can start a clip (image-to-video with
    F = 1, continuation with F = 1 + temporal_patch·(j-1) < the clip's frames)."""
    tk = self.config.tokenizer
    f, rest = shape[0], tuple(shape[1:])
    size = (int(tk.resolution), int(tk.resolution), 3)
    pt = int(tk.temporal_patch)
    if rest != size:
      raise ConfigError(f"start frames are {rest[0]}x{rest[1]}; this model makes "
                        f"{size[0]}x{size[1]} videos")
    if (f - 1) % pt or f >= int(tk.frames):
      raise ConfigError(f"start with 1 + {pt}·j frames, fewer than the clip's {tk.frames} "
                        f"(1, {1 + pt}, ...), got {f}")

  # --- tokens <-> pixels -----------------------------------------------------
  def encode_video(self, params, video):
    """float [B, T, H, W, 3] in [-1, 1] -> codes int32 [B, t, h, w]."""
    codes, _, _ = self.tokenizer.apply({"params": params}, video, method=CViViT.encode)
    return codes

  def decode_codes(self, params, codes):
    """codes [B, t, h, w] -> float video [B, 1 + temporal_patch·(t-1), H, W, 3] in [-1, 1]."""
    video = self.tokenizer.apply({"params": params}, codes, method=CViViT.decode_codes)
    return jnp.clip(video.astype(jnp.float32), -1.0, 1.0)

  def reconstruct(self, params, video):
    """The tokenizer's round trip of float videos in [-1, 1] (what its codes keep of a clip)."""
    return self.decode_codes(params[TOKENIZER], self.encode_video(params[TOKENIZER], video))

  # --- sampling --------------------------------------------------------------
  def generate(self, params, request: Request, rng):
    """uint8 videos [B, T, H, W, 3]. Jittable; steps and guidance may be traced.

    request.extra may hold:
      "frames": float [B, F, H, W, 3] in [-1, 1], F = 1 + temporal_patch·(j-1): the clip starts
        with these frames (image-to-video with F = 1, video continuation otherwise);
      "story_tokens"/"story_mask": [S, B, L] further prompts: story mode, output
        T + S·temporal_patch·(time tokens - story_context) frames long.
    """
    return to_uint8(self.generate_video(params, request, rng))

  def generate_video(self, params, request: Request, rng):
    """Like `generate`, as floats in [-1, 1]."""
    sample_cfg = self.config.sample
    steps = sample_cfg.steps if request.steps is None else request.steps
    guidance = sample_cfg.guidance if request.guidance is None else request.guidance
    extra = request.extra or {}
    pt = int(self.config.tokenizer.temporal_patch)

    first = extra.get("frames")
    prefix = None if first is None else self.encode_video(params[TOKENIZER], first)
    segment = self._segment(params, request.tokens, request.mask, prefix, steps, guidance,
                            jax.random.fold_in(rng, 0))
    video = [segment]
    story_tokens, story_mask = extra.get("story_tokens"), extra.get("story_mask")
    if story_tokens is not None:
      context = int(sample_cfg.story_context)
      if not 1 <= context < self.time_tokens:
        raise ConfigError(f"sample.story_context must be in [1, {self.time_tokens - 1}], "
                          f"got {context}")
      keep = 1 + pt * (context - 1)  # frames of the previous segment re-encoded as context
      for s in range(story_tokens.shape[0]):
        prefix = self.encode_video(params[TOKENIZER], segment[:, -keep:])
        segment = self._segment(params, story_tokens[s], story_mask[s], prefix, steps, guidance,
                                jax.random.fold_in(rng, s + 1))
        video.append(segment[:, keep:])
    return jnp.concatenate(video, axis=1)

  def _segment(self, params, tokens, mask, prefix, steps, guidance, rng):
    """One clip of `tokenizer.frames` frames; its first time tokens are `prefix` if given.

    With `sample.candidates` = K > 1, draws K token grids per prompt and decodes the one the
    transformer finds most likely given the text (`likelihood`): K times the sampling's
    transformer calls plus one per candidate, one decode."""
    k = int(self.config.sample.candidates)
    if k < 1:
      raise ConfigError(f"sample.candidates must be at least 1, got {k}")
    if k == 1:
      codes = self.sample_codes(params, tokens, mask, prefix, steps, guidance, rng)
    else:
      b = tokens.shape[0]
      repeat = lambda x: None if x is None else jnp.concatenate([x] * k)
      tokens, mask, prefix = repeat(tokens), repeat(mask), repeat(prefix)
      codes = self.sample_codes(params, tokens, mask, prefix, steps, guidance, rng)
      scores = self.likelihood(params, codes, tokens, mask, prefix)
      best = jnp.argmax(scores.reshape(k, b), axis=0)
      codes = codes.reshape(k, b, *self.code_grid)[best, jnp.arange(b)]
    return self.decode_codes(params[TOKENIZER], codes)

  def _given(self, b, prefix):
    """Token grids [B, t, h, w] of the given tokens and where they are (the prefix's time steps)."""
    grid = self.code_grid
    given_tokens = jnp.zeros((b, *grid), jnp.int32)
    given = jnp.zeros((b, *grid), bool)
    if prefix is not None:
      j = prefix.shape[1]
      if j >= self.time_tokens:
        raise ConfigError(f"the given frames fill {j} of the clip's {self.time_tokens} time "
                          "tokens; give fewer frames")
      given_tokens = given_tokens.at[:, :j].set(prefix)
      given = given.at[:, :j].set(True)
    return given_tokens, given

  def _logits_fn(self, params, text, mask):
    """flat video tokens [B', N] -> logits [B', N, V] for text embeddings/mask [B', L]."""
    apply = compiler.cpu_chunked(
        lambda t, x, m: self.transformer.apply({"params": params[TRANSFORMER]}, t, x, m),
        int(self.config.sample.cpu_rows))

    def logits_fn(flat_tokens):
      logits = apply(flat_tokens.reshape(flat_tokens.shape[0], *self.code_grid), text, mask)
      return logits.reshape(*flat_tokens.shape, -1)
    return logits_fn

  def sample_codes(self, params, tokens, mask, prefix, steps, guidance, rng):
    """MaskGIT decoding of one clip's token grid [B, t, h, w] for text tokens/mask [B, L]."""
    b = tokens.shape[0]
    given_tokens, given = self._given(b, prefix)
    text = self.text_encoder.encode(params[TEXT_ENCODER], tokens, mask)
    # One call on the doubled batch: with the text, then without it.
    both_fn = self._logits_fn(params, jnp.concatenate([text, text]),
                              jnp.concatenate([mask, jnp.zeros_like(mask)]))

    def logits_fn(flat_tokens):
      both = both_fn(jnp.concatenate([flat_tokens] * 2))
      cond, uncond = both[:b], both[b:]
      return uncond + guidance * (cond - uncond)  # classifier-free guidance on the logits

    sample_cfg = self.config.sample
    codes = maskgit.decode(logits_fn, given_tokens.reshape(b, -1), given.reshape(b, -1), rng,
                           steps=steps, mask_id=self.mask_id,
                           temperature=float(sample_cfg.temperature),
                           choice_temperature=float(sample_cfg.choice_temperature))
    return codes.reshape(b, *self.code_grid)

  def likelihood(self, params, codes, tokens, mask, prefix):
    """float [B]: maskgit.mean_log_likelihood of token grids `codes` [B, t, h, w] given text
    tokens/mask [B, L] (the prefix's given tokens are context, not scored)."""
    b = codes.shape[0]
    _, given = self._given(b, prefix)
    text = self.text_encoder.encode(params[TEXT_ENCODER], tokens, mask)
    return maskgit.mean_log_likelihood(self._logits_fn(params, text, mask), codes.reshape(b, -1),
                                       given.reshape(b, -1), mask_id=self.mask_id)


def build(config):
  return Phenaki(config)

"""One protocol for the zoo's text encoders, and the adapter for encoders trained inside a model.

A model conditions on text through a `TextEncoder`, whatever network is behind it:

  * `jzoo.text.frozen.FrozenTextEncoder`: T5, imported or pretrained in the model's
    `text_encoder` stage, read frozen by the stages it conditions (Imagen, Phenaki, ...);
  * `jzoo.text.clip.CLIPTextEncoder`: CLIP's text tower, frozen (DALL-E 2's prior and
    decoder); `jzoo.text.clip.CLIPImageEncoder` is its image tower, with the same
    attributes over pixels instead of tokens;
  * `InModelTextEncoder`: an encoder that is a method of a stage's own module, trained with
    that stage (NUWA's `encode_text`).

Each one answers:
  width            per-token embedding width (the last axis of `encode`)
  pooled_width     the last axis of `pooled` (CLIP's projection_dim; else `width`)
  frozen           True when the stages it conditions read it frozen (no gradient reaches it)
  tokenizer        how its tokens come: SENTENCEPIECE (jzoo.text.tokenizer.Tokenizer, pad 0,
                   eos 1; `config.text.tokenizer` names the model) or CLIP_BPE
                   (jzoo.text.clip_tokenizer.CLIPTokenizer of the CLIP folder)
  init(rng, tokens, mask)            -> flax variables ({"params": ...}, boxed with axis names)
  encode(params, tokens, mask)       -> float [B, L, width], per token
  pooled(params, tokens, mask)       -> float [B, pooled_width], one vector per caption

`tokens` are int [B, L] and `mask` [B, L] is 1 on real tokens. Outputs at padded positions are
defined but meaningless: consumers use the mask (cross-attention, `masked_mean`).
"""

import abc

import jax.numpy as jnp

SENTENCEPIECE = "sentencepiece"
CLIP_BPE = "clip-bpe"


def masked_mean(x, mask):
  """Mean of x [B, L, D] over the real tokens (mask [B, L] > 0), in float32; 0 for no tokens."""
  m = (mask > 0).astype(jnp.float32)[..., None]
  return jnp.sum(x.astype(jnp.float32) * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)


class TextEncoder(abc.ABC):
  """The protocol (see the module docstring). Subclasses set `width`, `frozen` and `tokenizer`
  (class attributes, properties or instance attributes) and define `init` and `encode`."""
  width: int
  frozen: bool = True
  tokenizer: str = SENTENCEPIECE

  @property
  def pooled_width(self):
    return self.width

  @abc.abstractmethod
  def init(self, rng, tokens, mask):
    """Flax variables of the encoder's network, for tokens/mask of this shape."""

  @abc.abstractmethod
  def encode(self, params, tokens, mask):
    """Per-token embeddings [B, L, width] (gradient-free when `frozen`)."""

  def pooled(self, params, tokens, mask):
    """One vector per caption [B, pooled_width]; by default the masked mean of `encode`."""
    return masked_mean(self.encode(params, tokens, mask), mask)


class InModelTextEncoder(TextEncoder):
  """A text encoder that is a method of a stage's flax module, trained with that stage.

  NUWA's transformer encodes the caption with `NUWATransformer.encode_text(tokens, mask)`, and
  those weights are part of the transformer stage's params: `encode` applies the method to the
  stage's params (the whole tree is fine: the method only reads its own submodules), and no
  `stop_gradient` is applied, so the stage's loss trains the encoder.
  """
  frozen = False

  def __init__(self, module, method_name, width, tokenizer=SENTENCEPIECE):
    self.module, self.method_name, self.width, self.tokenizer = (
        module, method_name, int(width), tokenizer)

  def init(self, rng, tokens, mask):
    """Only the encoder's part of the module (the stage's own init builds all of it)."""
    return self.module.init(rng, tokens, mask, method=self.method_name)

  def encode(self, params, tokens, mask, **kwargs):
    """`kwargs` reach the method (e.g. deterministic=False; dropout then needs `rngs`)."""
    rngs = kwargs.pop("rngs", None)
    return self.module.apply({"params": params}, tokens, mask, method=self.method_name,
                             rngs=rngs, **kwargs)

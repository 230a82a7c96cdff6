"""The text-encoder protocol (jzoo.text.encoder): T5, CLIP's towers and encoders inside a model."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jzoo.configs import _common
from jzoo.text import clip
from jzoo.text.encoder import CLIP_BPE, SENTENCEPIECE, InModelTextEncoder, TextEncoder
from jzoo.text.frozen import FrozenTextEncoder

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
TOKENS = jnp.array([[5, 6, 7, 1, 0, 0], [8, 1, 0, 0, 0, 0]])
MASK = (TOKENS > 0).astype(jnp.int32)
CLIP_TINY = clip.CLIPConfig(
    text=clip.TextConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
                         num_attention_heads=2, num_hidden_layers=1, max_position_embeddings=8,
                         eos_token_id=1),
    vision=clip.VisionConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2,
                             num_hidden_layers=1, image_size=8, patch_size=4),
    projection_dim=12)


class TinyModel(nn.Module):
  """A stage module with a text encoder as one of its methods, like NUWA's transformer."""

  def setup(self):
    self.embed = nn.Embed(50, 8)
    self.head = nn.Dense(3)

  def encode_text(self, tokens, mask, scale=1.0):
    return self.embed(tokens) * mask[..., None] * scale

  def __call__(self, tokens, mask):
    return self.head(self.encode_text(tokens, mask))


def _t5():
  config = ml_collections.ConfigDict(dict(text_encoder=_common.text_encoder("micro"),
                                          train=dict(dtype="float32")))
  return FrozenTextEncoder(config)


def _params(encoder, *args):
  return nn.unbox(encoder.init(jax.random.PRNGKey(0), *args))["params"]


def _encoders():
  return {"t5": _t5(), "clip_text": clip.CLIPTextEncoder(CLIP_TINY),
          "in_model": InModelTextEncoder(TinyModel(), "encode_text", 8)}


@pytest.mark.parametrize("name", ["t5", "clip_text", "in_model"])
def test_every_encoder_satisfies_the_protocol(name):
  encoder = _encoders()[name]
  assert isinstance(encoder, TextEncoder)
  assert encoder.tokenizer == (CLIP_BPE if name == "clip_text" else SENTENCEPIECE)
  assert encoder.frozen == (name != "in_model")
  params = _params(encoder, TOKENS, MASK)
  out = jax.jit(encoder.encode)(params, TOKENS, MASK)
  assert out.shape == (2, 6, encoder.width) and out.dtype == jnp.float32
  pooled = jax.jit(encoder.pooled)(params, TOKENS, MASK)
  assert pooled.shape == (2, encoder.pooled_width) and pooled.dtype == jnp.float32
  assert np.isfinite(pooled).all()
  # Frozen encoders pass no gradient back into their params; one trained in a model does.
  grads = jax.grad(lambda p: jnp.sum(encoder.encode(p, TOKENS, MASK) ** 2))(params)
  total = sum(float(jnp.abs(g).sum()) for g in jax.tree_util.tree_leaves(grads))
  assert (total == 0) == encoder.frozen


def test_t5_pooled_is_the_masked_mean():
  encoder = _t5()
  params = _params(encoder, TOKENS, MASK)
  x = np.asarray(encoder.encode(params, TOKENS, MASK), np.float64)
  m = np.asarray(MASK, np.float64)[..., None]
  expected = (x * m).sum(1) / m.sum(1)
  np.testing.assert_allclose(encoder.pooled(params, TOKENS, MASK), expected, atol=1e-5)
  assert encoder.pooled_width == encoder.width == 32


def test_clip_text_encoder_is_the_clip_model():
  encoder = clip.CLIPTextEncoder(CLIP_TINY)
  params = _params(encoder, TOKENS, MASK)
  model = encoder.model
  np.testing.assert_allclose(
      encoder.pooled(params, TOKENS, MASK),
      model.apply({"params": params}, TOKENS, MASK, method=clip.CLIP.get_text_features),
      atol=1e-6)
  # The per-token states are the tower's final-normed states: the pooled feature is the
  # projection of the one at the first end token (id 1).
  states = encoder.encode(params, TOKENS, MASK)
  end = states[jnp.arange(2), jnp.array([3, 1])]
  np.testing.assert_allclose(encoder.pooled(params, TOKENS, MASK),
                             end @ params["text_projection"]["kernel"], atol=1e-5)
  assert (encoder.width, encoder.pooled_width) == (16, 12)
  # The whole CLIPModel tree, the same that load_params fills and the CLIP score reads.
  assert set(params) == {"text_model", "vision_model", "text_projection", "visual_projection",
                         "logit_scale"}


@pytest.fixture(scope="module")
def loaded():
  return clip.load_clip_encoders(os.path.join(GOLDEN, "clip_tiny"))


def test_clip_image_encoder_matches_the_clip_score_path(loaded):
  """[-1, 1] pixels at the tower's size (no resize) against numpy preprocess + features."""
  _, image_encoder, params, _ = loaded
  model = image_encoder.model
  images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  expected = clip.image_embeddings(model, params, clip.preprocess(images, model.processing))
  pixels = images.astype(np.float32) / 127.5 - 1
  out = jax.jit(image_encoder.encode)(params, pixels)
  assert out.shape == (3, image_encoder.width) and image_encoder.width == 32
  np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)
  np.testing.assert_allclose(image_encoder.encode(params, images), expected, atol=1e-4, rtol=0)
  assert image_encoder.frozen


def test_clip_image_encoder_resizes_and_crops(loaded):
  _, image_encoder, params, _ = loaded
  p = image_encoder.model.processing
  # 64x48 -> shortest side 32 (42x32) -> center crop 32x32, as `preprocess` does.
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (2, 64, 48, 3), dtype=np.uint8)
  x = clip.preprocess_jax(images.astype(np.float32) / 127.5 - 1, p)
  assert x.shape == (2, 32, 32, 3)
  reference = clip.preprocess(images, p)  # PIL's bicubic: close, not equal
  assert np.abs(np.asarray(x) - reference).mean() < 0.02
  out = image_encoder.encode(params, images.astype(np.float32) / 127.5 - 1)
  assert out.shape == (2, 32) and np.isfinite(out).all()
  # A crop larger than the image zero-pads (centered), as transformers' center crop.
  small = clip.ImageProcessing(do_resize=False, crop_size=(6, 6), do_normalize=False)
  y = clip.preprocess_jax(jnp.ones((1, 3, 4, 3)), small)
  np.testing.assert_allclose(y, clip.preprocess(np.full((3, 4, 3), 255, np.uint8), small))


def test_clip_text_encoder_matches_the_clip_score_path(loaded):
  text_encoder, _, params, tokenizer = loaded
  ids, mask = tokenizer(["a red circle", "two blue squares moving left"])
  expected = clip.text_embeddings(text_encoder.model, params, ids, mask)
  np.testing.assert_allclose(text_encoder.pooled(params, ids, mask), expected, atol=1e-4)
  assert text_encoder.encode(params, ids, mask).shape == (2, ids.shape[1], 64)


def test_in_model_encoder_applies_the_stage_method():
  module = TinyModel()
  encoder = InModelTextEncoder(module, "encode_text", 8)
  # The stage's own params (the whole tree) serve the encoder.
  params = nn.unbox(module.init(jax.random.PRNGKey(0), TOKENS, MASK))["params"]
  assert set(_params(encoder, TOKENS, MASK)) == {"embed"}  # init builds only its own part
  out = encoder.encode(params, TOKENS, MASK, scale=2.0)
  expected = 2.0 * params["embed"]["embedding"][TOKENS] * MASK[..., None]
  np.testing.assert_allclose(out, expected, atol=1e-6)
  np.testing.assert_allclose(encoder.pooled(params, TOKENS, MASK),
                             (expected / 2).sum(1) / MASK.sum(1, keepdims=True), atol=1e-6)

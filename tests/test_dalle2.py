"""DALL-E 2 (unCLIP): CLIP's contrastive stage, the prior's target space and candidate selection,
the decoder's two conditionings and their dropout, guidance 1 = the conditional model, the tasks,
the upsamplers' degradations, the paper's sizes, and the micro pipeline on 8 fake devices."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jzoo import config as config_lib
from jzoo.diffusion import degradations
from jzoo.errors import CheckpointError, ConfigError
from jzoo.models import dalle2
from jzoo.models.base import Request
from jzoo.models import params as params_lib
from jzoo.models.params import count_params
from jzoo.text import contrastive

from model_helpers import noisy, square_batch, train_micro_stages

B = 4


def micro_config(*overrides):
  return config_lib.load("dalle2:micro", list(overrides))


@pytest.fixture(scope="module")
def model():
  return dalle2.build(micro_config())


def batch_for(model, stage, batch_size=B, seed=0):
  return square_batch(model, stage, batch_size, seed)


@pytest.fixture(scope="module")
def params(model):
  out = {}
  for i, stage in enumerate(model.stages):
    init = jax.jit(lambda rng, batch, stage=stage: model.init(stage, rng, batch))
    variables = init(jax.random.PRNGKey(i), batch_for(model, stage))
    out[stage] = noisy(nn.unbox(variables["params"]), seed=i)
  return out


# --- configs ------------------------------------------------------------------------


def test_stages_in_training_order_and_capabilities(model):
  assert model.stages == ("clip", "prior", "decoder", "sr")
  assert {"text-to-image", "image-variations", "interpolation"} <= set(model.capabilities)
  assert model.frozen_stages("prior") == ("clip",)
  assert model.frozen_stages("decoder") == ("clip",)
  assert model.frozen_stages("sr") == ()
  tiny = dalle2.build(config_lib.load("dalle2:tiny_shapes"))
  assert tiny.output_shape == (64, 64)
  assert int(tiny.config.stages.decoder.resolution) == 32


def test_paper_parameter_counts_within_ten_percent():
  """Ramesh et al. 2022, appendix C: a 1B prior, a 3.5B decoder, 700M and 300M upsamplers."""
  paper = dalle2.build(config_lib.load("dalle2:paper"))
  stated = {"prior": 1.0e9, "decoder": 3.5e9, "sr256": 0.7e9, "sr1024": 0.3e9}
  for stage, n in stated.items():
    counted = count_params(params_lib.abstract_params(paper, stage))
    assert abs(counted - n) / n < 0.10, (stage, counted)


def test_a_bad_degradation_is_a_config_error():
  with pytest.raises(ConfigError, match="degradation"):
    dalle2.build(micro_config("stages.sr.degradation=jpeg"))


# --- CLIP ---------------------------------------------------------------------------


def test_contrastive_loss_against_an_independent_computation():
  rng = np.random.default_rng(0)
  t, i = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
  loss, metrics = contrastive.contrastive_loss(jnp.asarray(t), jnp.asarray(i), jnp.float32(2.0))
  tn = t / np.linalg.norm(t, axis=1, keepdims=True)
  im = i / np.linalg.norm(i, axis=1, keepdims=True)
  logits = np.exp(2.0) * im @ tn.T

  def ce(rows):
    rows = rows - rows.max(1, keepdims=True)
    return -np.mean(np.diag(rows) - np.log(np.exp(rows).sum(1)))

  np.testing.assert_allclose(float(loss), 0.5 * (ce(logits) + ce(logits.T)), rtol=1e-5)
  # The temperature is clipped at 100: a larger logit_scale gives the same loss.
  a = contrastive.contrastive_loss(jnp.asarray(t), jnp.asarray(i), jnp.float32(5.0))[0]
  b = contrastive.contrastive_loss(jnp.asarray(t), jnp.asarray(i), jnp.float32(9.0))[0]
  assert float(a) == float(b)
  assert 0 <= float(metrics["image_to_text_accuracy"]) <= 1


def test_identical_captions_are_positives_of_each_other():
  """Examples 0 and 1 share a caption: each image's target is uniform over both texts (and each
  text's over both images), against an independent computation. With identical text embeddings
  that loss equals the diagonal-only one; what the extra positive changes is the accuracy: image
  1's nearest text is text 0 (a tie, argmax takes the first), a hit only when it is a positive."""
  rng = np.random.default_rng(1)
  t = rng.normal(size=(3, 4))
  t[1] = t[0]  # one caption, one text embedding
  i = t + 0.3 * rng.normal(size=(3, 4))
  same = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]], bool)
  loss, metrics = contrastive.contrastive_loss(jnp.asarray(t), jnp.asarray(i), jnp.float32(1.5),
                                               jnp.asarray(same))
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  logits = np.exp(1.5) * unit(i) @ unit(t).T
  targets = same / same.sum(1, keepdims=True)

  def soft_ce(rows, tgt):
    logp = rows - rows.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    return -np.mean(np.sum(tgt * logp, axis=1))

  want = 0.5 * (soft_ce(logits, targets) + soft_ce(logits.T, targets.T))
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  assert float(metrics["image_to_text_accuracy"]) == 1.0
  _, diagonal = contrastive.contrastive_loss(jnp.asarray(t), jnp.asarray(i), jnp.float32(1.5))
  np.testing.assert_allclose(float(diagonal["image_to_text_accuracy"]), 2 / 3, rtol=1e-6)


def test_hard_negatives_against_an_independent_computation():
  """Each caption's twin is an extra column of the image-to-text softmax only: row 0's twin is a
  negative, row 1 has none (left out), and row 2's twin equals caption 0, so it is a positive of
  image 0. relation_accuracy counts the rows with a twin whose image beats it with its own."""
  rng = np.random.default_rng(2)
  t, i, n = rng.normal(size=(3, 4)), rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
  n[2] = t[0]
  valid = np.array([True, False, True])
  positive = np.zeros((3, 3), bool)
  positive[0, 2] = True
  loss, metrics = contrastive.contrastive_loss(
      jnp.asarray(t), jnp.asarray(i), jnp.float32(1.0),
      negatives=(jnp.asarray(n), jnp.asarray(valid), jnp.asarray(positive)))
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  logits, extra = np.e * unit(i) @ unit(t).T, np.e * unit(i) @ unit(n).T

  def soft_ce(rows, tgt):
    logp = rows - np.log(np.exp(rows).sum(1, keepdims=True))
    return -np.mean(np.sum(tgt * logp, axis=1))

  wide = np.concatenate([logits, extra[:, [0, 2]]], axis=1)  # twin 1 is left out
  targets = np.concatenate([np.eye(3), positive[:, [0, 2]]], axis=1)
  want = 0.5 * (soft_ce(wide, targets / targets.sum(1, keepdims=True)) + soft_ce(logits.T, np.eye(3)))
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  closer = [logits[0, 0] > extra[0, 0], logits[2, 2] > extra[2, 2]]
  np.testing.assert_allclose(float(metrics["relation_accuracy"]), np.mean(closer), rtol=1e-6)
  assert np.isfinite(float(loss))


def test_clip_trains_on_relation_swapped_twins(model):
  """With clip.hard_negatives the clip stage's batches carry each caption's twin
  (jzoo.data.shapes.relation_swapped), and its loss reads them: the same batch without twins
  gives a different loss."""
  assert not model.data_spec("clip").negatives  # off by default
  model = dalle2.build(micro_config("clip.hard_negatives=True"))
  assert model.data_spec("clip").negatives and not model.data_spec("prior").negatives
  batch = batch_for(model, "clip")
  variables = model.init("clip", jax.random.PRNGKey(0), batch)
  p = nn.unbox(variables["params"])
  with_twins, metrics = model.loss("clip", p, batch, jax.random.PRNGKey(0), {})
  plain = {k: v for k, v in batch.items() if not k.startswith("negative")}
  without, plain_metrics = model.loss("clip", p, plain, jax.random.PRNGKey(0), {})
  assert "relation_accuracy" in metrics and "relation_accuracy" not in plain_metrics
  assert float(with_twins) > float(without)  # extra negatives only add to the softmax's denominator


def test_clip_stage_loss_decreases(model):
  batch = batch_for(model, "clip", batch_size=8)
  variables = model.init("clip", jax.random.PRNGKey(0), batch)
  p = nn.unbox(variables["params"])
  import optax
  opt = optax.adam(3e-3)
  state = opt.init(p)
  grad = jax.jit(jax.value_and_grad(lambda q: model.loss("clip", q, batch, jax.random.PRNGKey(0),
                                                         {})[0]))
  first = None
  for _ in range(30):
    loss, g = grad(p)
    first = float(loss) if first is None else first
    updates, state = opt.update(g, state, p)
    p = optax.apply_updates(p, updates)
  assert float(loss) < 0.5 * first


def test_an_imported_clip_of_the_wrong_width_is_a_one_line_error(tmp_path):
  import json
  (tmp_path / "config.json").write_text(json.dumps({
      "model_type": "clip", "projection_dim": 512,
      "text_config": {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64},
      "vision_config": {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
                        "image_size": 16, "patch_size": 4}}))
  m = dalle2.build(micro_config(f"clip.weights={tmp_path}"))
  with pytest.raises(CheckpointError, match="projection_dim is 512"):
    m.external_weights("clip")


def test_an_imported_clip_reads_its_own_bpe_ids():
  """With config.clip.weights the prompts (sampling and training) are tokenized by the CLIP
  folder's BPE, not the zoo's sentencepiece: the ids start and end with its own bos and eos."""
  from jzoo.text.clip_tokenizer import CLIPTokenizer
  folder = os.path.join(os.path.dirname(__file__), "golden", "clip_tiny")
  m = dalle2.build(micro_config(f"clip.weights={folder}"))
  tokenizer = m.text_tokenizer()
  assert isinstance(tokenizer, CLIPTokenizer) and m.text_encoder.tokenizer == "clip-bpe"
  ids, mask = tokenizer.encode_batch(["a red circle"], m.text_length)
  n = int(mask.sum())
  assert ids[0, 0] == tokenizer.bos_id and ids[0, n - 1] == tokenizer.eos_id == 713
  assert dalle2.build(micro_config()).text_encoder.tokenizer == "sentencepiece"


# --- the prior ----------------------------------------------------------------------


def test_prior_target_is_the_scaled_clip_image_embedding(model, params):
  batch = batch_for(model, "prior")
  z = model.image_embedding(params["clip"], batch["image"])
  np.testing.assert_allclose(np.linalg.norm(np.asarray(z), axis=-1),
                             np.sqrt(model.embed_dim), rtol=1e-5)
  raw = model.clip.image(params["clip"], batch["image"])
  cos = np.sum(np.asarray(contrastive.normalize(raw)) * np.asarray(contrastive.normalize(z)), -1)
  np.testing.assert_allclose(cos, 1.0, rtol=1e-5)
  # The prior's loss regresses exactly that embedding (x0 parameterisation): a prior that outputs
  # it scores zero.
  s = model.config.prior
  assert s.parameterization == "x0"


def test_best_candidate_picks_the_most_similar():
  text = jnp.asarray([[1.0, 0.0], [0.0, 1.0]])
  candidates = jnp.asarray([[[0.9, 0.1], [0.9, 0.1]],    # candidate 0 of captions 0 and 1
                            [[0.1, 0.9], [0.2, 0.8]]])   # candidate 1
  picked = dalle2.best_candidate(candidates, text)
  np.testing.assert_allclose(np.asarray(picked), [[0.9, 0.1], [0.2, 0.8]], rtol=1e-6)


def test_sampled_prior_embedding_is_one_of_the_candidates(model, params):
  batch = batch_for(model, "prior", batch_size=2)
  rng = jax.random.PRNGKey(3)
  picked = model.sample_prior(params, batch["tokens"], batch["mask"], rng)
  one = dalle2.build(micro_config("sample.prior_candidates=1"))
  again = model.sample_prior(params, batch["tokens"], batch["mask"], rng)
  np.testing.assert_array_equal(np.asarray(picked), np.asarray(again))
  np.testing.assert_allclose(np.linalg.norm(np.asarray(picked), axis=-1), np.sqrt(model.embed_dim),
                             rtol=1e-5)
  single = one.sample_prior(params, batch["tokens"], batch["mask"], rng)
  assert single.shape == picked.shape


# --- the decoder ----------------------------------------------------------------------


def test_decoder_conditioning_dropout_rates(model, params):
  batch = batch_for(model, "decoder", batch_size=512)
  cond = model._decoder_condition(params["clip"], batch, jax.random.PRNGKey(0))
  image_dropped = np.mean(np.all(np.asarray(cond["image_embed"]) == 0, axis=-1))
  text_dropped = np.mean(np.all(np.asarray(cond["mask"]) == 0, axis=-1))
  assert abs(image_dropped - 0.1) < 0.04, image_dropped
  assert abs(text_dropped - 0.5) < 0.07, text_dropped
  # Independent draws: both dropped about 5% of the time.
  both = np.mean(np.all(np.asarray(cond["image_embed"]) == 0, -1)
                 & np.all(np.asarray(cond["mask"]) == 0, -1))
  assert abs(both - 0.05) < 0.03


def test_decoder_reads_both_the_image_embedding_and_the_text(model, params):
  batch = batch_for(model, "decoder", batch_size=2)
  unet, p = model.unets["decoder"], params["decoder"]
  x, logsnr = batch["image"], jnp.zeros((2,))
  text, _ = model.text_condition(params["clip"], batch["tokens"], batch["mask"])
  z = model.image_embedding(params["clip"], batch["image"])
  tokens, mask = batch["tokens"], batch["mask"]
  base = unet.apply({"params": p}, x, logsnr, text, tokens, mask, z)
  other_z = unet.apply({"params": p}, x, logsnr, text, tokens, mask, z[::-1])
  no_text = unet.apply({"params": p}, x, logsnr, text, tokens, jnp.zeros_like(mask), z)
  assert float(jnp.max(jnp.abs(base - other_z))) > 1e-4
  assert float(jnp.max(jnp.abs(base - no_text))) > 1e-4


def _check_guidance_one(m, clip_params, decoder_params):
  """Through the model's own sampling code: guidance 1 with the unconditional pass equals the
  decoder run without it, and a larger guidance changes the sample."""
  batch = batch_for(m, "decoder", batch_size=2)
  text, _ = m.text_condition(clip_params, batch["tokens"], batch["mask"])
  z = m.image_embedding(clip_params, batch["image"])
  cond = {"text": text, "tokens": batch["tokens"], "mask": batch["mask"], "image_embed": z}
  uncond = dict(cond, mask=jnp.zeros_like(batch["mask"]), image_embed=jnp.zeros_like(z))
  noise = jax.random.normal(jax.random.PRNGKey(1), batch["image"].shape)
  guided = jax.jit(lambda g: m._sample_stage("decoder", decoder_params, cond, uncond, 3, g, noise,
                                              jax.random.PRNGKey(2)))
  plain = np.asarray(jax.jit(lambda: m._sample_stage("decoder", decoder_params, cond, None, 3,
                                                     1.0, noise, jax.random.PRNGKey(2)))())
  np.testing.assert_allclose(np.asarray(guided(1.0)), plain, atol=1e-5)
  assert np.abs(np.asarray(guided(4.0)) - plain).max() > 1e-4
  return plain


def test_guidance_one_equals_the_conditional_model(model, params):
  _check_guidance_one(model, params["clip"], params["decoder"])


@pytest.fixture(scope="module")
def learned():
  """The micro model with the paper's learned-variance decoder, and its decoder params."""
  m = dalle2.build(micro_config("stages.decoder.variance=learned"))
  variables = jax.jit(lambda rng, b: m.init("decoder", rng, b))(jax.random.PRNGKey(5),
                                                                 batch_for(m, "decoder"))
  return m, noisy(nn.unbox(variables["params"]), seed=5)


def test_learned_variance_decoder_trains_on_the_hybrid_loss(learned, params):
  """6 output channels (eps | variance); the loss is discrete.hybrid_loss through the model's
  U-Net (its mse + 0.001 T vlb), and its gradient reaches the variance half's output conv."""
  m, p = learned
  batch = batch_for(m, "decoder")
  frozen = {"clip": params["clip"]}
  loss_and_grad = jax.jit(jax.value_and_grad(
      lambda q: m.loss("decoder", q, batch, jax.random.PRNGKey(0), frozen), has_aux=True))
  (loss, metrics), grads = loss_and_grad(p)
  np.testing.assert_allclose(float(loss), float(metrics["mse"]) + 0.001 * 1000 * float(metrics["vlb"]),
                             rtol=1e-5)
  assert float(metrics["vlb"]) > 0
  out_kernels = [g for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]
                 if g.ndim == 4 and g.shape[-1] == 6]
  assert out_kernels and float(jnp.abs(out_kernels[-1][..., 3:]).max()) > 0


def test_learned_variance_guidance_one_equals_the_conditional_model(learned, params):
  m, decoder_params = learned
  plain = _check_guidance_one(m, params["clip"], decoder_params)
  assert np.all(np.isfinite(plain)) and np.abs(plain).max() <= 1.0 + 1e-6  # x0 clipped to [-1, 1]


def test_a_learned_variance_needs_eps():
  with pytest.raises(ConfigError, match="set parameterization=eps"):
    dalle2.build(micro_config("stages.decoder.variance=learned",
                              "stages.decoder.parameterization=v"))


# --- upsamplers ----------------------------------------------------------------------


def test_gaussian_blur_against_an_independent_convolution():
  from scipy import ndimage
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 12, 12, 3)).astype(np.float32)
  sigma = np.array([0.5, 1.0], np.float32)
  out = np.asarray(degradations.gaussian_blur(jnp.asarray(x), jnp.asarray(sigma), 1.0))
  for i, s in enumerate(sigma):
    ref = ndimage.gaussian_filter(x[i], (s, s, 0), mode="mirror", truncate=3.0 / s)
    np.testing.assert_allclose(out[i], ref, atol=1e-5)
  # Blur keeps the mean of a constant image and sigma 0 is the identity.
  np.testing.assert_allclose(np.asarray(degradations.gaussian_blur(jnp.ones((1, 8, 8, 3)),
                                                                   jnp.ones(1), 1.0)), 1.0,
                             rtol=1e-6)
  np.testing.assert_allclose(np.asarray(degradations.gaussian_blur(jnp.asarray(x), jnp.zeros(2),
                                                                   1.0)), x, atol=1e-6)


def test_bsr_degradation_stays_in_range_and_changes_the_image():
  x = jax.random.uniform(jax.random.PRNGKey(0), (4, 16, 16, 3), minval=-1, maxval=1)
  y = degradations.bsr_degrade(jax.random.PRNGKey(1), x, (0.4, 0.6))
  assert y.shape == x.shape and float(jnp.min(y)) >= -1 and float(jnp.max(y)) <= 1
  assert float(jnp.mean(jnp.abs(y - x))) > 0.01


def test_upsampler_reads_no_text(model):
  from flax import traverse_util
  batch = batch_for(model, "sr", batch_size=1)
  names = {"/".join(k) for k in traverse_util.flatten_dict(
      nn.unbox(model.init("sr", jax.random.PRNGKey(0), batch)["params"]))}
  assert not any("text" in n or "cross_attn" in n for n in names), names


# --- tasks ----------------------------------------------------------------------------


def _request(batch, **extra):
  return Request(tokens=batch["tokens"], mask=batch["mask"], extra=extra)


def test_tasks_generate_uint8_at_the_output_size(model, params):
  batch = batch_for(model, "prior", batch_size=2)
  images = batch_for(model, "sr", batch_size=2)["image"]
  gen = jax.jit(model.generate)
  rng = jax.random.PRNGKey(0)
  text = gen(params, _request(batch), rng)
  variation = gen(params, _request(batch, images=images), rng)
  halfway = gen(params, _request(batch, images=images, images_b=images[::-1],
                                 alpha=jnp.full((2,), 0.5)), rng)
  edit = gen(params, _request(batch, images=images, edit_tokens=batch["tokens"][::-1],
                              edit_mask=batch["mask"][::-1], alpha=jnp.full((2,), 0.3)), rng)
  for out in (text, variation, halfway, edit):
    assert out.shape == (2, 32, 32, 3) and out.dtype == jnp.uint8


def test_interpolation_ends_are_the_two_images_embeddings(model, params):
  images = batch_for(model, "sr", batch_size=2)["image"]
  batch = batch_for(model, "prior", batch_size=2)
  za = model.image_embedding(params["clip"], images)
  zb = model.image_embedding(params["clip"], images[::-1])
  for alpha, want in ((0.0, za), (1.0, zb)):
    z = model.image_embedding_for(params, _request(batch, images=images, images_b=images[::-1],
                                                   alpha=jnp.full((2,), alpha)),
                                  jax.random.PRNGKey(0))
    np.testing.assert_allclose(np.asarray(z), np.asarray(want), atol=1e-4)
  mid = dalle2.slerp(za, zb, jnp.full((2,), 0.5))
  np.testing.assert_allclose(np.linalg.norm(np.asarray(mid), axis=-1), 1.0, rtol=1e-5)


def test_micro_pipeline_trains_on_8_fake_devices(tmp_path):
  train_micro_stages("dalle2", ("clip", "prior", "decoder", "sr"), str(tmp_path), 3,
                     decreasing=False)


class _ColourModel:
  """A stand-in with exact answers for evaluate.unclip_metrics: an image's embedding is its
  mean colour, a variation of a red image is green (every other image is its own variation),
  and the prior always returns red's embedding."""
  text_length = 1

  @staticmethod
  def image_embedding(clip_params, images):
    return jnp.mean(images + 1.0, axis=(1, 2))

  @staticmethod
  def generate(params, request, rng):
    x = request.extra["images"]
    red = (x[:, :1, :1, 0] > 0) & (x[:, :1, :1, 1] < 0)
    green = jnp.broadcast_to(jnp.array([-1.0, 1.0, -1.0]), x.shape)
    return ((jnp.where(red[..., None], green, x) + 1.0) * 127.5).round().astype(jnp.uint8)

  @staticmethod
  def sample_prior(params, tokens, mask, rng):
    return jnp.tile(jnp.array([[2.0, 0.0, 0.0]]), (tokens.shape[0], 1))


class _ZeroTokenizer:
  @staticmethod
  def encode_batch(captions, length):
    return np.zeros((len(captions), length), np.int32), np.ones((len(captions), length), np.int32)


def test_unclip_metrics_exact_answers():
  from jzoo import evaluate
  colours = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}
  real = [np.full((4, 4, 3), c, np.uint8) for c in colours.values()]
  captions = ["red", "green", "blue", "red"]  # the yellow image is captioned "red"
  # batch 3 over 4 images: the padded last batch must not change the answer.
  m = evaluate.unclip_metrics(_ColourModel(), {"clip": {}}, _ZeroTokenizer(), real, captions,
                              seed=0, batch_size=3)
  # The red image's variation (green) is less similar to red (cos 0) than to green (1) and
  # yellow (0.71); green, blue and yellow beat all three others: 9 of 12 ordered pairs.
  assert m["num"] == 4
  assert m["variations_closer_to_source"] == pytest.approx(9 / 12)
  assert m["variations_nearest_source"] == pytest.approx(3 / 4)
  # The prior's red is nearest the red image for every caption: right for the two "red" ones.
  assert m["prior_retrieval"] == pytest.approx(2 / 4)

"""Phenaki (micro config): configs, the MaskGIT schedule and decoder, stages, story mode, and
training through the real trainer on 8 fake devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jzoo import config as config_lib
from jzoo import sample
from jzoo.configs import phenaki as phenaki_configs
from jzoo.errors import ConfigError
from jzoo.models import phenaki
from jzoo.models import params as params_lib
from jzoo.models.params import count_params
from jzoo.models.base import Request
from jzoo.sampling import maskgit
from tests.model_helpers import caption_batch, fit, noisy, train_micro_stages

B = 2


def micro_config(*overrides):
  return config_lib.load("phenaki:micro", list(overrides))


@pytest.fixture(scope="module")
def model():
  return phenaki.build(micro_config())


def moving_square_batch(model, batch_size=B, seed=0):
  """Captions of random tokens and clips of one square sliding right, like `moving_shapes`."""
  spec = model.data_spec("transformer")
  rng = np.random.default_rng(seed)
  tokens, mask = caption_batch(spec.text_length, batch_size, seed)
  r, t = spec.resolution, spec.frames
  video = -np.ones((batch_size, t, r, r, 3), np.float32)
  for i in range(batch_size):
    colour = rng.choice([-1.0, 1.0], 3)
    colour[0] = 1.0
    for f in range(t):
      x = 1 + f
      video[i, f, 5:10, x:x + 5] = colour
  return {"video": jnp.asarray(video), "tokens": tokens, "mask": mask}


@pytest.fixture(scope="module")
def params(model):
  batch = moving_square_batch(model)
  return noisy({stage: model.init(stage, jax.random.PRNGKey(i), batch)["params"]
                for i, stage in enumerate(model.stages)})


# --- configs --------------------------------------------------------------------------------


def test_configs_and_stages():
  for variant in phenaki_configs.VARIANTS:
    c = phenaki_configs.get_config(variant)
    assert c.stage == "transformer" and c.model == "phenaki"
    for stage in ("text_encoder", "tokenizer", "transformer"):
      s = phenaki_configs.get_config(f"{variant},stage={stage}")
      assert s.stage == stage
  tiny = phenaki_configs.get_config("tiny_shapes,stage=tokenizer")
  assert tiny.train.steps == tiny.tokenizer.train.steps
  assert tiny.tokenizer.frames >= 16 and tiny.tokenizer.resolution >= 32
  with pytest.raises(ValueError, match="unknown stage"):
    phenaki_configs.get_config("micro,stage=sr")
  with pytest.raises(ConfigError, match="frames"):
    phenaki.build(micro_config("tokenizer.frames=4"))


def test_paper_parameter_counts_are_the_papers():
  model = phenaki.build(config_lib.load("phenaki:paper"))
  counts = {s: count_params(params_lib.abstract_params(model, s)) for s in model.stages}
  assert 1.6e9 < counts["transformer"] < 2.0e9, counts  # "a 1.8B parameter transformer"
  assert 4.6e9 < counts["text_encoder"] < 4.9e9, counts  # T5-XXL encoder
  assert counts["tokenizer"] < 2e8, counts


def test_stages_and_frozen_dependencies(model):
  assert model.stages == ("text_encoder", "tokenizer", "transformer")
  assert model.frozen_stages("transformer") == ("text_encoder", "tokenizer")
  assert model.frozen_stages("tokenizer") == ()
  spec = model.data_spec("tokenizer")
  assert (spec.dataset, spec.frames, spec.resolution) == ("moving_shapes", 5, 16)
  assert model.output_shape == (5, 16, 16)


# --- the MaskGIT schedule and decoder ------------------------------------------------------------


def test_training_mask_follows_the_cosine_schedule_and_spares_given_tokens():
  n = 200
  given = jnp.zeros((4000, n), bool).at[:, :50].set(True)
  masked = np.asarray(maskgit.training_mask(jax.random.PRNGKey(0), given))
  assert not masked[:, :50].any()
  fraction = masked[:, 50:].sum(1) / 150.0
  assert (fraction >= 1 / 150.0).all()  # at least one token
  # E[cos(pi/2 r)] = 2/pi for r ~ U(0, 1); the ceil adds < 1/150.
  assert abs(fraction.mean() - 2 / np.pi) < 0.02, fraction.mean()
  # The distribution, not only the mean: P(fraction > 0.5) = P(r < 2/3) = 2/3.
  assert abs((fraction > 0.5).mean() - 2 / 3) < 0.03


def test_num_still_masked_decreases_to_zero():
  for steps in (1, 4, 12):
    left = [int(maskgit.num_still_masked(s, steps, jnp.float32(64.0))) for s in range(steps)]
    assert left[-1] == 0
    assert all(a > b for a, b in zip([64] + left, left)), left  # strictly fewer every step


def test_decode_unmasks_every_token_and_keeps_given_ones():
  b, n, v = 3, 40, 7
  calls = []

  def logits_fn(tokens):
    calls.append(tokens)
    return jnp.zeros((b, n, v)).at[..., 2].set(3.0)  # prefers code 2

  given = jnp.zeros((b, n), bool).at[:, :10].set(True)
  given_tokens = jnp.full((b, n), 5, jnp.int32)
  for steps in (1, 3, 8):
    out = np.asarray(maskgit.decode(logits_fn, given_tokens, given, jax.random.PRNGKey(1),
                                    steps=steps, mask_id=v))
    assert (out != v).all() and (out[:, :10] == 5).all()
    assert (out[:, 10:] < v).all() and (out[:, 10:] == 2).mean() > 0.5


def test_decode_with_traced_steps_compiles_once():
  traces = []

  def run(steps, rng):
    traces.append(1)
    return maskgit.decode(lambda t: jnp.zeros((1, 16, 4)), jnp.zeros((1, 16), jnp.int32),
                          jnp.zeros((1, 16), bool), rng, steps=steps, mask_id=4)

  f = jax.jit(run)
  for steps in (2, 5, 9):
    assert (np.asarray(f(jnp.int32(steps), jax.random.PRNGKey(steps))) < 4).all()
  assert len(traces) == 1


def test_mean_log_likelihood_scores_the_free_tokens_from_a_masked_canvas():
  b, n, v = 3, 12, 5
  logits = jax.random.normal(jax.random.PRNGKey(0), (b, n, v))
  tokens = jax.random.randint(jax.random.PRNGKey(2), (b, n), 0, v)
  given = jnp.zeros((b, n), bool).at[:, :4].set(True)
  seen = []

  def logits_fn(canvas):
    seen.append(canvas)
    return logits

  got = maskgit.mean_log_likelihood(logits_fn, tokens, given, mask_id=v)
  logp = np.asarray(jax.nn.log_softmax(logits))
  want = np.take_along_axis(logp, np.asarray(tokens)[..., None], -1)[..., 0][:, 4:].mean(1)
  np.testing.assert_allclose(got, want, rtol=1e-5)  # the given tokens are context, not scored
  canvas = np.asarray(seen[-1])
  assert (canvas[:, 4:] == v).all()
  np.testing.assert_array_equal(canvas[:, :4], np.asarray(tokens)[:, :4])


def test_candidates_decode_the_one_the_model_finds_most_likely_in_chunks_or_not(params):
  k = 3
  model = phenaki.build(micro_config(f"sample.candidates={k}"))
  batch = moving_square_batch(model)
  request = request_for(model, batch)
  rng = jax.random.PRNGKey(5)
  out = model.generate_video(params, request, rng)
  # sample.cpu_rows: on the CPU the transformer sees the 2 x 3 x 2 (guidance) = 12 sequences 4 at
  # a time (a lax.map, a scan in the program) and samples the same videos.
  chunked = phenaki.build(micro_config(f"sample.candidates={k}", "sample.cpu_rows=4"))
  np.testing.assert_allclose(chunked.generate_video(params, request, rng), out, atol=1e-5)
  programs = [str(jax.make_jaxpr(m.generate_video)(params, request, rng)) for m in (model, chunked)]
  assert "scan[" not in programs[0] and "scan[" in programs[1]
  # Every candidate, drawn as generate_video does, scored by a plain transformer call on an
  # all-[MASK] grid, then decoded on its own.
  tokens, mask = jnp.concatenate([batch["tokens"]] * k), jnp.concatenate([batch["mask"]] * k)
  codes = model.sample_codes(params, tokens, mask, None, request.steps, request.guidance,
                             jax.random.fold_in(rng, 0))
  text = model.text_encoder.encode(params["text_encoder"], tokens, mask)
  logits = model.transformer.apply({"params": params["transformer"]},
                                   jnp.full_like(codes, model.mask_id), text, mask)
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits), codes[..., None], -1)
  scores = np.asarray(logp.reshape(k * B, -1).mean(1)).reshape(k, B)
  np.testing.assert_allclose(model.likelihood(params, codes, tokens, mask, None),
                             scores.reshape(-1), rtol=1e-5, atol=1e-6)
  videos = np.asarray(model.decode_codes(params["tokenizer"], codes)).reshape(k, B, *out.shape[1:])
  assert len({np.asarray(c).tobytes() for c in codes[::B]}) == k  # the candidates differ
  assert np.argmax(scores, 0).any()  # not always the first draw, so the check can fail
  for i in range(B):
    np.testing.assert_allclose(out[i], videos[int(np.argmax(scores[:, i])), i], atol=1e-5)
  story = model.generate(params, request_for(model, batch, story_tokens=batch["tokens"][None],
                                            story_mask=batch["mask"][None]), rng)
  assert story.shape == (B, 5 + 4, 16, 16, 3)  # a story segment picks among candidates too
  with pytest.raises(ConfigError, match="candidates"):
    bad = phenaki.build(micro_config("sample.candidates=0"))
    bad.generate(params, request, rng)


# --- stages ----------------------------------------------------------------------------------


def test_transformer_loss_trains_and_no_gradient_reaches_frozen_stages(model, params):
  batch = moving_square_batch(model)
  frozen = {s: params[s] for s in model.frozen_stages("transformer")}
  grad_fn = jax.jit(jax.value_and_grad(
      lambda p, f, k: model.loss("transformer", p, batch, k, f)[0], argnums=(0, 1)))
  (_, (grads, frozen_grads)) = grad_fn(params["transformer"], frozen, jax.random.PRNGKey(0))
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree_util.tree_leaves(frozen_grads))
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree_util.tree_leaves(grads))

  losses = [m["loss"] for m in fit(
      lambda p, k: model.loss("transformer", p, batch, k, frozen), params["transformer"], 40)]
  assert np.mean(losses[-8:]) < 0.6 * np.mean(losses[:8]), losses


def test_word_order_reaches_the_transformer_only_with_text_positions():
  # Cross-attention is blind to the order of the text tokens: reversing them changes nothing
  # unless `transformer.text_positions` adds a position embedding.
  for positions in (False, True):
    m = phenaki.build(micro_config(f"transformer.text_positions={positions}"))
    p = noisy(m.init("transformer", jax.random.PRNGKey(0), moving_square_batch(m))["params"])
    assert ("text_position" in p) == positions
    tokens = jnp.zeros((B, m.time_tokens, m.grid, m.grid), jnp.int32)
    text = jax.random.normal(jax.random.PRNGKey(1), (B, m.text_length, m.text_encoder.width))
    mask = jnp.ones((B, m.text_length), jnp.int32)
    apply = jax.jit(lambda t, m=m, p=p: m.transformer.apply({"params": p}, tokens, t, mask))
    assert np.allclose(apply(text[:, ::-1]), apply(text), atol=1e-5) != positions


def test_tokenizer_stage_reports_reconstruction_metrics(model, params):
  batch = moving_square_batch(model)
  loss, metrics = model.loss("tokenizer", params["tokenizer"], batch, jax.random.PRNGKey(0), {})
  assert np.isfinite(float(loss))
  for key in ("mse", "psnr", "codebook_usage"):
    assert key in metrics


# --- generation ------------------------------------------------------------------------------


def request_for(model, batch, **extra):
  return Request(tokens=batch["tokens"], mask=batch["mask"], steps=jnp.int32(3),
                 guidance=jnp.float32(2.0), extra=extra)


def test_generate_shapes_and_seed_reproducibility(model, params):
  batch = moving_square_batch(model)
  gen = jax.jit(lambda p, r, k: model.generate(p, r, k))
  a = np.asarray(gen(params, request_for(model, batch), jax.random.PRNGKey(0)))
  b = np.asarray(gen(params, request_for(model, batch), jax.random.PRNGKey(0)))
  assert a.shape == (B, 5, 16, 16, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)


def test_sampling_decodes_from_classifier_free_guided_logits(model, params, monkeypatch):
  """The logits MaskGIT decodes from at guidance w (what `sample_codes` hands `maskgit.decode`)
  are uncond + w·(cond - uncond) of two transformer calls, with and without the text: w = 0 is
  the unconditional model, w = 1 the conditional one, w = 3 extrapolates past it."""
  batch = moving_square_batch(model)
  n = model.time_tokens * model.grid ** 2
  rng = np.random.default_rng(0)  # a canvas mid-decoding: half the tokens still [MASK]
  canvas = np.where(rng.random((B, n)) < 0.5, model.mask_id, rng.integers(0, model.mask_id, (B, n)))
  canvas = jnp.asarray(canvas, jnp.int32)
  seen = []

  def decode(logits_fn, given_tokens, given, rng, **kwargs):  # records, decodes nothing
    seen.append(logits_fn(canvas))
    return given_tokens

  monkeypatch.setattr(maskgit, "decode", decode)

  @jax.jit  # one compile for every w: the guidance weight is traced, as in sampling
  def guided(w):
    model.sample_codes(params, batch["tokens"], batch["mask"], None, 1, w, jax.random.PRNGKey(0))
    return seen.pop()

  text = model.text_encoder.encode(params["text_encoder"], batch["tokens"], batch["mask"])
  apply = lambda mask: np.asarray(model.transformer.apply(
      {"params": params["transformer"]}, canvas.reshape(B, *model.code_grid), text, mask)
  ).reshape(B, n, -1)
  cond, uncond = apply(batch["mask"]), apply(jnp.zeros_like(batch["mask"]))
  assert np.abs(cond - uncond).max() > 1e-2  # the text matters, so each check can fail
  np.testing.assert_allclose(guided(0.0), uncond, atol=1e-5)
  np.testing.assert_allclose(guided(1.0), cond, atol=1e-5)
  np.testing.assert_allclose(guided(3.0), uncond + 3.0 * (cond - uncond), atol=1e-4)


def test_image_to_video_keeps_the_given_first_frame_tokens(model, params):
  batch = moving_square_batch(model)
  first = batch["video"][:, :1]
  out = model.generate_video(params, request_for(model, batch, frames=first),
                             jax.random.PRNGKey(3))
  # The first time token is fixed to the given frame's codes and the decoder is causal, so the
  # first output frame is the tokenizer's reconstruction of the given one, whatever was sampled.
  want = model.decode_codes(params["tokenizer"], model.encode_video(params["tokenizer"], first))
  np.testing.assert_allclose(out[:, :1], want[:, :1], atol=1e-5)
  free = model.generate_video(params, request_for(model, batch), jax.random.PRNGKey(3))
  assert float(jnp.abs(free[:, :1] - want[:, :1]).max()) > 1e-3  # the check can fail


def test_story_mode_output_length_and_joint(model, params):
  batch = moving_square_batch(model)
  story = jnp.stack([batch["tokens"], batch["tokens"]])
  story_mask = jnp.stack([batch["mask"], batch["mask"]])
  out = model.generate(params, request_for(model, batch, story_tokens=story,
                                           story_mask=story_mask), jax.random.PRNGKey(0))
  # 5 frames, then two segments that each add 5 - 1 frames (story_context 1 = the last frame).
  assert out.shape == (B, 5 + 2 * 4, 16, 16, 3)
  with pytest.raises(ConfigError, match="story_context"):
    bad = phenaki.build(micro_config("sample.story_context=3"))
    bad.generate(params, request_for(bad, batch, story_tokens=story, story_mask=story_mask),
                 jax.random.PRNGKey(0))


# --- the real trainer on 8 devices, then the CLI's story mode ---------------------------------------


def test_micro_trains_on_8_devices_and_tells_a_story(tmp_path, capsys):
  workdir = str(tmp_path / "phenaki")
  train_micro_stages("phenaki", ("text_encoder", "tokenizer", "transformer"), workdir, 16)
  out = str(tmp_path / "story.gif")
  try:
    sample.main(["--model", "phenaki-micro", "--checkpoint", workdir, "--steps", "2",
                 "--prompt", "a red circle moving right", "--prompt", "a blue square moving up",
                 "--out", out])
  except SystemExit as e:
    assert e.code in (0, None), capsys.readouterr().err
  with Image.open(out) as gif:
    assert (gif.n_frames, gif.size) == (5 + 4, (16, 16))


def test_cli_image_to_video_starts_from_the_given_frame(tmp_path, capsys):
  first = np.zeros((16, 16, 3), np.uint8)
  first[4:10, 2:8] = (255, 0, 0)
  png = str(tmp_path / "first.png")
  Image.fromarray(first).save(png)
  out = str(tmp_path / "v.gif")
  sample.main(["--model", "phenaki-micro", "--random-weights", "--steps", "2", "--start", png,
               "--prompt", "a red square moving right", "--out", out])
  with Image.open(out) as gif:
    assert (gif.n_frames, gif.size) == (5, (16, 16))
  bad = str(tmp_path / "big.png")
  Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(bad)
  with pytest.raises(SystemExit) as e:
    sample.main(["--model", "phenaki-micro", "--random-weights", "--start", bad, "--out", out])
  assert e.value.code == 2 and "16x16" in capsys.readouterr().err

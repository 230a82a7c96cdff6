"""NUWA (micro config): configs, the cached 3DNA decoder against the uncached one, the tasks, and
training through the real trainer on 8 fake devices."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jzoo import config as config_lib
from jzoo import export
from jzoo import sample
from jzoo.configs import nuwa as nuwa_configs
from jzoo.errors import CheckpointError, ConfigError
from jzoo.models import nuwa
from jzoo.io import tree_files
from jzoo.models import params as params_lib
from jzoo.models.params import count_params
from jzoo.models.base import TEXT_TO_IMAGE, TEXT_TO_VIDEO, Request
from tests.model_helpers import caption_batch, fit, noisy, train_micro_stages

B = 2


def micro_config(*overrides):
  return config_lib.load("nuwa:micro", list(overrides))


@pytest.fixture(scope="module")
def model():
  return nuwa.build(micro_config())


def batch_for(model, batch_size=B, seed=0):
  spec = model.data_spec("transformer")
  tokens, mask = caption_batch(spec.text_length, batch_size, seed)
  r, t = spec.resolution, spec.frames
  video = -np.ones((batch_size, t, r, r, 3), np.float32)
  for i in range(batch_size):
    for f in range(t):
      video[i, f, 4:9, 2 + 2 * f:7 + 2 * f] = (1.0, -1.0, 1.0) if i else (1.0, 1.0, -1.0)
  return {"video": jnp.asarray(video), "tokens": tokens, "mask": mask}


@pytest.fixture(scope="module")
def params(model):
  batch = batch_for(model)
  return noisy({stage: model.init(stage, jax.random.PRNGKey(i), batch)["params"]
                for i, stage in enumerate(model.stages)})


# --- configs ---------------------------------------------------------------------------------------


def test_configs_stages_and_tasks(model):
  for variant in nuwa_configs.VARIANTS:
    for stage in ("tokenizer", "transformer"):
      assert nuwa_configs.get_config(f"{variant},stage={stage}").stage == stage
  assert model.stages == ("tokenizer", "transformer") and model.task == TEXT_TO_VIDEO
  assert model.frozen_stages("transformer") == ("tokenizer",)
  assert model.grid == (3, 4, 4) and model.output_shape == (3, 16, 16)
  image_model = nuwa.build(micro_config("tokenizer.frames=1"))
  assert image_model.task == TEXT_TO_IMAGE and image_model.output_shape == (16, 16)
  assert image_model.data_spec("tokenizer").dataset == "shapes"
  tiny = nuwa.build(config_lib.load("nuwa:tiny_shapes"))
  assert tiny.output_shape == (16, 32, 32)
  with pytest.raises(ConfigError, match="multiple"):
    nuwa.build(micro_config("tokenizer.resolution=18"))


def test_paper_parameter_count_is_the_papers():
  model = nuwa.build(config_lib.load("nuwa:paper"))
  counts = {s: count_params(params_lib.abstract_params(model, s)) for s in model.stages}
  assert 0.78e9 < counts["transformer"] < 0.96e9, counts  # "870M parameters", within 10%
  assert model.grid == (10, 21, 21)


# --- the cached decoder ----------------------------------------------------------------------------


def test_cached_decoding_equals_the_uncached_decoder(model, params):
  """Teacher-forced logits of the whole grid (3DNA kernel) == logits one token at a time from the
  key/value caches (gathered boxes), for every position."""
  batch = batch_for(model)
  tf = model.transformer
  p = params["transformer"]
  codes = jax.random.randint(jax.random.PRNGKey(0), (B, *model.grid), 0, tf.codebook_size)
  full = tf.apply({"params": p}, batch["tokens"], batch["mask"], codes).reshape(B, -1,
                                                                                tf.codebook_size)
  text = tf.apply({"params": p}, batch["tokens"], batch["mask"], method=tf.encode_text)
  caches = tf.init_cache(B)
  flat = codes.reshape(B, -1)
  step = jax.jit(lambda prev, n, caches: tf.apply({"params": p}, text, batch["mask"], prev, n,
                                                  caches, method=tf.step))
  for n in range(flat.shape[1]):
    previous = jnp.full((B,), tf.codebook_size) if n == 0 else flat[:, n - 1]
    logits, caches = step(previous, jnp.int32(n), caches)
    np.testing.assert_allclose(logits, full[:, n], atol=2e-4, rtol=2e-4, err_msg=f"position {n}")
  # The decoder is causal: position n predicts code n from the codes before it (its input is code
  # n - 1, shifted in behind BOS). Change code i in the middle of the grid: the logits at
  # positions <= i stay, and position i + 1 + w (a row below i + 1, whose input holds code i,
  # inside its 3D box) sees the change through attention alone.
  t, h, w = model.grid
  i = (t // 2 * h + h // 2) * w + w // 2
  changed = flat.at[:, i].set((flat[:, i] + 1) % tf.codebook_size).reshape(codes.shape)
  again = tf.apply({"params": p}, batch["tokens"], batch["mask"], changed).reshape(full.shape)
  np.testing.assert_allclose(again[:, :i + 1], full[:, :i + 1], atol=1e-5)
  assert float(jnp.abs(again[:, i + 1 + w] - full[:, i + 1 + w]).max()) > 1e-3


def test_the_bundled_checkpoint_loads_as_it_is():
  """The decoder is a TokenTransformer with NUWA's names: the bundled weights' tree is the
  module's, with no mapping."""
  import flax.linen as nn
  import jzoo
  pipe = jzoo.load("nuwa-tiny-shapes")
  want = nn.unbox(params_lib.abstract_params(pipe.model, "transformer"))
  assert jax.tree.map(jnp.shape, want) == jax.tree.map(jnp.shape, pipe.params["transformer"])


def test_window_offsets_cover_the_box():
  offsets = nuwa.window_offsets((1, 2, 0))
  assert offsets.shape == (3 * 5 * 1, 3)
  assert {tuple(o) for o in offsets} == {(a, b, 0) for a in (-1, 0, 1) for b in range(-2, 3)}


# --- tasks -----------------------------------------------------------------------------------------


def request_for(batch, **extra):
  return Request(tokens=batch["tokens"], mask=batch["mask"], extra=extra)


def test_text_to_video_shapes_and_seed_reproducibility(model, params):
  batch = batch_for(model)
  gen = jax.jit(lambda p, r, k: model.generate(p, r, k))
  a = np.asarray(gen(params, request_for(batch), jax.random.PRNGKey(0)))
  b = np.asarray(gen(params, request_for(batch), jax.random.PRNGKey(0)))
  c = np.asarray(gen(params, request_for(batch), jax.random.PRNGKey(1)))
  assert a.shape == (B, 3, 16, 16, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  assert (a != c).any()


def test_video_prediction_and_image_completion_keep_the_given_tokens(model, params):
  batch = batch_for(model)
  given = model.encode(params["tokenizer"], batch["video"])
  mask = jnp.zeros(given.shape, bool).at[:, 0].set(True)
  codes = model.sample_codes(params["transformer"], batch["tokens"], batch["mask"], given, mask,
                             jax.random.PRNGKey(0))
  np.testing.assert_array_equal(codes[:, 0], given[:, 0])
  assert (np.asarray(codes[:, 1:]) != np.asarray(given[:, 1:])).any()
  # Video prediction: the first frame comes back as the VQ-GAN's reconstruction of the given one.
  out = model.generate_pixels(params, request_for(batch, frames=batch["video"][:, :1]),
                              jax.random.PRNGKey(0))
  want = model.decode(params["tokenizer"], given)
  np.testing.assert_allclose(out[:, 0], want[:, 0], atol=1e-5)
  # Image completion: the tokens of a region are given (sample_codes above keeps them); with every
  # token given, the output is the VQ-GAN's reconstruction of the input.
  everything = jnp.ones(given.shape, bool)
  out = model.generate_pixels(params, request_for(batch, known=batch["video"],
                                                  known_mask=everything), jax.random.PRNGKey(0))
  np.testing.assert_allclose(out, want, atol=1e-5)
  region = everything.at[:, :, 2:].set(False)
  out = model.generate_pixels(params, request_for(batch, known=batch["video"], known_mask=region),
                              jax.random.PRNGKey(0))
  assert float(jnp.abs(out - want).max()) > 1e-3


def test_transformer_loss_decreases_and_spares_the_tokenizer(model, params):
  batch = batch_for(model)
  frozen = {"tokenizer": params["tokenizer"]}
  g_frozen = jax.grad(lambda f: model.loss("transformer", params["transformer"], batch,
                                           jax.random.PRNGKey(0), f)[0])(frozen)
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree_util.tree_leaves(g_frozen))
  losses = [m["loss"] for m in fit(
      lambda p, k: model.loss("transformer", p, batch, k, frozen), params["transformer"], 30)]
  assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses


def test_micro_trains_on_8_devices_and_samples(tmp_path, capsys):
  workdir = str(tmp_path / "nuwa")
  train_micro_stages("nuwa", ("tokenizer", "transformer"), workdir, 12)
  out = str(tmp_path / "v.gif")
  try:
    sample.main(["--model", "nuwa-micro", "--checkpoint", workdir, "--out", out])
  except SystemExit as e:
    assert e.code in (0, None), capsys.readouterr().err
  with Image.open(out) as gif:
    assert (gif.n_frames, gif.size) == (3, (16, 16))

  # Fine-tuning from the export: the trained stage starts from the exported weights (lr 0 keeps
  # them), the frozen tokenizer is read from the export, and a new export carries it over.
  exported = str(tmp_path / "export")
  export.main(["--workdir", workdir, "--name", "nuwa-micro", "--out", exported])
  tuned, tuned_export = str(tmp_path / "tuned"), str(tmp_path / "tuned-export")
  train_micro_stages("nuwa", ("transformer",), tuned, 2, (f"train.init_from={exported}",
                                                          "optim.lr=0"), decreasing=False)
  assert not os.path.exists(os.path.join(tuned, "tokenizer"))
  export.main(["--workdir", tuned, "--name", "nuwa-micro", "--out", tuned_export])
  for stage in ("tokenizer", "transformer"):
    a, b = (tree_files.load_tree(os.path.join(d, f"{stage}.safetensors"))
            for d in (exported, tuned_export))
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
  sample.main(["--model", "nuwa-micro", "--checkpoint", tuned, "--out", out])
  with pytest.raises(CheckpointError, match="does not match the config's architecture"):
    train_micro_stages("nuwa", ("transformer",), str(tmp_path / "wider"), 2,
                       (f"train.init_from={exported}", "transformer.mlp_dim=96"))


# --- visual condition (video prediction from the first frames, NUWA's 3DNA cross-attention) --------

CONDITIONED = ("transformer.condition_frames=1", "transformer.condition_layers=1")


@pytest.fixture(scope="module")
def conditioned():
  model = nuwa.build(micro_config(*CONDITIONED))
  batch = batch_for(model)
  params = noisy({stage: model.init(stage, jax.random.PRNGKey(i), batch)["params"]
                  for i, stage in enumerate(model.stages)})
  return model, params


def test_conditioned_cached_decoding_equals_the_uncached_decoder(conditioned):
  model, params = conditioned
  batch = batch_for(model)
  tf, p = model.transformer, params["transformer"]
  assert "condition_0" in p and "visual_query" in p["decoder_0"]
  codes = jax.random.randint(jax.random.PRNGKey(0), (B, *model.grid), 0, tf.codebook_size)
  full = tf.apply({"params": p}, batch["tokens"], batch["mask"], codes).reshape(B, -1,
                                                                                tf.codebook_size)
  text = tf.apply({"params": p}, batch["tokens"], batch["mask"], method=tf.encode_text)
  visual = tf.apply({"params": p}, codes[:, :1], method=tf.encode_condition)
  caches = tf.init_cache(B)
  flat = codes.reshape(B, -1)
  step = jax.jit(lambda prev, n, caches: tf.apply({"params": p}, text, batch["mask"], prev, n,
                                                  caches, visual, method=tf.step))
  for n in range(flat.shape[1]):
    previous = jnp.full((B,), tf.codebook_size) if n == 0 else flat[:, n - 1]
    logits, caches = step(previous, jnp.int32(n), caches)
    np.testing.assert_allclose(logits, full[:, n], atol=2e-4, rtol=2e-4, err_msg=f"position {n}")
  # The condition is seen by every token: changing the last code of frame 0 changes the logits of
  # the tokens before it too, which the causal decoder alone could not do.
  last = model.grid[1] * model.grid[2] - 1
  changed = flat.at[:, last].set((flat[:, last] + 1) % tf.codebook_size).reshape(codes.shape)
  again = tf.apply({"params": p}, batch["tokens"], batch["mask"], changed).reshape(full.shape)
  assert float(jnp.abs(again[:, :last] - full[:, :last]).max()) > 1e-4


def test_conditioned_prediction_needs_and_keeps_the_first_frames(conditioned):
  model, params = conditioned
  batch = batch_for(model)
  with pytest.raises(ConfigError, match="first 1 frame"):
    model.generate_pixels(params, request_for(batch), jax.random.PRNGKey(0))
  out = model.generate_pixels(params, request_for(batch, frames=batch["video"][:, :1]),
                              jax.random.PRNGKey(0))
  want = model.decode(params["tokenizer"], model.encode(params["tokenizer"], batch["video"]))
  assert out.shape == (B, 3, 16, 16, 3)
  np.testing.assert_allclose(out[:, 0], want[:, 0], atol=1e-5)
  with pytest.raises(ConfigError, match="condition_frames"):
    nuwa.build(micro_config("transformer.condition_frames=3"))


def test_conditioned_micro_trains_on_8_devices(tmp_path):
  train_micro_stages("nuwa", ("tokenizer", "transformer"), str(tmp_path), 12, CONDITIONED)

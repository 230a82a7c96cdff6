"""The Imagen cascade (micro config): configs, stages, frozen T5, training signal, sampling."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jzoo import config as config_lib
from jzoo import loading
from jzoo.configs import imagen as imagen_configs
from jzoo.errors import CheckpointError, ConfigError
from jzoo.models import imagen
from jzoo.models.base import Request
from jzoo.models import params as params_lib
from jzoo.models.params import count_params
from jzoo.parallel import mesh as mesh_lib
from jzoo.parallel.sharding import logical_shardings

from model_helpers import square_batch

B = 2


def micro_config(*overrides):
  return config_lib.load("imagen:micro", list(overrides))


@pytest.fixture(scope="module")
def model():
  return imagen.build(micro_config())


def batch_for(model, stage, batch_size=B, seed=0):
  return square_batch(model, stage, batch_size, seed)


def random_params(model, stage, seed=0):
  """Random parameters from the abstract shapes (no initialiser compile; outputs are nonzero)."""
  shapes = params_lib.abstract_params(model, stage)
  rng = np.random.default_rng(seed)

  def fill(leaf):
    fan_in = int(np.prod(leaf.shape[:-1])) or 1
    scale = 1.0 / np.sqrt(fan_in) if leaf.ndim > 1 else 0.1
    return jnp.asarray(rng.normal(0.0, scale, leaf.shape), jnp.float32) + (leaf.ndim == 1)

  return jax.tree_util.tree_map(fill, shapes)


@pytest.fixture(scope="module")
def params(model):
  return {s: random_params(model, s, i) for i, s in enumerate(model.stages)}


# --- configs ------------------------------------------------------------------------


def test_variants_and_stage_arguments():
  for variant in imagen_configs.VARIANTS:
    c = imagen_configs.get_config(variant)
    assert c.model == "imagen" and c.variant == variant and c.stage == "base"
  c = imagen_configs.get_config("tiny_shapes,stage=sr")
  assert c.stage == "sr"
  assert c.train.steps == c.stages.sr.train.steps and c.optim.lr == c.stages.sr.train.lr
  assert imagen_configs.get_config("tiny_shapes,stage=text_encoder").train.batch_size == (
      c.text_encoder.train.batch_size)
  with pytest.raises(ValueError):
    imagen_configs.get_config("huge")
  with pytest.raises(ValueError):
    imagen_configs.get_config("micro,stage=sr9")
  with pytest.raises(ConfigError):
    config_lib.load("imagen:huge")


def test_tiny_shapes_cascade_ends_at_64():
  m = imagen.build(config_lib.load("imagen:tiny_shapes"))
  assert m.stages == ("text_encoder", "base", "sr")
  assert m.output_shape == (64, 64)
  assert [m.data_spec(s).resolution for s in m.cascade] == [32, 64]


def test_paper_parameter_counts_within_ten_percent():
  m = imagen.build(config_lib.load("imagen:paper"))
  assert m.cascade == ("base", "sr256", "sr1024") and m.output_shape == (1024, 1024)
  counts = {s: count_params(params_lib.abstract_params(m, s)) for s in m.stages}
  targets = {"base": 2.0e9, "sr256": 6.0e8, "sr1024": 4.0e8}
  for stage, target in targets.items():
    assert abs(counts[stage] / target - 1) < 0.10, (stage, counts[stage])
  assert 4.6e9 < counts["text_encoder"] < 4.9e9  # the T5-XXL encoder (with its embedding)


def test_unknown_stage_and_bad_cascade_fail(model):
  with pytest.raises(ConfigError):
    model.data_spec("sr9")
  c = micro_config()
  with c.unlocked():
    c.cascade = ("base", "nope")
  with pytest.raises(ConfigError):
    imagen.build(c)


# --- stages -----------------------------------------------------------------------


def test_every_stage_shapes_and_dtypes(model, params):
  assert model.stages == ("text_encoder", "base", "sr")
  assert model.output_shape == (32, 32)
  assert [model.data_spec(s).resolution for s in model.cascade] == [16, 32]
  assert model.frozen_stages("text_encoder") == ()
  assert model.frozen_stages("base") == model.frozen_stages("sr") == ("text_encoder",)
  frozen = {"text_encoder": params["text_encoder"]}
  for stage in model.stages:
    batch = batch_for(model, stage)
    abstract = params_lib.abstract_params(model, stage)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(abstract))
    loss, metrics = jax.eval_shape(lambda p, b: model.loss(stage, p, b, jax.random.PRNGKey(0),
                                                           frozen), params[stage], batch)
    assert loss.shape == () and loss.dtype == jnp.float32
    assert metrics and all(m.shape == () for m in metrics.values())


def test_stage_parameters_shard_evenly_on_a_3d_mesh(model):
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  for stage in model.stages:
    batch = params_lib.abstract_batch(model, stage, B)
    boxed = jax.eval_shape(lambda r, b, s=stage: model.init(s, r, b)["params"],
                           jax.random.PRNGKey(0), batch)
    shardings = logical_shardings(boxed, mesh, model.axis_rules)
    for leaf, sh in zip(jax.tree_util.tree_leaves(nn.unbox(boxed)),
                        jax.tree_util.tree_leaves(shardings)):
      sh.shard_shape(leaf.shape)  # raises on a dimension the mesh axes do not divide


def test_super_resolution_loss_runs(model, params):
  batch = batch_for(model, "sr")
  loss, metrics = jax.jit(lambda p, f, b: model.loss("sr", p, b, jax.random.PRNGKey(1), f))(
      params["sr"], {"text_encoder": params["text_encoder"]}, batch)
  assert np.isfinite(float(loss)) and float(loss) > 0
  assert set(metrics) >= {"mse", "mse_high_noise", "mse_low_noise"}


def test_base_loss_decreases_and_the_frozen_text_encoder_gets_no_gradient(model, params):
  batch = batch_for(model, "base", batch_size=4, seed=1)
  frozen = {"text_encoder": params["text_encoder"]}
  init = jax.jit(lambda r: model.init("base", r, batch))
  p = nn.unbox(init(jax.random.key(0, impl="rbg"))["params"])  # rbg: a fast compile on CPU
  tx = optax.adam(3e-3)

  @jax.jit
  def step(p, opt, rng):
    (loss, _), (g, g_frozen) = jax.value_and_grad(
        lambda p, f: model.loss("base", p, batch, rng, f), argnums=(0, 1), has_aux=True)(p, frozen)
    updates, opt = tx.update(g, opt, p)
    return optax.apply_updates(p, updates), opt, loss, g_frozen

  loss_at = jax.jit(lambda p, r: model.loss("base", p, batch, r, frozen)[0])
  evaluate = lambda p: np.mean([float(loss_at(p, jax.random.PRNGKey(100 + i))) for i in range(8)])
  before = evaluate(p)
  opt = tx.init(p)
  for i in range(30):
    p, opt, loss, g_frozen = step(p, opt, jax.random.PRNGKey(i))
    if i == 0:
      assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree_util.tree_leaves(g_frozen))
  after = evaluate(p)
  assert after < 0.8 * before, (before, after)


def test_text_encoder_pretraining_loss_decreases(model):
  from jzoo.text.tokenizer import Tokenizer
  captions = ["a small red circle in the top left corner", "a large blue square at the bottom",
              "a green triangle above a white circle", "a cyan square to the left of a red circle",
              "a large white triangle on the right", "a small yellow circle in the center",
              "a blue circle below a magenta square", "a large green square at the top"]
  tokens, mask = Tokenizer.load("shapes").encode_batch(captions, model.text_length)
  batch = dict(batch_for(model, "text_encoder", batch_size=8), tokens=jnp.asarray(tokens),
               mask=jnp.asarray(mask))
  p = nn.unbox(jax.jit(lambda r: model.init("text_encoder", r, batch))(
      jax.random.key(0, impl="rbg"))["params"])
  tx = optax.adam(1e-2)

  @jax.jit
  def step(p, opt, rng):
    (loss, metrics), g = jax.value_and_grad(
        lambda p: model.loss("text_encoder", p, batch, rng, {}), has_aux=True)(p)
    updates, opt = tx.update(g, opt, p)
    return optax.apply_updates(p, updates), opt, loss

  opt = tx.init(p)
  losses = []
  for i in range(30):
    p, opt, loss = step(p, opt, jax.random.PRNGKey(i))
    losses.append(float(loss))
  assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5]), losses


# --- the frozen T5 from public weights ---------------------------------------------


def test_imported_text_encoder_weights_take_the_frozen_path(model, params, tmp_path):
  import orbax.checkpoint as ocp
  path = os.path.join(tmp_path, "t5x_checkpoint")
  ocp.PyTreeCheckpointer().save(path, {"target": jax.tree_util.tree_map(np.asarray,
                                                                        params["text_encoder"])})
  imported = imagen.build(micro_config(f"text_encoder.weights={path}"))
  frozen = loading.load_frozen(imported, "base", "/nonexistent/model_dir")
  for a, b in zip(jax.tree_util.tree_leaves(frozen["text_encoder"]),
                  jax.tree_util.tree_leaves(params["text_encoder"])):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ConfigError, match="imported"):
    jax.eval_shape(lambda p: imported.loss("text_encoder", p, batch_for(imported, "text_encoder"),
                                           jax.random.PRNGKey(0), {}), params["text_encoder"])
  missing = imagen.build(micro_config("text_encoder.weights=/nonexistent/t5"))
  with pytest.raises(CheckpointError):
    loading.load_frozen(missing, "base", "/nonexistent/model_dir")


# --- generation ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def generate(model):
  traces = []

  def fn(params, request, rng):
    traces.append(1)
    return model.generate(params, request, rng)

  return jax.jit(fn), traces


def request(model, steps=3, guidance=3.0, seed=0):
  batch = batch_for(model, "base", seed=seed)
  return Request(tokens=batch["tokens"], mask=batch["mask"], steps=jnp.int32(steps),
                 guidance=jnp.float32(guidance))


def test_generate_returns_uint8_images_and_reproduces_for_a_seed(model, params, generate):
  gen, _ = generate
  a = gen(params, request(model), jax.random.PRNGKey(0))
  assert a.shape == (B, 32, 32, 3) and a.dtype == jnp.uint8
  np.testing.assert_array_equal(gen(params, request(model), jax.random.PRNGKey(0)), a)
  assert not np.array_equal(gen(params, request(model), jax.random.PRNGKey(1)), a)


def test_changing_steps_guidance_or_seed_does_not_recompile(model, params, generate):
  gen, traces = generate
  outs = [gen(params, request(model, steps, guidance), jax.random.PRNGKey(seed))
          for steps, guidance, seed in ((3, 3.0, 0), (5, 3.0, 0), (3, 1.0, 0), (2, 7.5, 4))]
  assert len(traces) == 1
  for other in outs[1:]:
    assert not np.array_equal(other, outs[0])


def test_generate_stages_shows_every_stage_in_range(model, params):
  stages = jax.jit(model.generate_stages)(params, request(model, steps=2), jax.random.PRNGKey(0))
  assert [s.shape for s in stages] == [(B, 16, 16, 3), (B, 32, 32, 3)]
  for s in stages:
    assert float(jnp.abs(s).max()) <= 1.0

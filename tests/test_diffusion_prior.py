"""The unCLIP diffusion prior: parity with diffusers' PriorTransformer, masks, axes, import errors.

tests/golden/karlo_prior/ (a tiny Karlo-shaped PriorTransformer, random weights) and
tests/golden/karlo_prior_golden.npz were made by scripts/make_karlo_prior_golden.py with
diffusers 0.42.1.
"""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jzoo.errors import CheckpointError
from jzoo.io.weight_files import read_safetensors
from jzoo.nn import prior as prior_lib
from jzoo.parallel import rules

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
FOLDER = os.path.join(GOLDEN, "karlo_prior")


@pytest.fixture(scope="module")
def golden():
  return dict(np.load(os.path.join(GOLDEN, "karlo_prior_golden.npz")))


@pytest.fixture(scope="module")
def loaded():
  with open(os.path.join(FOLDER, "config.json")) as f:
    module = prior_lib.DiffusionPrior(**prior_lib.config_from_diffusers(json.load(f)))
  state = read_safetensors(os.path.join(FOLDER, "diffusion_pytorch_model.safetensors"))
  return module, state, prior_lib.params_from_diffusers(state, module)


def _inputs(golden):
  return (golden["prior_x_t"], golden["prior_timesteps"], golden["prior_text_emb"],
          golden["prior_tokens"], golden["prior_mask"])


def test_matches_diffusers(golden, loaded):
  module, _, params = loaded
  out = jax.jit(module.apply)(params, *_inputs(golden))
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, golden["prior_out"], atol=1e-4, rtol=0)
  post = module.apply(params, out, method=prior_lib.DiffusionPrior.denormalize)
  np.testing.assert_allclose(post, golden["prior_post"], atol=1e-4, rtol=0)
  back = module.apply(params, post, method=prior_lib.DiffusionPrior.normalize)
  np.testing.assert_allclose(back, out, atol=1e-5, rtol=0)


def test_padding_is_ignored(golden, loaded):
  module, _, params = loaded
  x, t, emb, tokens, mask = _inputs(golden)
  apply = jax.jit(module.apply)
  ref = apply(params, x, t, emb, tokens, mask)
  # Overwrite every padded token: the prediction must not move.
  changed = np.where(mask[..., None], tokens, 100.0 * np.ones_like(tokens)).astype(np.float32)
  assert not np.array_equal(changed, tokens)
  np.testing.assert_allclose(apply(params, x, t, emb, changed, mask), ref, atol=1e-6, rtol=0)
  # Row 1 has 5 valid tokens: passing only those (padded inside) is the same call.
  short = apply(params, x[1:2], t[1:2], emb[1:2], tokens[1:2, :5], mask[1:2, :5])
  np.testing.assert_allclose(short, ref[1:2], atol=1e-5, rtol=0)


def test_attention_is_causal(golden, loaded):
  module, _, params = loaded
  x, t, emb, tokens, mask = _inputs(golden)
  length = module.text_length

  def hidden(x_t):  # every position after the first block
    _, state = module.apply(params, x_t, t, emb, tokens, mask, capture_intermediates=True)
    return state["intermediates"]["transformer_blocks_0"]["__call__"][0]

  hidden = jax.jit(hidden)
  a, b = hidden(x), hidden(x + 1.0)
  x_pos = length + 2  # [text tokens | text emb | time emb | x_t | query]
  np.testing.assert_array_equal(a[:, :x_pos], b[:, :x_pos])  # earlier positions: untouched
  assert np.abs(a[:, x_pos:] - b[:, x_pos:]).min() > 0  # x_t itself and the query: moved
  bias = module.bind(params).attention_bias(jnp.asarray(mask))
  s = length + 4
  assert bias.shape == (mask.shape[0], s, s)
  np.testing.assert_array_equal(np.asarray(bias[0]), np.triu(np.full((s, s), -10000.0), 1))


def test_params_are_float32_with_known_axes(golden):
  module = prior_lib.DiffusionPrior(embed_dim=16, num_layers=1, num_heads=2, head_dim=4,
                                    text_length=3, latent_stats=True, dtype=jnp.bfloat16)
  b = 2
  args = (jnp.zeros((b, 16)), jnp.zeros((b,), jnp.int32), jnp.zeros((b, 16)),
          jnp.zeros((b, 3, 16)), jnp.ones((b, 3), bool))
  variables = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args))
  known = {name for name, _ in rules.DEFAULT_RULES}
  leaves = jax.tree_util.tree_leaves(variables["params"],
                                     is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), leaf
    assert len(leaf.names) == leaf.value.ndim and set(leaf.names) - {None} <= known
    assert leaf.value.dtype == jnp.float32
  params = nn.unbox(jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                           variables))
  assert {"clip_mean", "clip_std", "prd_embedding", "positional_embedding"} <= set(params["params"])
  out = jax.jit(module.apply)(params, *args)
  assert out.shape == (b, 16) and out.dtype == jnp.float32


def test_logsnr_time_embedding():
  module = prior_lib.DiffusionPrior(embed_dim=8, num_layers=1, num_heads=2, head_dim=4,
                                    text_length=4, text_width=6, time_embedding="logsnr")
  b = 3
  args = (jnp.ones((b, 8)), jnp.linspace(-5.0, 5.0, b), jnp.ones((b, 8)), jnp.ones((b, 2, 6)),
          jnp.ones((b, 2), bool))
  params = jax.jit(module.init)(jax.random.PRNGKey(0), *args)
  out = jax.jit(module.apply)(params, *args)
  assert out.shape == (b, 8) and np.all(np.isfinite(out))
  assert "dense_0" in params["params"]["time_embedding"]
  with pytest.raises(CheckpointError, match="timesteps"):
    prior_lib.params_from_diffusers({}, module)


def test_import_errors_name_the_key(loaded):
  module, state, _ = loaded
  missing = dict(state)
  del missing["transformer_blocks.1.ff.net.2.weight"]
  with pytest.raises(CheckpointError, match=r"'transformer_blocks\.1\.ff\.net\.2\.weight'"):
    prior_lib.params_from_diffusers(missing, module)
  bad = dict(state, **{"proj_in.weight": np.zeros((3, 3), np.float32)})
  with pytest.raises(CheckpointError, match=r"'proj_in\.weight' has shape \(3, 3\)"):
    prior_lib.params_from_diffusers(bad, module)


def test_config_from_diffusers():
  kwargs = prior_lib.config_from_diffusers({})  # PriorTransformer() is Karlo's prior
  assert kwargs == dict(embed_dim=768, num_layers=20, num_heads=32, head_dim=64,
                        text_length=77, additional_embeddings=4, text_width=768,
                        time_embedding="timesteps", norm_in=False, latent_stats=True,
                        dropout=0.0)
  assert prior_lib.config_from_diffusers({"norm_in_type": "layer"})["norm_in"]
  for bad in ({"added_emb_type": None}, {"embedding_proj_norm_type": "layer"},
              {"clip_embed_dim": 1280}, {"additional_embeddings": 3}):
    with pytest.raises(CheckpointError, match=next(iter(bad))):
      prior_lib.config_from_diffusers(bad)

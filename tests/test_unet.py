"""The Efficient U-Net and its blocks: shapes, dtypes, logical axis names, masking, attention."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jzoo.nn import attention, embeddings, layers
from jzoo.nn.unet import EfficientUNet
from jzoo.parallel import mesh as mesh_lib
from jzoo.parallel.rules import DEFAULT_RULES
from jzoo.parallel.sharding import logical_shardings

B, L, D = 2, 5, 12
VOCABULARY = {name for name, _ in DEFAULT_RULES}


def make_unet(**kw):
  cfg = dict(channels=16, channel_mult=(1, 2), num_res_blocks=(1, 1),
             self_attention=(False, True), cross_attention=(False, True), head_dim=8,
             text_dim=16, norm_groups=4)
  cfg.update(kw)
  return EfficientUNet(**cfg)


def inputs(res=8, key=0):
  ks = jax.random.split(jax.random.PRNGKey(key), 4)
  x = jax.random.normal(ks[0], (B, res, res, 3))
  logsnr = jax.random.uniform(ks[1], (B,), minval=-5, maxval=5)
  text = jax.random.normal(ks[2], (B, L, D))
  mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], jnp.int32)
  return x, logsnr, text, mask


def random_params(unet, sr=False, seed=2):
  """Random parameters of the right shapes (from `eval_shape`, filled by numpy: compiling the
  real initialisers costs seconds on CPU, and the zero-initialised output layers would make
  every output zero)."""
  x, logsnr, text, mask = inputs()
  extra = dict(low_res=x, aug_logsnr=logsnr) if sr else {}
  shapes = jax.eval_shape(lambda r: unet.init(r, x, logsnr, text, mask, **extra),
                          jax.random.PRNGKey(0))
  rng = np.random.default_rng(seed)

  def fill(leaf):
    fan_in = int(np.prod(leaf.shape[:-1])) or 1
    scale = 1.0 / np.sqrt(fan_in) if leaf.ndim > 1 else 0.1
    return jnp.asarray(rng.normal(0.0, scale, leaf.shape), jnp.float32) + (leaf.ndim == 1)

  return jax.tree_util.tree_map(fill, nn.unbox(shapes)["params"])


@pytest.fixture(scope="module")
def sr_net():
  """One compiled super-resolution U-Net shared by the tests below (compiles dominate on CPU)."""
  unet = make_unet(super_resolution=True)
  params = random_params(unet, sr=True)
  apply = jax.jit(lambda p, x, logsnr, text, mask, low_res, aug: unet.apply(
      {"params": p}, x, logsnr, text, mask, low_res=low_res, aug_logsnr=aug))
  return unet, params, apply


@pytest.mark.parametrize("layout", ["efficient", "adm"])
@pytest.mark.parametrize("sr", [False, True])
def test_output_shape_and_dtype(layout, sr):
  unet = make_unet(layout=layout, super_resolution=sr)
  x, logsnr, text, mask = inputs()
  extra = dict(low_res=x, aug_logsnr=logsnr) if sr else {}
  variables = jax.eval_shape(lambda r: unet.init(r, x, logsnr, text, mask, **extra),
                             jax.random.PRNGKey(0))
  out = jax.eval_shape(lambda v: unet.apply(nn.unbox(v), x, logsnr, text, mask, **extra), variables)
  assert out.shape == (B, 8, 8, 3) and out.dtype == jnp.float32


def test_super_resolution_net_runs_and_depends_on_every_input(sr_net):
  _, params, apply = sr_net
  x, logsnr, text, mask = inputs()
  base = apply(params, x, logsnr, text, mask, x, logsnr)
  assert base.shape == (B, 8, 8, 3) and np.all(np.isfinite(base))
  for changed in (apply(params, -x, logsnr, text, mask, x, logsnr),
                  apply(params, x, logsnr + 3.0, text, mask, x, logsnr),
                  apply(params, x, logsnr, text, mask, -x, logsnr),
                  apply(params, x, logsnr, text, mask, x, logsnr + 3.0)):
    assert not np.allclose(changed, base, atol=1e-4)


def test_padded_text_tokens_do_not_matter_and_an_empty_mask_ignores_the_text(sr_net):
  _, params, apply_all = sr_net
  x, logsnr, text, mask = inputs()
  apply = lambda t, m: apply_all(params, x, logsnr, t, m, x, logsnr)
  base = apply(text, mask)
  garbage = jnp.where(mask[..., None] > 0, text, 100.0 * jnp.ones_like(text))
  np.testing.assert_allclose(apply(garbage, mask), base, rtol=1e-5, atol=1e-5)
  # Changing a real token does change the output...
  noise = jax.random.normal(jax.random.PRNGKey(9), (B, D))
  assert not np.allclose(apply(text.at[:, 0].add(noise), mask), base, atol=1e-4)
  # ...but with every token masked (classifier-free guidance's "no text"), nothing does.
  empty = jnp.zeros_like(mask)
  np.testing.assert_allclose(apply(text, empty), apply(-3.0 * text, empty), rtol=1e-5, atol=1e-5)


def test_text_order_reaches_the_unet_only_with_text_positions():
  # Cross-attention and the pooled mean are permutation invariant over the text tokens: without
  # `text_positions`, reversing the (unpadded) tokens changes nothing; with it, it does.
  x, logsnr, text, _ = inputs()
  mask = jnp.ones((B, L), jnp.int32)
  reverse = text[:, ::-1]
  for positions in (False, True):
    unet = make_unet(text_positions=positions)
    params = random_params(unet)
    assert ("text_position" in params) == positions
    apply = jax.jit(lambda t, u=unet, p=params: u.apply({"params": p}, x, logsnr, t, mask))
    same = np.allclose(apply(reverse), apply(text), rtol=1e-5, atol=1e-5)
    assert same != positions


def test_bfloat16_compute_keeps_float32_params_and_output(sr_net):
  _, params, apply = sr_net
  unet = make_unet(super_resolution=True, dtype=jnp.bfloat16)
  x, logsnr, text, mask = inputs()
  variables = jax.eval_shape(lambda r: unet.init(r, x, logsnr, text, mask, low_res=x,
                                                 aug_logsnr=logsnr), jax.random.PRNGKey(0))
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(nn.unbox(variables)))
  out = jax.jit(unet.apply)({"params": params}, x, logsnr, text, mask, x, logsnr)
  ref = apply(params, x, logsnr, text, mask, x, logsnr)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, ref, atol=0.1 * float(jnp.abs(ref).max()))


def test_zero_initialised_output():
  unet = make_unet(channel_mult=(1,), num_res_blocks=(1,), self_attention=(False,),
                   cross_attention=(True,))
  x, logsnr, text, mask = inputs()
  # An rbg key: threefry initialisers take seconds to compile on CPU.
  out = jax.jit(lambda r: unet.apply(unet.init(r, x, logsnr, text, mask), x, logsnr, text, mask))(
      jax.random.key(0, impl="rbg"))
  np.testing.assert_array_equal(out, 0.0)


@pytest.mark.parametrize("layout", ["efficient", "adm"])
def test_every_parameter_has_logical_axis_names(layout):
  unet = make_unet(layout=layout, super_resolution=True)
  x, logsnr, text, mask = inputs()
  variables = jax.eval_shape(lambda r: unet.init(r, x, logsnr, text, mask, low_res=x,
                                                 aug_logsnr=logsnr), jax.random.PRNGKey(0))
  leaves = jax.tree_util.tree_leaves(variables["params"],
                                     is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
  assert len(leaves) > 20
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), leaf
    assert len(leaf.names) == leaf.value.ndim
    assert set(leaf.names) - {None} <= VOCABULARY, leaf.names


def test_parameters_shard_evenly_on_a_3d_mesh():
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  unet = make_unet()
  x, logsnr, text, mask = inputs()
  boxed = jax.eval_shape(lambda r: unet.init(r, x, logsnr, text, mask), jax.random.PRNGKey(0))
  shardings = logical_shardings(boxed, mesh, DEFAULT_RULES)
  params = nn.unbox(boxed)
  leaves = jax.tree_util.tree_leaves(params)
  for leaf, sharding in zip(leaves, jax.tree_util.tree_leaves(shardings)):
    assert sharding.is_fully_replicated or sharding.shard_shape(leaf.shape)  # raises if uneven
  sh = shardings["params"]
  assert sh["down_1_res_0"]["conv_0"]["kernel"].spec == P(None, None, None, "fsdp")
  assert sh["down_1_self_attn"]["query"]["kernel"].spec == P("fsdp", "tensor", None)
  assert sh["conv_out"]["kernel"].spec == P(None, None, None, None)


def test_remat_gives_the_same_gradients():
  x, logsnr, text, mask = inputs()
  small = dict(channel_mult=(1,), num_res_blocks=(1,), self_attention=(False,),
               cross_attention=(False,), mid_block=False)
  plain, remat = make_unet(**small), make_unet(remat="full", **small)
  params = random_params(plain)
  loss = lambda m: lambda p: jnp.sum(m.apply({"params": p}, x, logsnr, text, mask) ** 2)
  grads = [jax.jit(jax.grad(loss(m)))(params) for m in (remat, plain)]
  for a, b in zip(*map(jax.tree_util.tree_leaves, grads)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_bad_level_config_fails():
  x, logsnr, text, mask = inputs()
  with pytest.raises(ValueError, match="num_res_blocks"):
    jax.eval_shape(make_unet(num_res_blocks=(1,)).init, jax.random.PRNGKey(0), x, logsnr, text,
                   mask)


# --- blocks -------------------------------------------------------------------------


def test_dot_product_attention_matches_numpy():
  ks = jax.random.split(jax.random.PRNGKey(3), 3)
  q = jax.random.normal(ks[0], (2, 4, 3, 8))
  k = jax.random.normal(ks[1], (2, 6, 3, 8))
  v = jax.random.normal(ks[2], (2, 6, 3, 8))
  mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
  out = jax.jit(attention.dot_product_attention)(q, k, v, mask[:, None, None, :])
  qn, kn, vn = (np.asarray(a, np.float64) for a in (q, k, v))
  logits = np.einsum("bqhd,bkhd->bhqk", qn, kn) / np.sqrt(8)
  logits = np.where(mask[:, None, None, :], logits, -np.inf)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  np.testing.assert_allclose(out, np.einsum("bhqk,bkhd->bqhd", w, vn), rtol=1e-5, atol=1e-5)


def test_cross_attention_with_no_tokens_attends_to_the_null_token():
  block = attention.CrossAttentionBlock(head_dim=4, norm_groups=2)
  x = jax.random.normal(jax.random.PRNGKey(4), (1, 2, 2, 8))
  ctx = jax.random.normal(jax.random.PRNGKey(5), (1, 3, 8))
  params = jax.eval_shape(block.init, jax.random.PRNGKey(6), x, ctx, jnp.ones((1, 3)))
  params = jax.tree_util.tree_map(lambda p: jnp.full(p.shape, 0.1), nn.unbox(params))
  params["params"]["null_value"] = jnp.arange(8.0).reshape(2, 4) / 8
  out = jax.jit(block.apply)(params, x, ctx, jnp.zeros((1, 3)))
  p = params["params"]
  # Attending only to the null value: out = x + out_proj(null_value), the same at every pixel.
  expected = jnp.einsum("hd,hde->e", p["null_value"], p["out"]["kernel"]) + p["out"]["bias"]
  np.testing.assert_allclose(out - x, jnp.broadcast_to(expected, x.shape), rtol=1e-5, atol=1e-5)


def test_sinusoidal_embedding_and_noise_level():
  x = jnp.array([0.0, 1.0, 250.0])
  emb = embeddings.sinusoidal(x, 8)
  freqs = np.exp(-np.log(10000.0) * np.arange(4) / 4)
  np.testing.assert_allclose(emb, np.concatenate([np.sin(np.outer(x, freqs)),
                                                  np.cos(np.outer(x, freqs))], 1), atol=1e-4)
  levels = embeddings.logsnr_to_level(jnp.array([20.0, 0.0, -20.0]))
  np.testing.assert_allclose(levels, [0.0, 0.5, 1.0], atol=1e-4)


def test_masked_mean():
  x = jnp.arange(12.0).reshape(1, 4, 3)
  np.testing.assert_allclose(embeddings.masked_mean(x, jnp.array([[1, 0, 1, 0]])),
                             [[3.0, 4.0, 5.0]])
  np.testing.assert_allclose(embeddings.masked_mean(x, jnp.zeros((1, 4))), [[0.0, 0.0, 0.0]])


def test_resampling_helpers():
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  np.testing.assert_allclose(layers.downsample_area(x, 2)[0, :, :, 0], [[2.5, 4.5], [10.5, 12.5]])
  up = layers.upsample_nearest(layers.downsample_area(x, 2))
  assert up.shape == x.shape and float(up[0, 1, 1, 0]) == 2.5

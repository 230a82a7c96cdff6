"""jzoo.nn.token_transformer: shapes, logical names, decoding = teacher forcing, scan = loop,
remat, text as prefix or cross-attention, MaskGIT mode, and Phenaki's parameter trees."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jzoo.nn import layers, patterns
from jzoo.nn import token_transformer as tt
from jzoo.nn.transformer import Transformer

V, E, GRID = 16, 32, (2, 4, 4)
TOKENS = jax.random.randint(jax.random.key(0), (2, *GRID), 0, V)
TEXT = jax.random.normal(jax.random.key(1), (2, 5, 24))
TEXT_MASK = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])


class OldMaskGITTransformer(nn.Module):
  """Phenaki's MaskGITTransformer as it was before it became a TokenTransformer (the reference
  its bundled weights were trained with)."""
  codebook_size: int
  width: int
  num_layers: int
  head_dim: int
  mlp_dim: int
  max_time_tokens: int
  grid_size: int
  text_positions: bool = False

  @nn.compact
  def __call__(self, tokens, text, text_mask):
    b, t, h, w = tokens.shape
    x = layers.Embed(self.codebook_size + 1, self.width, name="token_embedding")(tokens)
    init = nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed"))
    pos_t = self.param("position_time", init, (self.max_time_tokens, self.width))
    pos_h = self.param("position_height", init, (self.grid_size, self.width))
    pos_w = self.param("position_width", init, (self.grid_size, self.width))
    x = x + (pos_t[:t, None, None] + pos_h[None, :h, None] + pos_w[None, None, :w])
    x = x.reshape(b, t * h * w, self.width)
    if self.text_positions:
      text = layers.add_text_positions(self, text)
    x = Transformer(self.num_layers, self.width // self.head_dim, self.head_dim, self.mlp_dim,
                    cross_attention=True, name="transformer")(
                        x, context=text, context_mask=text_mask)
    logits = layers.dense(self.codebook_size, ("embed", "vocab"), name="logits")(x)
    return logits.reshape(b, t, h, w, self.codebook_size)


def model(**kw):
  kw = {"codebook_size": V, "width": E, "num_layers": 2, "head_dim": 16, "mlp_dim": 64,
        "grid": GRID, **kw}
  return tt.TokenTransformer(**kw)


def random_params(m, seed=2):
  """Random params at unit-ish scale: at init the zero output projections make every block the
  identity, which would hide a wrong attention."""
  params = nn.unbox(m.init(jax.random.key(seed), TOKENS, TEXT, TEXT_MASK)["params"])
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  return jax.tree.unflatten(tree, [0.2 * jax.random.normal(k, x.shape)
                                   for k, x in zip(keys, leaves)])


def test_shapes_and_logical_names_on_every_param():
  for m in (model(), model(text="prefix", causal=True, text_positions=True),
            model(scan_layers=True, pattern=(patterns.Nearby(1), patterns.Axial("w")))):
    variables = jax.eval_shape(m.init, jax.random.key(0), TOKENS, TEXT, TEXT_MASK)
    assert jax.eval_shape(m.apply, variables, TOKENS, TEXT, TEXT_MASK).shape == (2, *GRID, V)
    boxed = jax.tree.leaves(variables["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
    for box in boxed:
      assert isinstance(box, nn.Partitioned), box
      assert len(box.names) == box.value.ndim and any(n is not None for n in box.names), box.names
    if m.scan_layers:  # the scanned axis is named too
      assert all(b.names[0] == "layers" for b in jax.tree.leaves(
          variables["params"]["transformer"]["layers"],
          is_leaf=lambda x: isinstance(x, nn.Partitioned)))


CYCLE = (patterns.Nearby(1), patterns.Axial("h"))


@pytest.mark.parametrize("pattern,scan", [
    (patterns.Full(), False), (patterns.Nearby((1, 1, 1)), False),
    (patterns.Window((1, 2, 2), shift=(0, 1, 1)), False), (CYCLE, False), (CYCLE, True)])
def test_step_by_step_decoding_equals_teacher_forcing(pattern, scan):
  m = model(causal=True, pattern=pattern, scan_layers=scan)
  params = random_params(m)
  want = np.asarray(m.apply({"params": params}, TOKENS, TEXT, TEXT_MASK)).reshape(2, -1, V)
  flat = TOKENS.reshape(2, -1)

  @jax.jit
  def decode(params):
    def body(n, carry):
      prev, cache, out = carry
      logits, cache = m.apply({"params": params}, prev, n, cache, TEXT, TEXT_MASK, method="step")
      return flat[:, n], cache, out.at[:, n].set(logits)
    start = (jnp.full((2,), m.special_id), m.init_cache(2), jnp.zeros_like(want))
    return jax.lax.fori_loop(0, flat.shape[1], body, start)[2]

  np.testing.assert_allclose(decode(params), want, atol=2e-5, rtol=2e-5)
  # Teacher forcing is causal: changing the last code changes no logit.
  other = TOKENS.at[:, -1, -1, -1].set((TOKENS[:, -1, -1, -1] + 1) % V)
  np.testing.assert_array_equal(
      np.asarray(m.apply({"params": params}, other, TEXT, TEXT_MASK)).reshape(2, -1, V), want)


@pytest.mark.parametrize("pattern,layers", [(patterns.Full(), 2),
                                            ((patterns.Nearby(1), patterns.Axial("w")), 4)])
def test_scan_equals_loop_with_converted_params(pattern, layers):
  loop, scan = model(pattern=pattern, num_layers=layers), model(pattern=pattern,
                                                                  num_layers=layers,
                                                                  scan_layers=True)
  params = random_params(loop)
  cycle = loop.cycle
  scanned = tt.scan_params(params, layers, cycle)
  shapes = lambda p: jax.tree.map(jnp.shape, p)
  assert shapes(scanned) == shapes(nn.unbox(scan.init(jax.random.key(0), TOKENS, TEXT,
                                                      TEXT_MASK)["params"]))
  np.testing.assert_allclose(scan.apply({"params": scanned}, TOKENS, TEXT, TEXT_MASK),
                             loop.apply({"params": params}, TOKENS, TEXT, TEXT_MASK), atol=1e-5)
  back = tt.unscan_params(scanned, layers, cycle)
  jax.tree.map(np.testing.assert_array_equal, back, params)


@pytest.mark.parametrize("scan,remat", [(False, "dots_saveable"), (True, "full")])
def test_remat_changes_neither_outputs_nor_gradients(scan, remat):
  def value_and_grad(remat):
    m = model(remat=remat, scan_layers=scan, causal=True)
    params = random_params(model(scan_layers=scan, causal=True))
    loss = lambda p: jnp.mean(m.apply({"params": p}, TOKENS, TEXT, TEXT_MASK) ** 2)
    return jax.jit(jax.value_and_grad(loss))(params)

  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               value_and_grad(remat), value_and_grad("none"))
  with pytest.raises(ValueError, match="remat"):
    model(remat="bogus").init(jax.random.key(0), TOKENS, TEXT, TEXT_MASK)


@pytest.mark.parametrize("text", ["cross", "prefix"])
def test_text_as_prefix_or_cross_attention(text):
  m = model(text=text, causal=True)
  params = random_params(m)
  out = m.apply({"params": params}, TOKENS, TEXT, TEXT_MASK)
  assert out.shape == (2, *GRID, V) and np.all(np.isfinite(out))
  # The text reaches the codes; padded text positions do not.
  other = m.apply({"params": params}, TOKENS, TEXT.at[:, 1].add(1.0), TEXT_MASK)
  assert np.abs(np.asarray(other - out)).max() > 1e-4
  padded = m.apply({"params": params}, TOKENS, TEXT.at[0, 4].add(1.0), TEXT_MASK)
  np.testing.assert_allclose(padded[0], out[0], atol=1e-6)
  # An all-masked text is a well-defined unconditional model (classifier-free guidance).
  assert np.all(np.isfinite(m.apply({"params": params}, TOKENS, TEXT, jnp.zeros_like(TEXT_MASK))))


def test_no_text_and_prefix_needs_full():
  m = model(text=None, causal=True, pattern=patterns.Nearby(1))
  params = nn.unbox(m.init(jax.random.key(0), TOKENS)["params"])
  assert m.apply({"params": params}, TOKENS).shape == (2, *GRID, V)
  with pytest.raises(ValueError, match="prefix"):
    model(text="prefix", pattern=patterns.Nearby(1)).init(jax.random.key(0), TOKENS, TEXT)


def test_maskgit_mode_is_bidirectional_and_reads_mask_ids():
  m = model()  # causal=False: no shift, every code sees every code
  params = random_params(m)
  masked = TOKENS.at[:, 1].set(m.special_id)  # [MASK] is a valid input id
  out = m.apply({"params": params}, masked, TEXT, TEXT_MASK)
  later = m.apply({"params": params}, masked.at[:, -1, -1, -1].set(3), TEXT, TEXT_MASK)
  assert np.abs(np.asarray(later[:, 0, 0, 0] - out[:, 0, 0, 0])).max() > 1e-4
  with pytest.raises(ValueError, match="causal"):
    m.init_cache(2)


def test_phenaki_params_map_and_give_the_same_outputs():
  kw = dict(codebook_size=V, width=E, num_layers=2, head_dim=16, mlp_dim=64, text_positions=True)
  phenaki = OldMaskGITTransformer(**kw, max_time_tokens=3, grid_size=4)
  params = random_params(phenaki)
  want = phenaki.apply({"params": params}, TOKENS, TEXT, TEXT_MASK)
  for scan in (False, True):
    m = tt.TokenTransformer(**kw, grid=(3, 4, 4), scan_layers=scan)
    mapped = tt.from_phenaki_params(params, scan_layers=scan, num_layers=2)
    np.testing.assert_allclose(m.apply({"params": mapped}, TOKENS, TEXT, TEXT_MASK), want,
                               atol=0 if not scan else 1e-5)
    jax.tree.map(np.testing.assert_array_equal,
                 tt.to_phenaki_params(mapped, scan_layers=scan, num_layers=2), params)


def test_phenaki_transformer_is_a_configuration_with_the_same_names_and_bits():
  from jzoo.models.phenaki import MaskGITTransformer
  kw = dict(codebook_size=V, width=E, num_layers=2, head_dim=16, mlp_dim=64, max_time_tokens=3,
            grid_size=4, text_positions=True)
  old, new = OldMaskGITTransformer(**kw), MaskGITTransformer(**kw)
  params = random_params(old)
  shapes = lambda m: jax.tree.map(jnp.shape, nn.unbox(
      jax.eval_shape(m.init, jax.random.key(0), TOKENS, TEXT, TEXT_MASK)["params"]))
  assert shapes(new) == shapes(old)
  np.testing.assert_array_equal(new.apply({"params": params}, TOKENS, TEXT, TEXT_MASK),
                                old.apply({"params": params}, TOKENS, TEXT, TEXT_MASK))


def test_nuwa_names_and_a_visual_condition_decode_as_teacher_forcing():
  """NUWA's configuration: its names (no "transformer" scope, query/key/value/out in the block),
  a condition encoder over the first frame's codes and a Nearby cross-attention to it in every
  layer; one code at a time from the caches (and the encoded condition) == teacher forcing."""
  m = model(causal=True, pattern=patterns.Nearby((1, 1, 1)), names=tt.NUWA_NAMES,
            condition_radius=(1, 1, 1), condition_layers=1)
  cond = TOKENS[:, :1]
  params = nn.unbox(m.init(jax.random.key(2), TOKENS, TEXT, TEXT_MASK, condition=cond)["params"])
  assert set(params) == {"code_embedding", "position_time", "position_height", "position_width",
                         "condition_0", "norm_condition", "decoder_0", "decoder_1", "norm_out",
                         "head"}
  assert {"query", "visual_query", "norm_visual", "cross_attention"} <= set(params["decoder_0"])
  assert "query" in params["condition_0"] and "cross_attention" not in params["condition_0"]
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(3), len(leaves))
  params = jax.tree.unflatten(tree, [0.2 * jax.random.normal(k, x.shape)
                                     for k, x in zip(keys, leaves)])
  want = m.apply({"params": params}, TOKENS, TEXT, TEXT_MASK, condition=cond).reshape(2, -1, V)
  visual = m.apply({"params": params}, cond, method="encode_condition")
  step = jax.jit(lambda prev, n, cache: m.apply({"params": params}, prev, n, cache, TEXT,
                                                TEXT_MASK, visual, method="step"))
  flat, cache = TOKENS.reshape(2, -1), m.init_cache(2)
  for n in range(flat.shape[1]):
    prev = jnp.full((2,), m.special_id) if n == 0 else flat[:, n - 1]
    logits, cache = step(prev, jnp.int32(n), cache)
    np.testing.assert_allclose(logits, want[:, n], atol=2e-5, rtol=2e-5, err_msg=f"position {n}")
  with pytest.raises(ValueError, match="visual condition"):
    m.apply({"params": params}, TOKENS, TEXT, TEXT_MASK)

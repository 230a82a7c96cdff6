"""T5 encoder: parity with Hugging Face transformers, weight import, axis names, sizes.

The reference outputs in tests/golden/t5_* were made by
scripts/make_t5_golden.py with transformers' T5EncoderModel on random weights.
"""

import dataclasses
import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import ml_dtypes
import numpy as np
import pytest

from jzoo.errors import CheckpointError, ConfigError
from jzoo.parallel import rules
from jzoo.text import t5
from jzoo.text import t5_import

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
MICRO = t5.T5Config(vocab_size=50, d_model=16, d_kv=8, d_ff=32, num_heads=2, num_layers=2,
                    relative_attention_num_buckets=8, relative_attention_max_distance=16)


def _golden(name):
  return np.load(os.path.join(GOLDEN, f"t5_{name}_golden.npz"))


def _hf_dir(tmp_path, name):
  """A Hugging Face style directory: model.safetensors + config.json."""
  d = tmp_path / name
  d.mkdir()
  shutil.copy(os.path.join(GOLDEN, f"t5_{name}.safetensors"), d / "model.safetensors")
  shutil.copy(os.path.join(GOLDEN, f"t5_{name}_config.json"), d / "config.json")
  return d


def _read_st(path):
  """Reads a float32 safetensors file (the golden ones) into {key: array}."""
  with open(path, "rb") as f:
    n = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(n))
    data = f.read()
  header.pop("__metadata__", None)
  out = {}
  for k, info in header.items():
    assert info["dtype"] == "F32"
    a, b = info["data_offsets"]
    out[k] = np.frombuffer(data[a:b], np.float32).reshape(info["shape"])
  return out


def _write_st(path, tensors, dtype="F32"):
  """Writes a safetensors file (the format: u64 header size, JSON header, raw bytes)."""
  np_dtype = {"F32": np.float32, "BF16": ml_dtypes.bfloat16}[dtype]
  header, blobs, offset = {}, [], 0
  for k, v in tensors.items():
    raw = np.ascontiguousarray(v, np_dtype).tobytes()
    header[k] = {"dtype": dtype, "shape": list(v.shape), "data_offsets": [offset, offset + len(raw)]}
    blobs.append(raw)
    offset += len(raw)
  h = json.dumps(header).encode()
  h += b" " * (-len(h) % 8)
  with open(path, "wb") as f:
    f.write(len(h).to_bytes(8, "little") + h + b"".join(blobs))


def _encode(config, params, tokens, mask):
  return np.asarray(t5.T5Encoder(config).apply({"params": params}, tokens, mask))


# --- parity with transformers ---------------------------------------------------


@pytest.mark.parametrize("name", ["tiny", "tiny_relu"])
def test_matches_transformers_on_padded_batch(tmp_path, name):
  config, params = t5_import.load_hf_safetensors(_hf_dir(tmp_path, name))
  g = _golden(name)
  assert (g["mask"] == 0).any(), "the golden batch must contain padding"
  out = _encode(config, params, g["tokens"], g["mask"])
  np.testing.assert_allclose(out, g["last_hidden_state"], atol=1e-4, rtol=0)


def test_config_inferred_from_shapes_without_config_json():
  # tiny uses T5's default max_distance (128), which shapes cannot show.
  config, params = t5_import.load_hf_safetensors(os.path.join(GOLDEN, "t5_tiny.safetensors"))
  with open(os.path.join(GOLDEN, "t5_tiny_config.json")) as f:
    hf = json.load(f)
  assert (config.d_model, config.d_kv, config.d_ff, config.num_heads, config.num_layers,
          config.vocab_size, config.feed_forward) == (
              hf["d_model"], hf["d_kv"], hf["d_ff"], hf["num_heads"], hf["num_layers"],
              hf["vocab_size"], "gated-gelu")
  g = _golden("tiny")
  np.testing.assert_allclose(_encode(config, params, g["tokens"], g["mask"]),
                             g["last_hidden_state"], atol=1e-4, rtol=0)


def test_padding_does_not_leak_into_real_tokens():
  _, params = t5_import.load_hf_safetensors(os.path.join(GOLDEN, "t5_tiny.safetensors"))
  config = t5_import.config_from_params(params)
  g = _golden("tiny")
  tokens = g["tokens"].copy()
  tokens[g["mask"] == 0] = 7  # garbage in padded positions
  a = _encode(config, params, g["tokens"], g["mask"])
  b = _encode(config, params, tokens, g["mask"])
  real = g["mask"] > 0
  np.testing.assert_allclose(a[real], b[real], atol=1e-6)
  assert np.abs(a[~real] - b[~real]).max() > 1e-3  # padded queries do see their own token


# --- Hugging Face import details ------------------------------------------------


def test_sharded_conditional_generation_checkpoint(tmp_path):
  """T5ForConditionalGeneration layout, sharded: decoder/lm_head skipped, same encoder."""
  tensors = _read_st(os.path.join(GOLDEN, "t5_tiny.safetensors"))
  tensors["encoder.embed_tokens.weight"] = tensors["shared.weight"]
  tensors["decoder.embed_tokens.weight"] = tensors["shared.weight"]
  tensors["decoder.block.0.layer.0.SelfAttention.q.weight"] = np.ones((64, 32), np.float32)
  tensors["lm_head.weight"] = np.zeros((100, 32), np.float32)
  keys = sorted(tensors)
  shards = {"model-00001-of-00002.safetensors": keys[::2],
            "model-00002-of-00002.safetensors": keys[1::2]}
  weight_map = {}
  for fname, ks in shards.items():
    _write_st(tmp_path / fname, {k: tensors[k] for k in ks})
    weight_map.update({k: fname for k in ks})
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
  shutil.copy(os.path.join(GOLDEN, "t5_tiny_config.json"), tmp_path / "config.json")

  config, params = t5_import.load_hf_safetensors(tmp_path)
  g = _golden("tiny")
  np.testing.assert_allclose(_encode(config, params, g["tokens"], g["mask"]),
                             g["last_hidden_state"], atol=1e-4, rtol=0)


def test_bfloat16_safetensors_are_read_as_float32(tmp_path):
  tensors = _read_st(os.path.join(GOLDEN, "t5_tiny.safetensors"))
  _write_st(tmp_path / "model.safetensors", tensors, dtype="BF16")
  _, params = t5_import.load_hf_safetensors(tmp_path)
  emb = params["token_embedder"]["embedding"]
  assert emb.dtype == np.float32
  expected = tensors["shared.weight"].astype(ml_dtypes.bfloat16).astype(np.float32)
  np.testing.assert_array_equal(emb, expected)
  assert not np.array_equal(emb, tensors["shared.weight"])


@pytest.mark.parametrize("edit,needle", [
    ("shape", "encoder.block.1.layer.1.DenseReluDense.wo.weight has shape (32, 63)"),
    ("missing", "missing tensor encoder.block.1.layer.0.SelfAttention.k.weight"),
    ("extra", "unexpected tensor encoder.block.1.layer.0.SelfAttention.relative_attention_bias"),
])
def test_bad_checkpoint_names_tensor_and_path(tmp_path, edit, needle):
  tensors = _read_st(os.path.join(GOLDEN, "t5_tiny.safetensors"))
  if edit == "shape":
    tensors["encoder.block.1.layer.1.DenseReluDense.wo.weight"] = np.zeros((32, 63), np.float32)
  elif edit == "missing":
    del tensors["encoder.block.1.layer.0.SelfAttention.k.weight"]
  else:
    tensors["encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"] = (
        np.zeros((32, 4), np.float32))
  path = tmp_path / "model.safetensors"
  _write_st(path, tensors)
  shutil.copy(os.path.join(GOLDEN, "t5_tiny_config.json"), tmp_path / "config.json")
  with pytest.raises(CheckpointError) as e:
    t5_import.load_hf_safetensors(path)
  msg = str(e.value)
  assert needle in msg and str(path) in msg and "\n" not in msg


def test_not_a_checkpoint(tmp_path):
  with pytest.raises(CheckpointError, match="no model.safetensors"):
    t5_import.load_hf_safetensors(tmp_path)
  (tmp_path / "model.safetensors").write_bytes(b"\xff" * 16)
  with pytest.raises(CheckpointError, match="not a readable safetensors"):
    t5_import.load_hf_safetensors(tmp_path)


# --- t5x checkpoints ------------------------------------------------------------


def _t5x_target_from_hf(config, tensors):
  """The t5x `target` tree of the golden model, built from the HF tensors.

  t5x stores q/k/v kernels as [embed, heads*kv] and out as [heads*kv, embed]
  (its DenseGeneral flattens them); HF's torch [out, in] weights transposed are
  exactly those, which is how the t5x<->HF converters map them. This checks
  the 2-D -> 3-D un-joining against the reference, not against itself.
  """
  enc = {"relpos_bias": {"rel_embedding": tensors[
      "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].T},
         "encoder_norm": {"scale": tensors["encoder.final_layer_norm.weight"]}}
  for i in range(config.num_layers):
    b = f"encoder.block.{i}.layer"
    enc[f"layers_{i}"] = {
        "attention": {n: {"kernel": tensors[f"{b}.0.SelfAttention.{h}.weight"].T}
                      for h, n in (("q", "query"), ("k", "key"), ("v", "value"), ("o", "out"))},
        "pre_attention_layer_norm": {"scale": tensors[f"{b}.0.layer_norm.weight"]},
        "mlp": {w: {"kernel": tensors[f"{b}.1.DenseReluDense.{w}.weight"].T}
                for w in ("wi_0", "wi_1", "wo")},
        "pre_mlp_layer_norm": {"scale": tensors[f"{b}.1.layer_norm.weight"]},
    }
  return {"token_embedder": {"embedding": tensors["shared.weight"]}, "encoder": enc,
          "decoder": {"decoder_norm": {"scale": np.ones(32, np.float32)}}}


def test_t5x_orbax_checkpoint_matches_transformers(tmp_path):
  import orbax.checkpoint as ocp
  config, _ = t5_import.load_hf_safetensors(_hf_dir(tmp_path, "tiny"))
  tensors = _read_st(os.path.join(GOLDEN, "t5_tiny.safetensors"))
  state = {"target": _t5x_target_from_hf(config, tensors),
           "state": {"step": np.int32(1000)}}
  path = tmp_path / "checkpoint_1000"
  ocp.PyTreeCheckpointer().save(path, state)
  params = t5_import.load_t5x_checkpoint(path)
  assert params["encoder"]["layers_0"]["attention"]["query"]["kernel"].shape == (32, 4, 16)
  cfg = t5_import.config_from_params(params)
  assert cfg == config
  g = _golden("tiny")
  np.testing.assert_allclose(_encode(cfg, params, g["tokens"], g["mask"]),
                             g["last_hidden_state"], atol=1e-4, rtol=0)


def test_t5x_orbax_round_trip_of_jzoo_params(tmp_path):
  import orbax.checkpoint as ocp
  variables = t5.T5Encoder(MICRO).init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32),
                                       jnp.ones((1, 4), jnp.int32))
  params = jax.tree_util.tree_map(np.asarray, nn.unbox(variables)["params"])
  ocp.PyTreeCheckpointer().save(tmp_path / "ck", {"target": params})
  loaded = t5_import.load_t5x_checkpoint(tmp_path / "ck", config=MICRO)
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, params)
  # A checkpoint of another size is refused with the parameter's name.
  with pytest.raises(CheckpointError, match="layers_0/mlp/wi_0/kernel has shape"):
    t5_import.load_t5x_checkpoint(tmp_path / "ck",
                                  config=dataclasses.replace(MICRO, d_ff=40))


def test_t5x_msgpack_tensorstore_checkpoint(tmp_path):
  """t5x's native format: msgpack `checkpoint` whose partitioned leaves are zarr specs.

  Written here as t5x's checkpoints.py writes it (relative kvstore paths named
  by the '.'-joined parameter path, under `optimizer/target`).
  """
  import tensorstore as ts
  from flax import serialization
  config, _ = t5_import.load_hf_safetensors(_hf_dir(tmp_path, "tiny"))
  target = _t5x_target_from_hf(config, _read_st(os.path.join(GOLDEN, "t5_tiny.safetensors")))
  ck = tmp_path / "checkpoint_7"
  ck.mkdir()

  def to_spec(path, arr):
    name = ".".join(("target",) + tuple(k.key for k in path))
    if arr.ndim < 2:
      return arr  # small arrays sit in the msgpack itself
    spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": name},
            "metadata": {"shape": list(arr.shape), "chunks": list(arr.shape), "dtype": "<f4",
                         "compressor": {"id": "gzip"}}}
    absolute = {**spec, "kvstore": {"driver": "file", "path": str(ck / name)}}
    ts.open(absolute, create=True).result().write(arr).result()
    return spec

  specs = jax.tree_util.tree_map_with_path(to_spec, target)
  blob = serialization.msgpack_serialize(
      {"version": 3, "optimizer": {"target": specs, "state": {"step": np.int32(7)}}})
  (ck / "checkpoint").write_bytes(blob)
  params = t5_import.load_t5x_checkpoint(ck)
  g = _golden("tiny")
  np.testing.assert_allclose(_encode(config, params, g["tokens"], g["mask"]),
                             g["last_hidden_state"], atol=1e-4, rtol=0)


# --- module properties ----------------------------------------------------------


def test_every_parameter_has_logical_axis_names():
  for config in (MICRO, dataclasses.replace(MICRO, feed_forward="relu")):
    variables = jax.eval_shape(lambda: t5.T5Encoder(config).init(
        jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32)))
    known = {name for name, _ in rules.DEFAULT_RULES}
    leaves = jax.tree_util.tree_leaves(
        variables["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves
    for leaf in leaves:
      assert isinstance(leaf, nn.Partitioned), leaf
      assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= known, leaf.names


def test_t5x_parameter_names():
  shapes = t5_import.param_shapes(MICRO)
  paths = {"/".join(k) for k in shapes}
  assert {"token_embedder/embedding", "encoder/relpos_bias/rel_embedding",
          "encoder/encoder_norm/scale", "encoder/layers_1/attention/query/kernel",
          "encoder/layers_1/attention/out/kernel", "encoder/layers_0/mlp/wi_0/kernel",
          "encoder/layers_0/mlp/wi_1/kernel", "encoder/layers_0/mlp/wo/kernel",
          "encoder/layers_0/pre_attention_layer_norm/scale",
          "encoder/layers_0/pre_mlp_layer_norm/scale"} <= paths
  assert shapes[("encoder", "relpos_bias", "rel_embedding")] == (2, 8)
  assert shapes[("encoder", "layers_0", "attention", "out", "kernel")] == (2, 8, 16)


def test_sharded_init_on_fake_devices():
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:8]).reshape(2, 2, 2), rules.MESH_AXES)
  model = t5.T5Encoder(MICRO)
  tokens, mask = jnp.ones((8, 6), jnp.int32), jnp.ones((8, 6), jnp.int32)
  init = lambda key: model.init(key, tokens, mask)
  abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh,
                                          rules.DEFAULT_RULES)
  variables = jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(0))
  q = variables["params"]["encoder"]["layers_0"]["attention"]["query"]["kernel"].value
  assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules.DEFAULT_RULES):
    out = jax.jit(model.apply)(variables, tokens, mask)
  np.testing.assert_allclose(out, model.apply(variables, tokens, mask), atol=1e-5)


def test_mlm_logits_are_tied_to_the_embedding():
  model = t5.T5Encoder(MICRO)
  tokens, mask = jnp.array([[3, 4, 5, 0]]), jnp.array([[1, 1, 1, 0]])
  variables = model.init(jax.random.PRNGKey(1), tokens, mask)
  logits = model.apply(variables, tokens, mask, method=t5.T5Encoder.mlm_logits)
  assert logits.shape == (1, 4, MICRO.vocab_size) and logits.dtype == jnp.float32
  hidden = model.apply(variables, tokens, mask)
  emb = nn.unbox(variables)["params"]["token_embedder"]["embedding"]
  np.testing.assert_allclose(logits, hidden @ emb.T / np.sqrt(MICRO.d_model), atol=1e-5)
  grads = jax.grad(lambda p: model.apply(p, tokens, mask, method=t5.T5Encoder.mlm_logits)
                   [0, 1, 4])(variables)
  assert np.abs(grads["params"]["token_embedder"]["embedding"].value[4]).sum() > 0


def test_bfloat16_compute_keeps_float32_params():
  config = dataclasses.replace(MICRO, dtype="bfloat16")
  tokens, mask = jnp.array([[3, 4, 5, 9]]), jnp.array([[1, 1, 1, 1]])
  variables = t5.T5Encoder(config).init(jax.random.PRNGKey(2), tokens, mask)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(nn.unbox(variables)))
  out = t5.T5Encoder(config).apply(variables, tokens, mask)
  ref = t5.T5Encoder(MICRO).apply(variables, tokens, mask)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=0.1, rtol=0.05)


def test_relative_position_buckets_match_t5():
  # Expected values from transformers 5.24.0:
  # T5Attention._relative_position_bucket(rel, bidirectional=True, num_buckets=32, max_distance=128).
  rel = np.array([-200, -128, -20, -8, -7, -1, 0, 1, 7, 8, 20, 128, 200])
  got = t5.relative_position_bucket(rel, True, 32, 128)
  np.testing.assert_array_equal(got, [15, 15, 10, 8, 7, 1, 0, 17, 23, 24, 26, 31, 31])


# --- configs --------------------------------------------------------------------


# Encoder parameter counts (embeddings included) of T5 v1.1 from the "T5 v1.1
# properties" table of Wikipedia's "T5 (language model)" article; the XXL
# figure, 4,762,310,656, is also the count reported for the T5-v1.1-XXL
# text encoder of public diffusion pipelines (e.g. SD3's text_encoder_3).
@pytest.mark.parametrize("name,count", [
    ("t5-v1_1-small", 35_332_800), ("t5-v1_1-base", 109_628_544),
    ("t5-v1_1-large", 341_231_104), ("t5-v1_1-xl", 1_223_527_424),
    ("t5-v1_1-xxl", 4_762_310_656), ("flan-t5-xxl", 4_762_310_656)])
def test_preset_parameter_counts(name, count):
  assert t5.num_params(t5.T5_PRESETS[name]) == count


def test_config_from_ml_collections():
  cfg = ml_collections.ConfigDict(dict(preset="flan-t5-base", num_layers=2, length=32,
                                       tokenizer="shapes"))
  c = t5.t5_config_from_ml_collections(cfg)
  assert (c.d_model, c.num_heads, c.num_layers) == (768, 12, 2)
  assert t5.t5_config_from_ml_collections({"d_model": 64}).d_ff == t5.T5Config().d_ff
  with pytest.raises(ConfigError, match="length"):
    t5.t5_config_from_ml_collections(cfg, strict=True)
  with pytest.raises(ConfigError, match="unknown T5 preset"):
    t5.t5_config_from_ml_collections({"preset": "t5-huge"})
  with pytest.raises(ConfigError, match="feed_forward"):
    t5.t5_config_from_ml_collections({"feed_forward": "swiglu"})

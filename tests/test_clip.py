"""CLIP and the CLIP score: parity with Hugging Face transformers, tokenizer, preprocessing, errors.

The reference values in tests/golden/clip_tiny_golden.npz and the folder
tests/golden/clip_tiny/ (random weights, a tiny BPE vocabulary) were made by
scripts/make_clip_golden.py with transformers 5.24's CLIPModel, CLIPTokenizer
and CLIPImageProcessor (PIL backend).
"""

import dataclasses
import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P
from safetensors.numpy import load_file, save_file

from jzoo.errors import CheckpointError, UserError
from jzoo.parallel import mesh as mesh_lib
from jzoo.parallel import rules
from jzoo.parallel.sharding import logical_shardings, mesh_context
from jzoo.text import clip
from jzoo.text.clip_tokenizer import CLIPTokenizer

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
FOLDER = os.path.join(GOLDEN, "clip_tiny")
ATOL = 1e-4
# Image i is paired with caption PAIRS[i]: two pairs have a negative cosine, so the two
# ways of flooring at 0 give different scores.
PAIRS = [3, 4, 2, 5]


@pytest.fixture(scope="module")
def golden():
  return np.load(os.path.join(GOLDEN, "clip_tiny_golden.npz"))


@pytest.fixture(scope="module")
def loaded():
  return clip.load_clip(FOLDER)


def _images(golden):
  return [golden[f"image_{i}"] for i in range(4)]  # 32x32, 64x48, 40x40, 24x30


def _nhwc(pixels):
  return pixels.transpose(0, 2, 3, 1)  # torch's NCHW -> jzoo's NHWC


def _copy(tmp_path, names):
  d = tmp_path / "clip"
  d.mkdir()
  for name in names:
    shutil.copy(os.path.join(FOLDER, name), d / name)
  return d


# --- parity with transformers ---------------------------------------------------------


def test_text_embeddings_match_transformers(golden, loaded):
  model, params, _ = loaded
  assert (golden["attention_mask"] == 0).any(), "the golden batch must contain padding"
  out = clip.text_embeddings(model, params, golden["input_ids"], golden["attention_mask"])
  np.testing.assert_allclose(out, golden["text_embeds"], atol=ATOL, rtol=0)


def test_both_pooling_rules_match_transformers(golden, loaded):
  """Ids above <|endoftext|> (added rows): the first end token, or the highest id when
  eos_token_id is 2 (configs from before transformers PR #24773)."""
  model, params, _ = loaded
  raw = golden["raw_ids"]
  out = clip.text_embeddings(model, params, raw, np.ones_like(raw))
  np.testing.assert_allclose(out, golden["raw_embeds"], atol=ATOL, rtol=0)
  text = dataclasses.replace(model.config.text, eos_token_id=2)
  legacy = clip.CLIP(dataclasses.replace(model.config, text=text), model.processing)
  out = clip.text_embeddings(legacy, params, raw, np.ones_like(raw))
  np.testing.assert_allclose(out, golden["raw_embeds_legacy"], atol=ATOL, rtol=0)
  assert np.abs(golden["raw_embeds"] - golden["raw_embeds_legacy"]).max() > 1.0


def test_image_embeddings_match_transformers(golden, loaded):
  model, params, _ = loaded
  out = clip.image_embeddings(model, params, _nhwc(golden["pixel_values"]))
  np.testing.assert_allclose(out, golden["image_embeds"], atol=ATOL, rtol=0)


def test_clip_score_matches_reference(golden, loaded):
  model, params, tokenizer = loaded
  captions = [str(golden["captions"][j]) for j in PAIRS]
  cos100 = golden["cos100"][np.arange(4), PAIRS]
  assert (cos100 < 0).sum() == 2
  score, per_pair = clip.clip_score(_images(golden), captions, model, params, tokenizer)
  np.testing.assert_allclose(per_pair, np.maximum(cos100, 0), atol=ATOL, rtol=0)
  assert score == pytest.approx(np.maximum(cos100, 0).mean(), abs=ATOL)
  # torchmetrics' code: the mean of the raw scores, floored at 0.
  score, per_pair = clip.clip_score(_images(golden), captions, model, params, tokenizer,
                                    clamp="mean")
  np.testing.assert_allclose(per_pair, cos100, atol=ATOL, rtol=0)
  assert score == pytest.approx(max(cos100.mean(), 0), abs=ATOL)


def test_mismatched_captions_change_the_score(golden, loaded):
  model, params, tokenizer = loaded
  images = np.stack([golden["image_0"]] * 3)  # one uint8 [N, H, W, 3] array
  right = ["a red circle moving right"] * 3
  wrong = ["a red circle moving right", "a blue square", "two white squares!!"]
  _, a = clip.clip_score(images, right, model, params, tokenizer)
  _, b = clip.clip_score(images, wrong, model, params, tokenizer)
  assert a[0] == pytest.approx(b[0], abs=1e-5) and np.allclose(a, a[0], atol=1e-5)
  assert np.abs(a[1:] - b[1:]).min() > 0.1
  assert ((0 <= b) & (b <= 100)).all()


# --- logical axis names and sharding ---------------------------------------------------

TINY = clip.CLIPConfig(
    text=clip.TextConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
                         num_attention_heads=2, num_hidden_layers=1, max_position_embeddings=8,
                         eos_token_id=49),
    vision=clip.VisionConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2,
                             num_hidden_layers=1, image_size=8, patch_size=4),
    projection_dim=8)


def _tiny_init(model, batch=2):
  ids = jnp.tile(jnp.array([[1, 2, 49, 0]]), (batch, 1))
  mask, pixels = (ids > 0).astype(jnp.int32), jnp.zeros((batch, 8, 8, 3))
  return (lambda key: model.init(key, ids, mask, pixels)), (ids, mask, pixels)


def test_every_parameter_has_logical_axis_names(loaded):
  assert all(isinstance(x, np.ndarray) for x in jax.tree_util.tree_leaves(loaded[1]))  # plain
  model = clip.CLIP(TINY)
  init, _ = _tiny_init(model)
  boxed = jax.eval_shape(init, jax.random.PRNGKey(0))["params"]
  known = {name for name, _ in rules.DEFAULT_RULES}
  leaves = jax.tree_util.tree_leaves_with_path(
      boxed, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
  assert len(leaves) == len(clip.param_shapes(model))
  for path, leaf in leaves:
    assert isinstance(leaf, nn.Partitioned), (path, "a parameter without names")
    assert len(leaf.names) == leaf.value.ndim and set(leaf.names) - {None} <= known, (
        path, leaf.names)
  p = nn.get_partition_spec(boxed)
  assert p["text_model"]["encoder"]["layers_0"]["mlp"]["fc1"]["kernel"] == P("embed", "mlp")
  assert p["text_model"]["encoder"]["layers_0"]["self_attn"]["q_proj"]["kernel"] == P(
      "embed", "heads")
  assert p["logit_scale"] == P()
  # The tree the HF import renames into is unchanged by the names.
  assert clip.param_shapes(model)[("vision_model", "embeddings", "patch_embedding",
                                   "kernel")] == (4, 4, 3, 16)


def test_sharded_init_and_apply_on_a_mesh():
  model = clip.CLIP(TINY)
  init, inputs = _tiny_init(model, batch=8)
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  boxed = jax.eval_shape(init, jax.random.PRNGKey(0))
  shardings = logical_shardings(boxed, mesh, rules.DEFAULT_RULES)
  flat = jax.tree_util.tree_leaves(shardings)
  assert len(flat) == len(clip.param_shapes(model))
  assert all(isinstance(s, NamedSharding) and s.mesh == mesh for s in flat)
  fc1 = shardings["params"]["text_model"]["encoder"]["layers_0"]["mlp"]["fc1"]["kernel"]
  assert fc1.spec == P("fsdp", "tensor")  # FSDP on embed, tensor parallel on mlp
  params = jax.jit(lambda k: nn.unbox(init(k)), out_shardings=shardings)(
      jax.random.PRNGKey(0))["params"]
  expected = model.apply({"params": jax.device_get(params)}, *inputs)
  with mesh_context(mesh, rules.DEFAULT_RULES):
    out = jax.jit(model.apply)({"params": params}, *inputs)
  for a, b in zip(out, expected):
    np.testing.assert_allclose(a, b, atol=1e-5)


# --- tokenizer ------------------------------------------------------------------------


def test_tokenizer_matches_clip_tokenizer(golden, loaded):
  tokenizer = loaded[2]
  ids, mask = tokenizer([str(s) for s in golden["captions"]])
  np.testing.assert_array_equal(ids, golden["input_ids"])  # the last caption is truncated
  np.testing.assert_array_equal(mask, golden["attention_mask"])
  ids, mask = tokenizer([str(s) for s in golden["extra_strings"]], max_length=64)
  for i, text in enumerate(golden["extra_strings"]):
    assert ids[i].tolist() == golden["extra_ids"][i].tolist(), repr(text)
  np.testing.assert_array_equal(mask, golden["extra_mask"])


def test_tokenizer_pad_token_from_tokenizer_config(golden, tmp_path):
  """A pad token other than <|endoftext|> (LAION's "!") pads and is a special token in text."""
  d = _copy(tmp_path, ["vocab.json", "merges.txt"])
  config = json.load(open(os.path.join(FOLDER, "tokenizer_config.json")))
  (d / "tokenizer_config.json").write_text(json.dumps({**config, "pad_token": "!"}))
  tokenizer = CLIPTokenizer.load(d)
  assert tokenizer.max_length == 32  # model_max_length
  ids, _ = tokenizer([str(s) for s in golden["pad_bang_strings"]])
  np.testing.assert_array_equal(ids, golden["pad_bang_ids"])


def test_tokenizer_reads_tokenizer_json(golden, tmp_path):
  tokenizer = CLIPTokenizer.load(_copy(tmp_path, ["tokenizer.json", "tokenizer_config.json"]))
  ids, _ = tokenizer([str(s) for s in golden["extra_strings"]], max_length=64)
  np.testing.assert_array_equal(ids, golden["extra_ids"])


# --- preprocessing --------------------------------------------------------------------


def test_preprocessing_matches_image_processor(golden, loaded):
  processing = loaded[0].processing
  pixels = clip.preprocess(_images(golden), processing)
  # transformers' PIL backend: the same PIL bicubic resize, bit for bit.
  np.testing.assert_allclose(pixels, _nhwc(golden["pixel_values"]), atol=1e-6, rtol=0)
  # Its torchvision backend (torch's uint8 bicubic on CPU) differs by at most one uint8 level
  # on a few pixels of the resized images: 1 / (255 * 0.2613) = 0.0150 after normalization.
  diff = np.abs(pixels - _nhwc(golden["pixel_values_tv"]))
  assert diff.max() <= 1 / (255 * min(clip.OPENAI_STD)) + 1e-6
  assert diff[0].max() < 1e-6  # 32x32 needs no resize (float rounding of the fused normalize)


def test_preprocessor_config_variants(tmp_path):
  path = tmp_path / "preprocessor_config.json"
  path.write_text(json.dumps({"size": 224, "crop_size": 224, "resample": 3, "do_normalize": True,
                              "feature_extractor_type": "CLIPFeatureExtractor"}))
  p = clip.image_processing_from_json(path, 224)  # the older openai layout
  assert (p.size, p.crop_size, p.image_mean) == (224, (224, 224), clip.OPENAI_MEAN)
  path.write_text(json.dumps({"size": {"height": 40, "width": 30}, "crop_size": [20, 10]}))
  p = clip.image_processing_from_json(path, 224)
  assert (p.size, p.crop_size) == ((40, 30), (20, 10))
  assert clip.preprocess(np.zeros((2, 5, 7, 3), np.uint8), p).shape == (2, 20, 10, 3)
  # Without the file: the model's image_size; a crop larger than the image zero-pads.
  p = clip.image_processing_from_json(tmp_path / "absent.json", 8)
  assert (p.size, p.crop_size) == (8, (8, 8))
  p = dataclasses.replace(p, do_resize=False, do_normalize=False)
  out = clip.preprocess(np.full((4, 6, 3), 255, np.uint8), p)[0]
  assert out.shape == (8, 8, 3) and out[:2].max() == 0 and out[2:6, 1:7].min() == 1.0


# --- config and errors ----------------------------------------------------------------


def test_config_dict_replaces_config_as_transformers_does(tmp_path):
  path = tmp_path / "config.json"
  path.write_text(json.dumps({"model_type": "clip",
                              "text_config": {"hidden_size": 768, "eos_token_id": 2,
                                              "intermediate_size": 99},
                              "text_config_dict": {"hidden_size": 768}}))
  c = clip.clip_config_from_json(path)
  assert (c.text.hidden_size, c.text.intermediate_size, c.text.eos_token_id) == (768, 2048, 49407)
  assert c.vision == clip.VisionConfig() and c.projection_dim == 512


@pytest.mark.parametrize("case,needle", [
    ("no_folder", "no such CLIP folder"),
    ("no_config", "no config.json"),
    ("not_clip", "model_type is 't5', not 'clip'"),
    ("no_weights", "no model.safetensors (it has pytorch_model.bin"),
    ("missing", "missing CLIP parameter vision_model/post_layernorm/scale"),
    ("shape", "text_projection.weight has shape (32, 63)"),
    ("no_vocab", "no CLIP tokenizer here"),
])
def test_clear_errors(tmp_path, case, needle):
  names = ["config.json", "model.safetensors", "vocab.json", "merges.txt"]
  d = tmp_path / "absent" if case == "no_folder" else _copy(tmp_path, names)
  if case == "no_config":
    os.remove(d / "config.json")
  elif case == "not_clip":
    (d / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 8}))
  elif case == "no_weights":
    os.rename(d / "model.safetensors", d / "pytorch_model.bin")
  elif case in ("missing", "shape"):
    tensors = load_file(d / "model.safetensors")
    if case == "missing":
      del tensors["vision_model.post_layernorm.weight"]
    else:
      tensors["text_projection.weight"] = np.zeros((32, 63), np.float32)
    save_file(tensors, d / "model.safetensors")
  elif case == "no_vocab":
    os.remove(d / "vocab.json")
  with pytest.raises(CheckpointError, match=needle.replace("(", r"\(").replace(")", r"\)")):
    clip.load_clip(d)


def test_bad_inputs_are_user_errors(golden, loaded):
  model, params, tokenizer = loaded
  with pytest.raises(UserError, match="2 images but 1 captions"):
    clip.clip_score(_images(golden)[:2], ["a red circle"], model, params, tokenizer)
  with pytest.raises(UserError, match="must be uint8"):
    clip.clip_score(np.zeros((1, 8, 8, 3), np.float32), ["a"], model, params, tokenizer)

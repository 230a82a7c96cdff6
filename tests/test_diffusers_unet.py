"""jzoo.nn.diffusers_unet against diffusers' UNet2DConditionModel, UNet2DModel and
UnCLIPTextProjModel: golden outputs from scripts/make_karlo_unet_golden.py (tiny Karlo-shaped
and IF-like folders with random weights), the real Karlo configs' parameter shapes, axis
names and loading errors."""

import json
import os
import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import traverse_util

from jzoo.errors import CheckpointError
from jzoo.nn import diffusers_unet as du
from jzoo.parallel.rules import DEFAULT_RULES

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
TINY = os.path.join(GOLDEN, "karlo_tiny")
TOL = 1e-4


@pytest.fixture(scope="module")
def golden():
  return dict(np.load(os.path.join(GOLDEN, "karlo_unet_golden.npz")))


@pytest.fixture(scope="module")
def loaded():
  return {name: du.load_diffusers_folder(os.path.join(TINY, name))
          for name in ("decoder", "text_proj", "super_res_first", "super_res_last", "if_like")}


def _close(got, want):
  got = np.asarray(got)
  assert got.shape == want.shape
  err = float(np.abs(got - want).max())
  assert err < TOL, err


def test_text_proj_matches_diffusers(golden, loaded):
  module, params = loaded["text_proj"]
  g = golden
  states, time = module.apply({"params": params}, g["tp_image"], g["tp_prompt"], g["tp_hidden"],
                              False)
  _close(states, g["tp_states"])
  _close(time, g["tp_time"])
  states, time = module.apply({"params": params}, g["tp_image"], g["tp_cfg_prompt"],
                              g["tp_cfg_hidden"], True)
  _close(states, g["tp_cfg_states"])
  _close(time, g["tp_cfg_time"])


def test_decoder_matches_diffusers(golden, loaded):
  module, params = loaded["decoder"]
  g = golden
  run = jax.jit(lambda p, mask: module.apply({"params": p}, g["dec_x"], g["dec_t"], g["dec_states"],
                                             g["dec_labels"], mask))
  _close(run(params, g["dec_mask"]), g["dec_out"])
  _close(run(params, None), g["dec_out_nomask"])


@pytest.mark.parametrize("name", ["super_res_first", "super_res_last"])
def test_super_res_matches_diffusers(golden, loaded, name):
  module, params = loaded[name]
  _close(jax.jit(module.apply)({"params": params}, golden["sr_x"], golden["sr_t"]),
         golden[name.replace("super_res", "sr") + "_out"])


def test_if_like_options_match_diffusers(golden, loaded):
  module, params = loaded["if_like"]
  g = golden
  _close(jax.jit(module.apply)({"params": params}, g["if_x"], g["if_t"], g["if_states"],
                               g["if_labels"]), g["if_out"])


def test_real_karlo_configs_give_diffusers_parameter_shapes():
  with open(os.path.join(GOLDEN, "karlo_unet_shapes.json")) as f:
    ref = json.load(f)
  for name, config in ref["configs"].items():
    module = du.module_from_config(du.config_from_diffusers(config, name))
    got = du.param_shapes(module)
    want = {}
    for key, shape in ref["shapes"][name].items():
      path = du._flax_path(key, got)
      # the load's transposes, on shapes: Linear [out, in] -> [in, out], OIHW -> HWIO
      if path[-1] == "kernel":
        shape = shape[::-1] if len(shape) == 2 else [shape[2], shape[3], shape[1], shape[0]]
      want[path] = tuple(shape)
    assert got == want, name


def _allowed_names():
  return {name for name, _ in DEFAULT_RULES}


@pytest.mark.parametrize("name", ["decoder", "text_proj", "super_res_first", "if_like"])
def test_every_param_has_logical_axis_names(loaded, name):
  module, params = loaded[name]
  boxed = jax.eval_shape(lambda: du.init_params(module))
  leaves = traverse_util.flatten_dict(boxed, is_leaf=lambda _, x: isinstance(x, nn.Partitioned))
  assert set(leaves) == set(traverse_util.flatten_dict(params))
  for path, leaf in leaves.items():
    assert isinstance(leaf, nn.Partitioned), (path, "a parameter without names")
    assert len(leaf.names) == len(leaf.value.shape), path
    assert set(leaf.names) - {None} <= _allowed_names(), (path, leaf.names)
    assert leaf.value.dtype == np.float32, path


def test_compute_dtype_is_configurable(golden, loaded):
  module, params = loaded["super_res_first"]
  bf16 = du.UNet2D(module.config, dtype=jax.numpy.bfloat16)
  y = jax.jit(bf16.apply)({"params": params}, golden["sr_x"], golden["sr_t"])
  assert y.dtype == jax.numpy.bfloat16
  assert float(np.abs(np.asarray(y, np.float32) - golden["sr_first_out"]).max()) < 0.25


# --- errors --------------------------------------------------------------------------


def _copy(tmp_path, name):
  dst = tmp_path / name
  shutil.copytree(os.path.join(TINY, name), dst)
  return dst


def _one_line(excinfo):
  assert "\n" not in str(excinfo.value)
  return str(excinfo.value)


def _rewrite_weights(folder, change):
  import safetensors.numpy
  path = folder / "diffusion_pytorch_model.safetensors"
  tensors = dict(safetensors.numpy.load_file(str(path)))
  change(tensors)
  safetensors.numpy.save_file(tensors, str(path))


def test_missing_weight_is_a_one_line_error(tmp_path):
  folder = _copy(tmp_path, "decoder")
  _rewrite_weights(folder, lambda t: t.pop("mid_block.attentions.0.add_k_proj.weight"))
  with pytest.raises(CheckpointError) as e:
    du.load_diffusers_folder(folder)
  assert "mid_block/attentions_0/add_k_proj/kernel" in _one_line(e)


def test_mismatched_weight_is_a_one_line_error(tmp_path):
  folder = _copy(tmp_path, "super_res_first")

  def change(t):
    t["conv_in.weight"] = np.zeros((16, 5, 3, 3), np.float16)
  _rewrite_weights(folder, change)
  with pytest.raises(CheckpointError) as e:
    du.load_diffusers_folder(folder)
  assert "conv_in.weight" in _one_line(e) and "(16, 5, 3, 3)" in str(e.value)


def test_unexpected_weight_is_a_one_line_error(tmp_path):
  folder = _copy(tmp_path, "text_proj")
  _rewrite_weights(folder, lambda t: t.update(extra=np.zeros(2, np.float16)))
  with pytest.raises(CheckpointError) as e:
    du.load_diffusers_folder(folder)
  assert "unexpected tensor extra" in _one_line(e)


def test_pickle_weights_are_refused(tmp_path):
  folder = _copy(tmp_path, "text_proj")
  os.remove(folder / "diffusion_pytorch_model.safetensors")
  (folder / "diffusion_pytorch_model.bin").write_bytes(b"not unpickled")
  with pytest.raises(CheckpointError) as e:
    du.load_diffusers_folder(folder)
  assert "safetensors" in _one_line(e) and "diffusion_pytorch_model.bin" in str(e.value)


def _config(name):
  with open(os.path.join(TINY, name, "config.json")) as f:
    return json.load(f)


@pytest.mark.parametrize("key,value", [
    ("down_block_types", ["CrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D"]),
    ("class_embed_type", "projection"),
    ("time_embedding_type", "fourier"),
    ("addition_embed_type", "text_time"),
    ("resnet_time_scale_shift", "spatial"),
    ("some_new_option", 1),
])
def test_unsupported_config_option_names_the_key(key, value):
  config = {**_config("decoder"), key: value}
  with pytest.raises(CheckpointError) as e:
    du.config_from_diffusers(config)
  assert key in _one_line(e)


def test_unet2d_attention_is_refused():
  with pytest.raises(CheckpointError) as e:
    du.config_from_diffusers({**_config("super_res_first"), "add_attention": True})
  assert "add_attention" in _one_line(e)

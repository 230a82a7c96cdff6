"""SAT (CogView2 CogLM) import: parity with SwissArmyTransformer, and one-line errors.

tests/golden/sat_coglm/ (2 layers, sandwich layer norms, inner_hidden_size 40, epsilon 1e-6)
and tests/golden/sat_pre/ (1 layer, "pre") are tiny random SAT models that
scripts/make_sat_golden.py built, saved and reloaded with SwissArmyTransformer 0.4.12 (torch
2.13.0+cpu) and converted with scripts/convert_sat_checkpoint.py; the .npz files hold SAT's
float32 logits for a causal mask and a per-example prefix-LM mask (GLM/CogLM style).
"""

import json
import os
import shutil

import numpy as np
import pytest

from jzoo.errors import UserError
from jzoo.models import cogview2_sat

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
ATOL = 1e-4


def _logits(module, params, tokens, **kw):
  return np.asarray(module.apply({"params": params}, tokens, **kw))


@pytest.mark.parametrize("name", ["sat_coglm", "sat_pre"])
def test_logits_match_sat(name):
  module, params = cogview2_sat.load_sat(os.path.join(GOLDEN, name))
  golden = np.load(os.path.join(GOLDEN, f"{name}_golden.npz"))
  for case in ("causal", "prefix"):
    tokens, positions = golden[f"{case}_tokens"], golden[f"{case}_position_ids"]
    want = golden[f"{case}_logits"]
    # SAT's own dense mask, and the same mask as the op's causal / prefix-LM one
    dense = _logits(module, params, tokens, position_ids=positions, mask=golden[f"{case}_mask"])
    np.testing.assert_allclose(dense, want, atol=ATOL, rtol=0, err_msg=f"{case}, dense mask")
    op = _logits(module, params, tokens, position_ids=positions,
                 prefix=golden[f"{case}_prefix"] if case == "prefix" else None)
    np.testing.assert_allclose(op, want, atol=ATOL, rtol=0, err_msg=f"{case}, op mask")
  # positions default to 0..N-1, the causal case's
  np.testing.assert_allclose(_logits(module, params, golden["causal_tokens"]),
                             golden["causal_logits"], atol=ATOL, rtol=0)


def _one_line_error(folder, *fragments):
  with pytest.raises(UserError) as info:
    cogview2_sat.load_sat(folder)
  message = str(info.value)
  assert "\n" not in message
  for fragment in fragments:
    assert fragment in message, message


def test_missing_weights_file(tmp_path):
  shutil.copy(os.path.join(GOLDEN, "sat_coglm", "config.json"), tmp_path)
  _one_line_error(tmp_path, "no model.safetensors", "convert_sat_checkpoint.py")


def test_unconverted_sat_folder(tmp_path):
  (tmp_path / "model_config.json").write_text("{}")
  _one_line_error(tmp_path, "unconverted SAT checkpoint", "convert_sat_checkpoint.py")


@pytest.mark.parametrize("key,value,fragment", [
    ("layernorm_order", "post", "layernorm_order 'post' is not supported"),
    ("is_rotary_emb", True, "is_rotary_emb=True is not supported"),
])
def test_unsupported_config(tmp_path, key, value, fragment):
  src = os.path.join(GOLDEN, "sat_coglm")
  shutil.copy(os.path.join(src, "model.safetensors"), tmp_path)
  with open(os.path.join(src, "config.json")) as f:
    config = json.load(f)
  (tmp_path / "config.json").write_text(json.dumps(dict(config, **{key: value})))
  _one_line_error(tmp_path, fragment)


def test_shape_mismatch(tmp_path):
  src = os.path.join(GOLDEN, "sat_coglm")
  shutil.copy(os.path.join(src, "model.safetensors"), tmp_path)
  with open(os.path.join(src, "config.json")) as f:
    config = json.load(f)
  (tmp_path / "config.json").write_text(json.dumps(dict(config, inner_hidden_size=64)))
  _one_line_error(tmp_path, "mlp/dense_", "the config needs")

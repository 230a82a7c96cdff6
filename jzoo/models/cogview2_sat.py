"""CogView2's released CogLM (a SwissArmyTransformer checkpoint) as a linen module.

CogView2's stage-1 model is SAT's BaseModel (class CachedAutoregressiveModel, whose mixin only
caches keys and values): learned 1D position embeddings added to the word embeddings, then per
layer, with CogView2's layernorm_order "sandwich",
    x = x + LN3(Attention(LN1(x), mask))
    x = x + LN4(MLP(LN2(x)))          MLP: dense_h_to_4h -> tanh GELU -> dense_4h_to_h
("pre" drops LN3 and LN4), a final LayerNorm, and logits against the word embedding itself
(tied: SAT's final_forward is F.linear(x, word_embeddings.weight), no bias). Attention scales
the queries by 1/sqrt(head_dim); SAT's mask is float, 1 = attend, and a masked score becomes
-10000 (here a finite -1e10 or the op's causal/prefix masks: the same softmax in float32).

The weights come from a folder that scripts/convert_sat_checkpoint.py wrote from SAT's own
(config.json: SAT's model_config.json; model.safetensors: this module's parameter names, SAT's
fused query_key_value split into query/key/value and each kernel in flax's [in, out] layout).
The module names its parameters after SAT's so the mapping is read off by eye.

CogView2 feeds CogLM a GLM-style prefix mask (caption and given image tokens see each other,
the generated ones are causal) and its own position ids (text from 0, image from 512); pass
them as `prefix` (or a dense `mask`) and `position_ids`. Its InferenceModel keeps only the
first 20000 logits (the image codes of icetk); slice the output for that.
"""

import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from jzoo.errors import CheckpointError
from jzoo.io.weight_files import checked_params, open_safetensors
from jzoo.nn import layers, patterns
from jzoo.nn.attention import OutProjection, dot_product_attention

LAYERNORM_ORDERS = ("sandwich", "pre")
# SAT arguments with a default this module implements, and nothing else (model_config.json
# records them only when they differ from SAT's default).
_SAT_DEFAULTS = {
    "is_decoder": False, "cross_attn_hidden_size": None, "use_bias": True, "use_qkv_bias": False,
    "num_multi_query_heads": 0, "row_parallel_linear_final_bias": True, "is_gated_mlp": False,
    "is_rotary_emb": False, "num_experts": 1, "use_final_layernorm": True,
    "model_parallel_size": 1,
}
# Fresh weights (checkpoints replace them): DenseGeneral initialises its kernel flat, [in, out].
_FAN_AVG = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
_FAN_AVG_OUT = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=(0, 1),
                                                out_axis=2)


def _layer_norm(epsilon, name):
  """SAT's LayerNorm (torch's: the two-pass variance) at the checkpoint's epsilon, a config
  value (jzoo.nn.layers.LayerNorm fixes it at 1e-5)."""
  part = lambda init: nn.with_logical_partitioning(init, ("norm",))
  return nn.LayerNorm(epsilon=epsilon, use_fast_variance=False, dtype=jnp.float32,
                      param_dtype=jnp.float32, scale_init=part(nn.initializers.ones),
                      bias_init=part(nn.initializers.zeros), name=name)


class SATAttention(nn.Module):
  """SAT's SelfAttention: query/key/value with biases (SAT fuses them; split on conversion)."""
  num_heads: int
  head_dim: int
  dtype: Any = jnp.float32
  impl: str = "auto"

  @nn.compact
  def __call__(self, x, mask=None, prefix=None):
    proj = lambda name: nn.DenseGeneral(
        (self.num_heads, self.head_dim), dtype=self.dtype, param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(_FAN_AVG, ("embed", "heads", "kv")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("heads", "kv")),
        name=name)(x)
    q, k, v = (nn.with_logical_constraint(proj(n), ("batch", "length", "heads", "kv"))
               for n in ("query", "key", "value"))
    if mask is not None:  # SAT's dense float mask: any pattern, 1 = attend
      y = dot_product_attention(q, k, v, jnp.asarray(mask) != 0)
    else:  # causal, or prefix-LM: the op's masks, so the fused kernels run on TPU/GPU
      y = patterns.attention(q, k, v, patterns.Full(causal=True), prefix=prefix, impl=self.impl)
    return OutProjection(x.shape[-1], self.dtype, kernel_init=_FAN_AVG_OUT, name="dense")(y)


class SATMLP(nn.Module):
  """SAT's MLP: dense_h_to_4h -> tanh GELU (SAT's gelu) -> dense_4h_to_h."""
  inner_hidden_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = layers.dense(self.inner_hidden_size, ("embed", "mlp"), dtype=self.dtype,
                     name="dense_h_to_4h")(x)
    h = nn.with_logical_constraint(jax.nn.gelu(h, approximate=True), ("batch", "length", "mlp"))
    return layers.dense(x.shape[-1], ("mlp", "embed"), dtype=self.dtype, name="dense_4h_to_h")(h)


class SATLayer(nn.Module):
  """SAT's BaseTransformerLayer in the "sandwich" or "pre" layernorm order."""
  num_heads: int
  head_dim: int
  inner_hidden_size: int
  layernorm_order: str = "sandwich"
  epsilon: float = 1e-5
  dtype: Any = jnp.float32
  impl: str = "auto"

  @nn.compact
  def __call__(self, x, mask=None, prefix=None):
    norm = lambda name, h: _layer_norm(self.epsilon, name)(h).astype(self.dtype)
    # "sandwich" (CogView's): a norm on each branch's output too, which keeps deep fp16 stable
    out = norm if self.layernorm_order == "sandwich" else lambda name, h: h
    h = SATAttention(self.num_heads, self.head_dim, self.dtype, self.impl, name="attention")(
        norm("input_layernorm", x), mask, prefix)
    x = x + out("third_layernorm", h)
    h = SATMLP(self.inner_hidden_size, self.dtype, name="mlp")(norm("post_attention_layernorm", x))
    x = x + out("fourth_layernorm", h)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class SATTransformer(nn.Module):
  """SAT's BaseModel forward: tokens [B, N], position_ids [B, N] (default 0..N-1) and an
  attention mask -> float32 logits [B, N, vocab_size].

  The mask is one of: `mask`, SAT's dense [B or 1, 1, N, N] (nonzero = attend); `prefix`, int
  [B] or a scalar, the prefix-LM mask CogLM runs (the first `prefix` positions see each other,
  the rest are causal); neither: causal. (SAT's own default, no mask, is full attention: pass
  a mask of ones for that.)"""
  num_layers: int
  hidden_size: int
  num_heads: int
  head_dim: int
  inner_hidden_size: int
  vocab_size: int
  max_sequence_length: int
  layernorm_order: str = "sandwich"
  epsilon: float = 1e-5
  dtype: Any = jnp.float32
  impl: str = "auto"

  @nn.compact
  def __call__(self, tokens, position_ids=None, mask=None, prefix=None):
    if mask is not None and prefix is not None:
      raise ValueError("pass a dense mask or a prefix, not both")
    if position_ids is None:
      position_ids = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    words = layers.Embed(self.vocab_size, self.hidden_size, dtype=self.dtype,
                         name="word_embeddings")
    positions = layers.Embed(
        self.max_sequence_length, self.hidden_size, dtype=self.dtype,
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                    (None, "embed")),
        name="position_embeddings")
    x = words(tokens) + positions(position_ids)
    for i in range(self.num_layers):
      x = SATLayer(self.num_heads, self.head_dim, self.inner_hidden_size, self.layernorm_order,
                   self.epsilon, self.dtype, self.impl, name=f"layers_{i}")(x, mask, prefix)
    x = _layer_norm(self.epsilon, "final_layernorm")(x)
    # tied: SAT's final_forward is F.linear(x, word_embeddings.weight)
    return jnp.einsum("bne,ve->bnv", x, words.embedding.astype(jnp.float32))


def from_sat_config(config, *, dtype=jnp.float32, impl="auto", source="config.json"):
  """The SATTransformer of SAT's model arguments (model_config.json); a CheckpointError names
  the first one it does not implement."""
  order = config.get("layernorm_order", "pre")
  if order not in LAYERNORM_ORDERS:
    raise CheckpointError(f"{source}: layernorm_order {order!r} is not supported; jzoo reads "
                          f"SAT models with {' or '.join(map(repr, LAYERNORM_ORDERS))}")
  for key, default in _SAT_DEFAULTS.items():
    if config.get(key, default) != default:
      raise CheckpointError(f"{source}: {key}={config[key]!r} is not supported; jzoo reads "
                            f"SAT BaseModels with {key}={default!r}")
  try:
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    head_dim = config.get("hidden_size_per_attention_head") or hidden // heads
    return SATTransformer(
        num_layers=int(config["num_layers"]), hidden_size=hidden, num_heads=heads,
        head_dim=int(head_dim), inner_hidden_size=int(config.get("inner_hidden_size")
                                                      or 4 * hidden),
        vocab_size=int(config["vocab_size"]),
        max_sequence_length=int(config["max_sequence_length"]), layernorm_order=order,
        epsilon=float(config.get("layernorm_epsilon", 1e-5)), dtype=dtype, impl=impl)
  except KeyError as e:
    raise CheckpointError(f"{source}: no {e.args[0]!r}; it must hold SAT's model arguments "
                          "(convert the checkpoint with scripts/convert_sat_checkpoint.py)") from None


def param_shapes(module):
  """Flat {path tuple: shape} of the module's parameters (abstract, no memory)."""
  tokens = jnp.zeros((1, 1), jnp.int32)
  tree = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), tokens))
  return {k: tuple(v.shape)
          for k, v in traverse_util.flatten_dict(nn.unbox(tree["params"])).items()}


def load_sat(folder, *, dtype=jnp.float32, impl="auto"):
  """(SATTransformer, params) from a folder that scripts/convert_sat_checkpoint.py wrote
  (config.json + model.safetensors); run it as `module.apply({"params": params}, tokens, ...)`.
  Parameters are float32 whatever the file holds; `dtype` is the compute dtype."""
  folder = os.fspath(folder)
  convert = ("convert the SAT checkpoint first: python scripts/convert_sat_checkpoint.py "
             "SAT_FOLDER OUT_FOLDER, in an environment with torch")
  if not os.path.isdir(folder):
    raise CheckpointError(f"{folder}: no such folder; {convert}")
  names = ("config.json", "model.safetensors")
  absent = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
  if absent:
    raw = os.path.isfile(os.path.join(folder, "model_config.json"))
    raise CheckpointError(f"{folder}: {'an unconverted SAT checkpoint' if raw else 'no ' + absent[0]}"
                          f"; {convert}")
  config_path = os.path.join(folder, "config.json")
  try:
    with open(config_path) as f:
      config = json.load(f)
  except ValueError as e:
    raise CheckpointError(f"{config_path}: not JSON ({e}); {convert}") from None
  module = from_sat_config(config, dtype=dtype, impl=impl, source=config_path)
  tensors, _, source = open_safetensors(folder)
  params = checked_params(
      tensors, lambda k: tensors[k].get(k), param_shapes(module),
      lambda key, expected: tuple(key.split("/")), lambda path, array: array, source,
      unexpected="not a SATTransformer parameter: convert with scripts/convert_sat_checkpoint.py",
      missing=("SATTransformer parameter", "convert the whole SAT checkpoint"))
  return module, params

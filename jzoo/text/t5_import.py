"""Import of public T5 encoder weights into jzoo's (t5x-named) parameter tree.

Two sources, both read from local files (nothing is downloaded):

* Hugging Face `model.safetensors` (single file or sharded with
  `model.safetensors.index.json`) of `T5EncoderModel` or
  `T5ForConditionalGeneration`; the decoder and `lm_head` are skipped.
* t5x checkpoints: orbax PyTree checkpoints (`_METADATA` in the directory) and
  t5x's own msgpack + TensorStore format (a `checkpoint` file). Only
  `target/token_embedder` and `target/encoder` are read. The msgpack reader
  follows t5x's checkpoints.py (relative zarr kvstore paths, `optimizer/target`);
  it is tested on a checkpoint written the same way here, not on one that t5x
  itself wrote.

Both return float32 numpy arrays in the tree that `T5Encoder.init` makes
(unboxed: wrap with `{"params": params}` to apply). Problems are
`CheckpointError`s naming the tensor and the file.
"""

import json
import os
import re
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
import flax.linen as nn

from jzoo.errors import CheckpointError
from jzoo.io.weight_files import open_safetensors
from jzoo.text.t5 import T5Config, T5Encoder

# ----------------------------------------------------------------------------
# Shared: the expected tree and its check.


def param_shapes(config: T5Config) -> dict:
  """Flat {path tuple: shape} of the encoder's parameters (abstract, no memory)."""
  tree = jax.eval_shape(lambda: T5Encoder(config).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), jnp.int32)))
  flat = traverse_util.flatten_dict(nn.unbox(tree)["params"])
  return {k: tuple(v.shape) for k, v in flat.items()}


def check_params(config: T5Config, params: Any, source: str) -> None:
  """Raises CheckpointError unless `params` has exactly the encoder's keys and shapes."""
  expected = param_shapes(config)
  flat = traverse_util.flatten_dict(params)
  for k in sorted(expected):
    if k not in flat:
      raise CheckpointError(f"{source}: missing T5 parameter {'/'.join(k)}")
  for k in sorted(flat):
    if k not in expected:
      raise CheckpointError(f"{source}: unexpected T5 parameter {'/'.join(k)}")
    if tuple(np.shape(flat[k])) != expected[k]:
      raise CheckpointError(
          f"{source}: T5 parameter {'/'.join(k)} has shape {tuple(np.shape(flat[k]))}, "
          f"expected {expected[k]}")


def config_from_params(params: Any, **overrides) -> T5Config:
  """Infers a T5Config from a jzoo/t5x parameter tree's shapes.

  The bucket count and head count come from `relpos_bias/rel_embedding`;
  `relative_attention_max_distance` and `layer_norm_epsilon` cannot be seen
  in shapes and take T5's defaults (128, 1e-6) unless given in `overrides`.
  """
  try:
    enc = params["encoder"]
    vocab, d_model = np.shape(params["token_embedder"]["embedding"])
    heads, buckets = np.shape(enc["relpos_bias"]["rel_embedding"])
    num_layers = len([k for k in enc if re.fullmatch(r"layers_\d+", k)])
    layer = enc["layers_0"]
    q = np.shape(layer["attention"]["query"]["kernel"])
    d_kv = q[-1] if len(q) == 3 else q[-1] // heads
    mlp = layer["mlp"]
    gated = "wi_0" in mlp
    d_ff = np.shape(mlp["wi_0" if gated else "wi"]["kernel"])[-1]
  except (KeyError, TypeError, ValueError) as e:
    raise CheckpointError(f"not a T5 encoder parameter tree: missing {e}") from e
  kw = dict(vocab_size=int(vocab), d_model=int(d_model), d_kv=int(d_kv), d_ff=int(d_ff),
            num_heads=int(heads), num_layers=num_layers,
            relative_attention_num_buckets=int(buckets),
            feed_forward="gated-gelu" if gated else "relu")
  kw.update(overrides)
  return T5Config(**kw)


# ----------------------------------------------------------------------------
# Hugging Face safetensors.

def _config_from_hf_json(path) -> T5Config:
  try:
    with open(path) as f:
      hf = json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{path}: cannot read config.json ({e})") from e
  proj = hf.get("feed_forward_proj", "relu")  # absent in the original T5 configs
  if proj not in ("gated-gelu", "relu"):
    raise CheckpointError(
        f"{path}: feed_forward_proj={proj!r} is not supported (gated-gelu or relu)")
  try:
    return T5Config(
        vocab_size=int(hf["vocab_size"]), d_model=int(hf["d_model"]), d_kv=int(hf["d_kv"]),
        d_ff=int(hf["d_ff"]), num_heads=int(hf["num_heads"]),
        num_layers=int(hf["num_layers"]),
        relative_attention_num_buckets=int(hf.get("relative_attention_num_buckets", 32)),
        relative_attention_max_distance=int(hf.get("relative_attention_max_distance", 128)),
        feed_forward=proj, layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-6)),
        dropout_rate=0.0)  # a frozen encoder; set dropout explicitly to fine-tune
  except KeyError as e:
    raise CheckpointError(f"{path}: config.json lacks {e}") from e


def _embedding_key(tensors):
  for key in ("encoder.embed_tokens.weight", "shared.weight"):
    if key in tensors:
      return key
  return None


def _infer_hf_config(tensors, source) -> T5Config:
  emb = _embedding_key(tensors)
  rel = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
  q = "encoder.block.0.layer.0.SelfAttention.q.weight"
  for key in (emb or "shared.weight", rel, q):
    if key not in tensors:
      raise CheckpointError(f"{source}: missing tensor {key} (is this a T5 checkpoint?)")
  vocab, d_model = tensors[emb].shape(emb)
  buckets, heads = tensors[rel].shape(rel)
  inner = tensors[q].shape(q)[0]
  layers = {int(m.group(1)) for k in tensors
            if (m := re.match(r"encoder\.block\.(\d+)\.", k))}
  gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in tensors
  wi = "encoder.block.0.layer.1.DenseReluDense." + ("wi_0" if gated else "wi") + ".weight"
  if wi not in tensors:
    raise CheckpointError(f"{source}: missing tensor {wi}")
  return T5Config(vocab_size=vocab, d_model=d_model, d_kv=inner // heads,
                  d_ff=tensors[wi].shape(wi)[0], num_heads=heads, num_layers=max(layers) + 1,
                  relative_attention_num_buckets=buckets,
                  feed_forward="gated-gelu" if gated else "relu")


def _hf_mapping(c: T5Config, emb_key):
  """[(hf key, jzoo path, hf shape, transform)] for every encoder tensor."""
  inner = c.num_heads * c.d_kv
  qkv = lambda w: w.T.reshape(c.d_model, c.num_heads, c.d_kv)  # torch Linear is [out, in]
  out = lambda w: w.T.reshape(c.num_heads, c.d_kv, c.d_model)
  t = lambda w: w.T
  same = lambda w: w
  m = [(emb_key, ("token_embedder", "embedding"), (c.vocab_size, c.d_model), same),
       ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        ("encoder", "relpos_bias", "rel_embedding"),
        (c.relative_attention_num_buckets, c.num_heads), t),
       ("encoder.final_layer_norm.weight", ("encoder", "encoder_norm", "scale"),
        (c.d_model,), same)]
  for i in range(c.num_layers):
    b, lyr = f"encoder.block.{i}.layer", ("encoder", f"layers_{i}")
    for hf, name in (("q", "query"), ("k", "key"), ("v", "value")):
      m.append((f"{b}.0.SelfAttention.{hf}.weight", lyr + ("attention", name, "kernel"),
                (inner, c.d_model), qkv))
    m.append((f"{b}.0.SelfAttention.o.weight", lyr + ("attention", "out", "kernel"),
              (c.d_model, inner), out))
    m.append((f"{b}.0.layer_norm.weight", lyr + ("pre_attention_layer_norm", "scale"),
              (c.d_model,), same))
    wis = ("wi_0", "wi_1") if c.feed_forward == "gated-gelu" else ("wi",)
    for wi in wis:
      m.append((f"{b}.1.DenseReluDense.{wi}.weight", lyr + ("mlp", wi, "kernel"),
                (c.d_ff, c.d_model), t))
    m.append((f"{b}.1.DenseReluDense.wo.weight", lyr + ("mlp", "wo", "kernel"),
              (c.d_model, c.d_ff), t))
    m.append((f"{b}.1.layer_norm.weight", lyr + ("pre_mlp_layer_norm", "scale"),
              (c.d_model,), same))
  return m


# Tensors of a T5ForConditionalGeneration that the encoder does not use.
_SKIPPED = re.compile(r"^(decoder\.|lm_head\.|shared\.weight$|encoder\.embed_tokens\.weight$)")


def load_hf_safetensors(path_or_dir, config: Optional[T5Config] = None):
  """Loads the encoder of a Hugging Face T5 checkpoint. Returns (T5Config, params).

  `path_or_dir`: a directory holding `model.safetensors` or
  `model.safetensors.index.json` (+ shards), or one of those files. The
  config is, in order: `config` if given, `config.json` beside the weights,
  or inferred from tensor shapes (max_distance 128 and epsilon 1e-6 assumed).
  Weights come back as float32 numpy arrays whatever their stored dtype.
  """
  tensors, directory, source = open_safetensors(path_or_dir)
  if config is None:
    config_json = os.path.join(directory, "config.json")
    if os.path.exists(config_json):
      config = _config_from_hf_json(config_json)
    else:
      config = _infer_hf_config(tensors, source)
  emb = _embedding_key(tensors)
  if emb is None:
    raise CheckpointError(f"{source}: missing tensor shared.weight (or encoder.embed_tokens.weight)")
  mapping = _hf_mapping(config, emb)
  flat = {}
  for key, path, shape, transform in mapping:
    if key not in tensors:
      raise CheckpointError(f"{source}: missing tensor {key}")
    got = tensors[key].shape(key)
    if got != shape:
      raise CheckpointError(f"{source}: tensor {key} has shape {got}, expected {shape}")
    flat[path] = transform(tensors[key].get(key))
  used = {key for key, *_ in mapping}
  for key in sorted(tensors):
    if key not in used and not _SKIPPED.match(key):
      raise CheckpointError(f"{source}: unexpected tensor {key} for a T5 encoder of "
                            f"{config.num_layers} layers")
  params = traverse_util.unflatten_dict(flat)
  check_params(config, params, source)
  return config, params


# ----------------------------------------------------------------------------
# t5x checkpoints.


def _t5x_to_jzoo(target, config, source):
  """Takes token_embedder + encoder from a t5x `target` tree; un-joins 2-D attention kernels."""
  try:
    tree = {"token_embedder": target["token_embedder"], "encoder": target["encoder"]}
  except (KeyError, TypeError) as e:
    raise CheckpointError(f"{source}: no target/{e.args[0]} in this t5x checkpoint") from e
  flat = {k: np.asarray(v, dtype=np.float32)
          for k, v in traverse_util.flatten_dict(tree).items()}
  if config is None:
    config = config_from_params(traverse_util.unflatten_dict(flat))
  h, d, e = config.num_heads, config.d_kv, config.d_model
  for k, v in flat.items():
    if k[-3:-1] in (("attention", "query"), ("attention", "key"), ("attention", "value")):
      if v.ndim == 2 and v.shape == (e, h * d):
        flat[k] = v.reshape(e, h, d)
    elif k[-3:-1] == ("attention", "out") and v.ndim == 2 and v.shape == (h * d, e):
      flat[k] = v.reshape(h, d, e)
  params = traverse_util.unflatten_dict(flat)
  check_params(config, params, source)
  return params


def _find_target(tree):
  """The parameter subtree: `target` (t5x), `optimizer/target` (msgpack t5x), `params`, or root."""
  for path in (("target",), ("optimizer", "target"), ("params",), ("params", "params"), ()):
    node = tree
    for p in path:
      node = node.get(p) if isinstance(node, dict) else None
    if isinstance(node, dict) and "encoder" in node:
      return path, node
  return None, None


def _restore_orbax(path):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  ckptr = ocp.PyTreeCheckpointer()
  try:
    meta = ckptr.metadata(path)
    meta = getattr(getattr(meta, "item_metadata", meta), "tree", meta)
  except Exception as e:  # orbax raises several types for unreadable metadata
    raise CheckpointError(f"{path}: not a readable orbax checkpoint ({e})") from e
  prefix, target = _find_target(meta)
  if target is None:
    raise CheckpointError(f"{path}: no T5 encoder (target/encoder) in this checkpoint")
  sub = {k: target[k] for k in ("token_embedder", "encoder") if k in target}
  for p in reversed(prefix):
    sub = {p: sub}
  restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), sub)
  try:
    tree = ckptr.restore(path, args=ocp.args.PyTreeRestore(
        item=sub, restore_args=restore_args, partial_restore=True))
  except Exception as e:
    raise CheckpointError(f"{path}: cannot restore the T5 encoder ({e})") from e
  for p in prefix:
    tree = tree[p]
  return tree


def _restore_t5x_msgpack(path):
  """t5x's native format: a msgpack `checkpoint` file whose large leaves are TensorStore specs."""
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  from flax import serialization  # pylint: disable=g-import-not-at-top
  ckpt = os.path.join(path, "checkpoint")
  try:
    with open(ckpt, "rb") as f:
      tree = serialization.msgpack_restore(f.read())
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{ckpt}: not a readable t5x checkpoint ({e})") from e
  _, target = _find_target(tree)
  if target is None:
    raise CheckpointError(f"{ckpt}: no T5 encoder (target/encoder) in this checkpoint")

  def is_spec(x):
    return isinstance(x, dict) and "kvstore" in x and "driver" in x

  def read(leaf):
    if not is_spec(leaf):
      return np.asarray(leaf)
    # Paths are relative to the checkpoint directory (t5x writes them so); specs written
    # to gcs/gfile (a dummy bucket) are read from the local copy of the directory.
    spec = dict(leaf)
    rel = leaf["kvstore"].get("path") or spec.get("path", "")
    spec.pop("path", None)
    spec["kvstore"] = {"driver": "file", "path": os.path.join(path, rel.lstrip("/"))}
    try:
      return ts.open(spec, open=True, read=True).result().read().result()
    except Exception as e:
      raise CheckpointError(f"{path}: cannot read TensorStore array "
                            f"{leaf['kvstore'].get('path')} ({e})") from e

  sub = {k: target[k] for k in ("token_embedder", "encoder") if k in target}
  return jax.tree_util.tree_map(read, sub, is_leaf=is_spec)


def load_t5x_checkpoint(path, config: Optional[T5Config] = None):
  """Loads the T5 encoder from a t5x checkpoint directory. Returns params.

  `path` is one step's directory (e.g. `checkpoint_1000000`): an orbax
  PyTree checkpoint (has `_METADATA`) or t5x's msgpack format (has a
  `checkpoint` file). Attention kernels stored joined ([embed, heads*kv], as
  t5x's DenseGeneral does) are reshaped to jzoo's 3-D layout. Without
  `config`, shapes determine it (`config_from_params`).
  """
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise CheckpointError(f"{path}: no such checkpoint directory")
  if os.path.exists(os.path.join(path, "checkpoint")):
    target = _restore_t5x_msgpack(path)
  else:
    target = _restore_orbax(path)
  return _t5x_to_jzoo(target, config, path)

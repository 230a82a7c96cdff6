"""Parameter trees as safetensors files (flat "a/b/c" keys) — the format of bundled weights. No pickle."""

import numpy as np
from safetensors.numpy import load_file, save_file

from jzoo.errors import CheckpointError

SEP = "/"


def flatten(tree, prefix=""):
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{SEP}{key}" if prefix else str(key)
    if isinstance(value, dict):
      flat.update(flatten(value, name))
    else:
      flat[name] = np.asarray(value, order="C")  # not ascontiguousarray: it makes scalars 1-d
  return flat


def unflatten(flat):
  tree = {}
  for name, value in flat.items():
    node = tree
    *parents, leaf = name.split(SEP)
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def save_tree(path, tree, dtype=None):
  """`dtype` (e.g. np.float16) stores floating-point leaves at lower precision, to ship small files."""
  flat = flatten(tree)
  if dtype is not None:
    flat = {k: v.astype(dtype) if np.issubdtype(v.dtype, np.floating) else v for k, v in flat.items()}
  save_file(flat, path)


def load_tree(path, dtype=np.float32):
  """Floating-point leaves come back as `dtype` (parameters are float32 in jzoo)."""
  try:
    flat = load_file(path)
    return unflatten({k: v.astype(dtype) if np.issubdtype(v.dtype, np.floating) else v
                      for k, v in flat.items()})
  except FileNotFoundError:
    raise CheckpointError(f"weights file {path} does not exist") from None
  except Exception as e:
    raise CheckpointError(f"weights file {path} is corrupt or not safetensors: {e}") from None

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
      flat[name] = np.ascontiguousarray(np.asarray(value))
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


def save_tree(path, tree):
  save_file(flatten(tree), path)


def load_tree(path):
  try:
    return unflatten(load_file(path))
  except FileNotFoundError:
    raise CheckpointError(f"weights file {path} does not exist") from None
  except Exception as e:
    raise CheckpointError(f"weights file {path} is corrupt or not safetensors: {e}") from None

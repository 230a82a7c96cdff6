"""A stage's parameters without training: their shapes (built abstractly, nothing allocated),
fresh random values (smoke tests), and counts."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def abstract_params(model, stage, rng=None):
  """ShapeDtypeStructs of a stage's parameters, built without allocating anything."""
  batch = abstract_batch(model, stage)
  rng = jax.random.PRNGKey(0) if rng is None else rng
  variables = jax.eval_shape(lambda r, b: model.init(stage, r, b), rng, batch)
  return nn.unbox(variables["params"])


def abstract_batch(model, stage, batch_size=1):
  spec = model.data_spec(stage)
  if spec.codes:  # a frozen tokenizer's cached codes instead of pixels
    pixels = ("codes", (batch_size, *spec.codes), np.int32)
  elif spec.frames:
    pixels = ("video", (batch_size, spec.frames, spec.resolution, spec.resolution, 3), np.float32)
  else:
    pixels = ("image", (batch_size, spec.resolution, spec.resolution, 3), np.float32)
  if spec.text_width:
    text = ("text", jax.ShapeDtypeStruct((batch_size, spec.text_length, spec.text_width), np.float32))
  else:
    text = ("tokens", jax.ShapeDtypeStruct((batch_size, spec.text_length), np.int32))
  return {
      pixels[0]: jax.ShapeDtypeStruct(pixels[1], pixels[2]),
      text[0]: text[1],
      "mask": jax.ShapeDtypeStruct((batch_size, spec.text_length), np.int32),
  }


def random_params(model, stage, rng):
  """Freshly initialised parameters of a stage (smoke tests; no training)."""
  return _jitted_init()(model, stage, rng)


@functools.lru_cache(maxsize=None)
def _jitted_init():
  def init(model, stage, rng):
    batch = {k: jnp.zeros(v.shape, v.dtype) for k, v in abstract_batch(model, stage).items()}
    return nn.unbox(model.init(stage, rng, batch)["params"])

  return jax.jit(init, static_argnums=(0, 1))


def count_params(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))

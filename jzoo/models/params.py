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
  """ShapeDtypeStructs of one batch of `stage` (DataSpec.batch_shapes: pixels, tokens and mask,
  and the arrays its frozen-output cache inputs carry)."""
  shapes = model.data_spec(stage).batch_shapes(batch_size)
  return {key: jax.ShapeDtypeStruct(shape, dtype) for key, (shape, dtype) in shapes.items()}


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

"""The token models' training loss: cross-entropy over the positions that are predicted."""

import jax.numpy as jnp
import optax


def masked_cross_entropy(logits, targets, weights):
  """logits [..., V], targets int [...], weights [...] (1 where a position is predicted) ->
  (mean cross-entropy over the weighted positions, argmax accuracy over them), float32."""
  logits = logits.astype(jnp.float32)
  weights = weights.astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  n = jnp.maximum(jnp.sum(weights), 1.0)
  accuracy = jnp.sum((jnp.argmax(logits, -1) == targets) * weights) / n
  return jnp.sum(ce * weights) / n, accuracy

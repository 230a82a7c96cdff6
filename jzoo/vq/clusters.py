"""Code clusters: CogView2's cluster sampling (section 4.3: "top-k within code clusters").

Image tokens that look alike (nearby codebook vectors) split a caption's probability between
them, so plain top-k over single codes keeps a few near-duplicates of one look and cuts off the
others. CogView2 clusters the codebook and samples top-k over clusters instead. Here:
  labels = kmeans_labels(codebook, k)                 # int32 [V]: each code's cluster
  logits = top_clusters_filter(logits, labels, k, n)  # codes outside the n likeliest clusters
                                                      # -inf (a cluster's score: the logsumexp
                                                      # of its codes' logits)
k-means is deterministic (initial centres: codes at evenly spaced indices; Lloyd iterations),
so the same tokenizer weights give the same clusters on every machine.
"""

import jax
import jax.numpy as jnp

from jzoo.sampling import logits as logits_lib


def kmeans_labels(vectors, k, iterations=25):
  """vectors float [V, D] -> int32 [V]: the cluster of each row after Lloyd's k-means."""
  vectors = jnp.asarray(vectors, jnp.float32)
  v = vectors.shape[0]
  if not 1 <= k <= v:
    raise ValueError(f"kmeans_labels: 1 <= k <= {v} clusters, got {k}")
  centres = vectors[(jnp.arange(k) * v) // k]

  def assign(centres):
    d = (jnp.sum(vectors ** 2, 1)[:, None] - 2 * vectors @ centres.T
         + jnp.sum(centres ** 2, 1)[None, :])
    return jnp.argmin(d, axis=1).astype(jnp.int32)

  def step(_, centres):
    one_hot = jax.nn.one_hot(assign(centres), k, dtype=jnp.float32)
    counts = jnp.sum(one_hot, 0)
    sums = one_hot.T @ vectors
    return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None], centres)

  return assign(jax.lax.fori_loop(0, iterations, step, centres))


def top_clusters_filter(logits, labels, num_clusters, top):
  """logits [..., V] with every code outside the `top` likeliest clusters set to -inf (traced
  `top`; <= 0 or >= num_clusters: unchanged)."""
  logits = logits.astype(jnp.float32)
  one_hot = jax.nn.one_hot(labels, num_clusters, dtype=jnp.float32)  # [V, C]
  peak = jnp.max(logits, axis=-1, keepdims=True)
  scores = jnp.log(jnp.exp(logits - peak) @ one_hot + 1e-30) + peak  # [..., C]
  kept = logits_lib.top_k_filter(scores, top) > -jnp.inf  # [..., C]
  return jnp.where(jnp.take(kept, labels, axis=-1), logits, -jnp.inf)

"""A factorized, l2-normalised vector quantizer (ViT-VQGAN, Yu et al. 2021; used by Phenaki).

Why factorized: looking codes up in the model width E (512 and more) leaves
most of a large codebook unused. The input is projected down to a small
`code_dim` (32 in ViT-VQGAN and Phenaki) for the nearest-neighbour lookup and
the chosen code is projected back up to E, which raises codebook usage.

Why l2-normalised: with inputs and codes on the unit sphere, the squared
Euclidean distance is 2 - 2 cos, so the lookup compares directions only;
training is more stable and codes do not drift to large norms.

Gradients reach the encoder through the straight-through estimator (the
quantized vector in the forward pass, the identity in the backward pass); the
codebook and the encoder are pulled together by the VQ-VAE loss
    ||sg(z) - e||^2 + commitment * ||z - sg(e)||^2,
computed on the low-dimensional (normalised) vectors in float32.

With `ema_decay > 0` the codebook is instead an exponential moving average of
the vectors assigned to each code (van den Oord et al. 2017, appendix A.1;
VQ-VAE-2): per code a count N_k and a sum m_k of its vectors,
    N_k <- d N_k + (1 - d) n_k,   m_k <- d m_k + (1 - d) sum of the batch's vectors of code k,
and code k is m_k / N_k (N Laplace-smoothed so unused codes stay finite). The
loss keeps only the commitment term. The new N and m are computed in the
forward pass from the batch and returned in `aux["state"]`; the trainer writes
them over the parameters after the optimizer step (they get no gradient).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jzoo.nn import layers


def l2_normalize(x, eps=1e-12):
  """x / ||x|| over the last axis (zero vectors stay finite)."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


def squared_distances(a, b):
  """||a_i - b_j||^2 for a [N, D], b [K, D] -> float32 [N, K].

  The expanded form ||a||^2 - 2 a.b + ||b||^2 needs O(N K) memory, where the
  broadcast difference would need O(N K D)."""
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  return (jnp.sum(a * a, axis=-1)[:, None] - 2.0 * (a @ b.T) + jnp.sum(b * b, axis=-1)[None, :])


class VectorQuantizer(nn.Module):
  """z [..., E] -> (z_q [..., E], codes int32 [...], aux) with a `codebook_size` x `code_dim` book.

  E is the field `features`. `aux` holds float32 scalars: `vq_loss` (to add to
  the training loss), `codebook_usage` (fraction of the codebook used in this
  batch) and `perplexity` (exp of the entropy of the batch's code histogram; at
  most `codebook_size`, reached when every code is used equally often)."""
  codebook_size: int
  code_dim: int
  features: int  # E: the width of the inputs and outputs (`decode_codes` has no input to read it)
  l2_normalize: bool = True
  commitment: float = 0.25
  ema_decay: float = 0.0  # > 0: an EMA codebook (see the module docstring) instead of gradients
  ema_epsilon: float = 1e-5  # Laplace smoothing of the EMA counts
  dtype: Any = jnp.float32

  def setup(self):
    init = nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", None))
    shape = (self.codebook_size, self.code_dim)
    if self.ema_decay > 0:
      count_init = nn.with_logical_partitioning(nn.initializers.ones, ("vocab",))
      self.ema_count = self.param("ema_count", count_init, (self.codebook_size,), jnp.float32)
      self.ema_sum = self.param("ema_sum", init, shape, jnp.float32)
    else:
      self.codebook = self.param("codebook", init, shape, jnp.float32)
    self.project_in = layers.dense(self.code_dim, ("embed", None), dtype=self.dtype,
                                   name="project_in")
    self.project_out = layers.dense(self.features, (None, "embed"), dtype=self.dtype,
                                    name="project_out")

  def codes_table(self):
    """The codebook as the lookup sees it (normalised when `l2_normalize`), float32 [K, D]."""
    if self.ema_decay > 0:
      count = jnp.asarray(self.ema_count, jnp.float32)
      n, k = jnp.sum(count), self.codebook_size
      smoothed = (count + self.ema_epsilon) / (n + k * self.ema_epsilon) * n
      book = jax.lax.stop_gradient(jnp.asarray(self.ema_sum, jnp.float32) / smoothed[:, None])
    else:
      book = jnp.asarray(self.codebook, jnp.float32)
    return l2_normalize(book) if self.l2_normalize else book

  def __call__(self, z):
    if z.shape[-1] != self.features:
      raise ValueError(f"the quantizer was built for width {self.features}, got {z.shape[-1]}")
    z_e = self.project_in(z).astype(jnp.float32)
    if self.l2_normalize:
      z_e = l2_normalize(z_e)
    book = self.codes_table()
    flat = z_e.reshape(-1, self.code_dim)
    codes = jnp.argmin(squared_distances(flat, book), axis=-1).astype(jnp.int32)
    z_q = jnp.take(book, codes, axis=0).reshape(z_e.shape)

    sg = jax.lax.stop_gradient
    codebook_loss = jnp.mean(jnp.square(sg(z_e) - z_q))
    commit_loss = jnp.mean(jnp.square(z_e - sg(z_q)))
    # Straight-through: the value is exactly z_q (z_e - sg(z_e) is exactly 0), the gradient w.r.t.
    # z_e is the identity. Written this way (not z_e + sg(z_q - z_e)) so that `decode_codes` gives
    # bit-identical outputs for the same codes.
    z_st = z_q + (z_e - sg(z_e))

    counts = jnp.zeros((self.codebook_size,), jnp.float32).at[codes].add(1.0)
    probs = counts / codes.size
    aux = dict(
        vq_loss=codebook_loss + self.commitment * commit_loss,
        codebook_usage=jnp.mean((counts > 0).astype(jnp.float32)),
        perplexity=jnp.exp(-jnp.sum(jax.scipy.special.xlogy(probs, probs))),
    )
    if self.ema_decay > 0:  # the codebook follows its vectors; no codebook loss
      aux["vq_loss"] = self.commitment * commit_loss
      d = self.ema_decay
      sums = jnp.zeros(self.ema_sum.shape, jnp.float32).at[codes].add(sg(flat))
      aux["state"] = {"ema_count": d * self.ema_count + (1.0 - d) * counts,
                      "ema_sum": d * self.ema_sum + (1.0 - d) * sums}
    return self.project_out(z_st), codes.reshape(z.shape[:-1]), aux

  def decode_codes(self, codes):
    """codes int32 [...] -> z_q [..., E]: `__call__`'s lookup and up-projection (generation)."""
    z_q = jnp.take(self.codes_table(), codes.astype(jnp.int32), axis=0)
    return self.project_out(z_q)

"""Masked visual token modelling (MaskGIT, Chang et al. 2022), as used by Phenaki.

Training: a fraction γ(r) = cos(π/2 · r), r ~ U(0, 1), of the tokens that are
not given is replaced by a [MASK] id and the transformer predicts them (the
cosine schedule masks many tokens most of the time, which is what decoding
from an all-masked canvas needs).

Decoding, S steps: every masked position draws a token from the (guided)
logits; the draws are ranked by their confidence (log-probability plus
Gumbel noise annealed to zero over the steps) and the n(s) = ⌊N · γ((s+1)/S)⌋
least confident are masked again; n(S-1) = 0, so every token is fixed after
the last step. Given tokens (a first frame, the end of the previous story
segment) are never masked. The loop is a `lax.fori_loop` over a traced step
count: changing the steps, the guidance or the seed does not recompile.
"""

import math

import jax
import jax.numpy as jnp

_NEVER = 1e9  # the confidence of given tokens: they are never re-masked


def mask_ratio(r):
  """The cosine schedule γ(r) for r in [0, 1]: 1 at r = 0, 0 at r = 1."""
  return jnp.cos(0.5 * math.pi * r)


def training_mask(rng, given):
  """A bool [B, N] mask (True = replaced by [MASK]) over the positions where `given` is False.

  Per example: ratio γ(r), r ~ U(0, 1), of the free positions, at least one, chosen uniformly."""
  b, n = given.shape
  ratio_rng, order_rng = jax.random.split(rng)
  free = ~given
  num_free = jnp.sum(free, axis=1)
  ratio = mask_ratio(jax.random.uniform(ratio_rng, (b,)))
  num_masked = jnp.clip(jnp.ceil(ratio * num_free), 1, num_free).astype(jnp.int32)
  # Random scores; given positions sort last so they are never among the first `num_masked`.
  scores = jnp.where(free, jax.random.uniform(order_rng, (b, n)), 2.0)
  ranks = jnp.argsort(jnp.argsort(scores, axis=1), axis=1)
  return ranks < num_masked[:, None]


def num_still_masked(step, steps, num_unknown):
  """How many tokens stay masked after decoding step `step` (0-based) of `steps`: [B] int32.

  At least one fewer than were masked before the step (progress every step) and 0 after the
  last step."""
  after = jnp.floor(num_unknown * mask_ratio((step + 1.0) / steps)).astype(jnp.int32)
  before = jnp.floor(num_unknown * mask_ratio(step / jnp.asarray(steps, jnp.float32)))
  after = jnp.minimum(after, jnp.maximum(before.astype(jnp.int32) - 1, 0))
  return jnp.where(step + 1 >= steps, 0, after)


def decode(logits_fn, given_tokens, given, rng, *, steps, mask_id, temperature=1.0,
           choice_temperature=4.5):
  """Iterative parallel decoding.

  logits_fn(tokens [B, N]) -> logits [B, N, V] over the real codes (guidance already applied).
  given_tokens: int32 [B, N], used where `given` (bool [B, N]) is True.
  Returns int32 [B, N] with no [MASK] left.
  """
  tokens = jnp.where(given, given_tokens, mask_id).astype(jnp.int32)
  num_unknown = jnp.sum(~given, axis=1).astype(jnp.float32)

  def body(step, state):
    tokens, rng = state
    rng, sample_rng, gumbel_rng = jax.random.split(rng, 3)
    masked = tokens == mask_id
    logits = logits_fn(tokens).astype(jnp.float32)
    sampled = jax.random.categorical(sample_rng, logits / temperature, axis=-1).astype(jnp.int32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    confidence = jnp.take_along_axis(logp, sampled[..., None], axis=-1)[..., 0]
    anneal = choice_temperature * (1.0 - (step + 1.0) / steps)
    confidence = confidence + anneal * jax.random.gumbel(gumbel_rng, confidence.shape)
    confidence = jnp.where(masked, confidence, _NEVER)
    candidate = jnp.where(masked, sampled, tokens)
    keep_masked = num_still_masked(step, steps, num_unknown)
    ranks = jnp.argsort(jnp.argsort(confidence, axis=1), axis=1)  # 0 = least confident
    remask = (ranks < keep_masked[:, None]) & masked
    return jnp.where(remask, mask_id, candidate), rng

  tokens, _ = jax.lax.fori_loop(0, steps, body, (tokens, rng))
  return tokens


def mean_log_likelihood(logits_fn, tokens, given, *, mask_id):
  """float [B]: the mean log-probability of finished `tokens` [B, N] over the free positions
  (`given` False), each predicted in one pass from a canvas where all of them are [MASK] and
  the given ones are visible.

  logits_fn(tokens [B, N]) -> logits [B, N, V]. How typical a sample's tokens are under the
  model: the score that picks the best of several samples (sample.candidates). On the shapes
  videos it tells a sample the evaluator accepts from one it rejects better than chance, while
  the text's share of it, log p(x | text) - log p(x), does not (docs/models/phenaki-tiny-shapes.md)."""
  logits = logits_fn(jnp.where(given, tokens, mask_id)).astype(jnp.float32)
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tokens[..., None], axis=-1)
  free = (~given).astype(jnp.float32)
  return jnp.sum(logp[..., 0] * free, axis=1) / jnp.maximum(jnp.sum(free, axis=1), 1.0)

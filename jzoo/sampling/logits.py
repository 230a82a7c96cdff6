"""Logit processors and the draw from them, over the last axis, every knob a traced value.

`sample` applies, in this order (the order of the usual LM samplers, so top-p's nucleus is taken
from the renormalised top-k survivors):
  temperature  logits / t; t <= 0 is greedy: the argmax of the raw logits (nothing is divided
               by zero; the draw is computed and discarded, so t is traced too);
  top-k        keep the values >= the k-th largest (k <= 0 or k >= V: off; ties at the k-th
               value are all kept, as NUWA's static top-k sampler did);
  top-p        keep the smallest set of the most likely tokens whose probability is >= p, at
               least the top token (p >= 1: off; ties at the threshold are all kept).
Filtered logits are -inf. Knobs are scalars (one value for the batch); `lax.cond` skips the
filters that are off at run time.

No sorting: XLA on the CPU lowers `lax.top_k` and `argsort` to a full sort of each row, and a
vocabulary row is sorted at every token. Both filters are thresholds found by the radix search
of jzoo.nn.selection.kth_largest (bit by bit from the top over the float's ordered bits; 32
counting passes), with a traced predicate in place of its static k: "at least k values are
>= t" for top-k, "the values >= t hold probability >= p" for top-p. The answer is one of the
row's own values, so the kept sets are exact.
"""

import jax
import jax.numpy as jnp

from jzoo.nn import selection


def _largest_threshold(x, enough):
  """float [...]: the largest t among x's values along the last axis for which enough(x >= t)
  holds; `enough` maps a bool [..., V] to a bool [...] and must hold for every t up to the
  answer and for none above it (monotone), which is what makes the bitwise search exact."""
  # kth_largest's own search takes static ks; its float <-> ordered-uint maps are reused as is.
  u = selection._ordered_bits(x)

  def keep_bit(i, prefix):
    cand = prefix | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
    return jnp.where(enough(u >= cand[..., None]), cand, prefix)

  prefix = jax.lax.fori_loop(0, 32, keep_bit, jnp.zeros(x.shape[:-1], jnp.uint32))
  return selection._from_ordered_bits(prefix)


def apply_temperature(logits, temperature):
  """logits / temperature in float32; temperature <= 0 divides by 1 (greedy is `sample`'s)."""
  t = jnp.asarray(temperature, jnp.float32)
  return logits.astype(jnp.float32) / jnp.where(t > 0, t, 1.0)


def top_k_filter(logits, k):
  """The values below the k-th largest set to -inf (k traced; k <= 0 or k >= V: unchanged)."""
  logits = logits.astype(jnp.float32)
  k = jnp.asarray(k, jnp.int32)

  def keep(x):
    kth = _largest_threshold(x, lambda above: jnp.sum(above, -1, dtype=jnp.int32) >= k)
    return jnp.where(x < kth[..., None], -jnp.inf, x)

  return jax.lax.cond((k > 0) & (k < logits.shape[-1]), keep, lambda x: x, logits)


def top_p_filter(logits, p):
  """Nucleus filtering: the tokens outside the smallest most-likely set with probability >= p
  set to -inf, the top token always kept (p traced; p >= 1: unchanged)."""
  logits = logits.astype(jnp.float32)
  p = jnp.asarray(p, jnp.float32)

  def keep(x):
    probs = jax.nn.softmax(x, axis=-1)
    # The mass of {x >= t} only grows as t falls, so the largest t with mass >= p is the
    # nucleus' least likely member. A non-empty set is asked for too: with p <= 0 the empty
    # one above the maximum would do, and the top token must stay.
    enough = lambda above: (jnp.sum(jnp.where(above, probs, 0.0), -1) >= p) & above.any(-1)
    t = _largest_threshold(x, enough)
    return jnp.where(x < t[..., None], -jnp.inf, x)

  return jax.lax.cond(p < 1.0, keep, lambda x: x, logits)


def guide(cond, uncond, w):
  """Classifier-free guidance on logits: uncond + w (cond - uncond), w traced.

  Written as cond + (w - 1)(cond - uncond) so that w = 1 is exactly `cond`
  (jzoo.diffusion.guidance's form); where both are equal (-inf included) it is that value."""
  cond, uncond = cond.astype(jnp.float32), uncond.astype(jnp.float32)
  w = jnp.asarray(w, jnp.float32)
  return jnp.where(cond == uncond, cond, cond + (w - 1.0) * (cond - uncond))


def sample(rng, logits, temperature=1.0, top_k=0, top_p=1.0):
  """int32 [...]: one draw per row of logits [..., V] after temperature, top-k and top-p.

  With t > 0 and the filters off this is `jax.random.categorical(rng, logits / t)` bit for bit;
  with top_p = 1 it is the static top-k sampler NUWA's bundled samples were made with, bit for
  bit (tests/test_token_samplers.py)."""
  t = jnp.asarray(temperature, jnp.float32)
  x = top_p_filter(top_k_filter(apply_temperature(logits, t), top_k), top_p)
  drawn = jax.random.categorical(rng, x, axis=-1).astype(jnp.int32)
  greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jnp.where(t > 0, drawn, greedy)

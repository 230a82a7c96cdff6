"""Autoregressive sampling, one token at a time in raster order, over a model's cached step.

The loop is a `lax.fori_loop` over the `length` positions; the model is a step function

  step_fn(state, previous_token int32 [B], position int32 scalar) -> (logits [B, V], state)

that returns the logits of the token at `position` given the one before it (`bos` at position
0) and the state it keeps of the earlier ones: a key/value cache (NUWA's NUWATransformer.step),
or anything else a model carries. Given tokens (a first frame, a region to keep: image
completion and video prediction) are copied instead of sampled, and since the copy is what the
next step reads, they condition every later token.

Classifier-free guidance: with `guidance` set the model runs the conditional and unconditional
passes as one batch of 2B, conditional rows first: `init_state` holds 2B rows, step_fn gets the
previous token of each example twice (`concatenate([prev, prev])`, [2B]) and returns logits
[2B, V]; the B tokens are drawn from guide(logits[:B], logits[B:], guidance).

Every knob (temperature, top_k, top_p, guidance) is a traced value: a jitted generation
compiles once for all of them. The random key is split once per position (the given ones
included), as NUWA's sampler always did, so its bundled samples did not change in the move.
"""

import jax
import jax.numpy as jnp

from jzoo.sampling import logits as logits_lib


def sample(step_fn, init_state, length, rng, *, given_tokens=None, given=None, temperature=1.0,
           top_k=0, top_p=1.0, guidance=None, bos=0, batch_size=None):
  """int32 [B, length]: the sampled tokens.

  given_tokens: int32 [B, length], copied where `given` (bool [B, length]) is True.
  bos: the token fed as `previous_token` at position 0 (an int, or int32 [B]).
  B is given_tokens' batch, else bos's, else `batch_size`; length is static (the output's
  shape), the knobs are traced (see the module docstring; guidance=None: no guidance).
  """
  if given_tokens is not None:
    b = given_tokens.shape[0]
  elif jnp.ndim(bos) == 1:
    b = jnp.shape(bos)[0]
  elif batch_size is not None:
    b = int(batch_size)
  else:
    raise ValueError("autoregressive.sample: give given_tokens, a [B] bos or batch_size")
  if given is None:
    given = jnp.zeros((b, length), bool)
  if given_tokens is None:
    given_tokens = jnp.zeros((b, length), jnp.int32)
  given_tokens = given_tokens.astype(jnp.int32)

  def body(n, carry):
    tokens, state, rng = carry
    rng, sample_rng = jax.random.split(rng)
    previous = jnp.where(n == 0, bos, tokens[:, jnp.maximum(n - 1, 0)])
    if guidance is None:
      logits, state = step_fn(state, previous, n)
    else:
      logits, state = step_fn(state, jnp.concatenate([previous, previous]), n)
      logits = logits_lib.guide(logits[:b], logits[b:], guidance)
    drawn = logits_lib.sample(sample_rng, logits, temperature, top_k, top_p)
    token = jnp.where(given[:, n], given_tokens[:, n], drawn)
    return tokens.at[:, n].set(token), state, rng

  tokens = jnp.zeros((b, length), jnp.int32)
  tokens, _, _ = jax.lax.fori_loop(0, length, body, (tokens, init_state, rng))
  return tokens

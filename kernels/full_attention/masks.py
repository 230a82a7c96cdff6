"""Masks for full attention: causal (bottom-right aligned), key/query padding, prefix-LM.

With off = Lk - Lq, query i may attend key j iff

  q_valid[b, i]  and  kv_valid[b, j]  and  j <= horizon[b, i],
  horizon[b, i] = Lk - 1                       (no mask),
                  i + off                      (causal),
                  max(i + off, prefix[b] - 1)  (prefix-LM),

which for prefix-LM is "j < prefix[b] or j <= i + off": prefix keys are seen by
every query, the rest causally. Everything here is O(B * (Lq + Lk)) except
`attention_mask`, the dense [B, Lq, Lk] form (for XLA and cuDNN, and for other
kernels that take a dense mask).
"""

import jax.numpy as jnp


def as_valid(x):
  """A bool/int [B, L] validity mask (nonzero: valid) as bool, or None."""
  return None if x is None else jnp.asarray(x) != 0


def key_horizon(q_len, k_len, *, causal=False, prefix=None):
  """Last visible key index per query: int32 [1 or B, q_len] (prefix-LM implies causal)."""
  i = jnp.arange(q_len, dtype=jnp.int32)[None]
  if not causal and prefix is None:
    return jnp.full_like(i, k_len - 1)
  horizon = i + (k_len - q_len)
  if prefix is not None:
    horizon = jnp.maximum(horizon, jnp.asarray(prefix, jnp.int32).reshape(-1, 1) - 1)
  return jnp.minimum(horizon, k_len - 1)  # a prefix past the keys: all of them, no more


def attention_mask(q_len, k_len, *, causal=False, q_valid=None, kv_valid=None, prefix=None):
  """Dense bool [1 or B, q_len, k_len], True where query i may attend key j (see module doc).

  q_valid [B, q_len], kv_valid [B, k_len]: bool or int (nonzero: valid); prefix: int [B].
  """
  j = jnp.arange(k_len, dtype=jnp.int32)
  mask = j[None, None, :] <= key_horizon(q_len, k_len, causal=causal, prefix=prefix)[..., None]
  if kv_valid is not None:
    mask &= as_valid(kv_valid)[:, None, :]
  if q_valid is not None:
    mask &= as_valid(q_valid)[:, :, None]
  return mask


def visible_rows(q_len, k_len, *, causal=False, q_valid=None, kv_valid=None, prefix=None):
  """bool [1 or B, q_len]: queries that see at least one key (the others output zeros).

  None when every query provably sees a key, so callers skip the select.
  """
  if kv_valid is None and q_valid is None and (not (causal or prefix is not None)
                                               or q_len <= k_len):
    return None  # key 0 is always visible
  horizon = key_horizon(q_len, k_len, causal=causal, prefix=prefix)
  first = 0
  if kv_valid is not None:  # index of the first valid key, k_len if none
    valid = as_valid(kv_valid)
    first = jnp.where(valid.any(-1), jnp.argmax(valid, -1), k_len)[:, None]
  rows = first <= horizon
  if q_valid is not None:
    rows &= as_valid(q_valid)
  return rows



def zero_empty_rows(out, rows):
  """out [B, Lq, heads, D] with the queries where `rows` [1 or B, Lq] is False set to 0."""
  return out if rows is None else jnp.where(rows[:, :, None, None], out, 0).astype(out.dtype)

"""Shared by the kernels: the impl dispatch (every pattern), and for the grid patterns
(axial_attention, window_attention) their argument checks and attention functions.

Both patterns are realised by a layout transform: the lines or windows of the
[B, T, H, W] grid become a batch of short sequences [B', L, heads, D], and one
attention call runs over them, so no pair outside the pattern is computed.
That call is `dense_attention` here for impl="xla" (O(B' * L^2) = O(N * L)
memory) and `full_attention`'s fused kernel for the Pallas impls. Here: the
argument checks, the impl dispatch, and those two attention functions.
"""

import functools
import math
import operator

import jax
import jax.numpy as jnp
import numpy as np

IMPLS = ("auto", "reference", "xla", "pallas", "pallas_tpu", "pallas_gpu")


def check_grid_inputs(name, q, k, v):
  """Raises ValueError unless q, k, v are one [B, T, H, W, heads, D] shape (no cross grids)."""
  if q.ndim != 6 or k.ndim != 6 or v.ndim != 6:
    raise ValueError(f"{name} takes q, k, v of shape [B, T, H, W, heads, D]; got "
                     f"{q.shape}, {k.shape}, {v.shape}")
  if not q.shape == k.shape == v.shape:
    raise ValueError(f"{name} needs q, k, v of the same shape, got {q.shape}, {k.shape}, "
                     f"{v.shape}")
  if min(q.shape) < 1:
    raise ValueError(f"{name}: empty input of shape {q.shape}")


def triple(name, x, low):
  """(t, h, w) ints >= low from an int or three ints; ValueError otherwise."""
  try:
    out = tuple(operator.index(a) for a in ((x,) * 3 if np.ndim(x) == 0 else x))
  except TypeError:
    out = ()
  if len(out) != 3 or min(out) < low:
    raise ValueError(f"{name} must be an int or three ints (t, h, w), each >= {low}; got {x!r}")
  return out


def resolve_impl(impl, platform=None):
  """Maps `impl` to a concrete backend for `platform` (default: JAX's default backend)."""
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
  platform = platform or jax.default_backend()
  if impl == "auto":
    impl = "pallas" if platform in ("tpu", "gpu") else "xla"
  if impl == "pallas":
    impl = "pallas_gpu" if platform == "gpu" else "pallas_tpu"
  return impl


def sequence_attention(impl, platform=None, interpret=None):
  """The attention a layout runs on [B', L, heads, D] for a resolved non-reference `impl`.

  Takes (q, k, v, *, causal=False, kv_valid=None), a subset of `full_attention`'s signature.
  """
  if impl == "xla":
    return dense_attention
  try:
    from .full_attention.api import full_attention  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"impl={impl!r} runs jzoo.kernels.full_attention's fused kernel inside "
                      "the layout, and it does not import; use impl='xla'") from e
  return functools.partial(full_attention, impl=impl, platform=platform, interpret=interpret)


def masked_attention(q, k, v, mask):
  """softmax(q k^T / sqrt(D), mask) v on [B, L, heads, D]; mask broadcasts to [B, heads, Lq, Lk].

  Float32 logits and softmax; rows with no visible key output zeros (finite fill, then the
  output row is multiplied by 0, so its gradients are zero too).
  """
  prec = jax.lax.Precision.HIGHEST if q.dtype == jnp.float32 else jax.lax.Precision.DEFAULT
  # Heads-major operands and output: written as "bhqk,bkhd->bqhd", XLA:CPU emits probs @ v as
  # the transposed product (v^T probs^T, [.., D, Lq]) at a third of the matmul rate, so the
  # forward cost about as much as forward+backward, whose gradients never need that product.
  heads_major = lambda x: jnp.swapaxes(x, 1, 2)
  logits = jnp.einsum("bhqd,bhkd->bhqk", heads_major(q), heads_major(k), precision=prec,
                      preferred_element_type=jnp.float32) / math.sqrt(q.shape[-1])
  # An additive fill and zeroing the [.., Lq, D] output rows, rather than select and multiply
  # on the [.., Lq, Lk] probabilities: XLA:CPU fuses the add into the logits (measured: window
  # layout forward 1.3x faster).
  probs = jax.nn.softmax(logits + jnp.where(mask, 0.0, -1e30), axis=-1)
  out = jnp.einsum("bhqk,bhkd->bhqd", probs.astype(v.dtype), heads_major(v), precision=prec,
                   preferred_element_type=jnp.float32)
  out = out * jnp.any(mask, axis=-1, keepdims=True)
  return heads_major(out).astype(q.dtype)


def dense_attention(q, k, v, *, causal=False, kv_valid=None):
  """XLA attention over short sequences, Lq == Lk; kv_valid: bool [B, L] key padding."""
  length = q.shape[1]
  mask = jnp.ones((1, 1, 1, 1), bool)
  if causal:
    mask = jnp.asarray(np.tril(np.ones((length, length), bool)))[None, None]
  if kv_valid is not None:
    mask = mask & jnp.asarray(kv_valid, bool)[:, None, None, :]
  return masked_attention(q, k, v, mask)

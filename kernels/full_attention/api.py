"""`full_attention`: dense softmax attention behind one dispatch, with the platform's fused kernel.

Shapes: q [B, Lq, heads, D], k and v [B, Lk, kv_heads, D] with kv_heads dividing
heads (grouped-query attention: query head h reads key/value head
h // (heads // kv_heads)). Softmax scale 1/sqrt(D).

Masks (all optional, combined with "and"; off = Lk - Lq):
- causal: key j is visible to query i iff j <= i + off (bottom-right aligned,
  so the last query sees every key and a decode step with Lq = 1 sees all).
- prefix: int [B] (or a scalar for all): prefix-LM, CogLM's mixed masking.
  Keys j < prefix[b] are visible to every query; the others causally, so the
  visible keys are j <= max(i + off, prefix[b] - 1). Implies causal. With
  Lq = Lk, a query inside the prefix sees the whole prefix (bidirectional)
  and a query after it sees the prefix and the keys up to itself.
- kv_valid: bool or int [B, Lk] (nonzero: valid), key padding.
- q_valid: bool or int [B, Lq]; invalid queries output zeros.
Queries that see no key output zeros (not NaN), with zero gradient, in every
implementation.
"""

import jax
import jax.numpy as jnp

from . import masks, reference, xla
from .._common import IMPLS, resolve_impl  # noqa: F401  (one dispatch for every pattern)



def check_inputs(q, k, v, q_valid, kv_valid, prefix):
  """Raises ValueError for shapes or options the kernels do not support."""
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError("full_attention takes q, k, v of shape [B, L, heads, D]; got "
                     f"{q.shape}, {k.shape}, {v.shape}")
  if k.shape != v.shape:
    raise ValueError(f"k and v must have the same shape, got {k.shape} and {v.shape}")
  if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
    raise ValueError(f"q {q.shape} and k {k.shape} must agree on batch and head_dim")
  if k.shape[2] < 1 or q.shape[2] % k.shape[2]:
    raise ValueError(f"the k/v heads ({k.shape[2]}) must divide the q heads ({q.shape[2]})")
  if min(q.shape[1], k.shape[1], q.shape[3]) < 1:
    raise ValueError(f"empty sequence or head_dim: q {q.shape}, k {k.shape}")
  b = q.shape[0]
  for name, x, length in (("q_valid", q_valid, q.shape[1]), ("kv_valid", kv_valid, k.shape[1])):
    if x is None:
      continue
    if jnp.shape(x) != (b, length):
      raise ValueError(f"{name} must have shape {(b, length)} (batch, length), got {jnp.shape(x)}")
    if not (jnp.issubdtype(jnp.result_type(x), jnp.integer) or jnp.result_type(x) == bool):
      raise ValueError(f"{name} must be bool or int (nonzero: valid), got {jnp.result_type(x)}")
  if prefix is not None:
    if jnp.ndim(prefix) not in (0, 1) or jnp.ndim(prefix) == 1 and jnp.shape(prefix) != (b,):
      raise ValueError(f"prefix must be an int or int [B={b}], got shape {jnp.shape(prefix)}")
    if not jnp.issubdtype(jnp.result_type(prefix), jnp.integer):
      raise ValueError(f"prefix must be integer, got {jnp.result_type(prefix)}")


def full_attention(q, k, v, *, causal=False, q_valid=None, kv_valid=None, prefix=None,
                   impl="auto", platform=None, interpret=None):
  """Full (dense) attention with causal, padding and prefix-LM masks (see module docstring).

  Args:
    q: [B, Lq, heads, D]; k, v: [B, Lk, kv_heads, D], kv_heads dividing heads.
    causal: bottom-right aligned causal mask (key j visible iff j <= i + Lk - Lq).
    q_valid: bool/int [B, Lq]; invalid queries output zeros.
    kv_valid: bool/int [B, Lk]; invalid keys are never attended.
    prefix: int [B] or scalar; prefix-LM: keys j < prefix[b] visible to all
      queries, the rest causally (implies causal).
    impl: "auto" (Pallas on TPU/GPU, XLA on CPU), "reference" (dense float32,
      the truth in tests), "xla" (jax.nn.dot_product_attention, dense mask),
      "pallas" (the platform's kernel), "pallas_tpu" (splash attention) or
      "pallas_gpu" (cuDNN; XLA where cuDNN does not take the dtype/head_dim).
    platform: the platform to dispatch for (default: JAX's default backend);
      set it when tracing for devices other than the default ones (AOT).
    interpret: run Pallas kernels in the interpreter; default: only on CPU.
  Returns:
    [B, Lq, heads, D], dtype of q.
  """
  check_inputs(q, k, v, q_valid, kv_valid, prefix)
  platform = platform or jax.default_backend()
  impl = resolve_impl(impl, platform)
  if interpret is None:
    interpret = platform not in ("tpu", "gpu")
  if prefix is not None:
    prefix = jnp.broadcast_to(jnp.asarray(prefix, jnp.int32), (q.shape[0],))
  if q.shape[1] == 1:  # one query (decode) is the last one: causal and prefix hide nothing
    causal, prefix = False, None
  opts = dict(causal=bool(causal) or prefix is not None, q_valid=q_valid, kv_valid=kv_valid,
              prefix=prefix)
  if impl == "reference":
    return reference.full_attention(q, k, v, **opts)
  if impl == "xla":
    return xla.full_attention(q, k, v, **opts)
  if impl == "pallas_tpu":
    from . import pallas_tpu  # pylint: disable=g-import-not-at-top
    return pallas_tpu.full_attention(q, k, v, interpret=interpret, **opts)
  from . import pallas_gpu  # pylint: disable=g-import-not-at-top
  return pallas_gpu.full_attention(q, k, v, interpret=interpret, **opts)


attention_mask = masks.attention_mask

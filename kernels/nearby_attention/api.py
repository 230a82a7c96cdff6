"""`nearby_attention`: NUWA's 3D nearby attention behind one dispatch.

Query (i, j, l) attends to keys (a, b, c) with |a - i'| <= rt, |b - j'| <= rh,
|c - l'| <= rw, where i' = floor(i * Tk / Tq) (likewise j', l'), so query and
key grids may differ. Windows are truncated at the borders, not shifted.
`causal=True` (equal grids only) also masks keys after the query in raster
order (t, h, w). Softmax scale 1/sqrt(D).
"""

import jax

from . import reference, xla
from .._common import IMPLS, resolve_impl  # noqa: F401  (one dispatch for every pattern)



def check_inputs(q, k, v, radius, causal):
  """Raises ValueError for shapes or options the kernels do not support."""
  if q.ndim != 6 or k.ndim != 6 or v.ndim != 6:
    raise ValueError("nearby_attention takes q, k, v of shape [B, T, H, W, heads, D]; got "
                     f"{q.shape}, {k.shape}, {v.shape}")
  if k.shape != v.shape:
    raise ValueError(f"k and v must have the same shape, got {k.shape} and {v.shape}")
  if q.shape[0] != k.shape[0] or q.shape[4:] != k.shape[4:]:
    raise ValueError(f"q {q.shape} and k {k.shape} must agree on batch, heads and head_dim")
  if min(q.shape[1:4] + k.shape[1:4]) < 1:
    raise ValueError(f"empty grid: q {q.shape}, k {k.shape}")
  if len(radius) != 3 or any(int(r) != r or r < 0 for r in radius):
    raise ValueError(f"radius must be three non-negative ints (rt, rh, rw), got {radius}")
  if causal and q.shape[1:4] != k.shape[1:4]:
    raise ValueError("causal nearby attention needs equal query and key grids, got "
                     f"{q.shape[1:4]} and {k.shape[1:4]}")


def nearby_attention(q, k, v, *, radius, causal=False, impl="auto", interpret=None,
                     platform=None):
  """3D nearby attention.

  Args:
    q: [B, Tq, Hq, Wq, heads, D]; k, v: [B, Tk, Hk, Wk, heads, D].
    radius: (rt, rh, rw) window radii, counted on the key grid (an int: all three).
    causal: also mask keys after the query in raster order (needs equal grids).
    impl: "auto" (Pallas on TPU/GPU, XLA on CPU), "reference" (dense, the
      truth in tests), "xla" (blocked, memory O(N*K)), "pallas" (the
      platform's kernel), "pallas_tpu" or "pallas_gpu".
    interpret: run Pallas kernels in the interpreter; default: only on CPU.
    platform: the platform to dispatch for (default: JAX's default backend);
      set it when tracing for devices other than the default ones (AOT).
  Returns:
    [B, Tq, Hq, Wq, heads, D], dtype of q.
  """
  radius = (radius,) * 3 if isinstance(radius, int) else tuple(radius)
  check_inputs(q, k, v, radius, causal)
  platform = platform or jax.default_backend()
  impl = resolve_impl(impl, platform)
  if interpret is None:
    interpret = platform not in ("tpu", "gpu")
  if impl == "reference":
    return reference.nearby_attention(q, k, v, radius=radius, causal=causal)
  if impl == "xla":
    return xla.nearby_attention(q, k, v, radius=radius, causal=causal)
  if impl == "pallas_tpu":
    from . import pallas_tpu  # pylint: disable=g-import-not-at-top
    return pallas_tpu.nearby_attention(q, k, v, radius=radius, causal=causal,
                                       interpret=interpret)
  from . import pallas_gpu  # pylint: disable=g-import-not-at-top
  return pallas_gpu.nearby_attention(q, k, v, radius=radius, causal=causal, interpret=interpret)

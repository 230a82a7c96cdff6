"""`axial_attention`: attention along one axis of a [T, H, W] grid, behind one dispatch.

Query (t, h, w) attends to the keys that share its other two coordinates: the
line through it along `axis` in {"t", "h", "w"} (GODIVA cycles the axis layer
by layer). `causal=True` also masks the keys after the query in raster order
(t, h, w), which on a line is the order along the axis. Softmax scale 1/sqrt(D).
"""

from .. import _common
from . import reference, xla

AXES = ("t", "h", "w")


def check_inputs(q, k, v, axis):
  """Raises ValueError for shapes or options the kernels do not support."""
  _common.check_grid_inputs("axial_attention", q, k, v)
  if axis not in AXES:
    raise ValueError(f"axis must be one of {AXES}, got {axis!r}")


def axial_attention(q, k, v, *, axis, causal=False, impl="auto", platform=None, interpret=None):
  """Axial attention.

  Args:
    q, k, v: [B, T, H, W, heads, D], one shape.
    axis: "t", "h" or "w", the axis the lines run along.
    causal: also mask keys after the query in raster order.
    impl: "auto" (Pallas on TPU/GPU, XLA on CPU), "reference" (dense N x N
      mask, the truth in tests), "xla" (lines as a batch of sequences, memory
      O(N * L)), "pallas" (the same lines through the platform's fused
      `full_attention` kernel), "pallas_tpu" or "pallas_gpu".
    platform: the platform to dispatch for (default: JAX's default backend);
      set it when tracing for devices other than the default ones (AOT).
    interpret: run Pallas kernels in the interpreter; default: only on CPU.
  Returns:
    [B, T, H, W, heads, D], dtype of q.
  """
  check_inputs(q, k, v, axis)
  impl = _common.resolve_impl(impl, platform)
  if impl == "reference":
    return reference.axial_attention(q, k, v, axis=axis, causal=causal)
  return xla.axial_attention(q, k, v, axis=axis, causal=bool(causal),
                             attend=_common.sequence_attention(impl, platform, interpret))

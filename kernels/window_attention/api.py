"""`window_attention`: attention inside (shifted) 3D windows of a [T, H, W] grid, one dispatch.

The grid is cut into windows of `window = (wt, wh, ww)` offset by
`shift = (st, sh, sw)`: along each axis position x lies in window
floor((x + s) / w), so border windows are truncated, not wrapped (Swin's and
CogVideo's shifted windows without the cyclic roll). A query attends to the
keys in its window on all three axes. A window larger than the grid is full
attention along that axis; a shift s >= w partitions like s mod w.
`causal=True` also masks keys after the query in raster order (t, h, w).
Softmax scale 1/sqrt(D).
"""

from .. import _common
from . import reference, xla


def check_inputs(q, k, v, window, shift):
  """Raises ValueError for shapes or options the kernels do not support; -> (window, shift)."""
  _common.check_grid_inputs("window_attention", q, k, v)
  return _common.triple("window", window, 1), _common.triple("shift", shift, 0)


def window_attention(q, k, v, *, window, shift=(0, 0, 0), causal=False, impl="auto",
                     platform=None, interpret=None):
  """3D window attention.

  Args:
    q, k, v: [B, T, H, W, heads, D], one shape.
    window: (wt, wh, ww) window sizes, each >= 1 (an int: all three).
    shift: (st, sh, sw) window offsets, each >= 0 (an int: all three).
    causal: also mask keys after the query in raster order.
    impl: "auto" (Pallas on TPU/GPU, XLA on CPU), "reference" (dense N x N
      mask, the truth in tests), "xla" (padded windows as a batch of
      sequences, memory O(N * wt * wh * ww)), "pallas" (the same windows
      through the platform's fused `full_attention` kernel), "pallas_tpu" or
      "pallas_gpu".
    platform: the platform to dispatch for (default: JAX's default backend);
      set it when tracing for devices other than the default ones (AOT).
    interpret: run Pallas kernels in the interpreter; default: only on CPU.
  Returns:
    [B, T, H, W, heads, D], dtype of q.
  """
  window, shift = check_inputs(q, k, v, window, shift)
  impl = _common.resolve_impl(impl, platform)
  if impl == "reference":
    return reference.window_attention(q, k, v, window=window, shift=shift, causal=causal)
  return xla.window_attention(q, k, v, window=window, shift=shift, causal=bool(causal),
                              attend=_common.sequence_attention(impl, platform, interpret))

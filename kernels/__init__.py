"""Attention kernels, one folder per pattern (api, reference, xla, pallas_tpu, pallas_gpu).

  full_attention     full / causal / padding / prefix-LM masks, on the platform's fused kernel
  nearby_attention   NUWA's 3D nearby windows (with T = 1, CogView2's 2D local window)
  axial_attention    the line through each query along t, h or w (GODIVA)
  window_attention   3D windows with an optional shift (Swin / CogVideo)

`from jzoo.kernels import nearby_attention` is the function; a folder's modules import as
`from jzoo.kernels.nearby_attention import reference`. Nothing here imports the rest of jzoo:
sharding over a mesh is `jzoo.nn.sharded_attention`.
"""

from .axial_attention.api import axial_attention
from .full_attention.api import attention_mask, full_attention
from .nearby_attention.api import nearby_attention
from .window_attention.api import window_attention

__all__ = ["attention_mask", "axial_attention", "full_attention", "nearby_attention",
           "window_attention"]

"""Attention kernels, one folder per pattern (api, reference, xla, pallas_tpu, pallas_gpu).

`from jzoo.kernels import nearby_attention` is the function; its folder's modules import as
`from jzoo.kernels.nearby_attention import reference`. Nothing here imports the rest of jzoo:
sharding over a mesh is `jzoo.nn.sharded_attention`.
"""

from .nearby_attention.api import nearby_attention

__all__ = ["nearby_attention"]

"""3D nearby attention (NUWA): reference, blocked XLA, and Pallas TPU/GPU kernels."""

from .api import nearby_attention
from .sharded import sharded_nearby_attention

__all__ = ["nearby_attention", "sharded_nearby_attention"]

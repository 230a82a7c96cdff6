"""3D nearby attention (NUWA): reference, blocked XLA, and Pallas TPU/GPU kernels."""

from .api import nearby_attention

__all__ = ["nearby_attention"]

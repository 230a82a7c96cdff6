"""3D (shifted) window attention (Swin, CogVideo): reference and a window layout around XLA or
fused attention."""

from .api import window_attention

__all__ = ["window_attention"]

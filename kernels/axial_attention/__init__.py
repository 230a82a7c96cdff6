"""Axial attention (GODIVA): reference and a line layout around XLA or fused attention."""

from .api import axial_attention

__all__ = ["axial_attention"]

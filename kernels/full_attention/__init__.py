"""Full attention: reference, XLA, TPU splash attention and GPU cuDNN, with causal/padding/prefix-LM masks."""

from .api import attention_mask, full_attention

__all__ = ["attention_mask", "full_attention"]

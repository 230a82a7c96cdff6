"""Pre-LayerNorm transformer blocks over token sequences, shared by the zoo's transformers
(C-ViViT, Phenaki's MaskGIT, NUWA, CogVideo, ...).

Tokens are [B, L, E]. A block is
    x = x + SelfAttention(LN(x), mask)
    x = x + CrossAttention(LN(x), context, context_mask)   (optional)
    x = x + MLP(LN(x))
Residual branches start at zero (zero-initialised output projections), so a
deep stack starts as the identity. Attention logits and softmax run in float32.

Self-attention runs `jzoo.nn.patterns.attention` with the block's `pattern`
(Full by default; a tuple cycles per layer, e.g. GODIVA's axial t, h, w over
flat tokens of `grid`); cross-attention is Full with key padding. The `mask`
argument keeps its old form: key padding (broadcast over heads and queries,
[B, 1, 1, K]) becomes the op's `kv_valid`; any other dense mask runs
`dot_product_attention` as before. Causal self-attention is the pattern
`Full(causal=True)`, not a mask. On CPU the
op's Full is `jax.nn.dot_product_attention`, which gives the same bits as
`dot_product_attention` in float32 (rows with no visible key aside: zeros, not
an average; the blocks' null key/value keeps every cross-attention row non-empty).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jzoo.nn import layers, patterns
from jzoo.nn.attention import HeadsProjection, OutProjection, dot_product_attention

TOKENS = ("batch", "length", "embed")


def causal_mask(length):
  """[1, 1, L, L] bool: position i attends to positions <= i."""
  return jnp.tril(jnp.ones((length, length), bool))[None, None]


def _op_masks(mask, batch, k_len):
  """The dense `mask` as (causal, kv_valid) of the op, or None when it is not key padding."""
  if mask is None:
    return False, None
  shape = (1,) * (4 - np.ndim(mask)) + np.shape(mask)
  if shape[1] == shape[2] == 1:  # key padding, the same for every head and query
    return False, jnp.broadcast_to(jnp.reshape(mask, (shape[0], shape[3])) != 0, (batch, k_len))
  return None


class Attention(nn.Module):
  """Multi-head attention of `x` [B, Q, E] to `context` [B, K, Ec] (`x` itself when None).

  `mask`: bool, broadcastable to [B, heads, Q, K] (see the module docstring). `null_kv` adds a
  learned key/value that every query may attend to, so a context with every position masked
  (classifier-free guidance's unconditional pass) is well defined. `pattern`, `impl` and `grid`
  go to `jzoo.nn.patterns.attention` (grid patterns: no mask, no null key/value)."""
  num_heads: int
  head_dim: int
  null_kv: bool = False
  dtype: Any = jnp.float32
  pattern: Any = patterns.Full()
  impl: str = "auto"
  grid: Any = None

  @nn.compact
  def __call__(self, x, context=None, mask=None):
    context = x if context is None else context
    heads, d = self.num_heads, self.head_dim
    q = HeadsProjection(heads, d, self.dtype, name="query")(x)
    k = HeadsProjection(heads, d, self.dtype, name="key")(context)
    v = HeadsProjection(heads, d, self.dtype, name="value")(context)
    q, k, v = (nn.with_logical_constraint(t, ("batch", "length", "heads", "kv")) for t in (q, k, v))
    b = x.shape[0]
    op = _op_masks(mask, b, k.shape[1])
    grid_pattern = not isinstance(self.pattern, patterns.Full)
    if grid_pattern and (mask is not None or self.null_kv):
      raise ValueError(f"{self.pattern} takes no mask and no null key/value")
    if op is None and self.pattern.causal:  # a dense mask under a causal pattern: both apply
      q_len, k_len = q.shape[1], k.shape[1]
      mask = mask & np.tril(np.ones((q_len, k_len), bool), k_len - q_len)
    if self.null_kv:
      init = nn.with_logical_partitioning(nn.initializers.normal(1.0), ("heads", "kv"))
      null = [jnp.broadcast_to(self.param(n, init, (heads, d), jnp.float32).astype(k.dtype),
                               (b, 1, heads, d)) for n in ("null_key", "null_value")]
      k = jnp.concatenate([null[0], k], axis=1)
      v = jnp.concatenate([null[1], v], axis=1)
      if op is None:  # the null key is always attendable
        mask = jnp.concatenate([jnp.ones((*mask.shape[:-1], 1), bool), mask], axis=-1)
      elif op[1] is not None:
        op = op[0], jnp.concatenate([jnp.ones((b, 1), bool), op[1]], axis=1)
      # A causal mask needs no change: with the null key first, bottom-right alignment
      # (key j visible iff j <= i + Lk - Lq) is "the null key and the keys up to i".
    if op is None:
      y = dot_product_attention(q, k, v, mask)
    elif grid_pattern:
      y = patterns.attention(q, k, v, self.pattern, impl=self.impl, grid=self.grid)
    else:
      causal, kv_valid = op
      pattern = patterns.Full(self.pattern.causal or causal)
      y = patterns.attention(q, k, v, pattern, impl=self.impl, kv_valid=kv_valid)
    return OutProjection(x.shape[-1], self.dtype, name="out")(y)


class MlpBlock(nn.Module):
  """Dense -> GELU -> dropout -> Dense (zero-initialised)."""
  hidden: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic=True):
    h = nn.gelu(layers.dense(self.hidden, ("embed", "mlp"), dtype=self.dtype, name="wi")(x))
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    return layers.dense(x.shape[-1], ("mlp", "embed"), dtype=self.dtype, init_scale=0.0,
                        name="wo")(h)


class TransformerBlock(nn.Module):
  """One pre-LN block: self-attention, optional cross-attention to a context, MLP."""
  num_heads: int
  head_dim: int
  mlp_dim: int
  cross_attention: bool = False
  dropout: float = 0.0
  dtype: Any = jnp.float32
  pattern: Any = patterns.Full()  # of the self-attention
  impl: str = "auto"
  grid: Any = None  # (T, H, W) of the tokens, for grid patterns

  @nn.compact
  def __call__(self, x, mask=None, context=None, context_mask=None, deterministic=True):
    drop = lambda h: nn.Dropout(self.dropout)(h, deterministic=deterministic)
    h = layers.LayerNorm(self.dtype, name="norm_self")(x)
    x = x + drop(Attention(self.num_heads, self.head_dim, dtype=self.dtype, pattern=self.pattern,
                           impl=self.impl, grid=self.grid, name="self_attention")(h, mask=mask))
    if self.cross_attention:
      if context is None:
        raise ValueError("this block has cross-attention: pass a context")
      cmask = None if context_mask is None else (context_mask > 0)[:, None, None, :]
      h = layers.LayerNorm(self.dtype, name="norm_cross")(x)
      x = x + drop(Attention(self.num_heads, self.head_dim, null_kv=True, dtype=self.dtype,
                             impl=self.impl, name="cross_attention")(h, context, cmask))
    h = layers.LayerNorm(self.dtype, name="norm_mlp")(x)
    x = x + MlpBlock(self.mlp_dim, self.dropout, self.dtype, name="mlp")(h, deterministic)
    return nn.with_logical_constraint(x, TOKENS)


class Transformer(nn.Module):
  """`num_layers` blocks (`layers_{i}`) and a final LayerNorm.

  `remat="full"` recomputes each block in the backward pass (activation memory O(1) blocks).
  `pattern`: the self-attention's, or a tuple that layer i takes entry i mod len of."""
  num_layers: int
  num_heads: int
  head_dim: int
  mlp_dim: int
  cross_attention: bool = False
  dropout: float = 0.0
  remat: str = "none"
  dtype: Any = jnp.float32
  pattern: Any = patterns.Full()
  impl: str = "auto"
  grid: Any = None

  @nn.compact
  def __call__(self, x, mask=None, context=None, context_mask=None, deterministic=True):
    block = TransformerBlock
    if self.remat == "full":
      block = nn.remat(TransformerBlock, static_argnums=(5,))
    for i in range(self.num_layers):
      x = block(self.num_heads, self.head_dim, self.mlp_dim, self.cross_attention, self.dropout,
                self.dtype, patterns.cycle(self.pattern, i), self.impl, self.grid,
                name=f"layers_{i}")(x, mask, context, context_mask, deterministic)
    return layers.LayerNorm(self.dtype, name="norm_out")(x)


def heads_for(width, head_dim):
  """Number of heads of `head_dim` in `width`; a clear error when it does not divide."""
  if width % head_dim:
    raise ValueError(f"width {width} is not a multiple of head_dim {head_dim}")
  return width // head_dim


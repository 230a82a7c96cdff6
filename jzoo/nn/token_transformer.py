"""One transformer over a (t, h, w) grid of discrete codes, the zoo's token models' shared stage.

  codes [B, t, h, w] -> embedding + factorised learned positions (time + row + column)
    -> `num_layers` pre-LN blocks (self-attention with a pattern per layer, or a cycle of them;
       text as cross-attention or as a prefix) -> LayerNorm -> logits [B, t, h, w, codebook].

Two ways of reading the grid:
  * causal=False (MaskGIT, Phenaki): the input codes as they are, [MASK] = id `codebook_size`.
  * causal=True (NUWA, CogVideo): teacher forcing on the codes shifted right by one with a BOS
    (id `codebook_size`) in front; `init_cache`/`step` then decode one code at a time in raster
    order through `patterns.decode_step`, O(window) per code for Nearby/Axial/Window.

Parameter names are Phenaki's MaskGITTransformer's (token_embedding, position_{time,height,
width}, text_position, transformer/layers_{i}/..., transformer/norm_out, logits), so its
checkpoints are this module's with scan_layers=False. With scan_layers=True the layers run
under `nn.scan` over groups of one pattern cycle: transformer/layers/layers_{j} holds layer
g * cycle + j stacked on a leading "layers" axis (`scan_params`/`unscan_params` convert).
`names=NUWA_NAMES` gives NUWA's names instead (code_embedding, decoder_{i}/{query, key, value,
out, ...}, norm_out, head: no "transformer" scope), so its checkpoints load as they are too.

A visual condition (NUWA's video prediction, `condition_radius`): the codes of the first frames
(or of a coarser grid over the same extent, CogView2's super-resolution: each coarse cell takes
the position of the fine cell at its origin), embedded as the grid's and encoded by `condition_layers` non-causal Nearby blocks (condition_{i},
norm_condition), are seen by every layer through a non-causal Nearby cross-attention around the
query's scaled position (norm_visual, visual_{query,key,value,out}).
"""

import dataclasses
import itertools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jzoo.nn import layers, patterns
from jzoo.nn.attention import HeadsProjection, OutProjection, dot_product_attention
from jzoo.nn.transformer import TOKENS, Attention, MlpBlock, heads_for

TEXT_MODES = ("cross", "prefix", None)
HEADS = ("batch", "length", "heads", "kv")
GRID_HEADS = ("batch", "frames", "height", "width", "heads", "kv")


class Names(NamedTuple):
  """Parameter names; the defaults are Phenaki's."""
  embedding: str = "token_embedding"
  logits: str = "logits"
  stack: Any = "transformer"  # None: the layers and norm_out in the module's own scope
  layer: str = "layers"  # layer i: {layer}_{i}
  self_attention: Any = "self_attention"  # None: query/key/value/out in the block's own scope


NUWA_NAMES = Names("code_embedding", "head", None, "decoder", None)


def _cycle_length(pattern):
  return 1 if isinstance(pattern, patterns.PATTERNS) else len(tuple(pattern))


def _remat_policy(remat):
  """None (no remat), or the jax.checkpoint policy of "full" (save nothing) or a policy name."""
  if remat in ("none", None):
    return None
  if remat == "full":
    return jax.checkpoint_policies.nothing_saveable
  # A name of a policy itself (dots_saveable, ...); factories (save_only_these_names, ...)
  # need arguments that a config string cannot give.
  policy = getattr(jax.checkpoint_policies, remat, None)
  if policy is None:
    raise ValueError(f"remat must be 'none', 'full' or a jax.checkpoint_policies name, "
                     f"got {remat!r}")
  return policy


def window_offsets(radius):
  """The (dt, dh, dw) offsets of a nearby-attention box: int32 [K, 3], K = prod(2r+1)."""
  return np.array(list(itertools.product(*(range(-r, r + 1) for r in radius))), np.int32)


def _box(centre, radius, grid):
  """The box of `radius` around `centre` (traced (t, h, w)) on `grid`, cut at the borders:
  (grid coordinates [K, 3] clipped into the grid, whether each is inside [K])."""
  where = jnp.stack(centre)[None, :] + jnp.asarray(window_offsets(radius))
  inside = jnp.all((where >= 0) & (where < jnp.asarray(grid)), axis=1)
  return jnp.clip(where, 0, jnp.asarray(grid) - 1), inside


def _attend_box(q, keys, values, valid):
  """One query per head against its gathered box: q [B, heads, D], keys/values [B, K, heads, D],
  valid [K] -> [B, heads, D] (softmax scale 1/sqrt(D), as the kernel)."""
  logits = jnp.einsum("bhd,bkhd->bhk", q.astype(jnp.float32), keys.astype(jnp.float32))
  logits = jnp.where(valid[None, None], logits / np.sqrt(q.shape[-1]), -jnp.inf)
  weights = jax.nn.softmax(logits, axis=-1).astype(values.dtype)
  return jnp.einsum("bhk,bkhd->bhd", weights, values)


class SelfAttention(nn.Module):
  """`transformer.Attention`'s self-attention (the same parameters query/key/value/out and the
  same op) with a `step` against a `patterns.Cache`."""
  num_heads: int
  head_dim: int
  features: int  # the residual stream's width
  dtype: Any = jnp.float32
  pattern: Any = patterns.Full()
  impl: str = "auto"
  grid: Any = None

  def setup(self):
    h, d = self.num_heads, self.head_dim
    self.query = HeadsProjection(h, d, self.dtype)
    self.key = HeadsProjection(h, d, self.dtype)
    self.value = HeadsProjection(h, d, self.dtype)
    self.out = OutProjection(self.features, self.dtype)

  def __call__(self, x, mask=None):
    """x [B, L, E]; `mask`: a dense [B, 1, L, L] mask (text prefix, Full only) or None."""
    q, k, v = (nn.with_logical_constraint(p(x), HEADS) for p in (self.query, self.key, self.value))
    if mask is not None:
      y = dot_product_attention(q, k, v, mask)
    elif isinstance(self.pattern, patterns.Full):
      y = patterns.attention(q, k, v, self.pattern, impl=self.impl)
    else:
      y = patterns.attention(q, k, v, self.pattern, impl=self.impl, grid=self.grid)
    return self.out(y)

  def step(self, x, cache, position):
    """x [B, E] at raster index `position` -> (y [B, E], cache)."""
    y, cache = patterns.decode_step(self.pattern, self.query(x), self.key(x), self.value(x),
                                    cache, position)
    return self.out(y), cache


class Block(nn.Module):
  """`transformer.TransformerBlock` (the same parameter names and arithmetic) with `step`."""
  width: int
  num_heads: int
  head_dim: int
  mlp_dim: int
  cross: bool = False  # cross-attention to the text
  dropout: float = 0.0
  dtype: Any = jnp.float32
  pattern: Any = patterns.Full()
  impl: str = "auto"
  grid: Any = None
  deterministic: bool = True  # a field, not an argument: nn.scan and nn.remat need no statics
  visual_radius: Any = None  # Nearby cross-attention to an encoded visual condition; None: none
  flat_attention: bool = False  # query/key/value/out in this scope (NUWA's names)

  def setup(self):
    h, d = self.num_heads, self.head_dim
    self.norm_self = layers.LayerNorm(self.dtype)
    self.self_attention = SelfAttention(h, d, self.width, self.dtype, self.pattern, self.impl,
                                        self.grid)
    if self.flat_attention:
      nn.share_scope(self, self.self_attention)
    if self.visual_radius is not None:
      self.norm_visual = layers.LayerNorm(self.dtype)
      self.visual_query = HeadsProjection(h, d, self.dtype)
      self.visual_key = HeadsProjection(h, d, self.dtype)
      self.visual_value = HeadsProjection(h, d, self.dtype)
      self.visual_out = OutProjection(self.width, self.dtype)
    if self.cross:
      self.norm_cross = layers.LayerNorm(self.dtype)
      self.cross_attention = Attention(self.num_heads, self.head_dim, null_kv=True,
                                       dtype=self.dtype, impl=self.impl)
    self.norm_mlp = layers.LayerNorm(self.dtype)
    self.mlp = MlpBlock(self.mlp_dim, self.dropout, self.dtype)
    self.drop = nn.Dropout(self.dropout)

  def _rest(self, x, text, text_mask):
    """Cross-attention (if any) and the MLP of x [B, L, E]."""
    if self.cross:
      cmask = (text_mask > 0)[:, None, None, :]
      x = x + self.drop(self.cross_attention(self.norm_cross(x), text, cmask), self.deterministic)
    return x + self.mlp(self.norm_mlp(x), self.deterministic)

  def _visual(self, x, visual):
    """x [B, L, E] on `grid` -> the Nearby cross-attention to visual [B, tc, hc, wc, E] (the
    kernel maps each query to the box around its scaled position)."""
    b, _, e = x.shape
    q = self.visual_query(self.norm_visual(x)).reshape(b, *self.grid, self.num_heads, -1)
    q, k, v = (nn.with_logical_constraint(a, GRID_HEADS)
               for a in (q, self.visual_key(visual), self.visual_value(visual)))
    y = patterns.attention(q, k, v, patterns.Nearby(self.visual_radius), impl=self.impl)
    return self.visual_out(y.reshape(b, x.shape[1], self.num_heads, -1))

  def _visual_step(self, x, visual, position):
    """x [B, E] at raster index `position`: the condition's box around the scaled position is
    gathered and only its K tokens are projected, O(box)."""
    grid, cgrid = self.grid, visual.shape[1:4]
    point = (position // (grid[1] * grid[2]), (position // grid[2]) % grid[1], position % grid[2])
    centre = tuple(p * c // g for p, c, g in zip(point, cgrid, grid))
    idx, inside = _box(centre, self.visual_radius, cgrid)
    box = visual[:, idx[:, 0], idx[:, 1], idx[:, 2]]  # [B, K, E]
    q = self.visual_query(self.norm_visual(x))
    return self.visual_out(_attend_box(q, self.visual_key(box), self.visual_value(box), inside))

  def __call__(self, x, text=None, text_mask=None, mask=None, visual=None):
    x = x + self.drop(self.self_attention(self.norm_self(x), mask), self.deterministic)
    if self.visual_radius is not None:
      x = x + self.drop(self._visual(x, visual), self.deterministic)
    return nn.with_logical_constraint(self._rest(x, text, text_mask), TOKENS)

  def step(self, x, cache, position, text=None, text_mask=None, visual=None):
    y, cache = self.self_attention.step(self.norm_self(x), cache, position)
    x = x + y
    if self.visual_radius is not None:
      x = x + self._visual_step(x, visual, position)
    return self._rest(x[:, None], text, text_mask)[:, 0], cache


class _Group(nn.Module):
  """One cycle of blocks (layers_{j}, j < cycle): the body of the scan. Carry x; xs: the
  group's caches when decoding, else None."""
  layer_patterns: tuple
  kwargs: tuple  # Block's fields, as sorted items (module fields must hash)
  layer_name: str = "layers"

  @nn.compact
  def __call__(self, x, caches, text, text_mask, mask, position, visual):
    new = []
    for j, pattern in enumerate(self.layer_patterns):
      block = Block(**dict(self.kwargs), pattern=pattern, name=f"{self.layer_name}_{j}")
      if caches is None:
        x = block(x, text, text_mask, mask, visual)
      else:
        x, c = block.step(x, caches[j], position, text, text_mask, visual)
        new.append(c)
    return x, (None if caches is None else tuple(new))


class _Stack(nn.Module):
  """transformer/: layers_{i} (scanned: transformer/layers/layers_{j}) and norm_out."""
  layer_patterns: tuple  # per layer
  kwargs: tuple
  cycle: int = 1
  remat: str = "none"
  scan: bool = False
  dtype: Any = jnp.float32
  layer_name: str = "layers"

  @nn.compact
  def __call__(self, x, caches, text, text_mask, mask, position, visual=None):
    policy = _remat_policy(self.remat) if caches is None else None  # no backward when decoding
    if self.scan:
      group = _Group if policy is None else nn.remat(_Group, policy=policy, prevent_cse=False)
      scanned = nn.scan(group, variable_axes={"params": 0},
                        split_rngs={"params": True, "dropout": True},
                        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast,
                                 nn.broadcast),
                        length=len(self.layer_patterns) // self.cycle,
                        metadata_params={nn.PARTITION_NAME: "layers"})
      x, caches = scanned(self.layer_patterns[:self.cycle], self.kwargs, self.layer_name,
                          name=self.layer_name)(x, caches, text, text_mask, mask, position,
                                                visual)
    else:
      block = Block if policy is None else nn.remat(Block, policy=policy)
      new = []
      for i, pattern in enumerate(self.layer_patterns):
        layer = block(**dict(self.kwargs), pattern=pattern, name=f"{self.layer_name}_{i}")
        if caches is None:
          x = layer(x, text, text_mask, mask, visual)
        else:
          x, cache = layer.step(x, caches[i], position, text, text_mask, visual)
          new.append(cache)
      caches = None if caches is None else tuple(new)
    return layers.LayerNorm(self.dtype, name="norm_out")(x), caches


class TokenTransformer(nn.Module):
  """Codes [B, t, h, w] (+ text [B, L, Et]) -> logits [B, t, h, w, codebook_size].

  vocab rows: codebook_size + num_special (id codebook_size: [MASK] or BOS). grid: the largest
  (t, h, w); inputs may be smaller (positions are cut), except under grid patterns and when
  decoding, which need the whole grid. pattern: one pattern or a tuple cycled per layer; the
  causal flag comes from `causal` (a pattern's own is replaced). text: "cross" (cross-attention
  with a learned null key/value, so an all-masked text is the unconditional model), "prefix"
  (text embeddings projected to `width` and put in front, seen by every code; Full only) or
  None. remat: "none" | "full" | a jax.checkpoint_policies name. condition_radius: None (no
  visual condition) or the Nearby radius of the condition encoder and of every layer's
  cross-attention to it (see the module's docstring); names: `Names` (NUWA_NAMES: NUWA's)."""
  codebook_size: int
  width: int
  num_layers: int
  head_dim: int
  mlp_dim: int
  grid: tuple  # (t, h, w) max sizes
  pattern: Any = patterns.Full()
  text: Any = "cross"
  text_positions: bool = False  # a learned embedding per text position (layers.add_text_positions)
  causal: bool = False
  num_special: int = 1
  dropout: float = 0.0
  remat: str = "none"
  scan_layers: bool = False
  impl: str = "auto"
  dtype: Any = jnp.float32
  condition_radius: Any = None
  condition_layers: int = 0
  names: Names = Names()

  # --- configuration -------------------------------------------------------------------------
  @property
  def special_id(self):
    """[MASK] (causal=False) or BOS (causal=True)."""
    return self.codebook_size

  @property
  def num_heads(self):
    return heads_for(self.width, self.head_dim)

  @property
  def cycle(self):
    return _cycle_length(self.pattern)

  def layer_pattern(self, i):
    p = patterns.cycle(self.pattern, i)
    return dataclasses.replace(p, causal=self.causal)

  def _check(self):
    if self.text not in TEXT_MODES:
      raise ValueError(f"text must be one of {TEXT_MODES}, got {self.text!r}")
    if self.scan_layers and self.num_layers % self.cycle:
      raise ValueError(f"scan_layers: the pattern cycle ({self.cycle}) must divide num_layers "
                       f"({self.num_layers})")
    grid_patterns = any(not isinstance(self.layer_pattern(i), patterns.Full)
                        for i in range(self.cycle))
    if self.text == "prefix" and (grid_patterns or self.condition_radius is not None):
      raise ValueError("text='prefix' puts text tokens in the sequence: Full patterns and no "
                       "visual condition only")
    if self.names.stack is None and self.scan_layers:
      raise ValueError("scan_layers needs the layers in a scope of their own (names.stack)")
    return grid_patterns

  # --- forward ---------------------------------------------------------------------------------
  def _embedding(self):
    """The code embedding and the factorised learned positions (time, height, width); made once
    a call, as the visual condition shares them."""
    table = layers.Embed(self.codebook_size + self.num_special, self.width, dtype=self.dtype,
                         name=self.names.embedding)
    init = lambda axis: nn.with_logical_partitioning(nn.initializers.normal(0.02), (axis, "embed"))
    t, h, w = self.grid
    pos = (self.param("position_time", init("frames"), (t, self.width)),
           self.param("position_height", init("height"), (h, self.width)),
           self.param("position_width", init("width"), (w, self.width)))
    return table, pos

  def _embed(self, embedding, ids, coarse=False):
    """ids [B, t, h, w] -> [B, t, h, w, E] at the grid's first t, h, w positions. coarse: a
    coarser grid over the same extent (CogView2's low-resolution level), each cell at the
    position of the grid's cell at its origin."""
    table, (pt, ph, pw) = embedding
    t, h, w = ids.shape[1:]
    x = table(ids)
    rows, cols = np.arange(h), np.arange(w)
    if coarse:
      rows, cols = rows * self.grid[1] // h, cols * self.grid[2] // w
    return x + (pt[:t, None, None] + ph[rows][None, :, None] + pw[cols][None, None, :]).astype(x.dtype)

  def _condition(self, embedding, codes, deterministic):
    """The visual condition: codes [B, F, h, w] -> [B, F, h, w, E], non-causal Nearby blocks."""
    b, f, h, w = codes.shape
    x = self._embed(embedding, codes, coarse=(h, w) != tuple(self.grid[1:])).reshape(
        b, f * h * w, self.width)
    policy = _remat_policy(self.remat)
    block = Block if policy is None else nn.remat(Block, policy=policy)
    for i in range(self.condition_layers):
      x = block(self.width, self.num_heads, self.head_dim, self.mlp_dim, dropout=self.dropout,
                dtype=self.dtype, pattern=patterns.Nearby(self.condition_radius), impl=self.impl,
                grid=(f, h, w), deterministic=deterministic,
                flat_attention=self.names.self_attention is None, name=f"condition_{i}")(x)
    x = layers.LayerNorm(self.dtype, name="norm_condition")(x)
    return x.reshape(b, f, h, w, self.width)

  def _text(self, text, text_mask):
    if self.text is None:
      return None, None
    if text is None:
      raise ValueError(f"text={self.text!r}: pass text embeddings")
    if self.text_positions:  # cross-attention alone cannot tell which object a word belongs to
      text = layers.add_text_positions(self, text)
    if self.text == "prefix":
      text = layers.dense(self.width, (None, "embed"), dtype=self.dtype,
                          name="text_projection")(text)
    if text_mask is None:
      text_mask = jnp.ones(text.shape[:2], jnp.int32)
    return text, text_mask

  def _stack(self, deterministic):
    """The blocks and the final norm, under "transformer" (MaskGITTransformer's scope)."""
    kwargs = dict(width=self.width, num_heads=self.num_heads, head_dim=self.head_dim,
                  mlp_dim=self.mlp_dim, cross=self.text == "cross", dropout=self.dropout,
                  dtype=self.dtype, impl=self.impl, grid=tuple(self.grid),
                  deterministic=deterministic, flat_attention=self.names.self_attention is None,
                  visual_radius=self.condition_radius)
    stack = _Stack(tuple(self.layer_pattern(i) for i in range(self.num_layers)),
                   tuple(sorted(kwargs.items())), self.cycle, self.remat, self.scan_layers,
                   self.dtype, self.names.layer, name=self.names.stack or "transformer")
    if self.names.stack is None:  # NUWA: decoder_{i} and norm_out in this module's scope
      nn.share_scope(self, stack)
    return stack

  def _logits(self, x):
    return layers.dense(self.codebook_size, ("embed", "vocab"), dtype=self.dtype,
                        name=self.names.logits)(x)

  @nn.compact
  def __call__(self, tokens, text=None, text_mask=None, deterministic=True, *, cache=None,
               position=None, condition=None, visual=None):
    """Logits [B, t, h, w, V] of codes [B, t, h, w]. With `cache` (see `step`): tokens are the
    previous codes [B] and `position` the raster index of the code to predict. With a visual
    condition: `condition`, its codes [B, F, h, w] (encoded here; with tokens=None only encoded
    and returned), or `visual`, the encoded one."""
    grid_patterns = self._check()
    embedding = self._embedding()
    if condition is not None:
      visual = self._condition(embedding, condition, deterministic)
      if tokens is None:
        return visual
    if (self.condition_radius is not None) != (visual is not None):
      raise ValueError("condition_radius and a visual condition go together")
    text, text_mask = self._text(text, text_mask)
    cross = text if self.text == "cross" else None
    if cache is not None:
      if self.text == "prefix":
        raise NotImplementedError("step with a text prefix (its keys are not cached)")
      _, h, w = self.grid
      n = jnp.asarray(position, jnp.int32)
      table, (pt, ph, pw) = embedding
      x = table(tokens)
      x = x + (pt[n // (h * w)] + ph[(n // w) % h] + pw[n % w]).astype(x.dtype)
      x, cache = self._stack(True)(x, cache, cross, text_mask, None, n, visual)
      return self._logits(x), cache

    b, t, h, w = tokens.shape
    if t > self.grid[0] or h > self.grid[1] or w > self.grid[2]:
      raise ValueError(f"tokens of grid {(t, h, w)} exceed the transformer's {self.grid}")
    if grid_patterns and (t, h, w) != tuple(self.grid):
      raise ValueError(f"grid patterns need the whole grid {self.grid}, got {(t, h, w)}")
    ids = tokens
    if self.causal:  # teacher forcing: position n reads the code at n - 1 (BOS at 0)
      flat = tokens.reshape(b, -1)
      ids = jnp.concatenate([jnp.full((b, 1), self.special_id, flat.dtype), flat[:, :-1]], 1)
      ids = ids.reshape(tokens.shape)
    x = self._embed(embedding, ids)
    x = nn.with_logical_constraint(x.reshape(b, t * h * w, self.width), TOKENS)
    mask = None
    if self.text == "prefix":
      x, mask = self._prefix(x, text, text_mask)
    x, _ = self._stack(deterministic)(x, None, cross, text_mask, mask, None, visual)
    if self.text == "prefix":
      x = x[:, text.shape[1]:]
    return self._logits(x).reshape(b, t, h, w, self.codebook_size)

  def _prefix(self, x, text, text_mask):
    """[text; codes] and the prefix-LM mask [B, 1, L, L]: text sees the valid text, a code the
    valid text and (causal) the codes up to itself; every row sees itself, so none is empty."""
    lt, n = text.shape[1], x.shape[1]
    i = np.arange(lt + n)
    q, k = i[:, None], i[None, :]
    dense = ((q >= lt) & (k >= lt) & ((k <= q) | (not self.causal))) | (q == k)
    valid = jnp.concatenate([text_mask > 0, jnp.zeros((x.shape[0], n), bool)], 1)
    mask = jnp.asarray(dense)[None, None] | valid[:, None, None, :]
    return jnp.concatenate([text.astype(x.dtype), x], 1), mask

  # --- decoding --------------------------------------------------------------------------------
  def init_cache(self, batch):
    """Empty caches for `step` (causal only): per layer a `patterns.Cache` over the grid (scanned:
    per position in the cycle, stacked over the groups)."""
    if not self.causal:
      raise ValueError("decoding needs causal=True")
    self._check()
    if self.text == "prefix":
      raise NotImplementedError("step with a text prefix (the prefix's keys are not cached)")
    one = lambda i: patterns.init_cache(self.layer_pattern(i), batch, tuple(self.grid),
                                        self.num_heads, self.head_dim, self.dtype)
    if not self.scan_layers:
      return tuple(one(i) for i in range(self.num_layers))
    groups = self.num_layers // self.cycle
    return tuple(jax.tree.map(lambda a: jnp.broadcast_to(a, (groups, *a.shape)), one(j))
                 for j in range(self.cycle))

  def step(self, previous, n, cache, text=None, text_mask=None, visual=None):
    """(logits [B, V] of the code at raster index n, cache) given the code at n - 1 (`previous`
    [B]; BOS = `special_id` for n = 0), the caches of codes < n and the encoded visual condition
    (`encode_condition`), if any."""
    return self(previous, text, text_mask, cache=cache, position=n, visual=visual)

  def encode_condition(self, codes, deterministic=True):
    """The visual condition's codes [B, F, h, w] -> its encoding [B, F, h, w, E]."""
    return self(None, deterministic=deterministic, condition=codes)


# --- parameter trees -------------------------------------------------------------------------


def scan_params(params, num_layers, cycle=1):
  """An unscanned tree (transformer/layers_{i}) -> the scanned one (transformer/layers/layers_{j},
  stacked over the groups)."""
  params = dict(params)
  stack = dict(params["transformer"])
  per = [stack.pop(f"layers_{i}") for i in range(num_layers)]
  stack["layers"] = {f"layers_{j}": jax.tree.map(lambda *a: jnp.stack(a), *per[j::cycle])
                     for j in range(cycle)}
  params["transformer"] = stack
  return params


def unscan_params(params, num_layers, cycle=1):
  """The inverse of `scan_params`."""
  params = dict(params)
  stack = dict(params["transformer"])
  scanned = stack.pop("layers")
  for i in range(num_layers):
    stack[f"layers_{i}"] = jax.tree.map(lambda a, g=i // cycle: a[g],
                                        scanned[f"layers_{i % cycle}"])
  params["transformer"] = stack
  return params


def from_phenaki_params(params, scan_layers=False, num_layers=None):
  """Phenaki's MaskGITTransformer tree -> TokenTransformer's: the same names (the module keeps
  them), so only a scanned target needs a conversion."""
  if not scan_layers:
    return params
  return scan_params(params, num_layers)


def to_phenaki_params(params, scan_layers=False, num_layers=None):
  return unscan_params(params, num_layers) if scan_layers else params

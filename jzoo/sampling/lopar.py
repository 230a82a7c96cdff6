"""Local parallel autoregressive generation (LoPAR, CogView2: Ding et al. 2022, arXiv 2204.14217).

CogView2's super-resolution stage generates a large token grid in a few rounds instead of one
token at a time: the grid is cut into local windows (4x4 in the paper), a fixed order inside a
window says which tokens are generated in which round, and all windows advance in parallel.
The order is the anti-diagonal one of THUDM/CogView2's sr_pipeline/dsr_sampling.py: the token
at offset (x, y) in its window has priority x + y, so a wh x ww window takes wh + ww - 1
rounds; when a token is drawn, the ones above and to the left of it in its window are already
there, and (windows of >= 2 per axis) no two tokens of one round are neighbours in a row or a
column.

Round r runs the transformer once on the canvas (given tokens, the tokens of rounds < r, and
[MASK] everywhere else) and draws every not-given token of priority r from its logits at once;
given tokens are never changed. THUDM's code first draws the whole canvas (direct SR), and its
rounds then see those draws where a not-yet-redrawn token is: `initial=` gives that canvas
(jzoo.models.cogview2 passes direct SR's draw), and round r then masks only its own positions.
Without it the canvas shows [MASK] there.

The rounds are a `lax.fori_loop` over a traced count, and the knobs (temperature, top_k,
top_p) and the priority map itself are traced: changing them does not recompile.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jzoo.sampling import logits as logits_lib


def priority_map(grid, window):
  """int32 [*grid]: the round of each position, the sum of its offsets inside its window.

  grid: the token grid's shape, (h, w) (or (t, h, w): the same sum over three axes); window:
  the window's shape, one size per axis. Windows are anchored at 0 and a grid that is not a
  multiple of them ends with partial windows (fewer positions, the same rounds). The number
  of rounds is max + 1 = Σ (window - 1) + 1."""
  if len(grid) != len(window) or min(window) < 1:
    raise ValueError(f"priority_map: one window size >= 1 per grid axis, got {grid}, {window}")
  coords = np.indices(tuple(grid))
  return sum(c % w for c, w in zip(coords, window)).astype(np.int32)


def round_values(values, priority):
  """A per-round knob (CogView2's shrinking top-k) as an array over the rounds of `priority`:
  values[r] for round r, the last value for the rounds after it."""
  values = np.atleast_1d(np.asarray(values))
  rounds = int(np.max(priority)) + 1
  return values[np.minimum(np.arange(rounds), len(values) - 1)]


def decode(logits_fn, given_tokens, given, rng, *, priority, mask_id, temperature=1.0, top_k=0,
           top_p=1.0, rounds=None, initial=None):
  """LoPAR rounds over a flattened grid.

  logits_fn(tokens [B, N]) -> logits [B, N, V] over the real codes (guidance already applied,
  e.g. with logits.guide, as for maskgit.decode); [MASK] is `mask_id`.
  given_tokens: int32 [B, N], kept where `given` (bool [B, N]) is True.
  priority: int [N] (or [B, N]), e.g. priority_map((h, w), (4, 4)).reshape(-1): the round
  in which each position is drawn. rounds: how many (default max(priority) + 1; traced).
  Returns int32 [B, N]: every position that is not given drawn exactly once, in its round.
  """
  priority = jnp.asarray(priority, jnp.int32)
  rounds = jnp.max(priority) + 1 if rounds is None else rounds
  start = mask_id if initial is None else initial
  tokens = jnp.where(given, given_tokens, start).astype(jnp.int32)
  top_k = jnp.asarray(top_k, jnp.int32)

  def body(r, state):
    tokens, rng = state
    rng, sample_rng = jax.random.split(rng)
    now = (priority == r) & ~given
    logits = logits_fn(jnp.where(now, mask_id, tokens))
    k = top_k[jnp.minimum(r, top_k.shape[0] - 1)] if top_k.ndim else top_k
    drawn = logits_lib.sample(sample_rng, logits, temperature, k, top_p)
    return jnp.where(now, drawn, tokens), rng

  tokens, _ = jax.lax.fori_loop(0, rounds, body, (tokens, rng))
  return tokens

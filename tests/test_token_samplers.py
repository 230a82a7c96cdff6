"""jzoo.sampling: logit processors, autoregressive sampling, MaskGIT and LoPAR, against exact
answers (toy models whose logits are known functions of the tokens)."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import io_callback

from jzoo.nn import selection
from jzoo.sampling import autoregressive, logits, lopar, maskgit

# Upper 0.1% points of the chi-square distribution, by degrees of freedom.
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52}


def softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def counting_jit(fn):
  """jax.jit(fn) and the list that grows by one each time it is traced (a compile)."""
  traces = []

  def traced(*args):
    traces.append(1)
    return fn(*args)

  return jax.jit(traced), traces


# --- logit processors -----------------------------------------------------------------------------


def test_temperature_zero_is_the_argmax_without_dividing_by_zero():
  x = jax.random.normal(jax.random.PRNGKey(0), (16, 30)) * 3
  f = jax.jit(logits.sample)
  for k, p in ((0, 1.0), (5, 0.5), (1, 0.0)):
    got = f(jax.random.PRNGKey(1), x, 0.0, k, p)
    np.testing.assert_array_equal(got, np.argmax(x, -1))
  np.testing.assert_array_equal(logits.apply_temperature(x, 0.0), x)  # finite, unscaled


def test_top_k_filter_keeps_exactly_the_k_largest():
  x = jax.random.normal(jax.random.PRNGKey(2), (32, 50))
  f, traces = counting_jit(logits.top_k_filter)
  for k in (0, 1, 2, 7, 49, 50, 60):
    kept = np.isfinite(np.asarray(f(x, k)))
    want = np.ones_like(kept) if k in (0, 50, 60) else (
        np.argsort(np.argsort(-np.asarray(x), -1), -1) < k)
    np.testing.assert_array_equal(kept, want)
  assert len(traces) == 1  # k is traced


def test_top_k_draws_only_the_k_largest_at_their_renormalised_frequencies():
  v, n = 10, 20000
  x = jnp.asarray(np.random.default_rng(0).normal(size=v), jnp.float32)
  f, traces = counting_jit(lambda key, k: logits.sample(key, jnp.broadcast_to(x, (n, v)), 1.0, k))
  for k in (1, 3, 6):
    draws = np.asarray(f(jax.random.PRNGKey(k), k))
    top = np.argsort(-np.asarray(x))[:k]
    assert set(draws.tolist()) <= set(top.tolist())
    counts = np.bincount(draws, minlength=v)[top]
    expected = n * softmax(np.asarray(x, np.float64)[top])
    if k > 1:
      assert np.sum((counts - expected) ** 2 / expected) < CHI2_999[k - 1], (counts, expected)
  assert len(traces) == 1


def nucleus(x, p):
  """The nucleus of each row, computed independently: bool [..., V]."""
  probs = softmax(np.asarray(x, np.float64))
  order = np.argsort(-probs, -1)
  mass = np.cumsum(np.take_along_axis(probs, order, -1), -1)
  size = np.full(probs.shape[:-1], probs.shape[-1]) if p >= 1 else np.argmax(mass >= p, -1) + 1
  ranks = np.argsort(order, -1)
  return ranks < size[..., None], np.min(np.abs(mass - p))


def test_top_p_filter_keeps_exactly_the_nucleus():
  x = jax.random.normal(jax.random.PRNGKey(3), (64, 40)) * jnp.linspace(0.3, 4.0, 64)[:, None]
  f, traces = counting_jit(logits.top_p_filter)
  for p in (0.0, 0.05, 0.3, 0.5, 0.77, 0.9, 0.99, 1.0):
    want, margin = nucleus(x, p)
    assert p >= 1 or margin > 1e-6  # no row on the boundary: float32 sums are good to ~1e-7
    np.testing.assert_array_equal(np.isfinite(np.asarray(f(x, p))), want, err_msg=f"p={p}")
  assert len(traces) == 1
  assert (np.isfinite(np.asarray(f(x, 0.0))).sum(-1) == 1).all()  # at least the top token


def test_top_k_then_top_p_draws_from_the_nucleus_of_the_survivors():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 12)) * 2, jnp.float32)
  draws = np.asarray(logits.sample(jax.random.PRNGKey(0), jnp.broadcast_to(x, (4000, 12)),
                                   0.8, 6, 0.7))
  scaled = np.asarray(x) / np.float32(0.8)
  top6 = np.argsort(-scaled[0])[:6]
  survivors = np.full_like(scaled, -np.inf)
  survivors[0, top6] = scaled[0, top6]
  allowed = set(np.flatnonzero(nucleus(survivors, 0.7)[0][0]).tolist())
  assert set(draws.tolist()) == allowed and len(allowed) < 6


def _static_top_k_sample(rng, x, k, temperature):
  """The sampler NUWA's bundled samples were made with (static k, kth_largest), kept as the
  reference: the traced sampler must draw the same codes."""
  x = x.astype(jnp.float32) / temperature
  if 0 < k < x.shape[-1]:
    x = jnp.where(x < selection.kth_largest(x, (k,)), -jnp.inf, x)
  return jax.random.categorical(rng, x, axis=-1).astype(jnp.int32)


def test_sample_equals_the_static_top_k_sampler_bit_for_bit():
  x = jax.random.normal(jax.random.PRNGKey(4), (8, 64)) * 2
  ours = jax.jit(logits.sample)
  theirs = jax.jit(_static_top_k_sample, static_argnums=(2, 3))
  for k in (0, 1, 5, 64):
    for t in (1.0, 0.7):
      np.testing.assert_array_equal(ours(jax.random.PRNGKey(5), x, t, k, 1.0),
                                    theirs(jax.random.PRNGKey(5), x, k, t))


def test_guidance_is_the_formula_and_w_1_is_the_conditional_logits():
  cond, uncond = (jax.random.normal(jax.random.PRNGKey(i), (4, 9)) for i in (6, 7))
  f, traces = counting_jit(logits.guide)
  for w in (0.0, 0.5, 3.0, 7.5):
    np.testing.assert_allclose(f(cond, uncond, w), uncond + w * (cond - uncond), rtol=1e-5,
                               atol=1e-5)
  np.testing.assert_array_equal(f(cond, uncond, 1.0), cond)  # exactly
  assert len(traces) == 1
  minus = jnp.full((1, 3), -jnp.inf)
  assert (np.asarray(logits.guide(minus, minus, 3.0)) == -np.inf).all()  # no nan


# --- autoregressive -------------------------------------------------------------------------------

V = 7


def chain(prev, n):
  """A deterministic Markov chain that also reads the position."""
  return (3 * prev + n + 1) % V


def chain_step(state, prev, n):
  return jax.nn.one_hot(chain(prev, n), V) * 1e9, state + 1


def test_autoregressive_reproduces_a_deterministic_chain_and_given_tokens_steer_it():
  b, length = 3, 12
  given = np.zeros((b, length), bool)
  given[1, 4] = given[2, [0, 7]] = True
  given_tokens = np.full((b, length), 5, np.int32)
  for t in (0.0, 1.0):
    out = np.asarray(autoregressive.sample(chain_step, jnp.int32(0), length, jax.random.PRNGKey(0),
                                           given_tokens=jnp.asarray(given_tokens),
                                           given=jnp.asarray(given), temperature=t, bos=2))
    for row in range(b):
      prev, want = 2, []
      for n in range(length):
        prev = 5 if given[row, n] else chain(prev, n)
        want.append(prev)
      np.testing.assert_array_equal(out[row], want)
  assert out[1, 5] == chain(5, 5) and out[0, 5] != out[1, 5]  # the given token steered the next


def test_autoregressive_bigram_transition_frequencies_match_the_model():
  v, b, length = 4, 4000, 16
  probs = np.random.default_rng(2).dirichlet(np.ones(v), size=v + 1)  # row v: after bos
  table = jnp.log(jnp.asarray(probs, jnp.float32))
  step = lambda state, prev, n: (table[prev], state)
  f, traces = counting_jit(lambda key, t: autoregressive.sample(
      step, (), length, key, temperature=t, bos=v, batch_size=b))
  for t in (1.0, 0.5):
    out = np.asarray(f(jax.random.PRNGKey(int(10 * t)), t))
    prev = np.concatenate([np.full((b, 1), v), out[:, :-1]], 1)
    model = softmax(np.log(probs) / t)
    for i in range(v + 1):
      nxt = out[prev == i]
      freq = np.bincount(nxt, minlength=v) / len(nxt)
      bound = 5 * np.sqrt(model[i] * (1 - model[i]) / len(nxt)) + 1e-3
      assert (np.abs(freq - model[i]) < bound).all(), (t, i, freq, model[i])
  assert len(traces) == 1


def cached_model(table):
  """A toy transformer: the logits at n are table[token n-1] - 0.5 * (how often each code
  occurs among tokens < n, a repetition penalty), read from a per-position cache of one-hot
  'keys' as a KV cache would be (sums of halves: exact in float32, whatever the order).
  Returns (step_fn, teacher_forced(tokens) -> logits [B, N, V], bos)."""
  v = table.shape[1]
  bos = v

  def step(cache, prev, n):
    cache = jax.lax.dynamic_update_slice(cache, jax.nn.one_hot(prev, v + 1)[:, None], (0, n, 0))
    seen = (jnp.arange(cache.shape[1]) <= n)[None, :, None]
    counts = jnp.sum(jnp.where(seen, cache[..., :v], 0.0), axis=1)
    return table[prev] - 0.5 * counts, cache

  def teacher_forced(tokens):
    inputs = jnp.concatenate([jnp.full((tokens.shape[0], 1), bos), tokens[:, :-1]], 1)
    return table[inputs] - 0.5 * jnp.cumsum(jax.nn.one_hot(inputs, v + 1)[..., :v], axis=1)

  return step, teacher_forced, bos


def split_keys(rng, n):
  keys = []
  for _ in range(n):
    rng, k = jax.random.split(rng)
    keys.append(k)
  return jnp.stack(keys)


@jax.jit
def sample_each_position(keys, full, t, k, p):
  """What the loop must have drawn from logits `full` [B, N, V]: position n with keys[n]."""
  return jax.vmap(logits.sample, (0, 1, None, None, None), 1)(keys, full, t, k, p)


@pytest.mark.parametrize("knobs", [(1.0, 0, 1.0), (0.8, 3, 0.9), (0.0, 0, 1.0)])
def test_autoregressive_with_a_cache_equals_teacher_forced_recomputation(knobs):
  b, length, v = 3, 10, 6
  table = jax.random.normal(jax.random.PRNGKey(8), (v + 1, v)) * 2
  step, teacher_forced, bos = cached_model(table)
  rng = jax.random.PRNGKey(9)
  t, k, p = knobs
  out = jax.jit(lambda: autoregressive.sample(
      step, jnp.zeros((b, length, v + 1)), length, rng, temperature=t, top_k=k, top_p=p, bos=bos,
      batch_size=b))()
  want = sample_each_position(split_keys(rng, length), teacher_forced(out), t, k, p)
  np.testing.assert_array_equal(out, want)
  assert len(set(np.asarray(out).ravel().tolist())) > 1


def test_autoregressive_guidance_runs_one_batch_of_2b_conditional_rows_first():
  b, length, v = 2, 8, 6
  cond_table, uncond_table = (jax.random.normal(jax.random.PRNGKey(i), (v + 1, v))
                              for i in (10, 11))
  cond_step, cond_tf, bos = cached_model(cond_table)
  uncond_step, uncond_tf, _ = cached_model(uncond_table)

  def step(cache, prev, n):
    assert prev.shape == (2 * b,)
    lc, cc = cond_step(cache[:b], prev[:b], n)
    lu, cu = uncond_step(cache[b:], prev[b:], n)
    return jnp.concatenate([lc, lu]), jnp.concatenate([cc, cu])

  rng = jax.random.PRNGKey(12)
  f, traces = counting_jit(lambda w, t: autoregressive.sample(
      step, jnp.zeros((2 * b, length, v + 1)), length, rng, temperature=t, guidance=w, bos=bos,
      batch_size=b))
  for w in (1.0, 3.0):
    out = f(w, 1.0)
    guided = logits.guide(cond_tf(out), uncond_tf(out), w)
    want = sample_each_position(split_keys(rng, length), guided, 1.0, 0, 1.0)
    np.testing.assert_array_equal(out, want)
  assert len(traces) == 1


def test_changing_the_knobs_does_not_recompile():
  step, _, bos = cached_model(jax.random.normal(jax.random.PRNGKey(13), (7, 6)))

  def guided_step(cache, prev, n):  # 2B = 4 rows; the unconditional logits are 1 lower
    logits_2b, cache = step(cache, prev, n)
    return logits_2b.at[2:].add(-1.0), cache

  def run(key, t, k, p, w):
    return autoregressive.sample(guided_step, jnp.zeros((4, 5, 7)), 5, key, temperature=t,
                                 top_k=k, top_p=p, guidance=w, bos=bos, batch_size=2)

  f, traces = counting_jit(run)
  for i, (t, k, p, w) in enumerate([(1.0, 0, 1.0, 1.0), (0.0, 3, 0.5, 2.0), (0.7, 1, 0.9, 0.0)]):
    f(jax.random.PRNGKey(i), t, k, p, w)
  assert len(traces) == 1 and f._cache_size() == 1


# --- MaskGIT (moved from jzoo.nn) -----------------------------------------------------------------


def test_maskgit_moved_and_its_knobs_are_traced():
  assert all(callable(getattr(maskgit, name)) for name in
             ("mask_ratio", "training_mask", "num_still_masked", "decode", "mean_log_likelihood"))
  with pytest.raises(ModuleNotFoundError):
    importlib.import_module("jzoo.nn.maskgit")
  f, traces = counting_jit(lambda steps, t, key: maskgit.decode(
      lambda tok: jnp.zeros((2, 16, 4)).at[..., 1].set(2.0), jnp.zeros((2, 16), jnp.int32),
      jnp.zeros((2, 16), bool), key, steps=steps, mask_id=4, temperature=t))
  for steps, t in ((1, 1.0), (4, 0.5), (9, 2.0)):
    assert (np.asarray(f(steps, t, jax.random.PRNGKey(steps))) < 4).all()
  assert len(traces) == 1


# --- LoPAR ----------------------------------------------------------------------------------------


def test_priority_map_is_the_anti_diagonal_inside_each_window():
  got = lopar.priority_map((8, 12), (4, 4))
  want = np.array([[i % 4 + j % 4 for j in range(12)] for i in range(8)])
  np.testing.assert_array_equal(got, want)
  # Each window holds every round, 1, 2, 3, 4, 3, 2, 1 positions of them: 7 rounds.
  window = got[4:8, 8:12]
  np.testing.assert_array_equal(np.bincount(window.ravel()), [1, 2, 3, 4, 3, 2, 1])
  # No two positions of one round are row or column neighbours.
  assert (got[:, 1:] != got[:, :-1]).all() and (got[1:] != got[:-1]).all()
  # Partial windows and three axes.
  assert lopar.priority_map((5, 6), (4, 4)).max() == 6
  np.testing.assert_array_equal(lopar.priority_map((2, 3, 3), (2, 2, 3))[1, 1],
                                [2, 3, 4])
  with pytest.raises(ValueError):
    lopar.priority_map((4, 4), (2,))


def test_lopar_draws_each_position_once_in_its_round_in_parallel_and_keeps_given_tokens():
  b, (h, w), v = 2, (8, 8), 10
  mask_id = v
  priority = lopar.priority_map((h, w), (4, 4)).reshape(-1)
  rounds = int(priority.max()) + 1
  given = np.random.default_rng(3).random((b, h * w)) < 0.2
  given_tokens = np.where(given, 9, 0).astype(np.int32)
  canvases = []

  def record(tokens):  # host side: what the transformer saw, and which call this is
    canvases.append(np.asarray(tokens))
    return np.int32(len(canvases) - 1)

  def logits_fn(tokens):
    call = io_callback(record, jax.ShapeDtypeStruct((), jnp.int32), tokens, ordered=True)
    return jnp.broadcast_to(jax.nn.one_hot(call, v) * 1e9, (*tokens.shape, v))  # "the round"

  out = np.asarray(jax.jit(lambda key: lopar.decode(
      logits_fn, jnp.asarray(given_tokens), jnp.asarray(given), key, priority=priority,
      mask_id=mask_id, top_k=3))(jax.random.PRNGKey(0)))
  assert len(canvases) == rounds == 7  # one transformer pass per round, for all 64 positions
  np.testing.assert_array_equal(out[given], 9)
  free = ~given
  np.testing.assert_array_equal(out[free], np.broadcast_to(priority, out.shape)[free])
  for r, canvas in enumerate(canvases):  # before round r: rounds < r drawn, the rest [MASK]
    np.testing.assert_array_equal(canvas[given], 9)
    drawn = np.broadcast_to(priority < r, out.shape)
    np.testing.assert_array_equal(canvas[free & drawn], out[free & drawn])
    assert (canvas[free & ~drawn] == mask_id).all()


def test_lopar_samples_from_the_logits_and_compiles_once_for_its_knobs_and_maps():
  b, n, v = 4, 64, 5
  x = jax.random.normal(jax.random.PRNGKey(14), (v,))

  def run(priority, t, k, p, key):
    return lopar.decode(lambda tok: jnp.broadcast_to(x, (b, n, v)), jnp.zeros((b, n), jnp.int32),
                        jnp.zeros((b, n), bool), key, priority=priority, mask_id=v,
                        temperature=t, top_k=k, top_p=p)

  f, traces = counting_jit(run)
  for i, (window, t, k, p) in enumerate([((4, 4), 1.0, 0, 1.0), ((2, 2), 0.0, 2, 0.5),
                                         ((8, 8), 1.0, 2, 1.0)]):
    out = np.asarray(f(lopar.priority_map((8, 8), window).reshape(-1), t, k, p,
                       jax.random.PRNGKey(i)))
    assert (out < v).all()
    if t == 0:
      assert (out == int(np.argmax(x))).all()
    if k == 2:
      assert set(out.ravel().tolist()) <= set(np.argsort(-np.asarray(x))[:2].tolist())
  assert len(traces) == 1

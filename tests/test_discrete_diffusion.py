"""Discrete-time DDPM (Karlo's UnCLIPScheduler) and the improved-DDPM hybrid loss.

Schedule tables and the 4-step loops in tests/golden/karlo_prior_golden.npz come from
diffusers 0.42.1's UnCLIPScheduler (scripts/make_karlo_prior_golden.py), driven by the
closed-form `toy_model` that this file computes the same way in JAX.
"""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jzoo.diffusion import discrete
from jzoo.errors import ConfigError

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")


@pytest.fixture(scope="module")
def golden():
  return dict(np.load(os.path.join(GOLDEN, "karlo_prior_golden.npz")))


def toy_model(x, t, learned):
  """scripts/make_karlo_prior_golden.py's toy_model, in JAX."""
  s = t.astype(jnp.float32)[:, None] / 1000.0
  j = jnp.arange(x.shape[1], dtype=jnp.float32)[None]
  out = jnp.tanh(0.7 * x + jnp.sin(3.0 * s + 0.5 * j)) * (1.5 - s)
  if learned:
    out = jnp.concatenate([out, jnp.cos(2.0 * x + s + 0.3 * j) * 0.9], axis=1)
  return out


def test_schedule_matches_diffusers(golden):
  s = discrete.DiscreteSchedule()
  np.testing.assert_array_equal(s.betas, golden["betas"])
  np.testing.assert_allclose(s.alphas_cumprod, golden["alphas_cumprod"], atol=1e-6, rtol=0)
  for n in (2, 4, 7, 25, 27, 64):  # 27: float64 rounding differs from exact rational rounding
    np.testing.assert_array_equal(s.timesteps(n), golden[f"timesteps_{n}"])
  table = s.timestep_table(64)
  np.testing.assert_array_equal(table[25, :25], golden["timesteps_25"])
  assert (table[25, 25:] == -1).all()
  linear = discrete.DiscreteSchedule(beta_schedule="linear")
  np.testing.assert_allclose(linear.betas[[0, -1]], [1e-4, 0.02], rtol=1e-6)
  assert s.timesteps(1).tolist() == [999]


@pytest.mark.parametrize("case", range(4))
def test_sampling_loop_matches_unclip_scheduler(golden, case):
  variance, prediction, clip_range = json.loads(str(golden["scheduler_cases"][case]))
  schedule = discrete.DiscreteSchedule(variance_type=variance, prediction_type=prediction,
                                       clip_sample_range=clip_range)
  model = lambda x, t: toy_model(x, t, variance == "learned_range")
  init, noise = golden[f"case{case}_init"], golden[f"case{case}_noise"]
  rng = jax.random.PRNGKey(0)
  static = jax.jit(lambda x, z: discrete.sample(model, x, rng, schedule, 4, step_noise=z))
  np.testing.assert_allclose(static(init, noise), golden[f"case{case}_final"], atol=1e-3, rtol=0)
  traced = jax.jit(lambda x, z, n: discrete.sample(model, x, rng, schedule, n, step_noise=z,
                                                   max_steps=6))
  np.testing.assert_allclose(traced(init, noise, 4), golden[f"case{case}_final"], atol=1e-3,
                             rtol=0)


def test_traced_steps_do_not_recompile():
  schedule = discrete.karlo("decoder")
  model = lambda x, t: toy_model(x, t, True)
  run = jax.jit(lambda n, rng: discrete.sample(model, jnp.ones((2, 3)), rng, schedule, n,
                                               max_steps=8))
  a, b = run(3, jax.random.PRNGKey(1)), run(7, jax.random.PRNGKey(1))
  assert run._cache_size() == 1
  assert np.all(np.isfinite(a)) and np.all(np.isfinite(b)) and not np.allclose(a, b)


def test_step_errors():
  schedule = discrete.karlo("decoder")
  with pytest.raises(ValueError, match="2 x 3 channels"):
    discrete.step(schedule, jnp.zeros((2, 3)), 5, 4, jnp.zeros((2, 3)), jnp.zeros((2, 3)))
  with pytest.raises(ConfigError, match="variance_type"):
    discrete.DiscreteSchedule(variance_type="fixed_large")
  with pytest.raises(ConfigError, match="max_steps"):
    discrete.sample(None, jnp.zeros((1, 1)), None, schedule, jnp.int32(3))


def _numpy_vlb(eps_hat, v, x0, x_t, t):
  """An independent float64 KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) in bits per dim."""
  f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
  betas = np.minimum([1 - f((i + 1) / 1000) / f(i / 1000) for i in range(1000)], 0.999)
  abar = np.cumprod(1 - betas)
  a_t, a_prev, beta = abar[t], abar[t - 1], betas[t]
  post_var = beta * (1 - a_prev) / (1 - a_t)  # Ho et al. 2020, eq. 7

  def posterior_mean(x_start):
    return (np.sqrt(a_prev) * beta * x_start + np.sqrt(1 - beta) * (1 - a_prev) * x_t) / (1 - a_t)

  x0_hat = (x_t - np.sqrt(1 - a_t) * eps_hat) / np.sqrt(a_t)
  frac = (v + 1) / 2
  model_var = np.exp(frac * np.log(beta) + (1 - frac) * np.log(post_var))
  m1, s1 = posterior_mean(x0), np.sqrt(post_var)
  m2, s2 = posterior_mean(x0_hat), np.sqrt(model_var)
  kl = np.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
  return kl.mean(axis=1) / np.log(2)


def test_vlb_term_is_the_gaussian_kl():
  schedule = discrete.karlo("decoder")
  r = np.random.RandomState(0)
  b, c = 3, 5
  x0, eps_hat, x_t = (r.randn(b, c) for _ in range(3))
  v = r.uniform(-1, 1, (b, c))
  t = np.array([1, 250, 900])
  got = discrete.vlb_terms(schedule, jnp.asarray(np.concatenate([eps_hat, v], 1), jnp.float32),
                           jnp.asarray(x0, jnp.float32), jnp.asarray(x_t, jnp.float32),
                           jnp.asarray(t))
  want = np.concatenate([_numpy_vlb(eps_hat[i:i + 1], v[i:i + 1], x0[i:i + 1], x_t[i:i + 1], t[i])
                         for i in range(b)])
  np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-6)
  # t = 0 is the decoder's NLL of 8-bit data: positive, finite.
  nll = discrete.vlb_terms(schedule, jnp.zeros((1, 2 * c)), jnp.asarray(x0[:1] / 4, jnp.float32),
                           jnp.asarray(x_t[:1], jnp.float32), jnp.zeros((1,), jnp.int32))
  assert np.isfinite(nll).all() and (nll > 0).all()


def test_hybrid_loss_trains_the_variance_only_through_vlb():
  schedule = discrete.karlo("decoder")
  x0 = jax.random.uniform(jax.random.PRNGKey(0), (8, 4, 4, 3), minval=-1, maxval=1)

  def apply(p, x_t, t):  # [mean half | variance half] on the channel axis
    return jnp.concatenate([p["mean"] * x_t, jnp.tanh(p["var"]) * jnp.ones_like(x_t)], -1)

  p = {"mean": jnp.float32(0.5), "var": jnp.float32(0.3)}
  rng = jax.random.PRNGKey(1)
  loss, terms = discrete.hybrid_loss(lambda x, t: apply(p, x, t), x0, rng, schedule)
  assert loss.shape == (8,) and np.isfinite(loss).all()
  np.testing.assert_allclose(loss, terms["mse"] + 0.001 * 1000 * terms["vlb"], rtol=1e-6)
  vlb_grad = jax.grad(lambda p: discrete.hybrid_loss(
      lambda x, t: apply(p, x, t), x0, rng, schedule)[1]["vlb"].mean())(p)
  assert vlb_grad["mean"] == 0.0 and vlb_grad["var"] != 0.0
  mse_grad = jax.grad(lambda p: discrete.hybrid_loss(
      lambda x, t: apply(p, x, t), x0, rng, schedule)[1]["mse"].mean())(p)
  assert mse_grad["mean"] != 0.0 and mse_grad["var"] == 0.0
  fixed = discrete.karlo("super_res")
  loss, terms = discrete.hybrid_loss(lambda x, t: p["mean"] * x, x0, rng, fixed)
  np.testing.assert_array_equal(loss, terms["mse"])

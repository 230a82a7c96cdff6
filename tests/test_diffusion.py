"""The diffusion core against analytic answers: schedules, parameterizations, Gaussian sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jzoo.diffusion import guidance, losses, samplers, schedules, thresholding
from jzoo.diffusion import parameterization as param_lib
from jzoo.errors import ConfigError

# --- schedules ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_schedule_is_decreasing_variance_preserving_and_clipped(name):
  s = schedules.Schedule(name, logsnr_min=-15.0, logsnr_max=12.0)
  t = jnp.linspace(0.0, 1.0, 101)
  lam = s.logsnr(t)
  assert np.all(np.diff(np.asarray(lam)) < 0)
  assert float(lam.max()) <= 12.0 + 1e-4 and float(lam.min()) >= -15.0 - 1e-4
  alpha, sigma = schedules.alpha_sigma(lam)
  np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, atol=1e-6)
  np.testing.assert_allclose(np.log(alpha**2 / sigma**2), lam, atol=1e-3)


def test_cosine_schedule_matches_nichol_dhariwal():
  # alpha_bar(t) = cos(pi t / 2)^2, up to the truncation to [-20, 20] (a 5e-5 shift in t).
  s = schedules.Schedule("cosine")
  t = np.array([0.1, 0.3, 0.5, 0.7, 0.9])
  alpha, _ = s.alpha_sigma(t)
  np.testing.assert_allclose(alpha**2, np.cos(np.pi * t / 2) ** 2, atol=5e-5)
  np.testing.assert_allclose(s.logsnr(0.0), 20.0, atol=1e-3)
  np.testing.assert_allclose(s.logsnr(1.0), -20.0, atol=1e-3)


def test_linear_schedule_matches_discrete_ddpm_betas():
  betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
  alpha_bar = np.cumprod(1.0 - betas)
  s = schedules.Schedule("linear")
  for i in (50, 200, 500, 800):
    alpha, _ = s.alpha_sigma((i + 1) / 1000.0)
    np.testing.assert_allclose(np.log(float(alpha) ** 2), np.log(alpha_bar[i]), rtol=0.02)


def test_schedule_shift_adds_to_logsnr_and_unknown_names_fail():
  base, shifted = schedules.Schedule("cosine"), schedules.Schedule("cosine", shift=-2.0)
  np.testing.assert_allclose(shifted.logsnr(0.4), base.logsnr(0.4) - 2.0, atol=1e-5)
  with pytest.raises(ConfigError):
    schedules.Schedule("sigmoid")


# --- parameterizations and losses ------------------------------------------------


@pytest.mark.parametrize("kind", param_lib.PARAMETERIZATIONS)
def test_parameterizations_round_trip(kind):
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  x0 = jax.random.normal(k1, (4, 3))
  eps = jax.random.normal(k2, (4, 3))
  alpha, sigma = schedules.alpha_sigma(jax.random.uniform(k3, (4, 1), minval=-5, maxval=5))
  z = alpha * x0 + sigma * eps
  out = param_lib.target(kind, x0, eps, alpha, sigma)
  x0_hat, eps_hat = param_lib.to_x0_eps(kind, out, z, alpha, sigma)
  np.testing.assert_allclose(x0_hat, x0, atol=1e-4)
  np.testing.assert_allclose(eps_hat, eps, atol=1e-4)


def test_v_target_definition():
  alpha, sigma = np.float32(0.6), np.float32(0.8)
  x0, eps = np.float32(2.0), np.float32(-1.0)
  np.testing.assert_allclose(param_lib.target("v", x0, eps, alpha, sigma), 0.6 * -1.0 - 0.8 * 2.0)


@pytest.mark.parametrize("kind", param_lib.PARAMETERIZATIONS)
def test_loss_is_zero_for_the_oracle_and_positive_otherwise(kind):
  x0 = jax.random.uniform(jax.random.PRNGKey(1), (8, 4, 4, 3), minval=-1, maxval=1)

  def oracle(z, logsnr):  # knows x0, so it can recover eps from z exactly
    alpha, sigma = (param_lib.broadcast_to(a, z) for a in schedules.alpha_sigma(logsnr))
    eps = (z - alpha * x0) / sigma
    return param_lib.target(kind, x0, eps, alpha, sigma)

  s = schedules.Schedule("cosine", logsnr_min=-10, logsnr_max=10)
  per_example, logsnr = losses.diffusion_loss(oracle, x0, jax.random.PRNGKey(2), schedule=s,
                                              kind=kind)
  assert per_example.shape == (8,) and logsnr.shape == (8,)
  assert float(per_example.max()) < 1e-4
  zero, _ = losses.diffusion_loss(lambda z, l: jnp.zeros_like(z), x0, jax.random.PRNGKey(2),
                                  schedule=s, kind=kind)
  assert float(zero.min()) > 1e-3


def test_low_discrepancy_times_cover_the_unit_interval():
  t = np.sort(np.asarray(losses.sample_times(jax.random.PRNGKey(3), 16)))
  assert t.min() >= 0 and t.max() < 1
  np.testing.assert_allclose(np.diff(t), 1 / 16, atol=1e-6)


def test_min_snr_weight():
  logsnr = jnp.log(jnp.array([0.5, 5.0, 50.0]))
  snr = np.array([0.5, 5.0, 50.0])
  np.testing.assert_allclose(losses.loss_weight(logsnr, "eps", "min_snr", 5.0),
                             np.minimum(snr, 5) / snr, rtol=1e-5)
  np.testing.assert_allclose(losses.loss_weight(logsnr, "v", "min_snr", 5.0),
                             np.minimum(snr, 5) / (snr + 1), rtol=1e-5)


# --- samplers on a 1-D Gaussian, where the optimal denoiser is known ---------------

MU, STD = 0.7, 0.4
SCHEDULE = schedules.Schedule("cosine", logsnr_min=-12.0, logsnr_max=12.0)


def gaussian_denoiser(z, logsnr):
  """E[x0 | z] for x0 ~ N(MU, STD^2): the exact minimiser of the denoising loss."""
  alpha, sigma = (param_lib.broadcast_to(a, z) for a in schedules.alpha_sigma(logsnr))
  x0 = MU + alpha * STD**2 / (alpha**2 * STD**2 + sigma**2) * (z - alpha * MU)
  return x0, (z - alpha * x0) / sigma


def exact_flow(z1):
  """The probability-flow ODE from t = 1 to 0 for Gaussian data: a monotone affine map."""
  alpha, sigma = schedules.alpha_sigma(SCHEDULE.logsnr(1.0))
  return MU + STD * (z1 - alpha * MU) / jnp.sqrt(alpha**2 * STD**2 + sigma**2)


def run(sampler, steps, n=2000, seed=0, eta=0.0):
  noise_rng, rng = jax.random.split(jax.random.PRNGKey(seed))
  z1 = jax.random.normal(noise_rng, (n, 1))
  fn = jax.jit(lambda z, r, k: samplers.sample(gaussian_denoiser, z, r, schedule=SCHEDULE,
                                               steps=k, sampler=sampler, eta=eta))
  return z1, fn(z1, rng, steps)


def test_ddim_with_many_steps_follows_the_exact_flow_and_matches_ddpm_statistics():
  z1, x_ddim = run("ddim", 500)
  np.testing.assert_allclose(x_ddim, exact_flow(z1), atol=1e-2)
  _, x_coarse = run("ddim", 50)
  err = lambda x: float(jnp.max(jnp.abs(x - exact_flow(z1))))
  assert err(x_ddim) < err(x_coarse) / 5  # first order: the error falls like 1 / steps
  _, x_ddpm = run("ddpm", 500, seed=1)
  n = x_ddpm.shape[0]
  # Both reach the data distribution N(MU, STD^2) (standard errors STD/sqrt(n), STD/sqrt(2n)).
  for x in (x_ddim, x_ddpm):
    assert abs(float(x.mean()) - MU) < 4 * STD / np.sqrt(n)
    assert abs(float(x.std()) - STD) < 4 * STD / np.sqrt(2 * n)
  assert abs(float(x_ddim.std()) - float(x_ddpm.std())) < 6 * STD / np.sqrt(2 * n)


def test_ddpm_with_few_steps_is_biased_but_many_steps_converge():
  # Plugging E[x0|z] into the ancestral step under-disperses; the error vanishes with steps.
  _, few = run("ddpm", 4, seed=2)
  _, many = run("ddpm", 400, seed=2)
  assert abs(float(few.std()) - STD) > abs(float(many.std()) - STD)


def test_ddim_eta_one_is_ddpm():
  _, ddpm = run("ddpm", 25, n=64, seed=3)
  _, ddim = run("ddim", 25, n=64, seed=3, eta=1.0)
  np.testing.assert_allclose(ddim, ddpm, atol=1e-4)


def test_dpm_solver_is_accurate_with_few_steps():
  z1, x = run("dpm++2m", 50)
  np.testing.assert_allclose(x, exact_flow(z1), atol=1e-2)
  _, x_fine = run("dpm++2m", 200)
  err = lambda x: float(jnp.max(jnp.abs(x - exact_flow(z1))))
  assert err(x_fine) < err(x) / 5  # faster than first order (4x the steps, 4x less error)
  _, x_dpm = run("dpm++2m", 10)
  _, x_ddim = run("ddim", 10)
  assert err(x_dpm) < err(x_ddim)


@pytest.mark.parametrize("sampler", samplers.SAMPLERS)
def test_sampler_reproduces_for_a_seed(sampler):
  _, a = run(sampler, 6, n=16, seed=5, eta=0.5)
  _, b = run(sampler, 6, n=16, seed=5, eta=0.5)
  _, c = run(sampler, 6, n=16, seed=6, eta=0.5)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_unknown_sampler_fails():
  with pytest.raises(ConfigError):
    samplers.sample(gaussian_denoiser, jnp.zeros((2, 1)), jax.random.PRNGKey(0),
                    schedule=SCHEDULE, steps=2, sampler="euler")


def test_sampler_steps_are_traced_without_recompiling():
  traces = []

  def f(z, steps):
    traces.append(1)
    return samplers.sample(gaussian_denoiser, z, jax.random.PRNGKey(0), schedule=SCHEDULE,
                           steps=steps, sampler="dpm++2m")

  f = jax.jit(f)
  z = jnp.ones((4, 1))
  outs = [f(z, jnp.int32(k)) for k in (3, 7, 20)]
  assert len(traces) == 1
  assert not np.allclose(outs[0], outs[2])


# --- thresholding ----------------------------------------------------------------


def test_dynamic_thresholding_keeps_x0_in_range_and_matches_numpy():
  x = 3.0 * jax.random.normal(jax.random.PRNGKey(7), (4, 8, 8, 3))
  y = thresholding.dynamic_threshold(x, 0.995)
  assert float(jnp.abs(y).max()) <= 1.0 + 1e-6
  flat = np.abs(np.asarray(x).reshape(4, -1))
  s = np.maximum(np.quantile(flat, 0.995, axis=1), 1.0)[:, None, None, None]
  np.testing.assert_allclose(y, np.clip(np.asarray(x), -s, s) / s, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n,q", [(192, 0.995), (3072, 0.995), (50, 0.9), (7, 0.5), (10, 1.0)])
def test_upper_quantile_equals_numpy_quantile(n, q):
  flat = np.abs(np.random.default_rng(n).normal(size=(3, n))).astype(np.float32)
  np.testing.assert_allclose(thresholding.upper_quantile(jnp.asarray(flat), q),
                             np.quantile(flat, q, axis=1), rtol=1e-6)


def test_dynamic_thresholding_leaves_in_range_samples_alone():
  x = jax.random.uniform(jax.random.PRNGKey(8), (2, 4, 4, 3), minval=-0.9, maxval=0.9)
  np.testing.assert_allclose(thresholding.dynamic_threshold(x), x)
  np.testing.assert_allclose(thresholding.static_threshold(2 * x), np.clip(2 * x, -1, 1))


# --- classifier-free guidance -------------------------------------------------------


def _toy_model(calls):
  def apply_fn(z, logsnr, cond):
    calls.append(z.shape[0])
    return z * cond["scale"][:, None] + logsnr[:, None]
  return apply_fn


def test_guidance_weight_one_is_the_conditional_model_and_zero_the_unconditional():
  calls = []
  fn = _toy_model(calls)
  z = jax.random.normal(jax.random.PRNGKey(9), (3, 2))
  logsnr = jnp.array([0.0, 1.0, -1.0])
  cond, uncond = {"scale": jnp.array([1.0, 2.0, 3.0])}, {"scale": jnp.array([-0.5, 0.5, 0.0])}
  out_c = fn(z, logsnr, cond)
  out_u = fn(z, logsnr, uncond)
  calls.clear()
  np.testing.assert_array_equal(guidance.guided_output(fn, z, logsnr, cond, uncond, 1.0), out_c)
  assert calls == [6]  # one call on the doubled batch
  np.testing.assert_allclose(guidance.guided_output(fn, z, logsnr, cond, uncond, 0.0), out_u,
                             atol=1e-6)
  np.testing.assert_allclose(guidance.guided_output(fn, z, logsnr, cond, uncond, 4.0),
                             out_u + 4.0 * (out_c - out_u), atol=1e-5)


def test_guided_denoiser_at_weight_one_equals_unguided():
  fn = _toy_model([])
  z = jax.random.normal(jax.random.PRNGKey(10), (3, 2))
  logsnr = jnp.array([0.5, 1.0, -1.0])
  cond, uncond = {"scale": jnp.array([0.1, 0.2, 0.3])}, {"scale": jnp.zeros(3)}
  kw = dict(kind="eps", thresholding="none")
  plain = guidance.make_denoiser(fn, cond=cond, **kw)(z, logsnr)
  guided = guidance.make_denoiser(fn, cond=cond, uncond=uncond, guidance=1.0, **kw)(z, logsnr)
  for a, b in zip(plain, guided):
    np.testing.assert_array_equal(a, b)


def test_thresholded_denoiser_recomputes_eps_from_x0():
  z = 5.0 * jax.random.normal(jax.random.PRNGKey(11), (2, 4, 4, 3))
  logsnr = jnp.array([1.0, 2.0])
  cond = {"scale": jnp.array([3.0, -3.0])}
  apply_fn = lambda z, l, c: z * c["scale"][:, None, None, None]
  denoise = guidance.make_denoiser(apply_fn, kind="x0", cond=cond, thresholding="dynamic")
  x0, eps = denoise(z, logsnr)
  assert float(jnp.abs(x0).max()) <= 1.0 + 1e-6
  alpha, sigma = (param_lib.broadcast_to(a, z) for a in schedules.alpha_sigma(logsnr))
  np.testing.assert_allclose(alpha * x0 + sigma * eps, z, atol=1e-4)


def test_drop_condition_zeroes_whole_captions_at_the_rate():
  mask = jnp.ones((4000, 5), jnp.int32)
  dropped = guidance.drop_condition(jax.random.PRNGKey(12), mask, 0.1)
  rows = np.asarray(dropped).sum(1)
  assert set(np.unique(rows)) <= {0, 5}
  assert abs(np.mean(rows == 0) - 0.1) < 0.02

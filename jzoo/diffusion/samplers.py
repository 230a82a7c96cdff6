"""Samplers over a uniform time grid t_i = 1 - i / steps, inside one `lax.fori_loop`.

`steps` may be traced: the loop has a dynamic trip count, so changing the number
of steps (or the guidance weight, or the seed) does not recompile. Every sampler
calls `denoise(z, logsnr [B]) -> (x0, eps)` once per step.

With s < t, lambda = log-SNR, alpha/sigma of each, and r = SNR_t / SNR_s:
  ddpm      ancestral sampling from q(z_s | z_t, x0) (Ho et al. 2020, continuous
            form of Kingma et al. 2021):
            mean = alpha_t sigma_s^2 / (alpha_s sigma_t^2) z_t + alpha_s (1 - r) x0,
            variance = sigma_s^2 (1 - r).
  ddim      z_s = alpha_s x0 + sqrt(sigma_s^2 - s~^2) eps + s~ noise, with
            s~^2 = eta^2 sigma_s^2 (1 - r) (Song et al. 2021). eta = 0 is
            deterministic; eta = 1 is ddpm.
  dpm++2m   DPM-Solver++(2M) (Lu et al. 2022), multistep second order in the
            data prediction, h = (lambda_s - lambda_t) / 2:
            z_s = (sigma_s / sigma_t) z_t - alpha_s expm1(-h) D,
            D = (1 + 1/(2 r_h)) x0_t - 1/(2 r_h) x0_prev, r_h = h_prev / h;
            first order (D = x0_t) on the first and the last step.
"""

import jax
import jax.numpy as jnp

from jzoo.diffusion.schedules import alpha_sigma
from jzoo.errors import ConfigError

SAMPLERS = ("ddpm", "ddim", "dpm++2m")


def check(name):
  if name not in SAMPLERS:
    raise ConfigError(f"unknown sampler {name!r}; choose one of {SAMPLERS}")
  return name


def sample(denoise, noise, rng, *, schedule, steps, sampler="dpm++2m", eta=0.0):
  """Runs the reverse process from z_1 = `noise` to t = 0. Returns z_0 (float32, noise's shape)."""
  check(sampler)
  n = jnp.maximum(jnp.asarray(steps, jnp.int32), 1)
  b = noise.shape[0]

  def logsnr_at(i):
    return schedule.logsnr(1.0 - i.astype(jnp.float32) / n.astype(jnp.float32))

  def body(i, carry):
    z, x0_prev, h_prev = carry
    lam_t, lam_s = logsnr_at(i), logsnr_at(i + 1)
    alpha_t, sigma_t = alpha_sigma(lam_t)
    alpha_s, sigma_s = alpha_sigma(lam_s)
    x0, eps = denoise(z, jnp.full((b,), lam_t, jnp.float32))
    one_minus_r = -jnp.expm1(lam_t - lam_s)  # 1 - SNR_t / SNR_s, in [0, 1]
    h = 0.5 * (lam_s - lam_t)
    if sampler == "ddpm":
      mean = alpha_t * sigma_s**2 / (alpha_s * sigma_t**2) * z + alpha_s * one_minus_r * x0
      noise_i = jax.random.normal(jax.random.fold_in(rng, i), z.shape, jnp.float32)
      z = mean + sigma_s * jnp.sqrt(one_minus_r) * noise_i
    elif sampler == "ddim":
      s_tilde = jnp.asarray(eta, jnp.float32) * sigma_s * jnp.sqrt(one_minus_r)
      noise_i = jax.random.normal(jax.random.fold_in(rng, i), z.shape, jnp.float32)
      z = (alpha_s * x0 + jnp.sqrt(jnp.maximum(sigma_s**2 - s_tilde**2, 0.0)) * eps
           + s_tilde * noise_i)
    else:  # dpm++2m
      r_h = h_prev / h
      second = (1.0 + 0.5 / r_h) * x0 - (0.5 / r_h) * x0_prev
      first_order = (i == 0) | (i == n - 1)
      d = jnp.where(first_order, x0, second)
      z = (sigma_s / sigma_t) * z - alpha_s * jnp.expm1(-h) * d
    return z.astype(jnp.float32), x0.astype(jnp.float32), h

  init = (noise.astype(jnp.float32), jnp.zeros_like(noise, jnp.float32), jnp.float32(1.0))
  z, _, _ = jax.lax.fori_loop(0, n, body, init)
  return z

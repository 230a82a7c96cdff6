"""The denoising training loss in continuous time, with optional per-noise-level weighting.

  t ~ U(0, 1) (low-discrepancy over the batch, as in VDM), eps ~ N(0, I),
  z = alpha_t x + sigma_t eps, loss = w(lambda_t) * mean((f(z, lambda_t) - target)^2),
where the target is the parameterization's (eps, v or x0). Weightings:
  uniform  w = 1: the plain MSE of the parameterization's target
           (eps: Ho et al. 2020's "simple" loss; v: SNR + 1 weighted x-loss).
  min_snr  Min-SNR-gamma (Hang et al. 2023): the x-space weight min(SNR, gamma),
           expressed in the target's space.
"""

import jax
import jax.numpy as jnp

from jzoo.diffusion import parameterization as param_lib
from jzoo.diffusion.schedules import alpha_sigma
from jzoo.errors import ConfigError

WEIGHTINGS = ("uniform", "min_snr")


def sample_times(rng, batch_size):
  """Low-discrepancy times in [0, 1): one uniform offset, evenly spread over the batch."""
  u = jax.random.uniform(rng, ())
  return jnp.mod(u + jnp.arange(batch_size, dtype=jnp.float32) / batch_size, 1.0)


def loss_weight(logsnr, kind, weighting="uniform", gamma=5.0):
  if weighting == "uniform":
    return jnp.ones_like(logsnr)
  if weighting == "min_snr":
    snr = jnp.exp(logsnr)
    clipped = jnp.minimum(snr, gamma)
    return {"eps": clipped / snr, "v": clipped / (snr + 1.0), "x0": clipped}[kind]
  raise ConfigError(f"unknown loss weighting {weighting!r}; choose one of {WEIGHTINGS}")


def diffusion_loss(apply_fn, x0, rng, *, schedule, kind="v", weighting="uniform", gamma=5.0):
  """Per-example losses [B] and the sampled log-SNRs [B].

  apply_fn(z, logsnr) -> network output, same shape as x0 (logsnr is [B])."""
  t_rng, eps_rng = jax.random.split(rng)
  b = x0.shape[0]
  logsnr = schedule.logsnr(sample_times(t_rng, b))
  alpha, sigma = (param_lib.broadcast_to(a, x0) for a in alpha_sigma(logsnr))
  eps = jax.random.normal(eps_rng, x0.shape, jnp.float32)
  z = alpha * x0 + sigma * eps
  out = apply_fn(z, logsnr).astype(jnp.float32)
  tgt = param_lib.target(kind, x0, eps, alpha, sigma)
  mse = jnp.mean(jnp.square(out - tgt), axis=tuple(range(1, x0.ndim)))
  return loss_weight(logsnr, kind, weighting, gamma) * mse, logsnr

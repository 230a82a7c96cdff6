"""Continuous-time noise schedules in log-SNR form (Kingma et al. 2021, Variational Diffusion Models).

A schedule maps time t in [0, 1] to lambda(t) = log(alpha_t^2 / sigma_t^2), falling
from `logsnr_max` (t = 0, nearly clean) to `logsnr_min` (t = 1, nearly pure
noise). The process is variance preserving: z_t = alpha_t x + sigma_t eps with
alpha_t^2 = sigmoid(lambda), sigma_t^2 = sigmoid(-lambda).

  cosine  lambda(t) = -2 log tan(pi t / 2)   (Nichol & Dhariwal 2021), truncated
          to [logsnr_min, logsnr_max] by rescaling t.
  linear  DDPM's linear betas (1e-4 .. 0.02 over 1000 steps) in continuous time:
          alpha_t^2 = exp(-(b0 t + (b1 - b0) t^2 / 2)), b0 = 0.1, b1 = 20.

`shift` adds a constant to lambda ("shifted" schedules, Hoogeboom et al. 2023:
2 log(64 / resolution) keeps a high-resolution model's signal-to-noise per
patch like a 64x64 one's).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from jzoo.errors import ConfigError

SCHEDULES = ("cosine", "linear")


@dataclasses.dataclass(frozen=True)
class Schedule:
  name: str = "cosine"
  logsnr_min: float = -20.0
  logsnr_max: float = 20.0
  shift: float = 0.0
  beta_min: float = 0.1  # linear schedule only: T * beta_1
  beta_max: float = 20.0  # linear schedule only: T * beta_T

  def __post_init__(self):
    if self.name not in SCHEDULES:
      raise ConfigError(f"unknown noise schedule {self.name!r}; choose one of {SCHEDULES}")
    if not self.logsnr_min < self.logsnr_max:
      raise ConfigError(f"schedule needs logsnr_min < logsnr_max, got "
                        f"{self.logsnr_min} and {self.logsnr_max}")

  def logsnr(self, t):
    """log-SNR at time t (any shape), float32."""
    t = jnp.asarray(t, jnp.float32)
    if self.name == "cosine":
      # u = a + t (b - a) in (0, pi/2); near pi/2 use tan(u) = 1 / tan(pi/2 - u) with
      # pi/2 - u formed from the other end, so float32 keeps both ends exact.
      a = math.atan(math.exp(-0.5 * self.logsnr_max))
      b_complement = math.atan(math.exp(0.5 * self.logsnr_min))  # pi/2 - b
      width = math.pi / 2 - a - b_complement
      lam = jnp.where(t < 0.5, -2.0 * jnp.log(jnp.tan(a + t * width)),
                      2.0 * jnp.log(jnp.tan(b_complement + (1.0 - t) * width)))
    else:
      log_alpha2 = -(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t)
      lam = -jnp.log(jnp.expm1(-log_alpha2))
      lam = jnp.clip(lam, self.logsnr_min, self.logsnr_max)
    return lam + self.shift

  def alpha_sigma(self, t):
    return alpha_sigma(self.logsnr(t))


def alpha_sigma(logsnr):
  """(alpha, sigma) of a log-SNR: alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda)."""
  logsnr = jnp.asarray(logsnr, jnp.float32)
  return jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))


def from_config(cfg):
  """A Schedule from a config block with keys schedule, logsnr_min, logsnr_max, schedule_shift."""
  return Schedule(name=str(cfg.schedule), logsnr_min=float(cfg.logsnr_min),
                  logsnr_max=float(cfg.logsnr_max), shift=float(cfg.get("schedule_shift", 0.0)))

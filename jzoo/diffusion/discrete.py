"""Discrete-time DDPM as Karlo runs it (diffusers' `UnCLIPScheduler`), and the improved-DDPM
hybrid loss (Nichol & Dhariwal 2021) for a learned variance.

jzoo's own diffusion (schedules, samplers, losses) is continuous in log-SNR; this module is
the integer-timestep process of a 1000-step DDPM, for weights trained that way (Karlo) and
for the decoder's learned-variance option. With T train steps, betas b_t, a_t = 1 - b_t,
abar_t = prod_{s<=t} a_s:

  betas       squaredcos_cap_v2: b_t = min(1 - f(t+1)/f(t), 0.999), f(t) = cos^2(pi/2 (t/T
              + 0.008) / 1.008) (float64, then float32); linear: linspace(beta_start, beta_end)
  respacing   `timesteps(n)`: round(arange(n) * (T - 1) / (n - 1)) reversed (UnCLIPScheduler's
              set_timesteps; float64, round half to even). From t to the next entry s (-1
              after the last): abar_-1 = 1, beta = 1 - abar_t / abar_s (b_t if s = t - 1)
  step        x0 from the output (epsilon: (x - sqrt(1 - abar_t) eps) / sqrt(abar_t); sample:
              as is), clipped to +-clip_sample_range; mean = sqrt(abar_s) beta / (1 - abar_t) x0
              + sqrt(1 - beta) (1 - abar_s) / (1 - abar_t) x; variance
              v = (1 - abar_s) / (1 - abar_t) beta, noise std sqrt(max(v, 1e-20))
              (fixed_small_log) or exp(0.5 (f log beta + (1 - f) log v)), f = (out_var + 1) / 2,
              where the model output carries 2x channels, [mean half | variance half] on the
              last axis (learned_range); no noise at t = 0
  hybrid loss L_simple + lambda L_vlb, lambda = 0.001: mean (eps - eps_hat)^2 plus
              lambda * T * (the one sampled term of L_vlb, bits per dim), with the mean from
              stop_gradient(eps_hat) so that L_vlb trains only the variance; the t = 0 term is
              the discretized Gaussian decoder NLL of 8-bit data in [-1, 1]

Karlo's three schedulers (kakaobrain/karlo-v1-alpha, `UnCLIPScheduler` configs, as in
diffusers' scripts/convert_kakao_brain_unclip_to_diffusers.py), beta_schedule
squaredcos_cap_v2, num_train_timesteps 1000, clip_sample True:
  prior_scheduler      variance_type fixed_small_log, prediction_type sample, clip_sample_range 5.0
  decoder_scheduler    variance_type learned_range, prediction_type epsilon, clip_sample_range 1.0
  super_res_scheduler  variance_type fixed_small_log, prediction_type epsilon, clip_sample_range 1.0
and UnCLIPPipeline's default steps: prior 25, decoder 25, super-resolution 7.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jzoo.errors import ConfigError

BETA_SCHEDULES = ("squaredcos_cap_v2", "linear")
VARIANCE_TYPES = ("fixed_small_log", "learned_range")
PREDICTION_TYPES = ("epsilon", "sample")
KARLO = {  # UnCLIPScheduler configs of kakaobrain/karlo-v1-alpha
    "prior": dict(variance_type="fixed_small_log", prediction_type="sample", clip_sample_range=5.0),
    "decoder": dict(variance_type="learned_range", prediction_type="epsilon"),
    "super_res": dict(variance_type="fixed_small_log", prediction_type="epsilon"),
}


@dataclasses.dataclass(frozen=True)
class DiscreteSchedule:
  num_train_timesteps: int = 1000
  beta_schedule: str = "squaredcos_cap_v2"
  beta_start: float = 1e-4  # linear only
  beta_end: float = 0.02  # linear only
  variance_type: str = "fixed_small_log"
  prediction_type: str = "epsilon"
  clip_sample: bool = True
  clip_sample_range: float = 1.0

  def __post_init__(self):
    for value, allowed, what in ((self.beta_schedule, BETA_SCHEDULES, "beta_schedule"),
                                 (self.variance_type, VARIANCE_TYPES, "variance_type"),
                                 (self.prediction_type, PREDICTION_TYPES, "prediction_type")):
      if value not in allowed:
        raise ConfigError(f"unknown {what} {value!r}; choose one of {allowed}")
    if self.num_train_timesteps < 2:
      raise ConfigError(f"num_train_timesteps must be >= 2, got {self.num_train_timesteps}")

  @functools.cached_property
  def betas(self):
    """[T] float32, as diffusers computes them."""
    n = self.num_train_timesteps
    if self.beta_schedule == "linear":
      return np.linspace(self.beta_start, self.beta_end, n, dtype=np.float32)
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.asarray([min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)], np.float32)

  @functools.cached_property
  def alphas_cumprod(self):
    """[T] float32 cumulative product of 1 - betas (float32, as torch.cumprod)."""
    return np.cumprod(1.0 - self.betas, dtype=np.float32)

  def logsnr(self, t):
    """log(abar_t / (1 - abar_t)) at integer steps t (any shape), float32."""
    ac = jnp.asarray(self.alphas_cumprod)[jnp.asarray(t)]
    return jnp.log(ac) - jnp.log1p(-ac)

  def timesteps(self, steps):
    """UnCLIPScheduler.set_timesteps(steps).timesteps: int32 [steps], from T - 1 down to 0.

    One step is [T - 1] (where diffusers divides by zero)."""
    steps = int(steps)
    if steps < 1 or steps > self.num_train_timesteps:
      raise ConfigError(f"steps must be in [1, {self.num_train_timesteps}], got {steps}")
    if steps == 1:
      return np.asarray([self.num_train_timesteps - 1], np.int32)
    ratio = (self.num_train_timesteps - 1) / (steps - 1)
    return (np.arange(0, steps) * ratio).round()[::-1].astype(np.int32)

  def timestep_table(self, max_steps):
    """[max_steps + 1, max_steps + 1] int32: row n is timesteps(n) then -1s (row 0: all -1),
    so that a traced step count picks its row."""
    table = np.full((max_steps + 1, max_steps + 1), -1, np.int32)
    for n in range(1, max_steps + 1):
      table[n, :n] = self.timesteps(n)
    return table

  def add_noise(self, x0, noise, t):
    """q(x_t | x0): sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, t [B] int."""
    ac = _expand(jnp.asarray(self.alphas_cumprod)[t], x0)
    return jnp.sqrt(ac) * x0 + jnp.sqrt(1.0 - ac) * noise


def karlo(part):
  """Karlo's scheduler for "prior", "decoder" or "super_res"."""
  if part not in KARLO:
    raise ConfigError(f"unknown Karlo scheduler {part!r}; choose one of {tuple(KARLO)}")
  return DiscreteSchedule(**KARLO[part])


def _expand(a, like):
  """[B] -> [B, 1, ..., 1] to broadcast against `like`."""
  return jnp.reshape(a, a.shape + (1,) * (like.ndim - a.ndim))


def _split_output(schedule, out, x):
  c = x.shape[-1]
  if schedule.variance_type != "learned_range":
    return out, None
  if out.shape[-1] != 2 * c:
    raise ValueError(f"learned_range needs the model output to have 2 x {c} channels on the "
                     f"last axis (mean half, variance half), got {out.shape}")
  return out[..., :c], out[..., c:]


def guided(schedule, uncond_out, cond_out, guidance):
  """Classifier-free guidance of two outputs of a model of this schedule: u + g (c - u), on the
  mean half only for learned_range (the conditional variance half is kept: GLIDE, Karlo)."""
  if schedule.variance_type != "learned_range":
    return uncond_out + guidance * (cond_out - uncond_out)
  c = cond_out.shape[-1] // 2
  mean = uncond_out[..., :c] + guidance * (cond_out[..., :c] - uncond_out[..., :c])
  return jnp.concatenate([mean, cond_out[..., c:]], axis=-1)


def step(schedule, model_output, t, prev_t, x, noise):
  """One UnCLIPScheduler.step from step t to prev_t (-1 after the last). Returns (x_prev, x0).

  t and prev_t are int scalars or [B] (traced is fine); `noise` is x's shape."""
  out, var_out = _split_output(schedule, model_output.astype(jnp.float32), x)
  x = x.astype(jnp.float32)
  t, prev_t = jnp.asarray(t, jnp.int32), jnp.asarray(prev_t, jnp.int32)
  betas = jnp.asarray(schedule.betas)
  ac = jnp.asarray(schedule.alphas_cumprod)
  ac_t = ac[t]
  ac_prev = jnp.where(prev_t >= 0, ac[jnp.maximum(prev_t, 0)], 1.0)
  beta = jnp.where(prev_t == t - 1, betas[t], 1.0 - ac_t / ac_prev)
  ex = lambda a: _expand(jnp.broadcast_to(a, t.shape), x)
  ac_t, ac_prev, beta = ex(ac_t), ex(ac_prev), ex(beta)
  if schedule.prediction_type == "epsilon":
    x0 = (x - jnp.sqrt(1.0 - ac_t) * out) / jnp.sqrt(ac_t)
  else:
    x0 = out
  if schedule.clip_sample:
    x0 = jnp.clip(x0, -schedule.clip_sample_range, schedule.clip_sample_range)
  mean = (jnp.sqrt(ac_prev) * beta / (1.0 - ac_t)) * x0 + (
      jnp.sqrt(1.0 - beta) * (1.0 - ac_prev) / (1.0 - ac_t)) * x
  var = (1.0 - ac_prev) / (1.0 - ac_t) * beta
  noisy = ex(t > 0)
  if schedule.variance_type == "fixed_small_log":
    std = jnp.exp(0.5 * jnp.log(jnp.maximum(var, 1e-20)))
  else:  # learned_range; at t = 0 (no noise) v = 0: keep the logs finite
    frac = (var_out + 1.0) / 2.0
    log_var = frac * jnp.log(beta) + (1.0 - frac) * jnp.log(jnp.where(noisy, var, 1.0))
    std = jnp.exp(0.5 * log_var)
  x_prev = mean + jnp.where(noisy, std * noise.astype(jnp.float32), 0.0)
  return x_prev, x0


def sample(model_fn, noise, rng, schedule, steps, *, step_noise=None, max_steps=None):
  """Karlo's sampling loop from x_T = `noise`: model_fn(x, t int32 [B]) -> output. Returns x_0.

  `steps` is a Python int, or a traced int with `max_steps` (its static bound: the timestep
  table `schedule.timestep_table(max_steps)` is a constant of the program, so changing the
  step count does not recompile). Step i draws normal(fold_in(rng, i)), or `step_noise[i]`
  when given ([steps, *noise.shape], for parity with a reference)."""
  if isinstance(steps, (int, np.integer)) and max_steps is None:
    row = jnp.asarray(np.append(schedule.timesteps(steps), -1).astype(np.int32))
    n = int(steps)
  else:
    if max_steps is None:
      raise ConfigError("a traced step count needs max_steps, the static bound of its table")
    n = jnp.clip(jnp.asarray(steps, jnp.int32), 1, max_steps)
    row = jnp.asarray(schedule.timestep_table(max_steps))[n]
  b = noise.shape[0]

  def body(i, x):
    t, prev_t = row[i], row[i + 1]
    out = model_fn(x, jnp.full((b,), t, jnp.int32))
    if step_noise is None:
      z = jax.random.normal(jax.random.fold_in(rng, i), x.shape, jnp.float32)
    else:
      z = jnp.asarray(step_noise)[i]
    return step(schedule, out, t, prev_t, x, z)[0]

  return jax.lax.fori_loop(0, n, body, noise.astype(jnp.float32))


# --- the improved-DDPM hybrid loss -------------------------------------------------------

def normal_kl(mean1, logvar1, mean2, logvar2):
  """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def _approx_standard_normal_cdf(x):
  return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, mean, log_scale):
  """log P(x) of 8-bit data in [-1, 1] (bins 2/255 wide, open end bins), elementwise."""
  centered = x - mean
  inv_std = jnp.exp(-log_scale)
  cdf_plus = _approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
  cdf_min = _approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus,
                   jnp.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def posterior(schedule, x0, x_t, t):
  """q(x_{t-1} | x_t, x0) over consecutive train steps: (mean, clipped log variance).

  The log variance at t = 0 (where it is 0) is that of t = 1, as in improved-diffusion."""
  betas = jnp.asarray(schedule.betas)
  ac = jnp.asarray(schedule.alphas_cumprod)
  ac_prev = jnp.concatenate([jnp.ones((1,), jnp.float32), ac[:-1]])
  post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
  log_var = jnp.log(jnp.concatenate([post_var[1:2], post_var[1:]]))
  ex = lambda a: _expand(a[t], x_t)
  mean = (ex(betas * jnp.sqrt(ac_prev) / (1.0 - ac)) * x0
          + ex((1.0 - ac_prev) * jnp.sqrt(1.0 - betas) / (1.0 - ac)) * x_t)
  return mean, ex(log_var) + jnp.zeros_like(x_t)


def vlb_terms(schedule, model_output, x0, x_t, t):
  """The sampled term of L_vlb per example [B], bits per dimension: KL(q || p_theta) for
  t > 0, the decoder NLL of x0 at t = 0. The model mean comes from stop_gradient of the mean
  half, so only the variance half (learned_range) gets gradients."""
  out, var_out = _split_output(schedule, model_output.astype(jnp.float32), x_t)
  out = jax.lax.stop_gradient(out)
  ac_t = _expand(jnp.asarray(schedule.alphas_cumprod)[t], x_t)
  if schedule.prediction_type == "epsilon":
    x0_hat = (x_t - jnp.sqrt(1.0 - ac_t) * out) / jnp.sqrt(ac_t)
  else:
    x0_hat = out
  model_mean, min_log = posterior(schedule, x0_hat, x_t, t)
  true_mean, true_log_var = posterior(schedule, x0, x_t, t)
  if var_out is None:  # fixed variance: the clipped posterior variance ("fixed_large" differs)
    model_log_var = min_log
  else:
    max_log = _expand(jnp.log(jnp.asarray(schedule.betas))[t], x_t)
    frac = (var_out + 1.0) / 2.0
    model_log_var = frac * max_log + (1.0 - frac) * min_log
  axes = tuple(range(1, x_t.ndim))
  kl = jnp.mean(normal_kl(true_mean, true_log_var, model_mean, model_log_var), axes)
  nll = -jnp.mean(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var), axes)
  return jnp.where(t == 0, nll, kl) / math.log(2.0)


def hybrid_loss(apply_fn, x0, rng, schedule, *, vlb_weight=0.001):
  """Per-example L_hybrid [B] and its terms {"mse", "vlb", "t"}.

  apply_fn(x_t, t int32 [B]) -> output of x0's shape, or 2x channels on the last axis
  (mean half, variance half) for learned_range; the mean half predicts the schedule's
  prediction_type. t ~ U{0..T-1}. L_vlb sums T terms and one is sampled, so the loss is
  mse + vlb_weight * T * vlb (improved-diffusion's RESCALED_MSE hybrid). With a fixed
  variance the loss is the mse alone (vlb is still returned, as a metric)."""
  t_rng, eps_rng = jax.random.split(rng)
  b = x0.shape[0]
  x0 = x0.astype(jnp.float32)
  t = jax.random.randint(t_rng, (b,), 0, schedule.num_train_timesteps)
  eps = jax.random.normal(eps_rng, x0.shape, jnp.float32)
  x_t = schedule.add_noise(x0, eps, t)
  out = apply_fn(x_t, t).astype(jnp.float32)
  pred, _ = _split_output(schedule, out, x0)
  target = eps if schedule.prediction_type == "epsilon" else x0
  mse = jnp.mean(jnp.square(pred - target), axis=tuple(range(1, x0.ndim)))
  vlb = vlb_terms(schedule, out, x0, x_t, t)
  if schedule.variance_type != "learned_range":  # nothing to train in it: report it only
    return mse, {"mse": mse, "vlb": vlb, "t": t}
  loss = mse + vlb_weight * schedule.num_train_timesteps * vlb
  return loss, {"mse": mse, "vlb": vlb, "t": t}

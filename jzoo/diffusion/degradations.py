"""Corruptions of a super-resolution model's low-resolution input (unCLIP, section 2.1 / appendix).

The upsamplers of unCLIP are trained on corrupted low-resolution images so that they are robust
to the artefacts of the stage below: Gaussian blur for the first, a BSR-style degradation (Zhang
et al. 2021, "Designing a Practical Degradation Model for Deep Blind Image Super-Resolution")
for the second. Everything is jittable with per-example, traced strengths.
"""

import jax
import jax.numpy as jnp

DEGRADATIONS = ("blur", "bsr")


def _taps(sigma, radius):
  """Normalised 1D Gaussian taps [B, 2r+1] for per-example `sigma` [B] (0 gives the identity)."""
  offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  s = jnp.maximum(sigma, 1e-3)[:, None]
  w = jnp.exp(-0.5 * jnp.square(offsets[None] / s))
  return w / jnp.sum(w, axis=1, keepdims=True)


def _blur_axis(x, taps, axis):
  """Convolves [B, H, W, C] along `axis` (1 or 2) with per-example taps, reflecting the borders."""
  radius = (taps.shape[1] - 1) // 2
  pad = [(0, 0)] * x.ndim
  pad[axis] = (radius, radius)
  padded = jnp.pad(x, pad, mode="reflect")
  n = x.shape[axis]
  out = jnp.zeros_like(x)
  for i in range(taps.shape[1]):
    window = jax.lax.slice_in_dim(padded, i, i + n, axis=axis)
    out = out + taps[:, i].reshape(-1, 1, 1, 1) * window
  return out


def gaussian_blur(x, sigma, max_sigma):
  """Isotropic Gaussian blur of images [B, H, W, C] with std `sigma` [B] (pixels), separable;
  the kernel radius is ceil(3 max_sigma), a static bound on the traced sigma."""
  radius = max(1, int(-(-3.0 * float(max_sigma) // 1)))
  radius = min(radius, x.shape[1] - 1, x.shape[2] - 1)
  taps = _taps(jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (x.shape[0],)), radius)
  return _blur_axis(_blur_axis(x.astype(jnp.float32), taps, 1), taps, 2)


def random_blur(rng, x, sigma_range):
  """`gaussian_blur` with sigma ~ U(lo, hi) per example (the first upsampler's corruption)."""
  lo, hi = (float(v) for v in sigma_range)
  sigma = jax.random.uniform(rng, (x.shape[0],), jnp.float32, lo, hi)
  return gaussian_blur(x, sigma, hi)


def bsr_degrade(rng, x, sigma_range, noise_max=0.1):
  """A BSR-style degradation, in BSR's random order of its own: Gaussian blur, a down-and-up
  resize by a random factor in [1, 2] with a random kernel (bilinear or bicubic), then Gaussian
  noise of a random level up to `noise_max` (in [-1, 1] pixel units). BSR's JPEG step is left
  out (no JPEG codec in XLA); its anisotropic kernels are approximated by two isotropic blurs
  taken in a random order with the resize."""
  b, h, w, c = x.shape
  blur_rng, order_rng, scale_rng, kernel_rng, level_rng, noise_rng = jax.random.split(rng, 6)
  blurred = random_blur(blur_rng, x, sigma_range)

  def resize(img, method):
    small = jax.image.resize(img, (b, max(1, h // 2), max(1, w // 2), c), method)
    return jax.image.resize(small, (b, h, w, c), method)

  scale = jax.random.uniform(scale_rng, (b, 1, 1, 1), jnp.float32)  # 0: none, 1: a 2x round trip
  bicubic = jax.random.bernoulli(kernel_rng, 0.5, (b, 1, 1, 1))
  resized = jnp.where(bicubic, resize(blurred, "bicubic"), resize(blurred, "bilinear"))
  blur_first = scale * resized + (1 - scale) * blurred
  resized_first = random_blur(order_rng, scale * jnp.where(bicubic, resize(x, "bicubic"),
                                                           resize(x, "bilinear"))
                              + (1 - scale) * x, sigma_range)
  order = jax.random.bernoulli(order_rng, 0.5, (b, 1, 1, 1))
  y = jnp.where(order, blur_first, resized_first)
  level = jax.random.uniform(level_rng, (b, 1, 1, 1), jnp.float32, 0.0, noise_max)
  y = y + level * jax.random.normal(noise_rng, y.shape, jnp.float32)
  return jnp.clip(y, -1.0, 1.0)

"""Classifier-free guidance (Ho & Salimans 2021) and the denoiser that samplers call.

Training drops the conditioning of a fraction of examples (`drop_condition`);
sampling runs the conditional and unconditional passes in one batch and
extrapolates: out = out_u + w (out_c - out_u), written as
out_c + (w - 1)(out_c - out_u) so that w = 1 is exactly the conditional model.
Outputs are combined in the network's own parameterization: eps, v and x0 are
affine in the output at a fixed z, so this equals guiding eps.
"""

import jax
import jax.numpy as jnp

from jzoo.diffusion import parameterization as param_lib
from jzoo.diffusion.schedules import alpha_sigma
from jzoo.diffusion.thresholding import threshold


def drop_condition(rng, mask, rate):
  """Zeroes the text mask of a `rate` fraction of examples: their caption becomes "no text"."""
  keep = jax.random.bernoulli(rng, 1.0 - rate, (mask.shape[0],))
  return mask * keep[:, None].astype(mask.dtype)


def guided_output(apply_fn, z, logsnr, cond, uncond, guidance):
  """apply_fn(z, logsnr, c) -> output. `cond`/`uncond`: pytrees with batch-leading leaves.

  One network call on the doubled batch; returns the guided output [B, ...]."""
  b = z.shape[0]
  both = jax.tree_util.tree_map(lambda c, u: jnp.concatenate([c, u], axis=0), cond, uncond)
  out = apply_fn(jnp.concatenate([z, z], 0), jnp.concatenate([logsnr, logsnr], 0), both)
  out_c, out_u = out[:b], out[b:]
  w = jnp.asarray(guidance, out.dtype)
  return out_c + (w - 1.0) * (out_c - out_u)


def make_denoiser(apply_fn, *, kind, cond, uncond=None, guidance=1.0, thresholding="dynamic",
                  percentile=0.995):
  """The (x0, eps) predictor a sampler calls: denoise(z, logsnr [B]) -> (x0, eps).

  With `uncond`, the output is guided with weight `guidance` (traced). The
  predicted x0 is thresholded and eps recomputed from it, as Imagen does."""

  def denoise(z, logsnr):
    if uncond is None:
      out = apply_fn(z, logsnr, cond)
    else:
      out = guided_output(apply_fn, z, logsnr, cond, uncond, guidance)
    alpha, sigma = (param_lib.broadcast_to(a, z) for a in alpha_sigma(logsnr))
    x0, eps = param_lib.to_x0_eps(kind, out.astype(jnp.float32), z, alpha, sigma)
    if thresholding != "none":
      x0 = threshold(x0, thresholding, percentile)
      eps = param_lib.eps_from_x0(x0, z, alpha, sigma)
    return x0, eps

  return denoise

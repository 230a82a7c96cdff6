"""The perceptual term of the tokenizers' training loss: LPIPS-VGG (Zhang et al. 2018), as
VQ-GAN (Esser et al. 2021) uses it, from weight files the user gives (jzoo never downloads).

  --config.tokenizer.perceptual_weight=1.0
  --config.tokenizer.perceptual_weights=vgg16-397923af.pth,vgg.pth   (or one safetensors file)

The LPIPS network is a frozen dependency of the tokenizer stage, named PERCEPTUAL in
`frozen` (the trainer loads and places it like a frozen stage); its distance is averaged
over every frame of the batch. See docs/metrics/lpips.md for the weight files.
"""

import jax
import jax.numpy as jnp

from jzoo.errors import ConfigError
from jzoo.nn import lpips

PERCEPTUAL = "perceptual"


def weight(tokenizer_config):
  return float(tokenizer_config.perceptual_weight)


def load(tokenizer_config):
  """LPIPS params from `tokenizer.perceptual_weights` (one file, or the VGG and lin files)."""
  files = [f.strip() for f in str(tokenizer_config.perceptual_weights).split(",")
           if f.strip()]
  if not 1 <= len(files) <= 2:
    raise ConfigError("tokenizer.perceptual_weight > 0 needs tokenizer.perceptual_weights: "
                      "the LPIPS-VGG weight files, 'VGG.pth,LIN.pth' or one safetensors file "
                      "(docs/metrics/lpips.md)")
  return lpips.load_lpips_params(*files)


def abstract_params():
  """Shapes and dtypes of the LPIPS params (nothing allocated)."""
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  init = lambda a, b: lpips.LPIPS().init(jax.random.PRNGKey(0), a, b)
  return jax.eval_shape(init, x, x)["params"]


def distance(params, reconstruction, target):
  """Mean LPIPS over all frames of [B, (T,) H, W, 3] tensors in [-1, 1]."""
  from jzoo.vq.discriminator import frames  # the same [B, (T,) H, W, 3] -> frames fold
  return jnp.mean(lpips.lpips(frames(reconstruction), frames(target), params))

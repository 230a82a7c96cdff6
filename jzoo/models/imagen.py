"""Imagen (Saharia et al. 2022, "Photorealistic Text-to-Image Diffusion Models with Deep
Language Understanding"): a frozen T5 text encoder and a cascade of diffusion models.

Architecture (section 2 of the paper):
  * Text: a frozen T5 encoder turns the caption into a sequence of embeddings.
    Public T5 weights are imported from `config.text_encoder.weights`
    (Hugging Face safetensors or a t5x checkpoint); without them, the
    `text_encoder` stage pretrains a small T5 encoder on the captions with a
    masked-token objective (tied output head). Either way it is frozen for
    the diffusion stages: no gradients, no optimizer state.
  * Base model: a text-conditional diffusion U-Net at low resolution
    (64x64 in the paper), conditioned on the pooled text embedding (added to
    the timestep embedding) and on the text tokens through cross-attention.
  * Super-resolution models: Efficient U-Nets that take the upsampled output
    of the previous stage, corrupted by noise conditioning augmentation (a
    random level in training, `config.sample.sr_noise_aug` at sampling), and
    the augmentation level as an extra input.
  * Classifier-free guidance: the text is dropped for 10% of training
    examples; sampling extrapolates from the unconditional to the conditional
    prediction with weight w, and dynamic thresholding keeps x0 in range.

Stages, trained independently (`--config.stage=...`): "text_encoder", then
`config.cascade` (e.g. "base", "sr"). Everything in `generate` runs in one jit.
"""

import functools

import jax
import jax.numpy as jnp

from jzoo import config as config_lib
from jzoo.diffusion import guidance as guidance_lib
from jzoo.diffusion import losses
from jzoo.diffusion import parameterization as param_lib
from jzoo.diffusion import samplers
from jzoo.diffusion import schedules
from jzoo.errors import ConfigError
from jzoo.models.base import (TEXT_TO_IMAGE, DataSpec, Model, Request, Stage, cascade_stages,
                              to_uint8)
from jzoo.nn import layers
from jzoo.nn.unet import EfficientUNet
from jzoo.text.frozen import TEXT_ENCODER, FrozenTextEncoder

# Noise conditioning augmentation corrupts the low-resolution input along a fixed cosine schedule;
# the level is the time t in [0, 1] of that schedule.
AUG_SCHEDULE = schedules.Schedule("cosine")


class Imagen(Model):
  capabilities = frozenset({TEXT_TO_IMAGE})

  def __init__(self, config):
    super().__init__(config)
    self.cascade = cascade_stages(config, "a base stage, e.g. ('base', 'sr')")
    self.dtype = layers.dtype_of(config.train.dtype)
    self.text_encoder = FrozenTextEncoder(config)
    self.components = (self.text_encoder,)
    self.unets = {name: self._unet(name, i > 0) for i, name in enumerate(self.cascade)}
    for i, name in enumerate(self.cascade[1:], 1):
      low, high = self._stage(self.cascade[i - 1]).resolution, self._stage(name).resolution
      if high % low:
        raise ConfigError(f"stage {name!r} resolution {high} is not a multiple of the previous "
                          f"stage's {low}")
    for name in self.cascade:
      param_lib.check(self._stage(name).parameterization)
      schedules.from_config(self._stage(name))
    # The text encoder pretrains on captions alone: the smallest canvas keeps rendering cheap.
    self.stage_table = {TEXT_ENCODER: self.text_encoder.stage(
        DataSpec("shapes", int(config.text_encoder.resolution), text_length=self.text_length),
        next_stage=self.cascade[0])}
    for name in self.cascade:
      data = DataSpec("shapes", int(self._stage(name).resolution), text_length=self.text_length)
      self.stage_table[name] = Stage(
          self.text_encoder.conditioned_spec(data), init=functools.partial(self._init_unet, name),
          loss=functools.partial(self._unet_loss, name), frozen=self.text_encoder.frozen_stages())

  # --- configuration -------------------------------------------------------
  def _stage(self, name):
    return self.config.stages[name]

  def _unet(self, name, super_resolution):
    return config_lib.build(EfficientUNet, self._stage(name), super_resolution=super_resolution,
                            remat=str(self.config.train.remat), dtype=self.dtype)

  @property
  def output_shape(self):
    r = int(self._stage(self.cascade[-1]).resolution)
    return (r, r)

  # --- training ------------------------------------------------------------
  def _init_unet(self, stage, rng, batch):
    mask = batch["mask"]
    x = batch["image"]
    b = x.shape[0]
    text = jnp.zeros((b, mask.shape[1], self.text_encoder.width), self.dtype)
    logsnr = jnp.zeros((b,), jnp.float32)
    if self.cascade.index(stage) == 0:
      return self.unets[stage].init(rng, x, logsnr, text, mask)
    return self.unets[stage].init(rng, x, logsnr, text, mask, low_res=x, aug_logsnr=logsnr)

  def _unet_loss(self, stage, params, batch, rng, frozen):
    s = self._stage(stage)
    drop_rng, aug_rng, dropout_rng, diffusion_rng = jax.random.split(rng, 4)
    text = self.text_encoder.embeddings(frozen, batch)
    mask = guidance_lib.drop_condition(drop_rng, batch["mask"], float(s.text_drop))
    x = batch["image"].astype(jnp.float32)
    cond = {}
    if self.cascade.index(stage) > 0:
      cond = self._low_res_condition(stage, x, aug_rng)
    unet = self.unets[stage]

    def apply_fn(z, logsnr):
      return unet.apply({"params": params}, z, logsnr, text, mask, deterministic=False,
                        rngs={"dropout": dropout_rng}, **cond)

    per_example, logsnr = losses.diffusion_loss(
        apply_fn, x, diffusion_rng, schedule=schedules.from_config(s), kind=s.parameterization,
        weighting=s.loss_weighting, gamma=float(s.min_snr_gamma))
    loss = jnp.mean(per_example)
    high_noise = logsnr < 0
    metrics = {
        "mse": loss,
        "mse_high_noise": jnp.sum(per_example * high_noise) / jnp.maximum(jnp.sum(high_noise), 1),
        "mse_low_noise": jnp.sum(per_example * ~high_noise) / jnp.maximum(jnp.sum(~high_noise), 1),
    }
    return loss, metrics

  def _low_res_condition(self, stage, x, rng):
    """The SR input in training: the image itself, downsampled, upsampled back, noise-augmented."""
    prev = self.cascade[self.cascade.index(stage) - 1]
    factor = int(self._stage(stage).resolution) // int(self._stage(prev).resolution)
    low = layers.downsample_area(x, factor)
    level_rng, noise_rng = jax.random.split(rng)
    level = jax.random.uniform(level_rng, (x.shape[0],), jnp.float32, 0.0,
                               float(self._stage(stage).noise_aug_max))
    return self._augment(low, x.shape[1:3], level, noise_rng)

  def _augment(self, low, size, level, rng):
    up = jnp.clip(layers.resize(low, size), -1.0, 1.0)
    aug_logsnr = AUG_SCHEDULE.logsnr(level)
    alpha, sigma = (param_lib.broadcast_to(a, up) for a in schedules.alpha_sigma(aug_logsnr))
    noisy = alpha * up + sigma * jax.random.normal(rng, up.shape, jnp.float32)
    return {"low_res": noisy, "aug_logsnr": aug_logsnr}

  # --- sampling ------------------------------------------------------------
  def generate(self, params, request: Request, rng):
    """uint8 [B, H, W, 3] at the last stage's resolution. Jittable; steps/guidance may be traced."""
    return to_uint8(self.generate_stages(params, request, rng)[-1])

  def generate_stages(self, params, request: Request, rng):
    """The output of every stage of the cascade, as float images in [-1, 1], lowest first."""
    sample_cfg = self.config.sample
    steps = sample_cfg.steps if request.steps is None else request.steps
    guidance = sample_cfg.guidance if request.guidance is None else request.guidance
    extra = request.extra or {}
    sr_steps = extra.get("sr_steps", sample_cfg.sr_steps or steps)
    sr_aug = extra.get("sr_noise_aug", sample_cfg.sr_noise_aug)
    sr_guidance = guidance if sample_cfg.sr_guidance < 0 else sample_cfg.sr_guidance

    tokens, mask = request.tokens, request.mask
    text = self.text_encoder.encode(params[TEXT_ENCODER], tokens, mask)
    b = tokens.shape[0]
    outputs = []
    for i, name in enumerate(self.cascade):
      stage_rng = jax.random.fold_in(rng, i)
      noise_rng, sample_rng, aug_rng = jax.random.split(stage_rng, 3)
      r = int(self._stage(name).resolution)
      cond = {"text": text, "mask": mask}
      if i == 0:
        stage_steps, stage_guidance, unguided = steps, guidance, False
      else:
        level = jnp.full((b,), sr_aug, jnp.float32)
        cond.update(self._augment(outputs[-1], (r, r), level, aug_rng))
        stage_steps, stage_guidance = sr_steps, sr_guidance
        unguided = sample_cfg.sr_guidance == 1.0  # static: skip the unconditional pass entirely
      x = self._sample_stage(name, params[name], cond, stage_steps, stage_guidance, unguided,
                             jax.random.normal(noise_rng, (b, r, r, 3), jnp.float32), sample_rng)
      outputs.append(jnp.clip(x, -1.0, 1.0))
    return outputs

  def _sample_stage(self, name, params, cond, steps, guidance, unguided, noise, rng):
    s, sample_cfg = self._stage(name), self.config.sample
    unet = self.unets[name]

    def apply_fn(z, logsnr, c):
      extra = {k: c[k] for k in ("low_res", "aug_logsnr") if k in c}
      return unet.apply({"params": params}, z, logsnr, c["text"], c["mask"], **extra)

    uncond = None if unguided else dict(cond, mask=jnp.zeros_like(cond["mask"]))
    denoise = guidance_lib.make_denoiser(
        apply_fn, kind=s.parameterization, cond=cond, uncond=uncond, guidance=guidance,
        thresholding=sample_cfg.thresholding, percentile=float(sample_cfg.percentile))
    return samplers.sample(denoise, noise, rng, schedule=schedules.from_config(s), steps=steps,
                           sampler=sample_cfg.sampler, eta=float(sample_cfg.eta))


def build(config):
  return Imagen(config)

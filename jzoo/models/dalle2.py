"""DALL-E 2 = unCLIP (Ramesh et al. 2022, "Hierarchical Text-Conditional Image Generation with
CLIP Latents"). Not the survey's "175B transformer with StyleGAN2": the system the paper describes.

Architecture (sections 2.1-2.2 and appendix C of the paper):
  * CLIP (stage `clip`): text and image towers trained contrastively at a learned temperature
    (jzoo.text.contrastive), or a Hugging Face CLIP imported from `config.clip.weights`. Every
    later stage reads it frozen.
  * Prior (stage `prior`): a decoder-only transformer over [text tokens, text embedding,
    timestep, noised image embedding, learned query] (jzoo.nn.prior, diffusers' PriorTransformer
    layout) that predicts the clean CLIP image embedding z_i from the caption (a diffusion prior
    in the x0 parameterisation). Embeddings are l2-normalised and scaled by sqrt(dim). The text
    is dropped 10% of the time for classifier-free guidance; at sampling,
    `sample.prior_candidates` embeddings are drawn per caption and the one with the highest
    CLIP similarity to the caption is kept.
  * Decoder (first stage of `config.cascade`): a diffusion U-Net (jzoo.nn.unet) conditioned on
    z_i, projected to `image_embed_tokens` extra context tokens and added to the timestep
    embedding, and on CLIP's text tokens by cross-attention. z_i is zeroed 10% and the caption
    dropped 50% of the time; guidance extrapolates from the fully unconditional prediction.
  * Upsamplers (the rest of the cascade): diffusion super-resolution without text, their
    low-resolution input corrupted by Gaussian blur (the first) or a BSR-style degradation (the
    second) in training, blurred by `sample.sr_blur` at sampling.

Tasks: text-to-image; image variations (an image's z_i decoded again); interpolation between
two images' z_i (spherical) and text-diff edits (z_i moved towards the difference of two
captions' text embeddings), all in one jitted `generate`.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jzoo import config as config_lib
from jzoo.diffusion import degradations
from jzoo.diffusion import discrete
from jzoo.diffusion import guidance as guidance_lib
from jzoo.diffusion import losses
from jzoo.diffusion import parameterization as param_lib
from jzoo.diffusion import samplers
from jzoo.diffusion import schedules
from jzoo.errors import ConfigError, UserError
from jzoo.models.base import (INTERPOLATION, TEXT_TO_IMAGE, VARIATIONS, DataSpec, Model, Request,
                              Stage, cascade_stages, to_uint8)
from jzoo.nn import layers
from jzoo.nn.prior import DiffusionPrior
from jzoo.nn.transformer import Transformer
from jzoo.nn.unet import EfficientUNet
from jzoo.text.contrastive import CLIP_STAGE, ContrastiveCLIP, normalize

PRIOR = "prior"
VARIANCES = ("fixed", "learned")
MAX_DISCRETE_STEPS = 256  # the static bound of a learned-variance decoder's traced step count


def scaled(embedding):
  """The space the prior diffuses in and the decoder reads: unit norm times sqrt(dim)."""
  return normalize(embedding) * jnp.sqrt(jnp.float32(embedding.shape[-1]))


def slerp(a, b, alpha):
  """Spherical interpolation between the directions of a and b [B, D], alpha [B] in [0, 1]."""
  a, b = normalize(a), normalize(b)
  alpha = jnp.asarray(alpha, jnp.float32)[:, None]
  omega = jnp.arccos(jnp.clip(jnp.sum(a * b, -1, keepdims=True), -1.0 + 1e-6, 1.0 - 1e-6))
  so = jnp.sin(omega)
  return (jnp.sin((1 - alpha) * omega) / so) * a + (jnp.sin(alpha * omega) / so) * b


class Decoder(nn.Module):
  """The decoder: a diffusion U-Net conditioned on z_i and on the caption's tokens, read through
  GLIDE's own text transformer (Nichol et al. 2022: token and position embeddings, `text_layers`
  pre-LN blocks, trained with the decoder, as unCLIP's decoder is a modified GLIDE) or, with
  `text_layers=0`, straight from CLIP's frozen text states (as Karlo's decoder reads them)."""
  unet: EfficientUNet
  vocab_size: int = 0
  text_length: int = 0
  text_layers: int = 0
  text_width: int = 0
  text_heads: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, logsnr, clip_text, tokens, mask, image_embed, deterministic=True):
    text = clip_text
    if self.text_layers:
      h = layers.Embed(self.vocab_size, self.text_width, dtype=self.dtype, name="token_embed")(tokens)
      h = h + self.param("text_position", nn.with_logical_partitioning(
          nn.initializers.normal(0.01), ("length", "embed")), (self.text_length, self.text_width))
      text = Transformer(self.text_layers, self.text_heads, self.text_width // self.text_heads,
                         4 * self.text_width, dtype=self.dtype, name="text_transformer")(
                             h.astype(self.dtype), mask=(mask > 0)[:, None, None, :],
                             deterministic=deterministic)
    return self.unet(x, logsnr, text, mask, image_embed=image_embed, deterministic=deterministic)


def best_candidate(candidates, text_emb):
  """candidates [n, B, D] -> [B, D]: per caption, the one with the highest cosine similarity
  to its text embedding [B, D]."""
  similarity = jnp.sum(normalize(candidates) * normalize(text_emb)[None], axis=-1)  # [n, B]
  return candidates[jnp.argmax(similarity, axis=0), jnp.arange(candidates.shape[1])]


class DallE2(Model):
  capabilities = frozenset({TEXT_TO_IMAGE, VARIATIONS, INTERPOLATION})

  def __init__(self, config):
    super().__init__(config)
    self.cascade = cascade_stages(config, "the decoder, e.g. ('decoder', 'sr')")
    self.dtype = layers.dtype_of(config.train.dtype)
    self.clip = ContrastiveCLIP(config)
    self.text_encoder = self.clip.text_encoder
    self.components = (self.clip,)
    self.embed_dim = self.clip.embed_dim
    text_width = self.clip.clip_config.text.hidden_size
    self.prior = config_lib.build(
        DiffusionPrior, config.prior, embed_dim=self.embed_dim, text_width=text_width,
        text_length=self.text_length, time_embedding="logsnr", dtype=self.dtype)
    self.unets = {name: self._unet(name, i > 0) for i, name in enumerate(self.cascade)}
    for name in (PRIOR, *self.cascade):
      param_lib.check(self._stage(name).parameterization)
      schedules.from_config(self._stage(name))
    for name in self.cascade:
      s = self._stage(name)
      if s.variance not in VARIANCES:
        raise ConfigError(f"config.stages.{name}.variance must be one of {VARIANCES}")
      if s.variance == "learned" and s.parameterization != "eps":
        raise ConfigError(f"a learned variance (config.stages.{name}.variance=learned) is trained "
                          "with the hybrid loss on eps: set parameterization=eps")
    for name in self.cascade[1:]:
      if self._stage(name).degradation not in degradations.DEGRADATIONS:
        raise ConfigError(f"config.stages.{name}.degradation must be one of "
                          f"{degradations.DEGRADATIONS}")
    clip_res = int(config.clip.resolution)
    frozen = (CLIP_STAGE,)
    self.stage_table = {
        CLIP_STAGE: self.clip.stage(DataSpec("shapes", clip_res, text_length=self.text_length),
                                    next_stage=PRIOR),
        PRIOR: Stage(DataSpec("shapes", clip_res, text_length=self.text_length),
                     init=self._init_prior, loss=self._prior_loss, frozen=frozen),
    }
    for i, name in enumerate(self.cascade):
      data = DataSpec("shapes", int(self._stage(name).resolution), text_length=self.text_length,
                      tokens=i == 0)
      self.stage_table[name] = Stage(
          data, init=functools.partial(self._init_unet, name),
          loss=functools.partial(self._unet_loss, name), frozen=frozen if i == 0 else ())

  # --- configuration -------------------------------------------------------
  def _stage(self, name):
    return self.config.prior if name == PRIOR else self.config.stages[name]

  def learned_variance(self, name):
    """The 1000-step discrete DDPM schedule of a learned-variance stage (the paper's decoder),
    else None (jzoo's continuous-time diffusion)."""
    if self._stage(name).variance != "learned":
      return None
    return discrete.DiscreteSchedule(variance_type="learned_range", prediction_type="epsilon")

  def _unet(self, name, super_resolution):
    s = self._stage(name)
    unet = config_lib.build(EfficientUNet, s, super_resolution=super_resolution,
                            remat=str(self.config.train.remat), dtype=self.dtype,
                            out_channels=6 if self.learned_variance(name) else 3)
    if super_resolution:
      return unet
    return config_lib.build(Decoder, s, unet=unet, vocab_size=self.clip.clip_config.text.vocab_size,
                            text_length=self.text_length, dtype=self.dtype)

  def text_tokenizer(self):
    if self.clip.imported:  # a Hugging Face CLIP reads its own BPE ids, not the zoo's
      return self.clip.prompt_tokenizer(self.text_length)
    return super().text_tokenizer()

  @property
  def output_shape(self):
    r = int(self._stage(self.cascade[-1]).resolution)
    return (r, r)

  # --- CLIP embeddings -----------------------------------------------------
  def text_condition(self, clip_params, tokens, mask):
    """CLIP's (per-token states, scaled text embedding) of captions."""
    states, pooled = self.clip.text(clip_params, tokens, mask)
    return states, scaled(pooled)

  def image_embedding(self, clip_params, images):
    """The scaled CLIP image embedding z_i [B, D] of images [B, H, W, 3] in [-1, 1]."""
    return scaled(self.clip.image(clip_params, images))

  # --- the prior -------------------------------------------------------------
  def _init_prior(self, rng, batch):
    b, l = batch["tokens"].shape
    d = self.embed_dim
    text = jnp.zeros((b, l, self.clip.clip_config.text.hidden_size), self.dtype)
    return self.prior.init(rng, jnp.zeros((b, d)), jnp.zeros((b,)), jnp.zeros((b, d)), text,
                           batch["mask"])

  def _prior_apply(self, params, z, logsnr, cond, **kw):
    return self.prior.apply({"params": params}, z, logsnr, cond["text_emb"], cond["text"],
                            cond["mask"], **kw)

  def _prior_loss(self, params, batch, rng, frozen):
    s = self.config.prior
    drop_rng, dropout_rng, diffusion_rng = jax.random.split(rng, 3)
    clip_params = frozen[CLIP_STAGE]
    text, text_emb = self.text_condition(clip_params, batch["tokens"], batch["mask"])
    target = self.image_embedding(clip_params, batch["image"])
    keep = jax.random.bernoulli(drop_rng, 1.0 - float(s.text_drop), (target.shape[0],))
    cond = {"text": text, "text_emb": text_emb * keep[:, None],
            "mask": batch["mask"] * keep[:, None].astype(batch["mask"].dtype)}

    def apply_fn(z, logsnr):
      return self._prior_apply(params, z, logsnr, cond, deterministic=False,
                               rngs={"dropout": dropout_rng})

    per_example, _ = losses.diffusion_loss(
        apply_fn, target, diffusion_rng, schedule=schedules.from_config(s),
        kind=s.parameterization, weighting=s.loss_weighting, gamma=float(s.min_snr_gamma))
    return jnp.mean(per_example), {"mse": jnp.mean(per_example)}

  def sample_prior(self, params, tokens, mask, rng, steps=None, guidance=None):
    """Scaled image embeddings [B, D] for captions: `prior_candidates` draws per caption, the one
    most similar in CLIP space to the caption kept (section 2.2)."""
    sample_cfg, s = self.config.sample, self.config.prior
    steps = sample_cfg.prior_steps if steps is None else steps
    guidance = sample_cfg.prior_guidance if guidance is None else guidance
    n = int(sample_cfg.prior_candidates)
    text, text_emb = self.text_condition(params[CLIP_STAGE], tokens, mask)
    b, d = text_emb.shape
    rep = lambda x: jnp.concatenate([x] * n, axis=0)  # candidate k is rows [k B, (k + 1) B)
    cond = {"text": rep(text), "text_emb": rep(text_emb), "mask": rep(mask)}
    uncond = {"text": cond["text"], "text_emb": jnp.zeros_like(cond["text_emb"]),
              "mask": jnp.zeros_like(cond["mask"])}
    denoise = guidance_lib.make_denoiser(
        lambda z, logsnr, c: self._prior_apply(params[PRIOR], z, logsnr, c),
        kind=s.parameterization, cond=cond, uncond=uncond, guidance=guidance,
        thresholding="none")
    noise_rng, sample_rng = jax.random.split(rng)
    z = samplers.sample(denoise, jax.random.normal(noise_rng, (n * b, d), jnp.float32),
                        sample_rng, schedule=schedules.from_config(s), steps=steps,
                        sampler=sample_cfg.prior_sampler, eta=float(sample_cfg.eta))
    return scaled(best_candidate(z.reshape(n, b, d), text_emb))

  # --- the decoder and upsamplers -------------------------------------------
  def _init_unet(self, stage, rng, batch):
    x = batch["image"]
    b = x.shape[0]
    logsnr = jnp.zeros((b,), jnp.float32)
    if self.cascade.index(stage) == 0:
      tokens, mask = batch["tokens"], batch["mask"]
      text = jnp.zeros((b, mask.shape[1], self.text_encoder.width), self.dtype)
      return self.unets[stage].init(rng, x, logsnr, text, tokens, mask,
                                    jnp.zeros((b, self.embed_dim), self.dtype))
    return self.unets[stage].init(rng, x, logsnr, None, None, low_res=x, aug_logsnr=logsnr)

  def _unet_loss(self, stage, params, batch, rng, frozen):
    s = self._stage(stage)
    drop_rng, degrade_rng, dropout_rng, diffusion_rng = jax.random.split(rng, 4)
    x = batch["image"].astype(jnp.float32)
    if self.cascade.index(stage) == 0:
      cond = self._decoder_condition(frozen[CLIP_STAGE], batch, drop_rng)
    else:
      cond = self._low_res_condition(stage, x, degrade_rng)
    unet = self.unets[stage]

    def apply_fn(z, logsnr):
      return self._unet_apply(unet, params, z, logsnr, cond, deterministic=False,
                              rngs={"dropout": dropout_rng})

    discrete_schedule = self.learned_variance(stage)
    if discrete_schedule is not None:  # the U-Net reads the log-SNR of the integer step
      per_example, terms = discrete.hybrid_loss(
          lambda z, t: apply_fn(z, discrete_schedule.logsnr(t)), x, diffusion_rng,
          discrete_schedule, vlb_weight=float(s.vlb_weight))
      return jnp.mean(per_example), {"mse": jnp.mean(terms["mse"]), "vlb": jnp.mean(terms["vlb"])}
    per_example, _ = losses.diffusion_loss(
        apply_fn, x, diffusion_rng, schedule=schedules.from_config(s), kind=s.parameterization,
        weighting=s.loss_weighting, gamma=float(s.min_snr_gamma))
    return jnp.mean(per_example), {"mse": jnp.mean(per_example)}

  @staticmethod
  def _unet_apply(unet, params, z, logsnr, cond, **kw):
    if "image_embed" in cond:
      return unet.apply({"params": params}, z, logsnr, cond["text"], cond["tokens"], cond["mask"],
                        cond["image_embed"], **kw)
    return unet.apply({"params": params}, z, logsnr, None, None, low_res=cond["low_res"],
                      aug_logsnr=cond["aug_logsnr"], **kw)

  def _decoder_condition(self, clip_params, batch, rng):
    """z_i of the training image and the caption, each dropped as the paper does."""
    s = self._stage(self.cascade[0])
    image_rng, text_rng = jax.random.split(rng)
    text, _ = self.text_condition(clip_params, batch["tokens"], batch["mask"])
    z = self.image_embedding(clip_params, batch["image"])
    keep = jax.random.bernoulli(image_rng, 1.0 - float(s.image_drop), (z.shape[0],))
    return {"text": text, "tokens": batch["tokens"], "image_embed": z * keep[:, None],
            "mask": guidance_lib.drop_condition(text_rng, batch["mask"], float(s.text_drop))}

  def _low_res_condition(self, stage, x, rng):
    """The upsampler's input in training: the image downsampled, degraded, upsampled back."""
    s = self._stage(stage)
    prev = self.cascade[self.cascade.index(stage) - 1]
    factor = int(s.resolution) // int(self._stage(prev).resolution)
    low = layers.downsample_area(x, factor)
    if s.degradation == "blur":
      low = degradations.random_blur(rng, low, s.blur_sigma)
    else:
      low = degradations.bsr_degrade(rng, low, s.blur_sigma)
    return self._sr_input(low, x.shape[1:3])

  @staticmethod
  def _sr_input(low, size):
    b = low.shape[0]
    return {"low_res": jnp.clip(layers.resize(low, size), -1.0, 1.0),
            "aug_logsnr": jnp.zeros((b,), jnp.float32)}

  # --- sampling ------------------------------------------------------------
  def generate(self, params, request: Request, rng):
    """uint8 [B, H, W, 3] at the last stage's resolution. Jittable; steps/guidance may be traced.

    request.extra (optional): "images" [B, h, w, 3] in [-1, 1]: variations of them (their z_i);
    with "images_b" and "alpha" [B]: the spherical interpolation of the two z_i; with
    "edit_tokens"/"edit_mask" and "alpha": a text-diff edit of "images" from the caption in
    `tokens` towards the edit caption. "same_noise" (any [B] array): every row starts from the
    same noise (interpolation figures)."""
    return to_uint8(self.generate_stages(params, request, rng)[-1])

  def image_embedding_for(self, params, request: Request, rng):
    """z_i for the request's task (text, variation, interpolation or text-diff)."""
    extra = request.extra or {}
    clip_params = params[CLIP_STAGE]
    if "images" not in extra:
      return self.sample_prior(params, request.tokens, request.mask, rng,
                               guidance=extra.get("prior_guidance"))
    z = self.image_embedding(clip_params, extra["images"])
    if "images_b" in extra:
      return scaled(slerp(z, self.image_embedding(clip_params, extra["images_b"]),
                          extra["alpha"]))
    if "edit_tokens" in extra:
      _, source = self.text_condition(clip_params, request.tokens, request.mask)
      _, target = self.text_condition(clip_params, extra["edit_tokens"], extra["edit_mask"])
      return scaled(slerp(z, normalize(target - source), extra["alpha"]))
    return z

  def generate_stages(self, params, request: Request, rng):
    """The output of every stage of the cascade, float images in [-1, 1], lowest first."""
    sample_cfg = self.config.sample
    steps = sample_cfg.steps if request.steps is None else request.steps
    guidance = sample_cfg.guidance if request.guidance is None else request.guidance
    sr_steps = sample_cfg.sr_steps or steps
    prior_rng, rng = jax.random.split(rng)
    z = self.image_embedding_for(params, request, prior_rng)
    text, _ = self.text_condition(params[CLIP_STAGE], request.tokens, request.mask)
    mask = request.mask
    if "images" in (request.extra or {}) and "edit_tokens" not in request.extra:
      mask = jnp.zeros_like(mask)  # variations and interpolations are not captioned
    b = z.shape[0]
    same_noise = "same_noise" in (request.extra or {})
    outputs = []
    for i, name in enumerate(self.cascade):
      noise_rng, sample_rng = jax.random.split(jax.random.fold_in(rng, i))
      r = int(self._stage(name).resolution)
      if i == 0:
        cond = {"text": text, "tokens": request.tokens, "mask": mask, "image_embed": z}
        uncond = dict(cond, mask=jnp.zeros_like(mask), image_embed=jnp.zeros_like(z))
        stage_steps, stage_guidance = steps, guidance
      else:
        low = outputs[-1]
        blur = float(sample_cfg.sr_blur)
        if blur > 0:
          low = degradations.gaussian_blur(low, jnp.full((b,), blur), blur)
        cond, uncond = self._sr_input(low, (r, r)), None
        stage_steps, stage_guidance = sr_steps, 1.0
      noise = jax.random.normal(noise_rng, (1 if same_noise else b, r, r, 3), jnp.float32)
      x = self._sample_stage(name, params[name], cond, uncond, stage_steps, stage_guidance,
                             jnp.broadcast_to(noise, (b, r, r, 3)), sample_rng)
      outputs.append(jnp.clip(x, -1.0, 1.0))
    return outputs

  def _sample_stage(self, name, params, cond, uncond, steps, guidance, noise, rng):
    s, sample_cfg = self._stage(name), self.config.sample
    unet = self.unets[name]
    discrete_schedule = self.learned_variance(name)
    if discrete_schedule is not None:
      return self._sample_learned_variance(unet, params, cond, uncond, steps, guidance, noise,
                                           rng, discrete_schedule)
    denoise = guidance_lib.make_denoiser(
        lambda z, logsnr, c: self._unet_apply(unet, params, z, logsnr, c),
        kind=s.parameterization, cond=cond, uncond=uncond, guidance=guidance,
        thresholding=sample_cfg.thresholding, percentile=float(sample_cfg.percentile))
    return samplers.sample(denoise, noise, rng, schedule=schedules.from_config(s), steps=steps,
                           sampler=sample_cfg.sampler, eta=float(sample_cfg.eta))

  def _sample_learned_variance(self, unet, params, cond, uncond, steps, guidance, noise, rng,
                               schedule):
    """Ancestral DDPM on `steps` respaced steps of the 1000 (discrete.sample) with the learned
    variance; guidance on the eps half only, the conditional variance half kept (GLIDE, Karlo)."""
    def model_fn(x, t):
      logsnr = schedule.logsnr(t)
      out = self._unet_apply(unet, params, x, logsnr, cond)
      if uncond is None:
        return out
      return discrete.guided(schedule, self._unet_apply(unet, params, x, logsnr, uncond), out,
                             guidance)

    return discrete.sample(model_fn, noise, rng, schedule, steps, max_steps=MAX_DISCRETE_STEPS)

  def check_images(self, images):
    """A one-line UserError unless `images` is a batch [B, H, W, 3]."""
    if images.ndim != 4 or images.shape[-1] != 3:
      raise UserError(f"images must be [N, H, W, 3] RGB, got shape {tuple(images.shape)}")


def build(config):
  if config.get("karlo"):  # dalle2:karlo, Kakao Brain's weights from a folder
    from jzoo.models import karlo  # pylint: disable=g-import-not-at-top
    return karlo.Karlo(config)
  return DallE2(config)

"""DALL-E 2 = unCLIP (Ramesh et al. 2022): CLIP, a diffusion prior, a CLIP-conditioned decoder, upsamplers.

  configs/dalle2.py:micro        tests and smoke runs: 16 px decoder + 16->32 upsampler, seconds
  configs/dalle2.py:tiny_shapes  the bundled dalle2-tiny-shapes: a shapes CLIP, a 32 px decoder
                                 and a 32->64 upsampler
  configs/dalle2.py:paper        the paper's sizes: a 1B prior, a 3.5B decoder, 700M and 300M
                                 upsamplers (64->256->1024) over CLIP ViT-H/16-sized towers
  configs/dalle2.py:karlo        Kakao Brain's Karlo (kakaobrain/karlo-v1-alpha) from a folder in
                                 diffusers' layout (`karlo.folder`, or --checkpoint DIR of
                                 jzoo.sample), sampled as diffusers' UnCLIPPipeline does

The argument may name a stage, `tiny_shapes,stage=prior`. Stages train in order: clip (the
contrastive CLIP both the prior and the decoder read frozen), prior, then each stage of
`config.cascade` (the decoder, then the upsamplers).
"""

import ml_collections

from jzoo.configs._common import base_config, select_stage, split_variant
from jzoo.configs._common import stage_train as _train

VARIANTS = ("micro", "tiny_shapes", "paper", "karlo")


def _clip(resolution, text, vision, projection_dim, train, vocab_size=704, text_length=24,
          eos_token_id=1):
  """config.clip: a CLIP (jzoo.text.clip.CLIP) trained contrastively on the captions (stage
  `clip`), or a Hugging Face CLIP folder (`weights`) that is imported and frozen."""
  return ml_collections.ConfigDict(dict(
      weights="",            # a Hugging Face CLIP folder: imported, the clip stage not trained
      # Each caption that names a relation also trains against its relation-swapped twin as a
      # hard negative (NegCLIP, Yuksekgonul et al. 2023), against CLIP's bag-of-words blindness
      # to "A left of B" vs "B left of A". On tiny_shapes it did not help (the card: relation
      # accuracy stayed at chance), so the bundle's recipe keeps it off.
      hard_negatives=False,
      resolution=resolution,  # the image tower's input size (images are resized to it)
      # Text: the zoo's sentencepiece ids (eos 1: the tower pools at the first end token).
      text=ml_collections.ConfigDict(dict(vocab_size=vocab_size,
                                          max_position_embeddings=text_length,
                                          eos_token_id=eos_token_id, intermediate_size=4 * text[0], hidden_size=text[0],
                                          num_attention_heads=text[1], num_hidden_layers=text[2],
                                          hidden_act="quick_gelu")),
      vision=ml_collections.ConfigDict(dict(intermediate_size=4 * vision[0], hidden_size=vision[0],
                                            num_attention_heads=vision[1],
                                            num_hidden_layers=vision[2], patch_size=vision[3],
                                            hidden_act="quick_gelu")),
      projection_dim=projection_dim,
      train=train,
  ))


def _prior(num_layers, num_heads, head_dim, train, **overrides):
  """config.prior: the causal transformer that predicts the clean CLIP image embedding."""
  p = ml_collections.ConfigDict(dict(
      num_layers=num_layers, num_heads=num_heads, head_dim=head_dim, dropout=0.0,
      # Diffusion over the normalised embedding (l2-normalised, times sqrt(dim): unit variance
      # per coordinate, as DALLE2-pytorch scales it); the paper's prior predicts it directly.
      schedule="cosine", logsnr_min=-20.0, logsnr_max=20.0, schedule_shift=0.0,
      parameterization="x0",
      loss_weighting="uniform", min_snr_gamma=5.0,
      text_drop=0.1,          # classifier-free guidance: captions dropped in training
      train=train,
  ))
  p.update(overrides)
  return p


def _unet_stage(resolution, channels, channel_mult, num_res_blocks, self_attention,
                cross_attention, train, **overrides):
  """A diffusion U-Net stage (jzoo.nn.unet.EfficientUNet): the decoder or an upsampler."""
  s = ml_collections.ConfigDict(dict(
      resolution=resolution,
      layout="efficient", channels=channels, channel_mult=tuple(channel_mult),
      num_res_blocks=tuple(num_res_blocks), self_attention=tuple(self_attention),
      cross_attention=tuple(cross_attention), head_dim=64, text_dim=512, text_positions=False,
      emb_dim=0, dropout=0.0, norm_groups=32, mid_block=True,
      schedule="cosine", logsnr_min=-20.0, logsnr_max=20.0, schedule_shift=0.0,
      parameterization="eps", loss_weighting="uniform", min_snr_gamma=5.0,
      # "learned": the paper's (and GLIDE's, Karlo's) 1000-step discrete DDPM with a learned
      # variance, trained with the improved-DDPM hybrid loss (jzoo.diffusion.discrete; eps and
      # the cosine schedule; the U-Net outputs 6 channels). "fixed": jzoo's continuous-time
      # diffusion in `parameterization` with `sample.sampler`.
      variance="fixed",
      vlb_weight=0.001,      # lambda of L_hybrid = L_simple + lambda L_vlb
      train=train,
  ))
  s.update(overrides)
  return s


def _decoder(*args, **overrides):
  """The decoder (GLIDE-like, section 2.1): the CLIP image embedding becomes `image_embed_tokens`
  extra context tokens and is added to the timestep embedding; text tokens are cross-attended."""
  d = _unet_stage(*args, **dict(dict(
      text_conditioning=True,
      image_embed_tokens=4,
      # GLIDE's text transformer inside the decoder (trained with it); 0 layers: the decoder
      # reads CLIP's frozen per-token text states instead (as Karlo does).
      text_layers=0, text_width=0, text_heads=0,
      image_drop=0.1,        # classifier-free guidance: CLIP embedding zeroed 10% of the time
      text_drop=0.5,         # ... and the caption dropped 50% of the time
  ), **overrides))
  return d


def _upsampler(resolution, channels, channel_mult, num_res_blocks, self_attention, train,
               **overrides):
  """An upsampler (section 2.1 and appendix): diffusion super-resolution, not text-conditioned,
  its low-resolution input corrupted in training by Gaussian blur (the first) or a BSR-style
  degradation (the second)."""
  return _unet_stage(resolution, channels, channel_mult, num_res_blocks, self_attention,
                     (False,) * len(channel_mult), train, **dict(dict(
      text_conditioning=False, image_embed_tokens=0,
      degradation="blur",    # blur | bsr
      blur_sigma=(0.4, 0.6),  # training: sigma ~ U(lo, hi), in low-resolution pixels
  ), **overrides))


def _sample(**kw):
  s = ml_collections.ConfigDict(dict(
      steps=20, guidance=3.0,   # the decoder's steps and guidance (traced)
      sampler="dpm++2m", eta=0.0,
      thresholding="dynamic", percentile=0.995,
      prior_steps=16, prior_guidance=2.0,
      prior_candidates=2,       # prior samples per caption; the one closest to the caption in CLIP
      prior_sampler="ddim",     # space is kept (section 2.2)
      sr_steps=0,               # upsamplers' steps; 0 = the same as `steps`
      sr_blur=0.5,              # blur of the upsampler's low-resolution input at sampling
  ))
  s.update(kw)
  return s


def karlo_config():
  """dalle2:karlo: every size comes from the folder's own config.json files (Karlo's published
  ones without a folder); jzoo.models.karlo."""
  c = base_config("dalle2", "prior")
  c.variant = "karlo"
  c.karlo = ml_collections.ConfigDict(dict(folder=""))  # a Karlo folder in diffusers' layout
  c.text.tokenizer = "clip_bpe"  # the folder's tokenizer/ (vocab.json + merges.txt)
  c.text.length = 77
  # UnCLIPPipeline's defaults; the decoder's steps and guidance are the request's (traced).
  c.sample = ml_collections.ConfigDict(dict(steps=25, guidance=8.0, prior_steps=25,
                                            prior_guidance=4.0, sr_steps=7))
  return c


def get_config(arg=None):
  variant, rest = split_variant(arg, "tiny_shapes", VARIANTS)
  if variant == "karlo":
    if rest:
      raise ValueError(f"dalle2:karlo takes no stage argument, got {rest!r}")
    return karlo_config()
  c = base_config("dalle2", "clip")
  c.variant = variant
  c.cascade = ("decoder", "sr")
  c.xla_cpu_ynn_fusions = "eltwise,reduce"  # as Imagen's U-Nets (jzoo/parallel/compiler.py)

  if variant == "micro":
    c.text.length = 16
    c.clip = _clip(16, (32, 2, 1), (32, 2, 1, 4), 32, _train(20, 8, 1e-3, 2), text_length=16)
    c.prior = _prior(1, 2, 16, _train(20, 8, 1e-3, 2))
    small = dict(head_dim=16, text_dim=32, norm_groups=8)
    c.stages = ml_collections.ConfigDict(dict(
        decoder=_decoder(16, 16, (1, 2), (1, 1), (False, True), (False, True),
                         _train(20, 8, 1e-3, 2), **small),
        sr=_upsampler(32, 16, (1, 2), (1, 1), (False, False), _train(20, 8, 1e-3, 2),
                      **small),
    ))
    c.sample = _sample(steps=4, prior_steps=4)
    c.train.steps, c.train.batch_size = 20, 8
    c.train.log_every, c.train.checkpoint_every = 5, 10
    c.optim.warmup_steps = 2

  elif variant == "tiny_shapes":
    # A shapes CLIP with 32 px images (8x8 patches of 4 px), the embedding 128 wide; a 32 px
    # decoder shaped as imagen-tiny-shapes' base, and its 32->64 upsampler.
    c.text.length = 24
    c.clip = _clip(32, (128, 4, 3), (128, 4, 4, 4), 128, _train(3000, 128, 1e-3, 200))
    c.prior = _prior(4, 4, 32, _train(4000, 128, 5e-4, 200))
    c.stages = ml_collections.ConfigDict(dict(
        decoder=_decoder(32, 32, (1, 2, 4), (1, 2, 2), (False, True, True), (False, True, True),
                         _train(6000, 32, 1e-3, 200), head_dim=32, text_dim=128, norm_groups=8,
                         parameterization="v"),
        sr=_upsampler(64, 16, (1, 2, 4), (1, 1, 2), (False, False, False),
                      _train(2000, 16, 1e-3, 200), head_dim=32, text_dim=128, norm_groups=8,
                      parameterization="v"),
    ))
    # The bundle's decoder and upsampler were trained in eps, then fine-tuned to v (which took
    # the noisy backgrounds away); docs/models/dalle2-tiny-shapes.md has the commands. Guidance
    # 1.5 scored above 3.0 on captions 500-563 of `test` (0.42 against 0.34).
    c.sample = _sample(steps=20, guidance=1.5, sr_steps=8)

  else:  # paper
    # Ramesh et al. 2022, section 2 and appendix C: CLIP ViT-H/16-sized towers (a 1024-wide
    # embedding, 224 px); a 1B decoder-only prior (width 2048 = 32 heads x 64; 20 layers, the
    # depth of Karlo's public unCLIP prior); a 3.5B decoder at 64 px: GLIDE's 2.3B U-Net (512
    # channels, multipliers 1-2-3-4, 3 blocks per level, attention at 32/16/8, text keys and
    # values 2048 wide) with GLIDE's 1.2B text transformer (24 blocks of width 2048); upsamplers
    # 64->256 (700M) and 256->1024 (300M) without attention. The 1024 upsampler's last level has
    # one block more than the others so its count lands within 10% (tests/test_dalle2.py):
    # prior 1.02B, decoder 3.55B, sr256 679M, sr1024 284M.
    c.text.length = 77
    c.text.tokenizer = "spiece.model"
    c.clip = _clip(224, (1024, 16, 24), (1280, 16, 32, 14), 1024, _train(1, 32768, 1e-4),
                   vocab_size=49408, text_length=77, eos_token_id=49407)
    c.prior = _prior(20, 32, 64, _train(1_000_000, 4096, 1.1e-4, 10000))
    paper_train = _train(1_000_000, 2048, 1.2e-4, 10000)
    c.cascade = ("decoder", "sr256", "sr1024")
    c.stages = ml_collections.ConfigDict(dict(
        decoder=_decoder(64, 512, (1, 2, 3, 4), (3, 3, 3, 3), (False, True, True, True),
                         (False, True, True, True), paper_train, layout="adm", text_dim=2048,
                         text_layers=24, text_width=2048, text_heads=32),
        sr256=_upsampler(256, 320, (1, 2, 3, 4), (3, 3, 3, 3), (False,) * 4, paper_train,
                         layout="adm"),
        sr1024=_upsampler(1024, 192, (1, 1, 2, 2, 4, 4), (2, 2, 2, 2, 2, 3), (False,) * 6,
                          paper_train, layout="adm", degradation="bsr"),
    ))
    c.train.dtype = "bfloat16"
    c.train.remat = "full"
    c.sample = _sample(steps=250, guidance=8.0, prior_steps=64, prior_guidance=4.0)

  trains = {"clip": c.clip.train, "prior": c.prior.train}
  trains.update({name: c.stages[name].train for name in c.cascade})
  return select_stage(c, rest, trains, default="clip")

"""Imagen: frozen T5 encoder + cascade of text-conditioned diffusion U-Nets (Saharia et al. 2022).

  configs/imagen.py:micro        tests and smoke runs: 16x16 base + 16->32 SR, seconds on a CPU
  configs/imagen.py:tiny_shapes  the bundled imagen-tiny-shapes: 32x32 base + 32->64 SR on `shapes`
  configs/imagen.py:paper        T5-XXL, 64x64 base (~2B), 64->256 SR (~600M), 256->1024 SR (~400M)

The argument may name a stage, `tiny_shapes,stage=sr`, which sets `config.stage`
and that stage's training defaults (`config.stages.<stage>.train`, or
`config.text_encoder.train`) into `config.train` / `config.optim`. Stages are
trained in order: text_encoder (skipped when `text_encoder.weights` names
public T5 weights), then each stage of `config.cascade`.
"""

import ml_collections

from jzoo.configs._common import base_config, select_stage, split_variant
from jzoo.configs._common import stage_train as _train
from jzoo.configs._common import text_encoder as _text_encoder

VARIANTS = ("micro", "tiny_shapes", "paper")


def _unet_stage(resolution, channels, channel_mult, num_res_blocks, self_attention,
                cross_attention, train, **overrides):
  s = ml_collections.ConfigDict(dict(
      resolution=resolution,
      # U-Net (jzoo.nn.unet): level i has channels * channel_mult[i] channels.
      layout="efficient",    # efficient (Imagen's Efficient U-Net) | adm (improved-DDPM U-Net)
      channels=channels,
      channel_mult=tuple(channel_mult),
      num_res_blocks=tuple(num_res_blocks),
      self_attention=tuple(self_attention),
      cross_attention=tuple(cross_attention),
      head_dim=64,
      text_dim=512,          # width of the projected text tokens (keys/values of cross-attention)
      text_positions=False,  # learned position embedding on the projected text tokens
      emb_dim=0,             # conditioning embedding width; 0 = 4 * channels
      dropout=0.0,
      norm_groups=32,
      mid_block=True,
      # Diffusion.
      schedule="cosine",     # cosine | linear (continuous time, log-SNR form)
      logsnr_min=-20.0,
      logsnr_max=20.0,
      schedule_shift=0.0,    # added to the log-SNR
      parameterization="v",  # eps | v | x0
      loss_weighting="uniform",  # uniform | min_snr
      min_snr_gamma=5.0,
      text_drop=0.1,         # classifier-free guidance: fraction of captions dropped in training
      noise_aug_max=0.0,     # SR stages: training augmentation level ~ U(0, noise_aug_max)
      train=train,
  ))
  s.update(overrides)
  return s


def _sample(**kw):
  s = ml_collections.ConfigDict(dict(
      steps=20, guidance=3.0,    # CLI defaults (traced: changing them does not recompile)
      sampler="dpm++2m",         # ddpm | ddim | dpm++2m
      eta=0.0,                   # ddim only
      thresholding="dynamic",    # none | static | dynamic
      percentile=0.995,          # dynamic thresholding
      sr_noise_aug=0.2,          # SR noise conditioning augmentation level at sampling
      sr_steps=0,                # SR stages' steps; 0 = the same as `steps`
      sr_guidance=-1.0,          # SR guidance; < 0: the same as `guidance`; 1.0: no uncond pass
  ))
  s.update(kw)
  return s


def get_config(arg=None):
  variant, rest = split_variant(arg, "tiny_shapes", VARIANTS)
  c = base_config("imagen", "base")
  c.variant = variant
  c.sample = _sample()
  c.cascade = ("base", "sr")
  # On the CPU, XLA's own convolutions beat YNNPACK's at the U-Nets' shapes; YNNPACK keeps the
  # element-wise chains and reductions (sampling -23%, train step -14%: jzoo/parallel/compiler.py).
  c.xla_cpu_ynn_fusions = "eltwise,reduce"

  if variant == "micro":
    c.text.length = 16
    c.text_encoder = _text_encoder("micro", train=_train(20, 8, 1e-3, 2))
    small = dict(head_dim=16, text_dim=32, norm_groups=8)
    c.stages = ml_collections.ConfigDict(dict(
        base=_unet_stage(16, 16, (1, 2), (1, 1), (False, True), (False, True),
                         _train(20, 8, 1e-3, 2), **small),
        sr=_unet_stage(32, 16, (1, 2), (1, 1), (False, False), (False, True),
                       _train(20, 8, 1e-3, 2), noise_aug_max=0.5, **small),
    ))
    c.sample = _sample(steps=4, guidance=3.0)
    c.train.steps, c.train.batch_size = 20, 8
    c.train.log_every, c.train.checkpoint_every = 5, 10
    c.optim.warmup_steps = 2

  elif variant == "tiny_shapes":
    # The bundled imagen-tiny-shapes (docs/models/imagen-tiny-shapes.md): the text encoder and
    # the SR stage trained on a 2-core CPU (1500 steps in 1-3 min; 2000 steps in 9-15 min); the
    # base stage on one H100: these 9,707 steps at batch 64 are what `--fit-minutes 7.83` chose
    # there (about 3 h on the CPU), then 7,306 more from them at lr 3e-4 (--init-from).
    # The Efficient U-Net idea taken to the extreme: few channels at full resolution, the width
    # at 8x8; self-attention at 16x16 and 8x8 in the base (where two objects are told apart),
    # cross-attention to the text at 16x16 and 8x8. The base adds a learned position embedding
    # to the text tokens (text_positions): cross-attention and the pooled text are blind to word
    # order, and this small encoder barely encodes it, so without it the base could not tell
    # "a red circle to the left of a blue square" from its swap (relation 0.51 -> 0.93).
    c.text.length = 24
    c.text_encoder = _text_encoder("tiny", train=_train(1500, 64, 1e-3, 100))
    c.stages = ml_collections.ConfigDict(dict(
        base=_unet_stage(32, 32, (1, 2, 4), (1, 2, 2), (False, True, True), (False, True, True),
                         _train(9707, 64, 1e-3, 200), head_dim=32, text_dim=128, norm_groups=8,
                         text_positions=True),
        sr=_unet_stage(64, 16, (1, 2, 4), (1, 1, 2), (False, False, False), (False, False, True),
                       _train(2000, 16, 1e-3, 200), head_dim=32, text_dim=128, norm_groups=8,
                       noise_aug_max=0.5),
    ))
    # The SR stage is nearly deterministic on `shapes`: few steps and no unconditional pass.
    # Guidance 2.0 scored best for the GPU-trained base on test prompts (docs/models/imagen-tiny-shapes.md).
    c.sample = _sample(steps=20, guidance=2.0, sr_steps=8, sr_guidance=1.0)

  else:  # paper
    # Saharia et al. 2022, section 4.1 and appendix F: frozen T5-XXL (4.6B), 128 text tokens; a 2B
    # 64x64 base model (the improved-DDPM U-Net: 512 channels, multipliers 1-2-3-4, 3 blocks per
    # level, attention with 64-channel heads and text cross-attention at 32, 16 and 8); Efficient
    # U-Nets for 64->256 (600M) and 256->1024 (400M, no self-attention: trained on crops). The
    # Efficient U-Nets' widths and depths are the paper's (128-256-512-1024, 2-4-8-8 blocks); the
    # conditioning width (sr256) and the last level's depth (sr1024) are set so that the
    # abstract parameter counts land within 10% of the stated sizes: base 2.12B, sr256 614M,
    # sr1024 378M (tests/test_imagen.py checks them).
    c.text.length = 128
    c.text.tokenizer = "spiece.model"  # T5's sentencepiece model, a path the user provides
    c.text_encoder = _text_encoder(preset="t5-v1_1-xxl", vocab_size=32128, d_model=4096, d_kv=64,
                                   d_ff=10240, num_heads=64, num_layers=24)
    c.train.dtype = "bfloat16"
    c.train.remat = "full"
    c.train.batch_size = 2048
    c.optim.lr = 1e-4
    c.optim.warmup_steps = 10000
    c.cascade = ("base", "sr256", "sr1024")
    paper_train = _train(2_500_000, 2048, 1e-4, 10000)
    c.stages = ml_collections.ConfigDict(dict(
        base=_unet_stage(64, 512, (1, 2, 3, 4), (3, 3, 3, 3), (False, True, True, True),
                         (False, True, True, True), paper_train, layout="adm"),
        sr256=_unet_stage(256, 128, (1, 2, 4, 8), (2, 4, 8, 8), (False, False, False, True),
                          (False, False, False, True), paper_train, text_dim=1024, emb_dim=2048,
                          noise_aug_max=0.5),
        sr1024=_unet_stage(1024, 128, (1, 2, 4, 8), (2, 4, 8, 6), (False,) * 4,
                           (False, False, False, True), paper_train, text_dim=1024,
                           mid_block=False, noise_aug_max=0.5),
    ))
    c.sample = _sample(steps=256, guidance=7.0, sampler="ddpm")

  trains = {"text_encoder": c.text_encoder.train}
  trains.update({name: c.stages[name].train for name in c.cascade})
  return select_stage(c, rest, trains, default=c.cascade[0])

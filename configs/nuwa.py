"""NUWA: per-frame VQ-GAN + 3D Nearby Attention encoder-decoder (Wu et al. 2021).

  configs/nuwa.py:micro        tests and smoke runs: 3 frames at 16x16 (3x4x4 tokens)
  configs/nuwa.py:tiny_shapes  text-to-video on `moving_shapes`: 16 frames at 32x32 (16x8x8 tokens)
  configs/nuwa.py:paper        the paper's extents: 10x21x21 video tokens, width 1280, ~870M

Stages, trained in order: tokenizer (VQ-GAN), transformer (which reads the
tokenizer frozen). `VARIANT,stage=NAME` or `--config.stage=NAME` picks the
stage and its training defaults. `--config.tokenizer.frames=1` makes any
variant a text-to-image model on `shapes`.
"""

import ml_collections

from jzoo.configs._common import base_config, select_stage, split_variant
from jzoo.configs._common import stage_train as _train

VARIANTS = ("micro", "tiny_shapes", "paper")


def _tokenizer(**kw):
  t = ml_collections.ConfigDict(dict(
      frames=10, resolution=336,
      channels=128, channel_mult=(1, 1, 2, 2, 4),  # 4 downsamplings: 336 -> 21x21 tokens
      num_res_blocks=2, norm_groups=32,
      codebook_size=12288, code_dim=32, embed_dim=256, commitment=0.25,
      codebook_ema=0.0,           # > 0: EMA codebook updates with this decay (e.g. 0.99)
      reconstruction_loss="l2",   # l2 | l1
      # + perceptual_weight * LPIPS-VGG, from weight files you give (docs/metrics/lpips.md):
      perceptual_weight=0.0, perceptual_weights="",  # "VGG.pth,LIN.pth" or one safetensors
      # + adversarial_weight * hinge GAN term of a PatchGAN (jzoo/vq/discriminator.py), from step
      # adversarial_start on:
      adversarial_weight=0.0, adversarial_start=0, discriminator_channels=64,
      discriminator_layers=3,
      train=_train(100_000, 64, 1e-4, 5000),
  ))
  t.update(kw)
  return t


def _transformer(**kw):
  t = ml_collections.ConfigDict(dict(
      vocab_size=32128,          # text token ids (T5-style sentencepiece)
      width=1280, encoder_layers=10, decoder_layers=24, head_dim=64, mlp_dim=5120,
      radius=(1, 1, 1),          # 3DNA box of the decoder's causal self-attention: (2r+1) per axis
      attention_impl="auto",     # jzoo.kernels.nearby_attention impl: auto | xla | pallas | reference
      # Visual condition (video prediction, as NUWA's V2V task): the codes of the first
      # `condition_frames` frames go through `condition_layers` of non-causal 3DNA, and every
      # decoder layer cross-attends to them with 3DNA boxes of `condition_radius`. 0: text only.
      condition_frames=0, condition_layers=2, condition_radius=(1, 1, 1),
      dropout=0.0,
      train=_train(500_000, 128, 1e-4, 5000),
  ))
  t.update(kw)
  return t


def _sample(**kw):
  s = ml_collections.ConfigDict(dict(steps=1, guidance=1.0, top_k=64, temperature=1.0))
  s.update(kw)
  return s


def get_config(arg=None):
  variant, rest = split_variant(arg, "tiny_shapes", VARIANTS)
  c = base_config("nuwa", "transformer")
  c.variant = variant

  if variant == "micro":
    c.text.length = 16
    c.tokenizer = _tokenizer(frames=3, resolution=16, channels=16, channel_mult=(1, 2, 2),
                             num_res_blocks=1, norm_groups=8, codebook_size=64, code_dim=8,
                             embed_dim=16, train=_train(20, 8, 3e-3, 2))
    c.transformer = _transformer(vocab_size=704, width=32, encoder_layers=1, decoder_layers=2,
                                 head_dim=16, mlp_dim=64, radius=(1, 1, 1),
                                 train=_train(20, 8, 1e-3, 2))
    c.sample = _sample(top_k=16)
    c.train.log_every, c.train.checkpoint_every = 5, 10

  elif variant == "tiny_shapes":
    c.text.length = 24
    c.tokenizer = _tokenizer(frames=16, resolution=32, channels=32, channel_mult=(1, 2, 2),
                             num_res_blocks=1, norm_groups=8, codebook_size=512, code_dim=16,
                             embed_dim=64, train=_train(1927, 32, 1e-3, 200))
    c.transformer = _transformer(vocab_size=704, width=128, encoder_layers=2, decoder_layers=4,
                                 head_dim=32, mlp_dim=384, radius=(1, 2, 2),
                                 train=_train(2802, 64, 1e-3, 200))
    # The bundled nuwa-tiny-shapes (docs/models/nuwa-tiny-shapes.md), on one H200: these steps
    # are what `--fit-minutes` chose for 2.15 and 5.48 minutes there; the transformer then went
    # 695, 2,580 and 1,777 steps more (three fine-tuning runs from the previous export at lr
    # 3e-4, --init-from; the last two on one H100).
    c.sample = _sample(top_k=32)

  else:  # paper
    # Wu et al. 2021, section 4: text as 1x1x77 tokens; images and videos as 21x21 and 10x21x21
    # VQ-GAN tokens (336px frames, 16x downsampling, a 12,288-entry codebook); hidden size 1280.
    # The layer counts (10 encoder, 24 decoder) are set so that the abstract parameter count
    # lands at the paper's 870M; the 3x3x3 box (radius 1) is our choice of 3DNA extent.
    c.text.length = 77
    c.text.tokenizer = "spiece.model"
    c.tokenizer = _tokenizer()
    c.transformer = _transformer()
    c.train.dtype = "bfloat16"
    c.train.remat = "full"

  return select_stage(c, rest, {"tokenizer": c.tokenizer.train,
                                "transformer": c.transformer.train}, default="transformer")

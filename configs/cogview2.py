"""CogView2: one VQ tokenizer at two resolutions, the CogLM over text and low-resolution image
tokens, and a super-resolution transformer with local attention (direct SR + LoPAR).
Ding et al. 2022, arXiv 2204.14217.

  configs/cogview2.py:micro        tests and smoke runs: 16 px images, 2x2 -> 4x4 tokens
  configs/cogview2.py:tiny_shapes  text-to-image on `shapes`: 32 px (8x8 tokens) -> 64 px (16x16)
  configs/cogview2.py:paper        the paper's sizes: CogLM 6B over 20x20 tokens, super-resolution
                                   to 60x60 (480 px)

Stages, trained in order: tokenizer (a VQ-GAN trained on both levels' images), coglm, sr (which
read the tokenizer frozen). `VARIANT,stage=NAME` or `--config.stage=NAME` picks the stage.
"""

import ml_collections

from jzoo.configs._common import base_config, select_stage, split_variant
from jzoo.configs._common import stage_train as _train

VARIANTS = ("micro", "tiny_shapes", "paper")


def _tokenizer(**kw):
  t = ml_collections.ConfigDict(dict(
      resolution=480,             # the output (fine level) in pixels; the coarse level is
                                  # resolution / sr.factor
      channels=128, channel_mult=(1, 1, 2, 2),  # 3 downsamplings: 480 px -> 60x60 tokens
      num_res_blocks=2, norm_groups=32,
      codebook_size=20000, code_dim=32, embed_dim=256, commitment=0.25,
      codebook_ema=0.0, reconstruction_loss="l2",
      perceptual_weight=0.0, perceptual_weights="",
      adversarial_weight=0.0, adversarial_start=0, discriminator_channels=64,
      discriminator_layers=3,
      # The loss averages the fine images' and their area-downsampled (coarse level) copies'.
      train=_train(100_000, 64, 1e-4, 5000),
  ))
  t.update(kw)
  return t


def _coglm(**kw):
  t = ml_collections.ConfigDict(dict(
      vocab_size=150_000,         # text token ids (the shapes sentencepiece model: 704)
      width=3072, num_layers=48, head_dim=64, mlp_dim=12288,
      # Mixed masking (section 3.1): this fraction of the examples masks the whole image
      # (text-to-image, CogView's task); the others mask one random rectangle of it (infilling
      # with bidirectional context), between `min_region` and all of each side.
      t2i_fraction=0.6, min_region=0.25,
      text_drop=0.0,              # > 0: this fraction of captions emptied (all padding) in
                                  # training, and stage 1 samples with classifier-free guidance
      dropout=0.0, attention_impl="auto",
      train=_train(300_000, 512, 1e-4, 5000),
  ))
  t.update(kw)
  return t


def _sr(**kw):
  t = ml_collections.ConfigDict(dict(
      factor=3,                   # fine tokens per coarse token, per side (20x20 -> 60x60)
      width=3072, num_layers=24, head_dim=64, mlp_dim=12288,
      radius=2,                   # local attention inside the fine grid: (2r+1)^2 = kernel 5
      cross_radius=2,             # the cross-level window onto the coarse grid: kernel 5
      coarse_layers=2,            # local-attention layers that encode the coarse grid first
      text=True,                  # every layer cross-attends to the caption (its own embedding)
      # BERT-style training: a cosine-schedule fraction of the fine tokens masked, and this
      # fraction of the examples with every fine token masked (what direct SR starts from).
      dsr_fraction=0.3,
      dropout=0.0, attention_impl="auto",
      train=_train(100_000, 256, 1e-4, 5000),
  ))
  t.update(kw)
  return t


def _sample(**kw):
  s = ml_collections.ConfigDict(dict(
      steps=1,                    # not used: one step per token
      guidance=1.0,               # stage 1's classifier-free guidance (with coglm.text_drop > 0)
      temperature=1.0, top_k=32,  # stage 1 (CogLM), token by token
      clusters=0, cluster_top_k=0,  # > 0: top-k over k-means clusters of the codebook first
      dsr_temperature=0.0,        # direct SR, all fine tokens at once (<= 0: argmax)
      lopar_window=(4, 4),        # LoPAR's local priority pattern: sum(window - 1) + 1 rounds
      lopar_top_k=(16, 12, 12, 8, 8, 4, 4),  # per round (the last repeats); 0: off
      lopar_temperature=1.0,
  ))
  s.update(kw)
  return s


def get_config(arg=None):
  variant, rest = split_variant(arg, "tiny_shapes", VARIANTS)
  c = base_config("cogview2", "coglm")
  c.variant = variant

  if variant == "micro":
    c.text.length = 16
    c.tokenizer = _tokenizer(resolution=16, channels=16, channel_mult=(1, 2, 2),
                             num_res_blocks=1, norm_groups=8, codebook_size=64, code_dim=8,
                             embed_dim=16, train=_train(20, 8, 3e-3, 2))
    c.coglm = _coglm(vocab_size=704, width=32, num_layers=2, head_dim=16, mlp_dim=64,
                     train=_train(20, 8, 1e-3, 2))
    c.sr = _sr(factor=2, width=32, num_layers=2, head_dim=16, mlp_dim=64, radius=1,
               cross_radius=1, coarse_layers=1, train=_train(20, 8, 1e-3, 2))
    c.sample = _sample(top_k=16, lopar_window=(2, 2), lopar_top_k=(8, 4, 4))
    c.train.log_every, c.train.checkpoint_every = 5, 10

  elif variant == "tiny_shapes":
    c.text.length = 24
    # The bundle's tokenizer is nuwa-tiny-shapes' per-frame VQ-GAN (the same sizes) fine-tuned
    # 600 steps on both levels (docs/models/cogview2-tiny-shapes.md); from scratch, these steps.
    c.tokenizer = _tokenizer(resolution=64, channels=32, channel_mult=(1, 2, 2),
                             num_res_blocks=1, norm_groups=8, codebook_size=512, code_dim=16,
                             embed_dim=64, train=_train(3000, 32, 1e-3, 200))
    c.coglm = _coglm(vocab_size=704, width=128, num_layers=4, head_dim=32, mlp_dim=512,
                     text_drop=0.1, train=_train(4000, 32, 1e-3, 200))
    c.sr = _sr(factor=2, width=128, num_layers=4, head_dim=32, mlp_dim=512,
               train=_train(1800, 32, 1e-3, 100))
    # LoPAR at temperature 0.3: on captions 500-547 of `test` (which the card's scores skip),
    # SR from the real coarse tokens 0.69 correct at 0.6, 0.85 at 0.3, 0.81 greedy.
    c.sample = _sample(lopar_temperature=0.3)

  else:  # paper
    # Ding et al. 2022: CogLM is a 6B transformer (48 layers, hidden 3072, as CogView's 4B
    # with a wider hidden size) over icetk's 150k text + 20k image tokens; stage 1 is 20x20
    # tokens of a 160 px image; super-resolution goes to 60x60 (480 px) with local attention
    # of kernel 5 in the fine grid and a kernel-5 cross-level window.
    c.text.length = 64
    c.text.tokenizer = "spiece.model"
    c.tokenizer = _tokenizer()
    c.coglm = _coglm()
    c.sr = _sr()
    c.train.dtype = "bfloat16"
    c.train.remat = "full"
    c.sample = _sample(lopar_window=(4, 4), lopar_top_k=(60, 40, 40, 40, 20, 20, 10))

  return select_stage(c, rest, {"tokenizer": c.tokenizer.train, "coglm": c.coglm.train,
                                "sr": c.sr.train}, default="coglm")

"""Phenaki: frozen T5 encoder + C-ViViT video tokenizer + MaskGIT transformer (Villegas et al. 2022).

  configs/phenaki.py:micro        tests and smoke runs: 5 frames at 16x16, seconds on a CPU
  configs/phenaki.py:tiny_shapes  the bundled phenaki-tiny-shapes: 16 frames at 32x32 on `moving_shapes`
  configs/phenaki.py:paper        T5-XXL, C-ViViT (2x8x8 tubelets, codebook 8192), 1.8B MaskGIT

Stages, trained in order: text_encoder (skipped when `text_encoder.weights`
names public T5 weights), tokenizer (C-ViViT), transformer (MaskGIT, which
reads the first two frozen). `VARIANT,stage=NAME` or `--config.stage=NAME`
picks the stage and its training defaults.
"""

import ml_collections

from jzoo.configs._common import base_config, select_stage, split_variant
from jzoo.configs._common import stage_train as _train
from jzoo.configs._common import text_encoder as _text_encoder

VARIANTS = ("micro", "tiny_shapes", "paper")


def _tokenizer(**kw):
  t = ml_collections.ConfigDict(dict(
      frames=11,              # 1 + temporal_patch * k: the first frame is patched on its own
      resolution=128,
      patch_size=8,           # spatial side of a patch / tubelet
      temporal_patch=2,       # frames per tubelet after the first frame
      width=512, num_heads=8, head_dim=64, mlp_dim=2048,
      spatial_layers=4,       # per encoder and per decoder
      temporal_layers=4,      # causal in time, per encoder and per decoder
      codebook_size=8192,
      code_dim=32,            # factorized, l2-normalised codes (ViT-VQGAN)
      commitment=0.25,
      codebook_ema=0.0,       # > 0: EMA codebook updates with this decay (e.g. 0.99)
      reconstruction_loss="l2",  # l2 | l1
      # + perceptual_weight * LPIPS-VGG, from weight files you give (docs/metrics/lpips.md):
      perceptual_weight=0.0, perceptual_weights="",  # "VGG.pth,LIN.pth" or one safetensors
      # + adversarial_weight * hinge GAN term of a PatchGAN (jzoo/vq/discriminator.py), from step
      # adversarial_start on:
      adversarial_weight=0.0, adversarial_start=0, discriminator_channels=64,
      discriminator_layers=3,
      max_time_tokens=64,     # longest clip (in time tokens) the position table covers
      cache="",               # a folder of the train clips' codes (python -m jzoo.cache_codes): the
                              # transformer then trains on them, without the tokenizer or pixels
      train=_train(100_000, 64, 1e-4, 10_000),
  ))
  t.update(kw)
  return t


def _transformer(**kw):
  t = ml_collections.ConfigDict(dict(
      width=2048, num_layers=24, num_heads=16, head_dim=128, mlp_dim=8192,
      dropout=0.0,
      text_positions=False,   # learned text position embedding (Imagen's base needed one to bind
                              # words to objects: relation 0.51 -> 0.93 on shapes)
      text_drop=0.1,          # classifier-free guidance: fraction of captions dropped in training
      train=_train(1_000_000, 512, 1e-4, 10_000),
  ))
  t.update(kw)
  return t


def _sample(**kw):
  s = ml_collections.ConfigDict(dict(
      steps=12, guidance=3.0,   # MaskGIT decoding steps and classifier-free guidance (traced)
      temperature=1.0,          # token sampling temperature
      choice_temperature=4.5,   # Gumbel noise on the confidences, annealed to 0 over the steps
      candidates=1,             # samples drawn per prompt; the one the transformer finds most likely
                                # given the text is kept (maskgit.mean_log_likelihood; K times the
                                # transformer calls)
      cpu_rows=0,               # on the CPU, the transformer runs over the sampling batch this many
                                # sequences at a time (0 = all at once); the samples are the same
      story_context=1,          # story mode: time tokens of the previous segment's end re-encoded
                                # as the start of the next (1 = its last frame)
  ))
  s.update(kw)
  return s


def get_config(arg=None):
  variant, rest = split_variant(arg, "tiny_shapes", VARIANTS)
  c = base_config("phenaki", "transformer")
  c.variant = variant

  if variant == "micro":
    c.text.length = 16
    c.text_encoder = _text_encoder("micro", train=_train(20, 8, 1e-3, 2))
    c.tokenizer = _tokenizer(frames=5, resolution=16, patch_size=4, temporal_patch=2, width=32,
                             num_heads=2, head_dim=16, mlp_dim=64, spatial_layers=1,
                             temporal_layers=1, codebook_size=64, code_dim=8, max_time_tokens=8,
                             train=_train(20, 8, 3e-3, 2))
    c.transformer = _transformer(width=32, num_layers=2, num_heads=2, head_dim=16, mlp_dim=64,
                                 train=_train(20, 8, 1e-3, 2))
    c.sample = _sample(steps=4)
    c.train.log_every, c.train.checkpoint_every = 5, 10

  elif variant == "tiny_shapes":
    c.text.length = 24
    c.text_encoder = _text_encoder("tiny", train=_train(1500, 64, 1e-3, 100))
    # 16 frames = 1 + 3 tubelets of 5 frames; 4x4 patches at 32x32 -> 4 x 8 x 8 = 256 tokens.
    # With 8x8 patches (64 tokens) one code has to hold a whole 8-pixel object (colour, shape,
    # sub-patch position): 512 codes cannot, and the reconstructions were blobs. The decoder's
    # last layer is linear (as in the paper) from `width` to a 5x4x4x3 = 240-value tubelet, so
    # `width` also bounds the rank of what a token can draw.
    c.tokenizer = _tokenizer(frames=16, resolution=32, patch_size=4, temporal_patch=5, width=192,
                             num_heads=6, head_dim=32, mlp_dim=384, spatial_layers=2,
                             temporal_layers=2, codebook_size=1024, code_dim=16,
                             max_time_tokens=16, train=_train(2742, 32, 1e-3, 200))
    c.transformer = _transformer(width=128, num_layers=4, num_heads=4, head_dim=32, mlp_dim=384,
                                 text_positions=True, train=_train(2188, 64, 1e-3, 200))
    # The bundled phenaki-tiny-shapes (docs/models/phenaki-tiny-shapes.md): the text encoder
    # trained on a 2-core CPU; tokenizer and transformer on one H200, with these steps chosen by
    # `--fit-minutes` for 3.23 and 4.57 minutes; the transformer then went 818, 2,626 and 1,724
    # steps more (three fine-tuning runs from the previous export at lr 3e-4, --init-from; the
    # last two on one H100), all without text positions; then 1,160 steps on the CPU with the
    # text position embedding added (fresh, the rest from the previous export), then 900 more.
    # Sampling chosen on held-out test captions 500-699 (scripts/sweep_sampling.py): 24 steps at
    # token temperature 0.3 with less confidence noise scored 0.845 there against 0.785 for 12 steps
    # at 0.5; 48 steps at temperature 0.1 ties it on captions 700-1099 with twice the steps
    # (docs/models/phenaki-tiny-shapes.md).
    # Keeping the most likely of 4 samples scored 0.845 against 0.8025 for one on captions
    # 700-1099 (the selector was chosen on 500-699); cpu_rows=2 samples the same videos about
    # twice as fast on a 2-core CPU (scripts/time_sampling.py), which pays for most of it.
    c.sample = _sample(steps=24, guidance=2.0, temperature=0.3, choice_temperature=2.0,
                       candidates=4, cpu_rows=2)

  else:  # paper
    # Villegas et al. 2022, section 3 and appendix: T5-XXL text embeddings; C-ViViT on 11 frames
    # at 128x128 with 2x8x8 tubelets -> (1+5) x 16 x 16 tokens, 4 spatial + 4 temporal layers,
    # width 512, codebook 8192; a 24-layer, 1.8B-parameter bidirectional MaskGIT transformer.
    c.text.length = 64
    c.text.tokenizer = "spiece.model"  # T5's sentencepiece model, a path the user provides
    c.text_encoder = _text_encoder(preset="t5-v1_1-xxl", vocab_size=32128, d_model=4096, d_kv=64,
                                   d_ff=10240, num_heads=64, num_layers=24)
    c.tokenizer = _tokenizer()
    c.transformer = _transformer()
    c.train.dtype = "bfloat16"
    c.train.remat = "full"
    c.sample = _sample(steps=48, guidance=12.0)

  return select_stage(c, rest, {"text_encoder": c.text_encoder.train,
                                "tokenizer": c.tokenizer.train,
                                "transformer": c.transformer.train}, default="transformer")

"""Keys every system's config shares. A system config starts from `base_config()`.

  config.model           registry family (module jzoo.models.<model>)
  config.stage           the stage `python -m jzoo.train` trains
  config.text            tokenizer ("shapes" = the packaged sentencepiece model, or a path) and length
  config.mesh            mesh axis sizes; -1 fills the remaining devices
  config.axis_rules      logical axis name -> mesh axes
  config.train.*         steps, batch_size, checkpoint_every, log_every, seed, keep, ema_decay, dtype
  config.optim.*         AdamW with warmup + cosine decay and global-norm clipping
  config.sample.*        CLI defaults for generation
  config.xla_cpu_ynn_fusions  on the CPU, the operations XLA hands to YNNPACK (jzoo.parallel.compiler)
"""

import ml_collections

from jzoo.parallel.rules import DEFAULT_RULES


def base_config(model, stage):
  c = ml_collections.ConfigDict()
  c.model = model
  c.stage = stage
  c.variant = ""
  c.text = ml_collections.ConfigDict(dict(tokenizer="shapes", length=24))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.axis_rules = DEFAULT_RULES
  c.data = ml_collections.ConfigDict(dict(
      dataset="",          # "" = the stage's own dataset; or "folder:/path", "tfds:shapes"
      shuffle=True,
      # Grain worker processes decoding/rendering examples (0: in the training process). On an
      # accelerator host with folder/TFDS data, a few per spare core; keep 0 on a CPU.
      workers=0,
  ))
  c.train = ml_collections.ConfigDict(dict(
      steps=1000,
      batch_size=32,        # global batch, split over the data axes
      checkpoint_every=500,
      log_every=50,
      seed=0,
      keep=3,               # checkpoints kept
      ema_decay=0.999,
      dtype="float32",      # compute dtype: float32 or bfloat16 (parameters stay float32)
      remat="none",         # none | full | dots (activation checkpointing policy)
      # A bundled model or a python -m jzoo.export folder: a fresh run of a stage starts from its
      # weights there (fine-tuning; the optimizer starts afresh), and stages not trained in the
      # workdir (frozen dependencies, export, sampling) are read from it.
      init_from="",
      # The same for the stages not trained in the workdir only: the trained stage starts fresh
      # (a new transformer over a bundled model's tokenizer and text encoder).
      frozen_from="",
      # Regular expressions, comma-separated, searched in the trained stage's '/'-joined parameter
      # paths ("spatial", "Conv_0/kernel"): matching parameters stay as initialised.
      freeze="",
      # How init_from's params become this config's: identity | inflate_conv3d (2D conv kernels to
      # 3D ones with an identity temporal kernel); see jzoo.training.init_maps.
      init_map="identity",
      init_stage="",        # the export's stage that init_from starts from ("" = the trained one)
      # A bundled model or export folder whose teacher_stage ("" = the trained stage) params the
      # loss reads as frozen["teacher"] (distillation): no gradients, no optimizer state.
      teacher_from="",
      teacher_stage="",
  ))
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-3,
      warmup_steps=100,
      schedule="cosine",    # cosine | constant
      end_lr_factor=0.1,
      weight_decay=0.0,
      b1=0.9,
      b2=0.99,
      clip_norm=1.0,
  ))
  c.sample = ml_collections.ConfigDict(dict(steps=20, guidance=3.0))
  # '' = XLA's own choice; else a comma list of eltwise, reduce, dot, individual_dot,
  # individual_convolution. Applies to the train step and generation on the CPU only.
  c.xla_cpu_ynn_fusions = ""
  return c


def stage_train(steps, batch_size, lr, warmup=100):
  return ml_collections.ConfigDict(dict(steps=steps, batch_size=batch_size, lr=lr,
                                        warmup_steps=warmup))


# The small shapes-vocabulary (704 ids) T5 encoders that models pretrain here in their
# `text_encoder` stage: `micro` for tests, `tiny` for the bundled models.
TEXT_ENCODER_SIZES = {
    "micro": dict(vocab_size=704, d_model=32, d_kv=16, d_ff=64, num_heads=2, num_layers=1,
                  relative_attention_num_buckets=8, relative_attention_max_distance=16),
    "tiny": dict(vocab_size=704, d_model=128, d_kv=32, d_ff=256, num_heads=4, num_layers=3,
                 relative_attention_num_buckets=16, relative_attention_max_distance=32),
}


def text_encoder(size=None, **kw):
  """config.text_encoder: T5 v1.1 defaults, a TEXT_ENCODER_SIZES entry, then `kw`."""
  te = ml_collections.ConfigDict(dict(
      preset="",                 # a jzoo.text.t5.T5_PRESETS name; the keys below override it
      vocab_size=32128, d_model=512, d_kv=64, d_ff=1024, num_heads=6, num_layers=8,
      relative_attention_num_buckets=32, relative_attention_max_distance=128,
      feed_forward="gated-gelu", layer_norm_epsilon=1e-6, dropout_rate=0.0,
      weights="",                # public T5 weights: model.safetensors (file/dir) or t5x checkpoint
      cache="",                  # precomputed embeddings (python -m jzoo.cache_text): no encoder
                                 # in the conditioned stages' train step
      # Masked-token pretraining of a small encoder (the `text_encoder` stage).
      mlm_probability=0.3,       # fraction of caption tokens replaced by the sentinel (last id)
      mlm_copy_weight=0.1,       # loss weight of the visible tokens
      resolution=16,             # images are rendered but unused while pretraining the encoder
      train=stage_train(2000, 64, 1e-3),
  ))
  te.update(TEXT_ENCODER_SIZES[size] if size else {})
  te.update(kw)
  return te


def split_variant(arg, default, variants):
  """'VARIANT[,stage=NAME]' -> (variant, rest); a clear error for an unknown variant."""
  variant, _, rest = (arg or default).partition(",")
  if variant not in variants:
    raise ValueError(f"unknown variant {variant!r}; choose one of {tuple(variants)}")
  return variant, rest


def select_stage(c, rest, trains, default):
  """Sets `c.stage` from the 'stage=NAME' argument (else `default`) and copies
  that stage's training defaults into `c.train` / `c.optim`.

  trains: {stage: stage_train(...)}, in training order. Each stage thus trains with its own
  steps, batch size and learning rate (`VARIANT,stage=NAME`, or `--config.stage=NAME`, which
  jzoo.config turns into that), and CLI overrides still win."""
  stage = default
  if rest:
    key, eq, stage = rest.partition("=")
    if key != "stage" or not eq:
      raise ValueError(f"bad config argument {rest!r}; use VARIANT or VARIANT,stage=NAME")
  if stage not in trains:
    raise ValueError(f"unknown stage {stage!r}; choose one of {tuple(trains)}")
  c.stage = stage
  t = trains[stage]
  c.train.steps, c.train.batch_size = t.steps, t.batch_size
  c.optim.lr, c.optim.warmup_steps = t.lr, t.warmup_steps
  return c

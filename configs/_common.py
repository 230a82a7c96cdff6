"""Keys every system's config shares. A system config starts from `base_config()`.

  config.model           registry family (module jzoo.models.<model>)
  config.stage           the stage `python -m jzoo.train` trains
  config.text            tokenizer ("shapes" = the packaged sentencepiece model, or a path) and length
  config.mesh            mesh axis sizes; -1 fills the remaining devices
  config.axis_rules      logical axis name -> mesh axes
  config.train.*         steps, batch_size, checkpoint_every, log_every, seed, keep, ema_decay, dtype
  config.optim.*         AdamW with warmup + cosine decay and global-norm clipping
  config.sample.*        CLI defaults for generation
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
  return c

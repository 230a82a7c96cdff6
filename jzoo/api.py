"""A small Python API over the CLIs, for notebooks:

  model, params = jzoo.api.load("imagen-tiny-shapes")
  images = jzoo.api.generate(model, params, ["a small red circle in the center"], seed=0)
"""

import types

from jzoo import registry


def load(name=registry.DEFAULT_MODEL, checkpoint=None, random_weights=False, seed=0):
  """(model, params by stage) of a registered model: bundled weights, a training dir, or random."""
  from jzoo.sample import load_model_and_params
  args = types.SimpleNamespace(model=name, checkpoint=checkpoint, random_weights=random_weights,
                               seed=seed)
  return load_model_and_params(args)


def generate(model, params, prompts, *, num=1, seed=0, steps=None, guidance=None, batch_size=16,
             story=False, start=None):
  """uint8 images [N,H,W,3] or videos [N,T,H,W,3], prompt-major, `num` per prompt.

  story: one video telling `prompts` in order (video models with story mode).
  start: uint8 frames [F,H,W,3] that every video starts with (image-to-video, continuation)."""
  import numpy as np
  from jzoo.sample import generate as _generate
  return np.stack(_generate(model, params, list(prompts), num=num, seed=seed, steps=steps,
                            guidance=guidance, batch_size=batch_size, story=story, start=start))

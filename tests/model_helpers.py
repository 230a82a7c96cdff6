"""Shared helpers of the model tests: parameter noise, fitting a fixed batch, the real trainer."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jzoo import config as config_lib
from jzoo.training.loop import train_and_evaluate
from jzoo.training.metrics import read_metrics


def noisy(tree, seed=42, scale=0.05):
  """Parameters plus noise: zero-initialised residual branches would hide most paths."""
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree_util.tree_unflatten(treedef, [x + scale * jax.random.normal(k, x.shape, x.dtype)
                                                for x, k in zip(leaves, keys)])


def fit(loss_fn, params, steps, lr=3e-3):
  """Adam on `loss_fn(params, rng) -> (loss, metrics)`; returns the metrics of every step (with
  "loss"), as floats."""
  optimizer = optax.adam(lr)

  @jax.jit
  def step(params, opt_state, rng):
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rng)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, dict(metrics, loss=loss)

  opt_state, history = optimizer.init(params), []
  for i in range(steps):
    params, opt_state, metrics = step(params, opt_state, jax.random.PRNGKey(i))
    history.append({k: float(v) for k, v in metrics.items()})
  return history


def assert_tokenizer_learns(history):
  """A VQ tokenizer fitting a fixed batch: loss halves, PSNR +3 dB, sane codebook statistics."""
  first, last = history[0], history[-1]
  assert np.isfinite(last["loss"])
  assert last["loss"] < 0.5 * first["loss"], (first, last)
  assert last["psnr"] > first["psnr"] + 3.0
  assert 0 < last["codebook_usage"] <= 1 and last["perplexity"] >= 1


PALETTE = ((1, -1, -1), (-1, 1, -1), (-1, -1, 1), (1, 1, -1), (1, -1, 1), (-1, 1, 1), (1, 1, 1))


def square_batch(model, stage, batch_size, seed=0):
  """A batch of `stage`, like `shapes`: captions of random tokens (random lengths) and images of
  one palette-coloured square on black (never an invisible black one). Where the stage's data
  carries hard negatives, every other caption's twin is the caption with its first two words
  swapped, the others' the caption itself (no twin)."""
  spec = model.data_spec(stage)
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, 600, (batch_size, spec.text_length)).astype(np.int32)
  lengths = rng.integers(4, spec.text_length, batch_size)
  mask = (np.arange(spec.text_length)[None] < lengths[:, None]).astype(np.int32)
  r = spec.resolution
  image = -np.ones((batch_size, r, r, 3))
  for i in range(batch_size):
    side = r // 3
    y, x = rng.integers(0, r - side, 2)
    image[i, y:y + side, x:x + side] = PALETTE[(i + seed) % len(PALETTE)]
  tokens = tokens * mask
  batch = {"image": jnp.asarray(image, jnp.float32), "tokens": jnp.asarray(tokens),
           "mask": jnp.asarray(mask)}
  if spec.negatives:
    twins = tokens.copy()
    twins[::2, [0, 1]] = twins[::2, [1, 0]]
    batch.update(negative_tokens=jnp.asarray(twins), negative_mask=jnp.asarray(mask))
  return batch


def caption_batch(text_length, batch_size, seed=0, words=6):
  """Random caption token ids [B, L] (the first `words` real) and their mask."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, 600, (batch_size, text_length)).astype(np.int32)
  mask = (np.arange(text_length)[None] < words).astype(np.int32).repeat(batch_size, 0)
  return jnp.asarray(tokens * mask), jnp.asarray(mask)


def train_micro_stages(family, stages, workdir, steps, overrides=(), decreasing=True):
  """Trains each stage of `family:micro` (with config `overrides`) for `steps` on 8 fake devices
  (data=fsdp=tensor=2) through the real trainer; returns {stage: loss curve}, each checked finite
  and (unless `decreasing` is False) decreasing."""
  curves = {}
  for stage in stages:
    config = config_lib.load(f"{family}:micro", [
        f"stage={stage}", f"train.steps={steps}", "train.log_every=1",
        f"train.checkpoint_every={steps}", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2",
        "optim.lr=3e-3", *overrides])
    train_and_evaluate(config, workdir, devices=jax.devices(), progress=False)
    curve = np.array([m["loss"] for m in read_metrics(os.path.join(workdir, stage))])
    assert len(curve) == steps and np.all(np.isfinite(curve)), stage
    quarter = max(steps // 4, 1)
    assert not decreasing or curve[-quarter:].mean() < curve[:quarter].mean(), (stage, curve)
    curves[stage] = curve
  return curves

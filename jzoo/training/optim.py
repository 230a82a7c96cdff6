"""AdamW with linear warmup + cosine decay and global-norm clipping, from `config.optim`."""

import jax
import optax


def learning_rate_schedule(optim, total_steps):
  warmup = min(int(optim.warmup_steps), max(int(total_steps) - 1, 0))
  if optim.schedule == "constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, optim.lr, max(warmup, 1)), optax.constant_schedule(optim.lr)],
        [max(warmup, 1)])
  if optim.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=optim.lr, warmup_steps=max(warmup, 1),
        decay_steps=max(int(total_steps), warmup + 1), end_value=optim.lr * optim.end_lr_factor)
  raise ValueError(f"unknown optim.schedule {optim.schedule!r}; use cosine or constant")


def _decay_mask(params):
  # Weight decay on matrices and kernels only, not on biases, norms and scales.
  return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def make_optimizer(optim, total_steps):
  """Returns (optax transformation, learning-rate schedule)."""
  schedule = learning_rate_schedule(optim, total_steps)
  tx = optax.chain(
      optax.clip_by_global_norm(optim.clip_norm) if optim.clip_norm else optax.identity(),
      optax.adamw(schedule, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay,
                  mask=_decay_mask),
  )
  return tx, schedule

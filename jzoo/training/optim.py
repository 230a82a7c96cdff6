"""AdamW with linear warmup + cosine decay and global-norm clipping, from `config.optim`; the
`train.freeze` mask of parameters that get no updates."""

import re

import jax
import optax

from jzoo.errors import ConfigError


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


def make_optimizer(optim, total_steps, frozen=None):
  """Returns (optax transformation, learning-rate schedule). `frozen`: a tree of bools over the
  params (freeze_mask), or None; frozen leaves get zero updates and no optimizer state."""
  schedule = learning_rate_schedule(optim, total_steps)
  tx = optax.chain(
      optax.clip_by_global_norm(optim.clip_norm) if optim.clip_norm else optax.identity(),
      optax.adamw(schedule, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay,
                  mask=_decay_mask),
  )
  if frozen is not None:
    # AdamW sees the trained leaves only: no moments for the frozen ones, and the clipping norm
    # is that of the gradients that are applied.
    labels = jax.tree_util.tree_map(lambda f: "frozen" if f else "trained", frozen)
    tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
  return tx, schedule


def param_path(path):
  """A tree_flatten_with_path key path as the '/'-joined names train.freeze matches."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def freeze_patterns(spec):
  """train.freeze (a comma-separated string or a sequence of regular expressions) as a tuple."""
  if isinstance(spec, str):
    spec = spec.split(",")
  return tuple(p.strip() for p in spec if p.strip())


def freeze_mask(params, spec):
  """A tree of bools over `params`: True where a train.freeze pattern is found (re.search) in the
  leaf's '/'-joined path; None when nothing is to be frozen. A pattern that matches no parameter
  (a typo would silently train everything) is a ConfigError."""
  patterns = freeze_patterns(spec)
  if not patterns:
    return None
  try:
    compiled = [re.compile(p) for p in patterns]
  except re.error as e:
    raise ConfigError(f"train.freeze: {e.pattern!r} is not a regular expression ({e})") from None
  flat, tree = jax.tree_util.tree_flatten_with_path(params)
  paths = [param_path(path) for path, _ in flat]
  for pattern, regex in zip(patterns, compiled):
    if not any(regex.search(p) for p in paths):
      raise ConfigError(f"train.freeze pattern {pattern!r} matches no parameter of the trained "
                        f"stage; its parameters are named like {paths[0]!r}")
  return jax.tree_util.tree_unflatten(tree, [any(r.search(p) for r in compiled) for p in paths])

"""Orbax checkpoints of a training stage, and loading trained parameters for sampling.

Layout of a model directory (the `--workdir` of `jzoo.train`, the
`--checkpoint` of `jzoo.sample`): one folder per stage,

  DIR/<stage>/checkpoints/<step>/{params,ema,opt_state,meta}
  DIR/<stage>/metrics.jsonl, DIR/<stage>/tensorboard/

Orbax writes a step into a temporary folder and renames it when complete, so
a process killed mid-save leaves the previous step as the latest readable one.
"""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from jzoo.errors import CheckpointError

ITEMS = ("params", "ema", "opt_state", "meta")


def stage_dir(model_dir, stage):
  return os.path.join(os.path.abspath(model_dir), stage)


def checkpoints_dir(model_dir, stage):
  return os.path.join(stage_dir(model_dir, stage), "checkpoints")


class Checkpointer:
  """Saves/restores {params, ema, opt_state} + JSON meta for one stage."""

  def __init__(self, directory, keep=3, async_save=True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step, state, meta):
    args = ocp.args.Composite(
        params=ocp.args.StandardSave(state["params"]),
        ema=ocp.args.StandardSave(state["ema"]),
        opt_state=ocp.args.StandardSave(state["opt_state"]),
        meta=ocp.args.JsonSave(meta))
    self.manager.save(step, args=args)

  def restore(self, step, abstract_state):
    """`abstract_state`: ShapeDtypeStructs with shardings (the target mesh may differ from the saved one)."""
    args = ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_state["params"]),
        ema=ocp.args.StandardRestore(abstract_state["ema"]),
        opt_state=ocp.args.StandardRestore(abstract_state["opt_state"]),
        meta=ocp.args.JsonRestore())
    try:
      restored = self.manager.restore(step, args=args)
    except Exception as e:  # orbax raises many types for unreadable or mismatched files
      raise CheckpointError(f"cannot restore checkpoint step {step} from {self.directory}: "
                            f"{type(e).__name__}: {_first_line(e)}") from None
    return {k: restored[k] for k in ("params", "ema", "opt_state")}, restored["meta"]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def latest_step(model_dir, stage):
  """The latest complete checkpoint step of `stage` in `model_dir`, or None."""
  directory = checkpoints_dir(model_dir, stage)
  if not os.path.isdir(directory):
    return None
  manager = ocp.CheckpointManager(directory, item_names=ITEMS)
  try:
    return manager.latest_step()
  finally:
    manager.close()


def _first_line(e):
  text = str(e).strip().splitlines()
  return text[0][:300] if text else ""


def config_name(config):
  """The --config that rebuilds `config`: FAMILY:VARIANT, else the file or name it was loaded from
  (a placeholder without a config)."""
  if config is None:
    return "FAMILY:VARIANT"
  variant = config.get("variant", "")
  return f"{config.model}:{variant}" if variant else config.get("config_ref", config.model)


def train_command(stage, model_dir, config=None):
  """The command line that trains `stage` of `config`'s model into `model_dir`, for error hints."""
  return (f"python -m jzoo.train --config {config_name(config)} --config.stage={stage} "
          f"--workdir {model_dir}")


def load_params(model_dir, stage, item="ema", step=None, config=None):
  """Numpy parameters of `stage` from the latest (or given) checkpoint in `model_dir`.

  Returns the EMA parameters by default, which is what sampling uses. `config`: the model's, for
  the command in the error when the stage has no checkpoint."""
  directory = checkpoints_dir(model_dir, stage)
  if not os.path.isdir(directory):
    raise CheckpointError(f"no checkpoint for stage {stage!r} in {os.path.abspath(model_dir)} "
                          f"(expected {directory}); train it with "
                          f"{train_command(stage, model_dir, config)}")
  manager = ocp.CheckpointManager(directory, item_names=ITEMS)
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no complete checkpoint in {directory}; train longer or check the path")
    try:
      target = _host_target(os.path.join(directory, str(step), item))
      restored = manager.restore(step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(target)}))
    except CheckpointError:
      raise
    except Exception as e:
      raise CheckpointError(f"checkpoint {directory}/{step} is corrupt or unreadable: "
                            f"{type(e).__name__}: {_first_line(e)}") from None
  finally:
    manager.close()
  return jax.tree_util.tree_map(np.asarray, restored[item])


def _host_target(item_dir):
  """Restore target on this process's first device, whatever mesh (or hosts) saved the item."""
  from absl import logging as absl_logging
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)  # orbax warns that items have no step metadata
  try:
    metadata = ocp.StandardCheckpointer().metadata(item_dir)
  finally:
    absl_logging.set_verbosity(verbosity)
  tree = getattr(metadata, "item_metadata", metadata)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                                tree)

"""Metrics: DIR/metrics.jsonl (one JSON object per logged step) and TensorBoard events. Host 0 only."""

import json
import math
import os

import jax


class MetricWriter:

  def __init__(self, directory, enabled=None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = os.path.join(directory, "metrics.jsonl")
    self._tb = None
    if self.enabled:
      os.makedirs(directory, exist_ok=True)
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(directory, "tensorboard"))
      except ImportError:  # TensorBoard events are optional
        self._tb = None

  def write(self, step, scalars):
    if not self.enabled:
      return
    record = {"step": int(step)}
    record.update({k: _to_json(v) for k, v in scalars.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for k, v in scalars.items():
        if isinstance(v, (int, float)) and math.isfinite(v):
          self._tb.add_scalar(k, v, step)
      self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()


def has_rows(directory):
  """Whether DIR/metrics.jsonl has anything in it (a run logged steps there)."""
  path = os.path.join(directory, "metrics.jsonl")
  return os.path.isfile(path) and os.path.getsize(path) > 0


def drop_rows_after(directory, step):
  """Removes the records of steps after `step` from DIR/metrics.jsonl, and lines that do not
  parse (one torn by a kill): a resumed run logs those steps again. Rewritten through a temporary
  file, so a kill meanwhile leaves the old file or the new one."""
  path = os.path.join(directory, "metrics.jsonl")
  if not os.path.isfile(path):
    return
  with open(path) as f:
    lines = f.readlines()
  kept = [line.rstrip("\n") + "\n" for line in lines if _step_of(line) <= step]
  if kept == lines:
    return
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(kept)
  os.replace(tmp, path)


def _step_of(line):
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return math.inf  # not a record


def _to_json(v):
  v = float(v)
  return v if math.isfinite(v) else str(v)


def read_metrics(directory):
  """All records of DIR/metrics.jsonl (for tests, notebooks and model cards)."""
  path = os.path.join(directory, "metrics.jsonl")
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]

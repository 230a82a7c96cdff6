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


def _to_json(v):
  v = float(v)
  return v if math.isfinite(v) else str(v)


def read_metrics(directory):
  """All records of DIR/metrics.jsonl (for tests, notebooks and model cards)."""
  path = os.path.join(directory, "metrics.jsonl")
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]

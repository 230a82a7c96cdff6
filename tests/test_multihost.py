"""Two processes on this machine (a local coordinator, 4 fake CPU devices each) train the micro
model through `python -m jzoo.train` and checkpoint: the same loss curve as one process with 8
devices, metrics from host 0 only, and a checkpoint that restores."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np

from jzoo.io import checkpoint
from jzoo.training.loop import train_and_evaluate
from jzoo.training.metrics import read_metrics
from tests.test_training import ROOT, STAGE, TOY, toy_config

OVERRIDES = ["mesh.data=8", "train.steps=4", "train.checkpoint_every=2", "train.log_every=1"]


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_train_and_checkpoint_like_one(tmp_path):
  port = _free_port()
  workdir = tmp_path / "multi"
  cmd = [sys.executable, "-m", "jzoo.train", "--config", TOY, "--workdir", str(workdir),
         "--no-progress", *[f"--config.{o}" for o in OVERRIDES]]
  procs = []
  for pid in range(2):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
               XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(pid))
    procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  for p in procs:
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-2000:]

  single = tmp_path / "single"
  train_and_evaluate(toy_config(*OVERRIDES), str(single), devices=jax.devices(), progress=False)
  multi_records = read_metrics(workdir / STAGE)
  assert [r["step"] for r in multi_records] == [1, 2, 3, 4]  # host 0 alone writes metrics
  np.testing.assert_allclose([r["loss"] for r in multi_records],
                             [r["loss"] for r in read_metrics(single / STAGE)], atol=1e-5)
  assert checkpoint.Checkpointer(checkpoint.checkpoints_dir(workdir, STAGE)).latest_step() == 4
  a = checkpoint.load_params(workdir, STAGE)
  b = checkpoint.load_params(single, STAGE)
  jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5), a, b)

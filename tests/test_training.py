"""The trainer: same loss on every mesh, exact resume across processes, crash safety, NaN stop."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jzoo import config as config_lib
from jzoo.errors import TrainingDiverged, UserError
from jzoo.io import checkpoint
from jzoo.training.loop import train_and_evaluate
from jzoo.training.metrics import read_metrics
from jzoo.training.optim import learning_rate_schedule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(ROOT, "tests", "toy_model.py")
STAGE = "denoiser"


def toy_config(*overrides):
  return config_lib.load(TOY, list(overrides))


def _losses(workdir):
  return np.array([m["loss"] for m in read_metrics(os.path.join(workdir, STAGE))])


def _train_cli(workdir, *extra, check=True):
  cmd = [sys.executable, "-m", "jzoo.train", "--config", TOY, "--workdir", str(workdir),
         "--no-progress", *extra]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONPATH=ROOT)
  return subprocess.run(cmd, env=env, capture_output=True, text=True, check=check, cwd=ROOT)


def test_same_loss_curve_on_every_mesh(tmp_path):
  curves = {}
  for name, overrides, n in [("data=8", ["mesh.data=8"], 8),
                             ("data=2,fsdp=2,tensor=2", ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"], 8),
                             ("one device", ["mesh.data=1"], 1)]:
    workdir = str(tmp_path / name)
    train_and_evaluate(toy_config(*overrides), workdir, devices=jax.devices()[:n], progress=False)
    curves[name] = _losses(workdir)
  reference = curves.pop("one device")
  assert len(reference) == 6 and np.ptp(reference) > 1e-3  # a real, moving curve
  for name, curve in curves.items():
    np.testing.assert_allclose(curve, reference, atol=1e-5, rtol=0, err_msg=name)


def test_metrics_file_has_the_promised_fields(tmp_path):
  train_and_evaluate(toy_config(), str(tmp_path), devices=jax.devices()[:2], progress=False)
  records = read_metrics(str(tmp_path / STAGE))
  assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
  for r in records:
    assert {"step", "loss", "lr", "steps_per_sec", "grad_norm"} <= set(r)
  assert records[0]["lr"] == 0.0 and records[2]["lr"] > 0  # warmup starts at 0
  assert os.listdir(tmp_path / STAGE / "tensorboard")


def test_resume_in_a_new_process_equals_a_straight_run(tmp_path):
  straight, split = tmp_path / "straight", tmp_path / "split"
  _train_cli(straight, "--config.train.steps=20")
  _train_cli(split, "--config.train.steps=20", "--stop_after", "10")
  assert checkpoint.Checkpointer(checkpoint.checkpoints_dir(split, STAGE)).latest_step() == 10
  _train_cli(split, "--config.train.steps=20")
  for item in ("params", "ema"):
    a = checkpoint.load_params(straight, STAGE, item=item)
    b = checkpoint.load_params(split, STAGE, item=item)
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6, rtol=0), a, b)
  assert [m["step"] for m in read_metrics(split / STAGE)] == list(range(1, 21))
  np.testing.assert_allclose(_losses(split), _losses(straight), atol=1e-6)


def test_max_minutes_stops_at_a_logging_step_with_a_checkpoint(tmp_path):
  config = toy_config("train.steps=20", "train.log_every=3", "train.checkpoint_every=100")
  train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1], progress=False,
                     max_minutes=0.0)  # already out of time at the first logging step
  assert checkpoint.Checkpointer(checkpoint.checkpoints_dir(tmp_path, STAGE)).latest_step() == 3
  assert [m["step"] for m in read_metrics(tmp_path / STAGE)] == [3]
  train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1], progress=False)
  assert [m["step"] for m in read_metrics(tmp_path / STAGE)][-1] == 20  # resumes to the end


def test_fit_minutes_cuts_the_schedule_to_the_time_budget(tmp_path):
  cap = 1_000_000
  config = toy_config(f"train.steps={cap}", "train.log_every=10", "train.checkpoint_every=100000",
                      "optim.warmup_steps=2")
  started = time.monotonic()
  train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1], progress=False,
                     fit_minutes=0.2)
  took = time.monotonic() - started
  saved = json.load(open(tmp_path / STAGE / "config.json"))["train"]["steps"]
  assert 20 < saved < cap
  assert checkpoint.Checkpointer(checkpoint.checkpoints_dir(tmp_path, STAGE)).latest_step() == saved
  metrics = read_metrics(tmp_path / STAGE)
  assert metrics[-1]["step"] == saved
  # The schedule ran to its end: the last step's rate is the cosine's floor, not the peak.
  end_lr = float(learning_rate_schedule(config.optim, saved)(saved - 1))
  np.testing.assert_allclose(metrics[-1]["lr"], end_lr, rtol=1e-5, atol=1e-9)
  assert end_lr < 1.01 * config.optim.end_lr_factor * config.optim.lr
  # The budget is 12 s; a busy machine can make the 1.2-s probe's estimate off, which the hard
  # stop (30 s past the budget) bounds; compiles come on top.
  assert took < 0.2 * 60 + 30 + 15
  with pytest.raises(UserError, match="fresh run"):
    train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1], progress=False,
                       fit_minutes=0.1)


def test_sigkill_mid_save_leaves_a_restorable_checkpoint(tmp_path):
  ckpt_dir = checkpoint.checkpoints_dir(tmp_path, STAGE)
  cmd = [sys.executable, "-m", "jzoo.train", "--config", TOY, "--workdir", str(tmp_path),
         "--no-progress", "--config.train.steps=100000", "--config.train.checkpoint_every=1",
         "--config.train.log_every=50", "--config.train.keep=2"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONPATH=ROOT)
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
  try:
    deadline = time.time() + 120
    while time.time() < deadline:
      steps = [d for d in os.listdir(ckpt_dir) if d.isdigit()] if os.path.isdir(ckpt_dir) else []
      if len(steps) >= 2:
        break
      assert proc.poll() is None, proc.stderr.read().decode()
      time.sleep(0.05)
    else:
      pytest.fail("training never wrote two checkpoints")
    time.sleep(0.3)  # a save is in flight every step
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  finally:
    if proc.poll() is None:
      proc.kill()
  latest = checkpoint.Checkpointer(ckpt_dir).latest_step()
  assert latest is not None and latest >= 1
  params = checkpoint.load_params(tmp_path, STAGE, item="params")
  assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(params))
  # Training resumes from it.
  result = _train_cli(tmp_path, f"--config.train.steps={latest + 2}", "--config.train.checkpoint_every=1")
  assert checkpoint.Checkpointer(ckpt_dir).latest_step() == latest + 2, result.stderr


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  train_and_evaluate(toy_config("train.steps=3"), str(tmp_path), devices=jax.devices()[:1],
                     progress=False)
  good = checkpoint.load_params(tmp_path, STAGE, item="params")
  with pytest.raises(TrainingDiverged, match=r"loss is nan at step 4.*last good checkpoint \(step 3\)"):
    train_and_evaluate(toy_config("train.steps=6", "toy.poison=True"), str(tmp_path),
                       devices=jax.devices()[:1], progress=False)
  ckpt = checkpoint.Checkpointer(checkpoint.checkpoints_dir(tmp_path, STAGE))
  assert ckpt.latest_step() == 3
  after = checkpoint.load_params(tmp_path, STAGE, item="params")
  jax.tree_util.tree_map(np.testing.assert_array_equal, good, after)


def test_nan_from_the_cli_is_one_line_and_exit_2(tmp_path):
  result = _train_cli(tmp_path, "--config.toy.poison=True", check=False)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert "loss is nan at step 1" in lines[-1] and "Traceback" not in result.stderr


def test_trains_on_a_folder_of_captioned_images(tmp_path):
  from PIL import Image
  data = tmp_path / "data"
  data.mkdir()
  for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]):
    Image.new("RGB", (40, 30), colour).save(data / f"img{i}.png")
    (data / f"img{i}.txt").write_text(f"a flat picture number {i}")
  config = toy_config("train.steps=4", "train.checkpoint_every=4", f"data.dataset=folder:{data}")
  train_and_evaluate(config, str(tmp_path / "run"), devices=jax.devices()[:1], progress=False)
  assert len(_losses(str(tmp_path / "run"))) == 4
  assert checkpoint.Checkpointer(checkpoint.checkpoints_dir(tmp_path / "run", STAGE)).latest_step() == 4


def test_missing_folder_dataset_is_a_data_error(tmp_path):
  from jzoo.errors import DataError
  config = toy_config(f"data.dataset=folder:{tmp_path / 'nope'}")
  with pytest.raises(DataError, match="nope"):
    train_and_evaluate(config, str(tmp_path / "run"), devices=jax.devices()[:1], progress=False)


def test_unwritable_workdir_is_one_line_and_exit_2(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  result = _train_cli(blocker / "run", check=False)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [result.stderr.strip()]
  assert "choose a writable --workdir" in result.stderr

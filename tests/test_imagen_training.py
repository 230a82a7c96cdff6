"""The micro Imagen cascade trains through the real trainer on 8 fake devices, and samples from its
training directory through the CLI."""

import os

import jax
import numpy as np
from PIL import Image

from jzoo import config as config_lib
from jzoo import sample
from jzoo.training.loop import train_and_evaluate
from jzoo.training.metrics import read_metrics


def test_micro_cascade_trains_on_8_devices_and_samples(tmp_path, capsys):
  workdir = str(tmp_path / "imagen")
  losses = {}
  for stage in ("text_encoder", "base", "sr"):
    config = config_lib.load("imagen:micro", [
        f"stage={stage}", "train.steps=24", "train.log_every=1", "train.checkpoint_every=24",
        "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "optim.lr=3e-3"])
    train_and_evaluate(config, workdir, devices=jax.devices(), progress=False)
    losses[stage] = np.array([m["loss"] for m in read_metrics(os.path.join(workdir, stage))])
  # Masked-token loss over a 640-word vocabulary falls slowly at first; the diffusion losses fast.
  required = {"text_encoder": 0.96, "base": 0.85, "sr": 0.85}
  for stage, curve in losses.items():
    assert len(curve) == 24 and np.all(np.isfinite(curve)), stage
    assert curve[-6:].mean() < required[stage] * curve[:6].mean(), (stage, curve)
  out = str(tmp_path / "x.png")
  try:
    sample.main(["--model", "imagen-micro", "--checkpoint", workdir, "--steps", "3", "--out", out])
  except SystemExit as e:
    assert e.code in (0, None), capsys.readouterr().err
  assert np.asarray(Image.open(out)).shape == (32, 32, 3)

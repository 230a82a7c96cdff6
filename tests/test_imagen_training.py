"""The micro Imagen cascade trains through the real trainer on 8 fake devices, and samples from its
training directory through the CLI."""

import os

import jax
import numpy as np
from PIL import Image

from jzoo import config as config_lib
from jzoo import export, sample
from jzoo import train as train_py
from jzoo.io import tree_files
from jzoo.io import checkpoint
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

  # Fine-tuning the base with a module the export lacks (text_positions): the export's weights
  # are kept (lr 0), the new parameter starts fresh, and the log says so.
  exported = str(tmp_path / "export")
  export.main(["--workdir", workdir, "--name", "imagen-micro", "--out", exported])
  capsys.readouterr()
  tuned = str(tmp_path / "tuned")
  config = config_lib.load("imagen:micro", [
      "stage=base", "train.steps=2", "train.checkpoint_every=2", "optim.lr=0",
      f"train.init_from={exported}", "stages.base.text_positions=True"])
  train_and_evaluate(config, tuned, devices=jax.devices()[:1], progress=False)
  assert "1 parameters not in the export start fresh: /text_position" in capsys.readouterr().out
  before = tree_files.load_tree(os.path.join(exported, "base.safetensors"))
  after = checkpoint.load_params(tuned, "base")
  assert set(after) == set(before) | {"text_position"}
  np.testing.assert_array_equal(np.asarray(after["text_proj"]["kernel"], np.float16),
                                before["text_proj"]["kernel"])

  # --frozen-from: a fresh base (lr 0 keeps its initial values, not the export's) over the
  # export's text encoder; an export of that run carries the export's encoder and SR bit for bit.
  fresh = str(tmp_path / "fresh")
  train_py.main(["--config", "imagen:micro", "--config.stage=base", "--workdir", fresh,
                 "--frozen-from", exported, "--config.train.steps=2", "--no-progress",
                 "--config.train.checkpoint_every=2", "--config.optim.lr=0"])
  kernel = checkpoint.load_params(fresh, "base")["text_proj"]["kernel"]
  assert not np.allclose(kernel, before["text_proj"]["kernel"], atol=1e-2)
  again = str(tmp_path / "again")
  export.main(["--workdir", fresh, "--name", "imagen-micro", "--out", again])
  for stage in ("text_encoder", "sr"):
    a, b = (tree_files.load_tree(os.path.join(d, f"{stage}.safetensors")) for d in (exported, again))
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                     jax.tree_util.tree_leaves(b))), stage
  assert '"frozen_from": ""' in open(os.path.join(again, "config.json")).read()

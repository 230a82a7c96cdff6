"""The trainer's platform-v2 options: partial freezing, cross-model init maps, a distillation
teacher, and resume bookkeeping (metrics rows of re-run steps, restarts without a checkpoint)."""

import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jzoo import config as config_lib
from jzoo import loading
from jzoo.errors import ConfigError, UserError
from jzoo.parallel import mesh as mesh_lib
from jzoo.io import checkpoint
from jzoo.training import init_maps
from jzoo.training.loop import TEACHER, Trainer, train_and_evaluate
from jzoo.training.metrics import read_metrics
from tests.test_training import STAGE, TOY, toy_config
from tests.toy_model import Toy

FROZEN = ("Conv_0/bias", "Conv_0/kernel", "Dense_1/bias", "Dense_1/kernel")


def _paths(tree):
  return {jax.tree_util.keystr(p, simple=True, separator="/"): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _train(config, workdir, devices=1, **kw):
  return train_and_evaluate(config, str(workdir), devices=jax.devices()[:devices], progress=False,
                            **kw)


def _trainer(config, devices=1, model=None):
  return Trainer(config, mesh_lib.make_mesh(config.mesh, jax.devices()[:devices]), model=model)


def _opt_size(trainer):
  return sum(x.size for x in jax.tree_util.tree_leaves(trainer.abstract_state["opt_state"]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 6-step toy run (checkpoints at 3 and 6, a metrics row per step) and its export."""
  root = tmp_path_factory.mktemp("trained")
  workdir, export = root / "run", str(root / "export")
  config = toy_config()
  _train(config, workdir)
  loading.export_bundle(str(workdir), "toy", [STAGE], config, out_dir=export)
  return workdir, export


def test_freeze_keeps_matching_params_at_their_init_with_no_optimizer_state(tmp_path):
  config = toy_config("train.freeze=Conv_0,Dense_1", "train.steps=3")
  _train(config, tmp_path)
  # Fresh random values (float16 exports would hide the EMA's rounding of a constant).
  frozen, fresh = _trainer(config), _trainer(toy_config())
  init = _paths(frozen.init_state(config.train.seed)["params"])
  for item in ("params", "ema"):
    after = _paths(checkpoint.load_params(tmp_path, STAGE, item=item))
    assert sorted(p for p in after if np.array_equal(after[p], init[p])) == list(FROZEN), item
  # Adam keeps two moments per trained element, none for the frozen ones; the checkpoint restores.
  assert _opt_size(fresh) - _opt_size(frozen) == 2 * sum(init[p].size for p in FROZEN)
  ckpt = checkpoint.Checkpointer(checkpoint.checkpoints_dir(tmp_path, STAGE))
  state, _ = ckpt.restore(3, frozen.abstract_state)
  ckpt.close()
  np.testing.assert_array_equal(_paths(state["params"])["Conv_0/kernel"], init["Conv_0/kernel"])


def test_resuming_with_another_freeze_is_a_user_error_that_keeps_the_checkpoint(tmp_path):
  _train(toy_config("train.freeze=Conv_0", "train.steps=6"), tmp_path, stop_after=3)
  with pytest.raises(UserError) as e:
    _train(toy_config("train.steps=6"), tmp_path)
  assert "trained with train.freeze='Conv_0'" in str(e.value)
  assert "--config.train.freeze='Conv_0'" in str(e.value)
  # The same freeze resumes from the kept checkpoint.
  _train(toy_config("train.freeze=Conv_0", "train.steps=6"), tmp_path)
  ckpt = checkpoint.Checkpointer(checkpoint.checkpoints_dir(tmp_path, STAGE))
  assert ckpt.latest_step() == 6
  ckpt.close()


def test_a_freeze_pattern_matching_nothing_is_a_config_error():
  with pytest.raises(ConfigError) as e:
    _trainer(toy_config("train.freeze=Conv_0,Dense_9"))
  assert str(e.value) == ("train.freeze pattern 'Dense_9' matches no parameter of the trained "
                          "stage; its parameters are named like 'Conv_0/bias'")


def test_inflated_conv3d_convolves_each_frame_like_the_2d_conv():
  rng = np.random.default_rng(0)
  conv2d, conv3d = nn.Conv(5, (3, 3)), nn.Conv(5, (3, 3, 3))
  frames = jnp.asarray(rng.normal(size=(2, 4, 8, 8, 3)), jnp.float32)  # [B, T, H, W, C]
  image = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype),
                                 conv2d.init(jax.random.PRNGKey(0), frames[:, 0])["params"])
  target = jax.eval_shape(conv3d.init, jax.random.PRNGKey(0), frames)["params"]
  video = init_maps.get("inflate_conv3d")(image, target)
  assert video["kernel"].shape == (3, 3, 3, 3, 5)
  # T identical frames (a still video), and distinct ones: every frame, the edges included.
  for clip in (jnp.repeat(frames[:, :1], 4, axis=1), frames):
    got = conv3d.apply({"params": video}, clip)
    for t in range(clip.shape[1]):
      want = conv2d.apply({"params": image}, clip[:, t])
      np.testing.assert_allclose(got[:, t], want, rtol=0, atol=1e-5, err_msg=f"frame {t}")


def test_init_stage_names_the_export_stage_and_unknown_maps_are_errors(trained, tmp_path):
  _, export = trained
  renamed = tmp_path / "renamed"
  shutil.copytree(export, renamed)
  os.rename(renamed / f"{STAGE}.safetensors", renamed / "image.safetensors")
  trainer = _trainer(toy_config(f"train.init_from={renamed}", "train.init_stage=image",
                                "train.init_map=inflate_conv3d"))  # no 3D kernels: a no-op here
  state = trainer.init_from_export(trainer.init_state(0))
  want = _paths(loading.load_exported_stage(export, STAGE))
  for item in ("params", "ema"):
    got = _paths(state[item])
    assert got.keys() == want.keys()
    for path in want:
      np.testing.assert_array_equal(got[path], want[path], err_msg=path)
  with pytest.raises(ConfigError) as e:
    _trainer(toy_config("train.init_map=nope"))
  assert str(e.value) == "unknown train.init_map 'nope'; choose one of identity, inflate_conv3d"


class DistilledToy(Toy):
  """The toy denoiser trained to match a teacher's prediction (frozen[TEACHER])."""

  def _loss(self, params, batch, rng, frozen):
    x = batch["image"] + jax.random.normal(rng, batch["image"].shape)
    student = self.net.apply({"params": params}, x, batch["tokens"], batch["mask"])
    teacher = self.net.apply({"params": frozen[TEACHER]}, x, batch["tokens"], batch["mask"])
    return jnp.mean((student - teacher) ** 2), {}


def test_teacher_params_reach_the_loss_without_optimizer_state(trained, tmp_path):
  _, export = trained
  config = toy_config(f"train.teacher_from={export}", f"train.init_from={export}")
  trainer = _trainer(config, devices=2, model=DistilledToy(config))
  frozen, shardings = trainer.load_frozen(str(tmp_path))
  assert list(frozen) == [TEACHER]
  want = _paths(loading.load_exported_stage(export, STAGE))
  got = _paths(frozen[TEACHER])
  assert got.keys() == want.keys()
  for path in want:
    np.testing.assert_array_equal(got[path], want[path], err_msg=path)
  assert _opt_size(trainer) == _opt_size(_trainer(toy_config()))
  # A student started from the teacher's weights predicts what the teacher does.
  state = trainer.init_from_export(trainer.init_state(0))
  rng = np.random.default_rng(0)
  host = {"image": rng.uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32),
          "tokens": rng.integers(3, 600, (8, 24)).astype(np.int32),
          "mask": np.ones((8, 24), np.int32)}
  batch = {k: jax.device_put(v, trainer.batch_shardings[k]) for k, v in host.items()}
  _, metrics = trainer.jit_step(shardings)(state, batch, frozen)
  # (Not bit-exact: XLA fuses the two forward passes differently.)
  np.testing.assert_allclose([metrics["loss"], metrics["grad_norm"]], [0.0, 0.0], rtol=0,
                             atol=1e-9)


def test_resume_drops_the_metrics_rows_of_the_steps_it_reruns(trained, tmp_path):
  workdir, _ = trained
  run = tmp_path / "run"
  shutil.copytree(workdir, run)
  # Killed after logging step 6, before its checkpoint completed, while writing a row.
  shutil.rmtree(os.path.join(checkpoint.checkpoints_dir(run, STAGE), "6"))
  with open(run / STAGE / "metrics.jsonl", "a") as f:
    f.write('{"step": 7, "lo')
  assert checkpoint.latest_step(run, STAGE) == 3
  _train(toy_config(), run)
  rows, straight = read_metrics(run / STAGE), read_metrics(workdir / STAGE)
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose([r["loss"] for r in rows], [r["loss"] for r in straight], atol=1e-6,
                             rtol=0)


def test_a_run_killed_before_its_first_checkpoint_says_it_restarts(trained, tmp_path, capsys):
  workdir, _ = trained
  run = tmp_path / "run"
  shutil.copytree(workdir, run)
  shutil.rmtree(checkpoint.checkpoints_dir(run, STAGE))
  _train(toy_config(), run, stop_after=1)
  assert (f"{run / STAGE} has a run that completed no checkpoint; training restarts from step 0"
          in capsys.readouterr().err.splitlines())
  rows = read_metrics(run / STAGE)
  assert [r["step"] for r in rows] == [1]
  np.testing.assert_allclose(rows[0]["loss"], read_metrics(workdir / STAGE)[0]["loss"], atol=1e-6)
  # The hint for a stage without a checkpoint names the config to train it with.
  with pytest.raises(checkpoint.CheckpointError) as e:
    checkpoint.load_params(run, "other", config=toy_config())
  assert str(e.value).endswith(f"train it with python -m jzoo.train --config {TOY} "
                               f"--config.stage=other --workdir {run}")
  assert (checkpoint.train_command("tokenizer", "DIR", config_lib.load("phenaki:micro"))
          == "python -m jzoo.train --config phenaki:micro --config.stage=tokenizer --workdir DIR")

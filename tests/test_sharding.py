"""Sharding: checkpoints restore onto other meshes; parameters are sharded where the rules say."""

import jax
import numpy as np
import pytest

from jzoo import config as config_lib
from jzoo import registry
from jzoo.models import params as params_lib
from jzoo.parallel import mesh as mesh_lib
from jzoo.parallel.sharding import logical_shardings, mesh_context
from jzoo.io import checkpoint
from jzoo.training.loop import Trainer, train_and_evaluate
from tests.test_training import STAGE, toy_config


def _restore(workdir, config, devices):
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  trainer = Trainer(config, mesh)
  ckpt = checkpoint.Checkpointer(checkpoint.checkpoints_dir(workdir, STAGE))
  state, meta = ckpt.restore(ckpt.latest_step(), trainer.abstract_state)
  ckpt.close()
  return state, meta


def test_checkpoint_restores_onto_other_meshes_with_identical_values(tmp_path):
  saved = toy_config("mesh.data=8", "train.steps=3", "train.checkpoint_every=3")
  train_and_evaluate(saved, str(tmp_path), devices=jax.devices(), progress=False)
  reference, meta = _restore(tmp_path, saved, jax.devices())
  assert meta["step"] == 3
  for overrides, n in ((["mesh.data=2", "mesh.fsdp=4"], 8), (["mesh.data=1"], 1)):
    config = toy_config(*overrides)
    state, _ = _restore(tmp_path, config, jax.devices()[:n])
    for item in ("params", "ema", "opt_state"):
      jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                             reference[item], state[item])
    leaf = jax.tree_util.tree_leaves(state["params"])[0]
    assert len(leaf.sharding.device_set) == n


@pytest.mark.parametrize("family", ["imagen", "phenaki", "nuwa"])
def test_no_parameter_left_replicated_where_the_rules_shard(family):
  """Walks every parameter of a micro model: each axis whose logical name maps to a mesh axis (and
  whose size that axis divides) is sharded; nothing silently falls back to replication."""
  config = config_lib.load(f"{family}:micro", ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"])
  model = registry.build_model(config)
  mesh = mesh_lib.make_mesh(config.mesh)
  rules = dict(model.axis_rules)
  checked = 0
  for stage in model.stages:
    batch = params_lib.abstract_batch(model, stage, 8)  # divisible by the data axes (NUWA shard_maps)
    with mesh_context(mesh, model.axis_rules):
      boxed = jax.eval_shape(lambda r, b: model.init(stage, r, b)["params"],
                             jax.random.PRNGKey(0), batch)
    shardings = logical_shardings(boxed, mesh, model.axis_rules)
    is_box = lambda x: hasattr(x, "names")
    boxes = jax.tree_util.tree_leaves(boxed, is_leaf=is_box)
    for box, sharding in zip(boxes, jax.tree_util.tree_leaves(shardings)):
      assert is_box(box), "a parameter without logical axis names"
      spec = tuple(sharding.spec) + (None,) * (len(box.value.shape) - len(sharding.spec))
      for size, name, axes in zip(box.value.shape, box.names, spec):
        target = rules.get(name)
        names = (target,) if isinstance(target, str) else tuple(target or ())
        ways = int(np.prod([mesh.shape[a] for a in names])) if names else 1
        if ways > 1 and size % ways == 0:
          assert axes is not None, (stage, box.names, box.value.shape)
          checked += 1
  assert checked > 50

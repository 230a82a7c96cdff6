"""The contract every registered model keeps, checked by registering it (docs/DESIGN.md).

Everything here is traced abstractly (jax.eval_shape): nothing compiles, so every registered
model, micro and bundled sizes alike, is checked in seconds. Numerics (finite losses that fall,
samples that follow their captions) are the model files' tests and test_bundled's.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jzoo import loading, registry
from jzoo.models import base
from jzoo.models import params as params_lib
from jzoo.stage import DataSpec, Stage
from jzoo.text.encoder import TextEncoder

NAMES = sorted(registry.MODELS)
B = 2


@pytest.fixture(scope="module", params=NAMES)
def entry(request):
  name = request.param
  return name, registry.build_model(loading.load_config(name))


def _boxed_leaves(tree):
  return jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def _frozen_abstract(model, stage):
  frozen = {}
  for dep in model.frozen_stages(stage):
    external = model.frozen_abstract_params(dep)
    frozen[dep] = external if external is not None else params_lib.abstract_params(model, dep)
  return frozen


def test_capabilities_are_declared_and_agree_with_the_output(entry):
  name, model = entry
  caps = model.capabilities
  assert caps and caps <= set(base.CAPABILITIES), (name, caps)
  assert len(caps & {base.TEXT_TO_IMAGE, base.TEXT_TO_VIDEO}) == 1, (name, caps)
  assert len(model.output_shape) == (3 if model.makes_video else 2)
  if caps & {base.STORY, base.IMAGE_TO_VIDEO, base.VIDEO_PREDICTION}:
    assert model.makes_video and callable(model.check_start_frames)
  if base.RECONSTRUCT in caps:
    assert callable(model.reconstruct)
  assert model.default_request_options().keys() == {"steps", "guidance"}


def test_stages_and_text_encoders_follow_the_protocols(entry):
  name, model = entry
  assert model.stages and set(model.stage_table) == set(model.stages)
  for stage in model.stages:
    entry_ = model.stage_table[stage]
    assert isinstance(entry_, Stage) and isinstance(entry_.data, DataSpec), (name, stage)
    assert model.data_spec(stage) is entry_.data
    spec = entry_.data
    shapes = spec.batch_shapes(B)
    assert spec.pixels == bool({"image", "video"} & shapes.keys()), (name, stage)
    for i in spec.inputs:  # inputs name their cache and the command that builds it
      assert i.config_key and i.command.startswith("python -m jzoo."), (name, stage, i)
      assert set(i.names) <= shapes.keys()
  # Every text-conditioned model reads its captions through one protocol.
  assert isinstance(model.text_encoder, TextEncoder), name
  assert model.text_encoder.width > 0


def test_every_parameter_carries_logical_axis_names_the_rules_know(entry):
  name, model = entry
  known = {rule[0] for rule in model.axis_rules}
  for stage in model.stages:
    batch = params_lib.abstract_batch(model, stage, B)
    variables = jax.eval_shape(lambda r, b: model.init(stage, r, b), jax.random.PRNGKey(0), batch)
    for leaf in _boxed_leaves(variables["params"]):
      assert isinstance(leaf, nn.meta.AxisMetadata), (name, stage, "a parameter without names")
      names = leaf.names
      assert len(names) == leaf.value.ndim, (name, stage, names, leaf.value.shape)
      assert set(names) - {None} <= known, (name, stage, set(names) - known)
      assert leaf.value.dtype == jnp.float32  # parameters stay float32


def test_frozen_stages_are_other_stages_or_external_networks(entry):
  name, model = entry
  for stage in model.stages:
    for dep in model.frozen_stages(stage):
      assert dep != stage
      assert dep in model.stages or model.frozen_abstract_params(dep) is not None, (name, dep)


def test_loss_is_a_scalar_and_gradients_reach_only_the_trained_stage(entry):
  name, model = entry
  for stage in model.stages:
    if model.stage(stage).untrainable:  # its loss is the error that says why (test_karlo)
      continue
    params = params_lib.abstract_params(model, stage)
    frozen = _frozen_abstract(model, stage)
    batch = params_lib.abstract_batch(model, stage, B)
    rng = jax.random.PRNGKey(0)

    def loss(p, f, b):
      return model.loss(stage, p, b, rng, f)[0]

    # The trainer differentiates with respect to the trained params only; the frozen ones reach
    # the loss as a separate argument, so they get neither gradients nor optimizer state.
    value, grads = jax.eval_shape(jax.value_and_grad(loss), params, frozen, batch)
    assert value.shape == () and value.dtype == jnp.float32, (name, stage)
    assert (jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params))
    for g, p in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(params)):
      assert g.shape == p.shape and g.dtype == p.dtype
    _, metrics = jax.eval_shape(lambda p, f, b: model.loss(stage, p, b, rng, f), params, frozen,
                                batch)
    for key, m in metrics.items():
      if key != "state_updates":
        assert m.shape == (), (name, stage, key)


def test_generate_returns_uint8_of_the_declared_shape_with_traced_options(entry):
  name, model = entry
  params = {s: params_lib.abstract_params(model, s) for s in model.stages}
  tokens = jax.ShapeDtypeStruct((B, model.text_length), jnp.int32)
  # steps and guidance are traced values: a change of either, or of the seed, reuses the program.
  request = base.Request(tokens=tokens, mask=tokens, steps=jax.ShapeDtypeStruct((), jnp.int32),
                         guidance=jax.ShapeDtypeStruct((), jnp.float32))
  out = jax.eval_shape(model.generate, params, request, jax.random.PRNGKey(0))
  assert out.dtype == jnp.uint8 and out.shape == (B, *model.output_shape, 3), (name, out)


def test_plan_counts_every_stage(entry):
  name, model = entry
  counts = [params_lib.count_params(params_lib.abstract_params(model, s)) for s in model.stages]
  assert all(c > 0 for c in counts)
  assert loading.parameter_count(name) == int(np.sum(counts))

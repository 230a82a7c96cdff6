"""Logical-axis shardings and the mesh/rules context, for the trainer's sharded init.

Never build full state on one device: `jax.eval_shape` gives the abstract
(boxed) variables, their logical axis names map to mesh shardings through the
config's rules, and `jax.jit(init, out_shardings=...)` creates every shard in
place.
"""

import contextlib
import math

import flax.linen as nn
import jax
from jax.sharding import NamedSharding, PartitionSpec as P


@contextlib.contextmanager
def mesh_context(mesh, rules):
  """Mesh + logical axis rules, so `nn.with_logical_constraint` inside modules resolves."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def logical_shardings(boxed_tree, mesh, rules):
  """NamedShardings for the unboxed version of a (boxed, possibly abstract) variable tree.

  A dimension that the mesh axes do not divide (an RGB output conv's 3 channels
  over fsdp=2) stays replicated instead of failing: the rules say where an axis
  may be sharded, the shapes say where it can be."""
  mesh_specs = nn.logical_to_mesh(nn.get_partition_spec(boxed_tree), rules)
  arrays = unbox_values(boxed_tree)

  def fit(spec, x):
    dims = []
    for size, axes in zip(x.shape, tuple(spec) + (None,) * (len(x.shape) - len(spec))):
      names = (axes,) if isinstance(axes, str) else tuple(axes or ())
      ways = math.prod(mesh.shape[a] for a in names)
      dims.append(axes if names and size % ways == 0 else None)
    return NamedSharding(mesh, P(*dims))

  return jax.tree_util.tree_map(fit, mesh_specs, arrays, is_leaf=lambda x: isinstance(x, P))


def unbox_values(tree):
  """Like nn.unbox but never applies sharding constraints (safe on abstract trees in a mesh context)."""
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  return jax.tree_util.tree_map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree,
                                is_leaf=is_box)


def replicated(mesh):
  return NamedSharding(mesh, P())

"""Attention kernels under `shard_map`: batch and heads sharded by logical axis rules.

The kernels (`jzoo.kernels`) know nothing of meshes or logical names; this is where the
model's axis rules meet them.

Modules name the axes of the attention tensors with logical names
(`jzoo.parallel.rules`); the rules map them to mesh axes. Each device then
runs the kernel on its own batch/head shard, with no communication. The grid
axes (frames, height, width), a key sequence and the head dim must stay
unsharded: a window crossing a shard boundary would need a halo exchange (a
split key sequence, an all-gather), which this wrapper does not do.

`sharded_attention` wraps any kernel (it is how `jzoo.nn.patterns.attention`
runs every pattern on a mesh); `sharded_nearby_attention` is its 3DNA case.
"""

import functools

import jax
from jax.sharding import PartitionSpec as P

from jzoo.kernels import nearby_attention
from jzoo.parallel import rules as rules_lib

# Logical names of the axes of q, k, v and the output.
LOGICAL_AXES = ("batch", "frames", "height", "width", "heads", "kv")


def logical_to_spec(logical_axes, rules, mesh):
  """PartitionSpec for `logical_axes` under `rules` (first match wins) on `mesh`.

  Mesh axes the mesh lacks are dropped; a mesh axis may shard one dim only.
  """
  used, spec = set(), []
  table = {}
  for name, target in rules:
    table.setdefault(name, target)
  for name in logical_axes:
    target = table.get(name) if name is not None else None
    axes = () if target is None else (target,) if isinstance(target, str) else tuple(target)
    axes = tuple(a for a in axes if a in mesh.axis_names)
    if used & set(axes):
      raise ValueError(f"mesh axes {sorted(used & set(axes))} shard two dims of {logical_axes}")
    used |= set(axes)
    spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return P(*spec)


def mesh_platform(mesh):
  """The platform of `mesh`'s devices (a Mesh, or the AbstractMesh of the jit being traced)."""
  if isinstance(mesh, jax.sharding.Mesh):
    return mesh.devices.flat[0].platform
  device = getattr(mesh, "abstract_device", None)  # from jax.sharding.get_abstract_mesh()
  return device.platform if device is not None else jax.default_backend()


def sharded_attention(kernel, q, k, v, *, mesh, logical_axes, rules=None, keep=(),
                      name="attention", **batch_arrays):
  """`kernel(q, k, v, platform=, **batch_arrays)` inside `shard_map` over `mesh`.

  q, k, v (global arrays) are split by `logical_axes` under `rules` (default
  `jzoo.parallel.rules.DEFAULT_RULES`); the dims in `keep` must stay whole
  (a window or a key sequence split across shards would need communication).
  `batch_arrays` ([B, ...] masks, None for absent) are split like the batch.
  """
  rules = rules_lib.DEFAULT_RULES if rules is None else rules
  spec = logical_to_spec(logical_axes, rules, mesh)
  sizes = dict(mesh.shape)
  for dim in keep:
    axes = spec[dim] if isinstance(spec[dim], tuple) else (spec[dim],)
    if any(a is not None and sizes[a] > 1 for a in axes):
      raise ValueError(f"{name} cannot shard axis {logical_axes[dim]!r} (spec {spec}); "
                       "map it to None in the axis rules or shard batch/heads instead")
  platform = mesh_platform(mesh)
  extra = {n: a for n, a in batch_arrays.items() if a is not None}
  extra_specs = {n: P(spec[0], *(None,) * (a.ndim - 1)) if a.ndim else P()
                 for n, a in extra.items()}

  def per_shard(q, k, v, extra):
    return kernel(q, k, v, platform=platform, **extra)

  return jax.shard_map(per_shard, mesh=mesh, in_specs=(spec, spec, spec, extra_specs),
                       out_specs=spec, check_vma=False)(q, k, v, extra)


def sharded_nearby_attention(q, k, v, *, mesh, radius, causal=False, impl="auto",
                             logical_axes=LOGICAL_AXES, rules=None, interpret=None):
  """`jzoo.kernels.nearby_attention` inside `shard_map` over `mesh`.

  Args:
    q, k, v: global arrays [B, T, H, W, heads, D] (k, v may have another grid).
    mesh: the jax.sharding.Mesh the model runs on, or the AbstractMesh of the jit being traced.
    radius, causal, impl, interpret: as in `nearby_attention`; "auto"
      picks the kernel for the mesh's platform (so AOT tracing for a TPU
      topology on a CPU host gets the TPU kernel).
    logical_axes: logical names of the six axes.
    rules: (logical name, mesh axes) pairs; default `jzoo.parallel.rules.DEFAULT_RULES`.
  """
  kernel = functools.partial(nearby_attention, radius=radius, causal=causal, impl=impl,
                             interpret=interpret)
  return sharded_attention(kernel, q, k, v, mesh=mesh, logical_axes=logical_axes, rules=rules,
                           keep=(1, 2, 3, 5), name="nearby attention")

"""Building the device mesh from `config.mesh` (axis sizes; -1 fills the remaining devices)."""

import math

import jax
import jax.experimental.mesh_utils  # registers the submodule on jax.experimental
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jzoo.errors import ConfigError
from jzoo.parallel.rules import BATCH_AXES, MESH_AXES


def mesh_shape(mesh_config, num_devices):
  """Resolves {"data": -1, "fsdp": 2, "tensor": 1} against the device count."""
  sizes = {axis: int(mesh_config.get(axis, 1)) for axis in MESH_AXES}
  unknown = [a for a in mesh_config.keys() if a not in MESH_AXES]
  if unknown:
    raise ConfigError(f"unknown mesh axes {unknown}; use {MESH_AXES}")
  fills = [a for a, s in sizes.items() if s == -1]
  if len(fills) > 1:
    raise ConfigError(f"only one mesh axis may be -1, got {fills}")
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if fills:
    if num_devices % fixed:
      raise ConfigError(f"mesh {sizes} cannot fill {num_devices} devices; make the fixed axes divide it")
    sizes[fills[0]] = num_devices // fixed
  if math.prod(sizes.values()) != num_devices:
    raise ConfigError(f"mesh {sizes} uses {math.prod(sizes.values())} devices but {num_devices} "
                      "are available; set one axis to -1 (--config.mesh.data=-1)")
  return sizes


def make_mesh(mesh_config, devices=None):
  devices = jax.devices() if devices is None else devices
  sizes = mesh_shape(mesh_config, len(devices))
  shape = tuple(sizes[a] for a in MESH_AXES)
  try:
    device_array = jax.experimental.mesh_utils.create_device_mesh(shape, devices=devices)
  except Exception:  # fake CPU devices or irregular topologies
    device_array = np.asarray(devices).reshape(shape)
  return Mesh(device_array, MESH_AXES)


def batch_sharding(mesh, ndim):
  """Sharding of a batch array: leading axis over the data axes, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


"""jzoo: a JAX/TPU-native model zoo of text-to-image and text-to-video generators."""

import glob as _glob
import importlib.util as _importlib_util
import os as _os

__version__ = "0.1.0"


def _quiet_libtpu_off_tpu():
  """With libtpu installed (the `tpu` extra, for ahead-of-time TPU compiles) on a machine
  without TPU chips, JAX would probe for a TPU at start-up and print libtpu's warnings.
  Unless the user chose platforms, skip the TPU backend there; AOT compilation for TPU
  topologies does not need it."""
  if "JAX_PLATFORMS" in _os.environ or _importlib_util.find_spec("libtpu") is None:
    return
  if _glob.glob("/dev/accel*") or _glob.glob("/dev/vfio/[0-9]*"):
    return  # a TPU VM
  cuda = any(_importlib_util.find_spec(p) for p in ("jax_cuda12_plugin", "jax_cuda13_plugin"))
  _os.environ["JAX_PLATFORMS"] = "cuda,cpu" if cuda else "cpu"


_quiet_libtpu_off_tpu()


def load(name_or_dir=None, **kwargs):
  """A model with its weights, ready to generate: `jzoo.load("imagen-tiny-shapes")(prompts)`.
  See `jzoo.pipeline.load`."""
  from jzoo import pipeline
  return pipeline.load(name_or_dir, **kwargs)

"""`jit`: `jax.jit` with the XLA CPU options a config asks for (`config.xla_cpu_ynn_fusions`).

On the CPU, XLA hands some operations to YNNPACK ("YNN fusions"): by default convolutions,
dots, element-wise chains and reductions. Which of them pays off depends on the model. For
Imagen's U-Nets, XLA's own convolution emitter is faster at jzoo's shapes (keeping the dots
in YNNPACK made no measurable difference) and YNNPACK wins on element-wise chains and
reductions (GroupNorm's statistics, the SiLUs, softmax), so `configs/imagen.py` keeps just
those two: on the 2-core development machine
the base U-Net's sampling went from 382 to 296 ms (4 images x 20 steps; 693 -> 521 ms with
guidance) and its training step from 1.13 to 0.97 s, measured side by side in one process.
The same setting slows NUWA's and Phenaki's training (their configs keep XLA's defaults);
docs/benchmarks.md has the commands and numbers.

The option is experimental in XLA: a jaxlib that lacks it, or names its values otherwise,
rejects it at compile time. So it is probed once on a trivial program and dropped (XLA's
defaults) when refused; a user's own setting in XLA_FLAGS wins, and `JZOO_XLA_DEFAULTS=1`
turns it off everywhere. Nothing changes on GPU or TPU.
"""

import functools
import logging
import math
import os

import jax

from jzoo.errors import ConfigError

YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"
YNN_FUSION_KINDS = ("eltwise", "reduce", "dot", "individual_dot", "individual_convolution")


def _ynn_value(ynn_fusions):
  kinds = [k.strip().lower() for k in ynn_fusions.split(",") if k.strip()]
  unknown = [k for k in kinds if k not in YNN_FUSION_KINDS]
  if unknown:
    raise ConfigError(f"config.xla_cpu_ynn_fusions: {', '.join(unknown)} not among "
                      f"{', '.join(YNN_FUSION_KINDS)}; use a comma list of those, or '' for "
                      "XLA's defaults")
  return ",".join("LIBRARY_FUSION_TYPE_" + k.upper() for k in kinds)


@functools.lru_cache(maxsize=None)
def _cpu_options(ynn_fusions):
  value = _ynn_value(ynn_fusions)
  if (not ynn_fusions or os.environ.get("JZOO_XLA_DEFAULTS")
      or YNN_FUSION_OPTION in os.environ.get("XLA_FLAGS", "")):
    return None
  options = {YNN_FUSION_OPTION: value}
  try:
    jax.jit(lambda x: x + 1, compiler_options=options).lower(1.0).compile()
  except Exception as e:  # noqa: BLE001 - any refusal means: compile with XLA's defaults
    logging.info("XLA refused %s=%s (%s); using its defaults", YNN_FUSION_OPTION, value, e)
    return None
  return options


def compiler_options(ynn_fusions=""):
  """The XLA options `jit` adds on the default backend, or None (XLA's defaults).

  ynn_fusions: `config.xla_cpu_ynn_fusions`, a comma list of YNN_FUSION_KINDS; '' keeps
  XLA's own choice."""
  if jax.default_backend() != "cpu":
    _ynn_value(ynn_fusions)  # a typo is an error on every backend
    return None
  return _cpu_options(ynn_fusions)


def jit(fun, *, ynn_fusions="", **kwargs):
  """`jax.jit(fun, **kwargs)` compiled with `compiler_options(ynn_fusions)`."""
  return jax.jit(fun, compiler_options=compiler_options(ynn_fusions), **kwargs)


def ynn_fusions_of(config):
  """The config's `xla_cpu_ynn_fusions` ('' for configs written before it existed)."""
  return config.get("xla_cpu_ynn_fusions", "")


def cpu_chunked(fn, rows):
  """`fn(*args)` -> `fn` run over its arguments' leading (batch) axis `rows` at a time, one
  chunk after another (`lax.map`), on the CPU; elsewhere, or with rows <= 0, `fn` itself.

  Each row's result is the same either way (for a `fn` that treats rows independently). On the
  CPU a small batch keeps a transformer's attention in cache: phenaki-tiny-shapes' sampling runs
  about twice as fast in chunks of 2 sequences as in one batch of 64 (docs/benchmarks.md). The
  chunk is gcd(batch, rows), so any batch works."""
  if rows <= 0 or jax.default_backend() != "cpu":
    return fn

  def chunked(*args):
    b = jax.tree.leaves(args)[0].shape[0]
    n = math.gcd(b, rows)
    if n == b:
      return fn(*args)
    split = lambda x: x.reshape(b // n, n, *x.shape[1:])
    out = jax.lax.map(lambda a: fn(*a), jax.tree.map(split, args))
    return jax.tree.map(lambda y: y.reshape(b, *y.shape[2:]), out)
  return chunked

"""python -m jzoo.plan --config FILE:VARIANT [--topology v5e:16x16] [--mesh data=..,fsdp=..,tensor=..] [--batch N] [--json]

Before paying for a pod: builds the model abstractly (`jax.eval_shape`, nothing
allocated) and prints parameter counts per stage; with `--topology`, compiles
the sharded train step of `config.stage` ahead of time for that TPU topology
on this machine (libtpu from the `tpu` extra) and reports per-chip memory
against the chip's HBM, FLOPs per step from the compiled cost analysis, the
roofline step time and the MFU that step time would mean. A configuration that
does not fit gets the smallest change that does.
"""

import argparse
import dataclasses
import json
import os
import re
import sys

from jzoo import cli
from jzoo import config as config_lib
from jzoo import registry
from jzoo.models import params as params_lib
from jzoo.errors import ConfigError, UserError


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  hbm_bytes: int
  peak_bf16_flops: float  # per chip, dense
  hbm_bandwidth: float  # bytes/s


# Public Cloud TPU specifications (per chip).
CHIPS = {
    "v4": Chip("TPU v4", 32 * 2**30, 275e12, 1.2e12),
    "v5e": Chip("TPU v5e", 16 * 2**30, 197e12, 8.19e11),
    "v5p": Chip("TPU v5p", 95 * 2**30, 459e12, 2.765e12),
    "v6e": Chip("TPU v6e", 32 * 2**30, 918e12, 1.64e12),
}


def parse_mesh(text):
  sizes = {}
  for part in filter(None, (text or "").split(",")):
    name, eq, value = part.partition("=")
    if not eq:
      raise ConfigError(f"--mesh {text!r}: write data=N,fsdp=N,tensor=N")
    try:
      sizes[name.strip()] = int(value)
    except ValueError:
      raise ConfigError(f"--mesh {text!r}: {value!r} is not an integer") from None
  return sizes


def parameter_counts(model):
  from jzoo.models.params import count_params
  return {stage: count_params(params_lib.abstract_params(model, stage)) for stage in model.stages}


def _topology(name):
  chip = name.split(":")[0]
  if chip not in CHIPS or ":" not in name:
    raise UserError(f"unknown topology {name!r}; write CHIP:SHAPE with CHIP one of {sorted(CHIPS)}, "
                    "e.g. v5e:16x16 or v5p:4x4x8")
  # Another process holding libtpu's lock file must not stop an ahead-of-time compile.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    from jax.experimental import topologies
    desc = topologies.get_topology_desc(topology_name=name, platform="tpu")
  except Exception as e:  # no libtpu, or a shape libtpu does not know
    raise UserError(f"cannot build TPU topology {name!r} ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:120] if str(e) else ''}); install the tpu extra "
                    "(pip install -e '.[tpu]') and use a valid shape") from None
  return CHIPS[chip], desc.devices


def compile_train_step(config, devices):
  """Compiles the sharded train step for `devices`; returns the compiled executable."""
  import jax
  from jzoo.parallel import mesh as mesh_lib
  from jzoo.parallel.sharding import mesh_context, replicated
  from jzoo.training.loop import Trainer

  mesh = mesh_lib.make_mesh(config.mesh, devices)
  trainer = Trainer(config, mesh)
  frozen_abstract, frozen_shardings = trainer.frozen_abstract()
  frozen = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                  frozen_abstract, frozen_shardings)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=trainer.batch_shardings[k])
           for k, v in trainer.batch_spec.items()}
  step = jax.jit(trainer._train_step,
                 in_shardings=(trainer.state_shardings, trainer.batch_shardings, frozen_shardings),
                 out_shardings=(trainer.state_shardings, replicated(mesh)), donate_argnums=(0,))
  with mesh_context(mesh, trainer.rules):
    return step.lower(trainer.abstract_state, batch, frozen).compile()


def _out_of_memory(error):
  """The bytes the TPU compiler said it needed, when `error` is its out-of-HBM refusal (it
  refuses to compile a step whose temporaries exceed the chip), else None."""
  text = str(error)
  if "RESOURCE_EXHAUSTED" not in text or "HBM" not in text:
    return None
  needed = re.search(r"required for [^(]*\(([\d.]+)([KMGT])\)", text)
  if not needed:
    return 0
  return int(float(needed.group(1)) * 2 ** (10 * "KMGT".index(needed.group(2)) + 10))


def compile_and_analyse(config, devices, chip):
  """`analyse` of the compiled step; a step the compiler refuses for lack of HBM is reported as
  not fitting, with what it needed as `per_chip_bytes` (a lower bound: temporaries only)."""
  try:
    compiled = compile_train_step(config, devices)
  except Exception as e:  # jax raises JaxRuntimeError; anything but out-of-HBM propagates
    needed = _out_of_memory(e)
    if needed is None:
      raise
    return {"per_chip_bytes": needed, "memory": None, "hbm_bytes": chip.hbm_bytes, "fits": False,
            "flops_per_step": None, "flops_per_chip": None, "roofline_step_s": None,
            "mfu_at_roofline": None, "compile_error": str(e).strip().splitlines()[0][:300]}
  return analyse(compiled, chip, len(devices))


def analyse(compiled, chip, num_chips):
  mem = compiled.memory_analysis()
  per_chip = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
              + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops_chip = float(cost.get("flops", 0.0))  # the partitioned (per-chip) program
  bytes_chip = float(cost.get("bytes accessed", 0.0))
  step_s = max(flops_chip / chip.peak_bf16_flops, bytes_chip / chip.hbm_bandwidth, 1e-12)
  return {
      "per_chip_bytes": int(per_chip),
      "memory": {"arguments": mem.argument_size_in_bytes, "outputs": mem.output_size_in_bytes,
                 "aliased": mem.alias_size_in_bytes, "temporaries": mem.temp_size_in_bytes},
      "hbm_bytes": chip.hbm_bytes,
      "fits": per_chip <= chip.hbm_bytes,
      "flops_per_step": flops_chip * num_chips,
      "flops_per_chip": flops_chip,
      "roofline_step_s": step_s,
      "mfu_at_roofline": flops_chip / (chip.peak_bf16_flops * step_s),
  }


def _alternatives(config):
  """Smallest changes first: remat, then more FSDP (from data), then half the batch."""
  mesh = dict(config.mesh)
  if config.train.remat != "full":
    yield "--config.train.remat=full", ["train.remat=full"]
  if mesh.get("data", 1) not in (1, -1) and mesh["data"] % 2 == 0:
    fsdp = mesh.get("fsdp", 1)
    yield (f"--config.mesh.data={mesh['data'] // 2} --config.mesh.fsdp={fsdp * 2}",
           [f"mesh.data={mesh['data'] // 2}", f"mesh.fsdp={fsdp * 2}"])
  if config.train.batch_size % 2 == 0:
    yield (f"--config.train.batch_size={config.train.batch_size // 2}",
           [f"train.batch_size={config.train.batch_size // 2}"])


def plan(config, topology=None):
  model = registry.build_model(config)
  counts = parameter_counts(model)
  text = {k: v for k, v in counts.items() if k == "text_encoder"}
  result = {"config": config.get("config_ref", ""), "stage": config.stage, "params": counts,
            "text_encoder_params": sum(text.values()),
            "total_params": sum(counts.values())}
  if topology is None:
    return result
  chip, devices = _topology(topology)
  result.update({"topology": topology, "chip": chip.name, "chips": len(devices),
                 "batch": int(config.train.batch_size)})
  from jzoo.parallel.mesh import mesh_shape
  result["mesh"] = mesh_shape(config.mesh, len(devices))
  result.update(compile_and_analyse(config, devices, chip))
  if not result["fits"]:
    result["suggestion"] = None
    for flag, overrides in _alternatives(config):
      alt = config_lib.with_overrides(config, overrides)
      stats = compile_and_analyse(alt, devices, chip)
      if stats["fits"]:
        result["suggestion"] = {"change": flag, "per_chip_bytes": stats["per_chip_bytes"]}
        break
  return result


def _gib(n):
  return f"{n / 2**30:.2f} GiB"


def print_report(r):
  print(f"{r['config']}  stage={r['stage']}")
  for stage, n in r["params"].items():
    print(f"  params {stage:<14} {n:>16,}")
  print(f"  params {'total':<14} {r['total_params']:>16,}  (text encoder {r['text_encoder_params']:,})")
  if "topology" not in r:
    return
  print(f"  topology {r['topology']} ({r['chips']} × {r['chip']}), mesh {r['mesh']}, batch {r['batch']}")
  m = r["memory"]
  if m is None:  # the compiler refused the step
    print(f"  per chip: the TPU compiler ran out of HBM ({_gib(r['per_chip_bytes'])} of temporaries "
          f"alone, of {_gib(r['hbm_bytes'])}) -> DOES NOT FIT")
    _print_suggestion(r)
    return
  print(f"  per chip {_gib(r['per_chip_bytes'])} of {_gib(r['hbm_bytes'])} HBM "
        f"(arguments {_gib(m['arguments'])}, outputs {_gib(m['outputs'])}, "
        f"temporaries {_gib(m['temporaries'])}) -> {'fits' if r['fits'] else 'DOES NOT FIT'}")
  print(f"  FLOPs/step {r['flops_per_step']:.3e}; roofline step {r['roofline_step_s'] * 1e3:.1f} ms; "
        f"MFU at roofline {100 * r['mfu_at_roofline']:.1f}%")
  _print_suggestion(r)


def _print_suggestion(r):
  if not r["fits"]:
    s = r.get("suggestion")
    print(f"  smallest change that fits: {s['change']} ({_gib(s['per_chip_bytes'])})" if s else
          "  no single change fits: add chips (a larger topology) or shrink the model")


@cli.main_guard
def main(argv=None):
  argv, overrides = config_lib.split_config_overrides(sys.argv[1:] if argv is None else argv)
  p = argparse.ArgumentParser(prog="python -m jzoo.plan", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True)
  p.add_argument("--topology", default=None, help="TPU topology, e.g. v5e:16x16, v5p:4x4x8, v4:4x4x4")
  p.add_argument("--mesh", default=None, help="data=N,fsdp=N,tensor=N (-1 fills)")
  p.add_argument("--batch", type=int, default=None, help="global batch size")
  p.add_argument("--stage", default=None, help="stage whose train step is compiled")
  p.add_argument("--json", action="store_true")
  args = p.parse_args(argv)
  if args.batch is not None:
    if args.batch <= 0:
      raise UserError("--batch must be positive")
    overrides.append(f"train.batch_size={args.batch}")
  if args.stage:
    overrides.append(f"stage={args.stage}")
  for axis, size in parse_mesh(args.mesh).items():
    overrides.append(f"mesh.{axis}={size}")
  config = config_lib.load(args.config, overrides)
  result = plan(config, args.topology)
  if args.json:
    print(json.dumps(result))
  else:
    print_report(result)


if __name__ == "__main__":
  main()

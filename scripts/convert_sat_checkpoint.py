"""Converts a SwissArmyTransformer (SAT) checkpoint folder, e.g. CogView2's CogLM, into the
folder `jzoo.models.cogview2_sat.load_sat` reads:

  SAT:  model_config.json, latest, <iteration>/mp_rank_00_model_states.pt ({"module": state})
  jzoo: config.json (SAT's model_config.json, plus "sat_iteration"),
        model.safetensors (flat "a/b/c" jzoo parameter names, the query/key/value of SAT's fused
        query_key_value split and every kernel transposed to flax's [in, out] layout)

The .pt is a pickle, so this runs where torch is, never inside jzoo; it imports only torch,
numpy and safetensors. Run it from outside the repository (its top-level folders would shadow
packages):
  cd /tmp && /path/to/torch-venv/bin/python /path/to/jzoo/scripts/convert_sat_checkpoint.py \
      SAT_FOLDER OUT_FOLDER
A checkpoint written by deepspeed also pickles its training args; torch's safe loader refuses
those, and --trust-pickle loads it anyway (only for a file whose source you trust).
Model-parallel checkpoints (mp_rank_01_... beside mp_rank_00_...) are refused: merge them
first with SAT (`from_pretrained(folder, overwrite_args={"model_parallel_size": 1})`, saved).
"""

import argparse
import json
import os
import re
import sys

import numpy as np
import safetensors.numpy
import torch


def fail(message):
  sys.exit(f"convert_sat_checkpoint: {message}")


def iteration_folder(folder):
  """The folder SAT's load_checkpoint would read: `latest`'s iteration (or "release"), else
  the highest numbered one."""
  latest = os.path.join(folder, "latest")
  if os.path.isfile(latest):
    with open(latest) as f:
      tag = f.read().strip()
    if not (tag.isdigit() or tag == "release"):
      fail(f"{latest} holds {tag!r}, not an iteration number or 'release'")
    return tag
  numbered = [d for d in os.listdir(folder)
              if d.isdigit() and os.path.isdir(os.path.join(folder, d))]
  if numbered:
    return max(numbered, key=int)
  if os.path.isdir(os.path.join(folder, "release")):
    return "release"
  fail(f"{folder} has no 'latest' file and no iteration folder: is it a SAT checkpoint?")


def read_state(folder, trust_pickle):
  config_path = os.path.join(folder, "model_config.json")
  if not os.path.isfile(config_path):
    fail(f"{folder} has no model_config.json: pass the SAT checkpoint folder")
  with open(config_path) as f:
    config = json.load(f)
  tag = iteration_folder(folder)
  sub = os.path.join(folder, tag)
  if not os.path.isdir(sub):
    fail(f"{folder}: its 'latest' names iteration {tag}, which has no folder {sub}")
  ranks = sorted(n for n in os.listdir(sub) if re.fullmatch(r"mp_rank_\d\d_model_states\.pt", n))
  if "mp_rank_00_model_states.pt" not in ranks:
    fail(f"{sub} has no mp_rank_00_model_states.pt")
  if len(ranks) > 1 or config.get("model_parallel_size", 1) != 1:
    fail(f"{sub} is a model-parallel checkpoint ({len(ranks)} ranks); merge it into one rank "
         "with SAT first (from_pretrained with overwrite_args={'model_parallel_size': 1}, "
         "then save)")
  path = os.path.join(sub, "mp_rank_00_model_states.pt")
  try:
    checkpoint = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
  except Exception as e:  # torch's safe unpickler raises several types
    fail(f"{path} does not load with torch's weights-only loader ({str(e).splitlines()[0]}); "
         "pass --trust-pickle if you trust where the file came from")
  state = checkpoint.get("module", checkpoint)
  return config, tag, state


_LAYER = re.compile(r"transformer\.layers\.(\d+)\.(.+)")
_NORMS = ("input_layernorm", "post_attention_layernorm", "third_layernorm", "fourth_layernorm")
_LINEARS = {"mlp.dense_h_to_4h": "mlp/dense_h_to_4h", "mlp.dense_4h_to_h": "mlp/dense_4h_to_h"}


def convert(config, state):
  """{jzoo name: numpy array} from SAT's {name: tensor}; an unknown name stops the conversion."""
  heads = config["num_attention_heads"]
  out = {}

  def put(name, tensor):
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
      tensor = tensor.float()
    out[name] = np.ascontiguousarray(tensor.detach().cpu().numpy())

  for key, t in state.items():
    if key in ("transformer.word_embeddings.weight", "transformer.position_embeddings.weight"):
      put(key.split(".")[1] + "/embedding", t)
      continue
    if key.startswith("transformer.final_layernorm."):
      put("final_layernorm/" + {"weight": "scale", "bias": "bias"}[key.rsplit(".", 1)[1]], t)
      continue
    m = _LAYER.fullmatch(key)
    if m is None:
      fail(f"unsupported tensor {key} (a SAT mixin's or another model's): this converter "
           "handles SAT's BaseModel layout only")
    layer, rest = f"layers_{m.group(1)}", m.group(2)
    module, param = rest.rsplit(".", 1)
    if module in _NORMS:
      put(f"{layer}/{module}/" + {"weight": "scale", "bias": "bias"}[param], t)
    elif module == "attention.query_key_value":
      # SAT splits the fused output in three along its last axis: [q | k | v], each head-major.
      for name, part in zip(("query", "key", "value"), torch.chunk(t, 3, dim=0)):
        inner = part.shape[0]
        shape = (heads, inner // heads)
        put(f"{layer}/attention/{name}/{param.replace('weight', 'kernel')}",
            part.T.reshape(-1, *shape) if param == "weight" else part.reshape(shape))
    elif module == "attention.dense":
      # [h, heads*hd] (torch: out, in) -> [heads, hd, h]
      put(f"{layer}/attention/dense/{param.replace('weight', 'kernel')}",
          t.T.reshape(heads, -1, t.shape[0]) if param == "weight" else t)
    elif module in _LINEARS:
      put(f"{layer}/{_LINEARS[module]}/{param.replace('weight', 'kernel')}",
          t.T if param == "weight" else t)
    else:
      fail(f"unsupported tensor {key}: this converter handles SAT's BaseModel layout only")
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("sat_folder")
  parser.add_argument("out_folder")
  parser.add_argument("--trust-pickle", action="store_true",
                      help="let torch.load unpickle non-tensor objects (deepspeed checkpoints)")
  args = parser.parse_args()
  config, tag, state = read_state(args.sat_folder, args.trust_pickle)
  tensors = convert(config, state)
  os.makedirs(args.out_folder, exist_ok=True)
  with open(os.path.join(args.out_folder, "config.json"), "w") as f:
    json.dump(dict(config, sat_iteration=tag), f, indent=2, sort_keys=True)
    f.write("\n")
  safetensors.numpy.save_file(tensors, os.path.join(args.out_folder, "model.safetensors"))
  print(f"wrote {len(tensors)} tensors of {args.sat_folder}/{tag} to {args.out_folder}")


if __name__ == "__main__":
  main()

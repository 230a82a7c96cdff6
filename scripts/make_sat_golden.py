"""Makes the SAT (CogView2 CogLM) import golden files with SwissArmyTransformer's own code.

jzoo's tests must not need torch, so this runs once, in a separate environment:
  1. builds tiny SAT CachedAutoregressiveModels (CogView2 stage 1's class: a BaseModel whose
     mixin only adds a key/value cache, so the same forward and parameters) with random
     weights, one per entry of CONFIGS;
  2. saves each in SAT's checkpoint format (model_config.json by SAT's own
     extract_model_specific_args_to_dump, latest, 1/mp_rank_00_model_states.pt) in a temp
     folder and reloads it with SAT's from_pretrained, so the folder is one SAT itself reads;
  3. runs scripts/convert_sat_checkpoint.py on it, into tests/golden/<name>/ (config.json,
     model.safetensors);
  4. writes tests/golden/<name>_golden.npz: for the case "causal" (SAT's lower-triangular
     mask, which SAT runs through torch's causal SDPA) and "prefix" (a per-example prefix-LM
     mask, GLM/CogLM style: the first `prefix` positions see each other, the rest are causal;
     SAT's masked_fill path), the inputs `<case>_tokens`, `<case>_position_ids`,
     `<case>_mask` (SAT's float [B, 1, N, N]; 1 = attend), `<case>_prefix` and the reloaded
     model's float32 logits `<case>_logits`.

Run it from outside the repository (its top-level folders would shadow pip packages):
  python3 -m venv /work/refvenv
  /work/refvenv/bin/pip install torch==2.13.0+cpu numpy safetensors
  /work/refvenv/bin/pip install --no-deps SwissArmyTransformer==0.4.12
  /work/refvenv/bin/pip install requests tqdm einops triton transformers
  cd /tmp && OMP_NUM_THREADS=1 /work/refvenv/bin/python /work/main/scripts/make_sat_golden.py
(SAT's own requirements also name deepspeed, datasets, ...; building and running a model on
the CPU needs only the packages above: SAT falls back to torch's LayerNorm and checkpointing.)
Made with SwissArmyTransformer 0.4.12, torch 2.13.0+cpu, numpy 2.4.6, safetensors 0.8.0.
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from sat.model.cached_autoregressive_model import CachedAutoregressiveModel
from sat.training.model_io import extract_model_specific_args_to_dump

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "golden")

# Tiny on purpose (the files ship in the repository). sat_coglm: CogView2's sandwich layer
# norms, an MLP width that is not 4h and a non-default epsilon, so each is read from the config;
# sat_pre: the "pre" order (no third/fourth norms).
CONFIGS = {
    "sat_coglm": dict(num_layers=2, hidden_size=16, num_attention_heads=2, vocab_size=64,
                      max_sequence_length=32, inner_hidden_size=40, layernorm_order="sandwich",
                      layernorm_epsilon=1e-6),
    "sat_pre": dict(num_layers=1, hidden_size=16, num_attention_heads=4, vocab_size=48,
                    max_sequence_length=24, layernorm_order="pre"),
}
BATCH, LENGTH = 2, 12
PREFIX = (4, 7)  # per example


def randomize(model, gen):
  """Random weights at a scale that keeps activations O(1); norm scales and biases are random
  too, so a mis-mapped tensor changes the logits."""
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layernorm" in name and name.endswith("weight"):
        p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
      elif name.endswith("bias"):
        p.copy_(0.2 * torch.randn(p.shape, generator=gen))
      elif "embeddings" in name:
        p.copy_(0.5 * torch.randn(p.shape, generator=gen))
      else:
        p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(p.shape[1]))


def save_sat(model, args, folder):
  """SAT's inference-mode save_checkpoint, without its torch.distributed barriers."""
  os.makedirs(os.path.join(folder, "1"))
  torch.save({"module": model.state_dict()}, os.path.join(folder, "1",
                                                           "mp_rank_00_model_states.pt"))
  with open(os.path.join(folder, "latest"), "w") as f:
    f.write("1")
  with open(os.path.join(folder, "model_config.json"), "w") as f:
    json.dump(extract_model_specific_args_to_dump(args, model), f, indent=4)


def inputs(gen, vocab):
  tokens = torch.randint(0, vocab, (BATCH, LENGTH), generator=gen)
  causal = torch.ones(1, 1, LENGTH, LENGTH).tril()
  prefix = torch.ones(BATCH, 1, LENGTH, LENGTH).tril()
  for b, p in enumerate(PREFIX):
    prefix[b, :, :, :p] = 1.0
  positions = torch.arange(LENGTH)[None].repeat(BATCH, 1)
  return {
      "causal": (tokens, positions, causal, np.full((BATCH,), 0, np.int32)),
      # shifted positions, so a wrong position lookup shows
      "prefix": (tokens.flip(0), positions + torch.tensor([[0], [5]]), prefix,
                 np.asarray(PREFIX, np.int32)),
  }


def main():
  torch.manual_seed(0)
  gen = torch.Generator().manual_seed(2022)
  for name, kw in CONFIGS.items():
    args = CachedAutoregressiveModel.get_args(**kw, hidden_dropout=0.0, attention_dropout=0.0,
                                              skip_init=False)
    model = CachedAutoregressiveModel(args)
    randomize(model, gen)
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
      sat_dir = os.path.join(tmp, "sat")
      save_sat(model, args, sat_dir)
      reloaded, _ = CachedAutoregressiveModel.from_pretrained(
          sat_dir, CachedAutoregressiveModel.get_args(skip_init=True))
      reloaded.eval()
      out_dir = os.path.join(OUT, name)
      subprocess.run([sys.executable, os.path.join(HERE, "convert_sat_checkpoint.py"), sat_dir,
                      out_dir], check=True)
    golden = {}
    for case, (tokens, positions, mask, prefix) in inputs(gen, kw["vocab_size"]).items():
      with torch.no_grad():
        logits = reloaded(tokens, positions, mask)[0]
        direct = model(tokens, positions, mask)[0]
      assert torch.equal(logits, direct), "the reloaded SAT model differs from the saved one"
      golden.update({f"{case}_tokens": tokens.numpy().astype(np.int32),
                     f"{case}_position_ids": positions.numpy().astype(np.int32),
                     f"{case}_mask": mask.numpy().astype(np.float32),
                     f"{case}_prefix": prefix,
                     f"{case}_logits": logits.float().numpy()})
    np.savez_compressed(os.path.join(OUT, f"{name}_golden.npz"), **golden)
    print(name, {k: v.shape for k, v in golden.items()})


if __name__ == "__main__":
  main()

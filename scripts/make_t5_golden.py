"""Makes the T5 parity golden files from Hugging Face transformers' T5EncoderModel.

jzoo's tests must not need torch, so the reference outputs are computed here
once and stored in tests/golden/:

  t5_{name}.safetensors     random weights, Hugging Face naming (T5EncoderModel)
  t5_{name}_config.json     the transformers config.json of that model
  t5_{name}_golden.npz      tokens, mask, last_hidden_state (float32)

for two tiny configs: "tiny" (T5 v1.1: gated-gelu, inner dim heads*d_kv != d_model,
2 layers) and "tiny_relu" (original T5: relu FFN, few buckets and a short
max_distance so the clamped log buckets are used).

Run it in a separate environment (not jzoo's):
  python3 -m venv /work/t5ref-venv
  /work/t5ref-venv/bin/pip install torch==2.13.0 transformers safetensors numpy
  /work/t5ref-venv/bin/python scripts/make_t5_golden.py
Made with torch 2.13.0+cpu, transformers 5.24.0.
"""

import json
import os

import numpy as np
import safetensors.torch
import torch
import transformers

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "golden")

CONFIGS = {
    "tiny": dict(vocab_size=100, d_model=32, d_kv=16, d_ff=64, num_heads=4, num_layers=2,
                 relative_attention_num_buckets=32, relative_attention_max_distance=128,
                 feed_forward_proj="gated-gelu"),
    "tiny_relu": dict(vocab_size=100, d_model=32, d_kv=8, d_ff=48, num_heads=2, num_layers=1,
                      relative_attention_num_buckets=8, relative_attention_max_distance=12,
                      feed_forward_proj="relu"),
}


def randomize(model, gen):
  """Replaces every weight with random values at a scale that keeps activations O(1).

  Norm scales and relative biases are random too, so a mis-mapped tensor
  changes the output.
  """
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("layer_norm.weight"):
        p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
      elif p.ndim == 2 and ("embed" in name or "shared" in name or "relative_attention" in name):
        p.copy_(torch.randn(p.shape, generator=gen))
      else:
        p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(p.shape[1]))


def main():
  torch.manual_seed(0)
  gen = torch.Generator().manual_seed(1234)
  os.makedirs(OUT, exist_ok=True)
  for name, kw in CONFIGS.items():
    config = transformers.T5Config(dropout_rate=0.0, layer_norm_epsilon=1e-6,
                                   is_encoder_decoder=False, use_cache=False, **kw)
    model = transformers.T5EncoderModel(config)
    model.eval()
    randomize(model, gen)

    # A batch with padding: full length, partial, short. Pad id 0.
    batch, length = 3, 20
    lengths = [20, 13, 5]
    tokens = torch.randint(1, kw["vocab_size"], (batch, length), generator=gen)
    mask = torch.zeros((batch, length), dtype=torch.long)
    for i, n in enumerate(lengths):
      mask[i, :n] = 1
    tokens = tokens * mask
    with torch.no_grad():
      out = model(input_ids=tokens, attention_mask=mask).last_hidden_state

    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    # HF ties encoder.embed_tokens to shared; keep only `shared.weight`, as save_pretrained does.
    tensors.pop("encoder.embed_tokens.weight", None)
    safetensors.torch.save_file(tensors, os.path.join(OUT, f"t5_{name}.safetensors"),
                                metadata={"format": "pt"})
    with open(os.path.join(OUT, f"t5_{name}_config.json"), "w") as f:
      json.dump(config.to_dict(), f, indent=1, sort_keys=True, default=str)
    np.savez_compressed(os.path.join(OUT, f"t5_{name}_golden.npz"),
                        tokens=tokens.numpy().astype(np.int32),
                        mask=mask.numpy().astype(np.int32),
                        last_hidden_state=out.numpy().astype(np.float32))
    print(name, sorted(tensors)[:3], "...", out.shape, float(out.abs().mean()))
  print("torch", torch.__version__, "transformers", transformers.__version__)


if __name__ == "__main__":
  main()

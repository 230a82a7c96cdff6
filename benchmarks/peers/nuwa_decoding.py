"""NUWA video generation, jzoo vs nuwa-pytorch (lucidrains, 0.7.8), side by side on one machine.

    python benchmarks/peers/nuwa_decoding.py --peer-python /path/to/peer-venv/bin/python [--json]
    python benchmarks/peers/nuwa_decoding.py --smoke [--json]  # seconds: nuwa:micro's sizes
        # (3x4x4 tokens); the peer only where this python has nuwa-pytorch

Both build a text encoder + 3DNA decoder of the same size (width 64, 1 encoder
and 2 decoder layers, 4 heads of 16, a 3x3x3 nearby box, 512 codes) over a
16-frame 8x8-token video (1,024 tokens) and generate one video from one
caption, without classifier-free guidance (jzoo's NUWA has none), after a
warm-up call. nuwa-pytorch re-runs the decoder over the whole prefix for every
token; jzoo keeps a key/value cache per layer and attends to the token's box
only, in one jitted loop.

The peer runs in its own virtual environment (`--peer-python`): install
`nuwa-pytorch==0.7.8` there with torch pinned to the machine's CPU build
(`pip install nuwa-pytorch==0.7.8 -c constraints.txt` with `torch==<version>`).
Its VQ-GAN module imports torchvision only for a VGG perceptual loss that this
benchmark does not build, so when torchvision cannot load next to a CPU torch
the peer side stubs the module (see PEER).
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import _common  # noqa: E402 - benchmarks/_common.py

SIZES = dict(FRAMES=16, SIDE=8, CODES=512, TEXT_LEN=24, VOCAB=704, WIDTH=64, ENC_LAYERS=1,
             DEC_LAYERS=2, HEADS=4, HEAD_DIM=16)
# --smoke: nuwa:micro's sizes.
SMOKE_SIZES = dict(SIZES, FRAMES=3, SIDE=4, CODES=64, TEXT_LEN=16, WIDTH=32, HEADS=2)

PEER = _common.PATH_GUARD + """
import json, sys, time, types
try:
  import torchvision  # noqa: F401
except Exception:  # a CUDA torchvision next to a CPU torch: only training utilities need it
  for name in ("torchvision", "torchvision.datasets", "torchvision.transforms",
               "torchvision.utils", "torchvision.models"):
    stub = types.ModuleType(name)
    stub.__path__ = []
    stub.__getattr__ = lambda attr, name=name: type(attr, (), {{}})
    sys.modules[name] = stub
import torch
from nuwa_pytorch import NUWA, VQGanVAE
torch.manual_seed(0)
torch.set_num_threads(torch.get_num_threads())
vae = VQGanVAE(dim=16, image_size={RESOLUTION}, num_layers=2, vq_codebook_size={CODES},
               vq_codebook_dim=32, use_vgg_and_gan=False, use_attn=False, resnet_groups=8)
nuwa = NUWA(vae=vae, dim={WIDTH}, max_video_frames={FRAMES}, text_num_tokens={VOCAB},
            text_max_seq_len={TEXT_LEN}, text_enc_depth={ENC_LAYERS}, text_enc_heads={HEADS},
            text_enc_dim_head={HEAD_DIM}, dec_depth={DEC_LAYERS}, dec_heads={HEADS},
            dec_dim_head={HEAD_DIM}, sparse_3dna_kernel_size=3,
            enc_reversible=True).eval()  # 0.7.8: only the reversible text encoder runs
params = sum(p.numel() for n, p in nuwa.named_parameters() if not n.startswith("vae."))
text = torch.randint(1, {VOCAB}, (1, {TEXT_LEN}))
with torch.no_grad():
  nuwa.generate(text=text, num_frames=1, cond_scale=1.)  # warm-up
  t0 = time.perf_counter()
  video = nuwa.generate(text=text, num_frames={FRAMES}, cond_scale=1.)
  seconds = time.perf_counter() - t0
print(json.dumps(dict(params=params, seconds=seconds, shape=list(video.shape),
                      threads=torch.get_num_threads(), torch=torch.__version__)))
"""


def run_jzoo(z):
  """jzoo's side at sizes `z` (SIZES or SMOKE_SIZES): {params, seconds, tokens, jax}."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from jzoo import config as config_lib
  from jzoo.models import nuwa
  from jzoo.models import params as params_lib
  config = config_lib.load("nuwa:micro", [
      f"tokenizer.frames={z['FRAMES']}", f"tokenizer.resolution={z['SIDE'] * 4}",
      f"tokenizer.codebook_size={z['CODES']}", f"text.length={z['TEXT_LEN']}",
      f"transformer.vocab_size={z['VOCAB']}", f"transformer.width={z['WIDTH']}",
      f"transformer.encoder_layers={z['ENC_LAYERS']}",
      f"transformer.decoder_layers={z['DEC_LAYERS']}", f"transformer.head_dim={z['HEAD_DIM']}",
      f"transformer.mlp_dim={4 * z['WIDTH']}", "transformer.radius=(1,1,1)"])
  model = nuwa.build(config)
  assert model.grid == (z["FRAMES"], z["SIDE"], z["SIDE"]), model.grid
  params = {s: params_lib.random_params(model, s, jax.random.PRNGKey(0)) for s in model.stages}
  tokens = jnp.asarray(np.random.default_rng(0).integers(1, z["VOCAB"], (1, z["TEXT_LEN"])),
                       jnp.int32)
  mask = jnp.ones_like(tokens)
  known = jnp.zeros((1, *model.grid), jnp.int32)
  sample = jax.jit(lambda p, k: model.sample_codes(p, tokens, mask, known, known > 0, k))
  jax.block_until_ready(sample(params["transformer"], jax.random.PRNGKey(0)))  # compile
  t0 = time.perf_counter()
  jax.block_until_ready(sample(params["transformer"], jax.random.PRNGKey(1)))
  seconds = time.perf_counter() - t0
  return dict(params=params_lib.count_params(params["transformer"]), seconds=seconds,
              tokens=int(known.size), jax=jax.__version__)


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--peer-python", default=None,
                 help="python of the peer's virtual environment (required, but with --smoke)")
  p.add_argument("--json", action="store_true")
  args = _common.parse_args(p, {})
  z = SMOKE_SIZES if args.smoke else SIZES
  python = _common.peer_python(args, "nuwa-pytorch", ("torch", "nuwa_pytorch"))
  ours = run_jzoo(z)
  peer = None
  if python:
    out = subprocess.run([python, "-c", PEER.format(RESOLUTION=z["SIDE"] * 4, **z)],
                         capture_output=True, text=True, **_common.peer_process())
    if out.returncode:
      sys.exit(f"the peer failed:\n{out.stderr[-3000:]}")
    peer = json.loads(out.stdout.strip().splitlines()[-1])
  n = ours["tokens"]
  peer_s = None if peer is None else peer["seconds"]
  result = dict(tokens=n, jzoo=ours, peer=peer, speedup=_common.ratio(peer_s, ours["seconds"]),
                jzoo_ms_per_token=1e3 * ours["seconds"] / n,
                peer_ms_per_token=_common.ratio(peer_s, n / 1e3), smoke=args.smoke)
  if _common.print_json(args, result):
    return
  print(f"one {z['FRAMES']}x{z['SIDE']}x{z['SIDE']}-token video ({n} tokens), no guidance, "
        "after warm-up:")
  print(f"  jzoo (cached 3DNA, {ours['params']:,} transformer params): {ours['seconds']:.2f} s "
        f"({result['jzoo_ms_per_token']:.2f} ms/token)")
  if peer is None:
    print("  nuwa-pytorch: skipped")
    return
  print(f"  nuwa-pytorch ({peer['params']:,} params, {peer['threads']} threads): "
        f"{peer['seconds']:.2f} s ({result['peer_ms_per_token']:.2f} ms/token)")
  print(f"  jzoo is {result['speedup']:.1f}x faster")


if __name__ == "__main__":
  main()

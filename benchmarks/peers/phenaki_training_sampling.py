"""Phenaki training steps and sampling, jzoo vs phenaki-pytorch (lucidrains, 0.5.0), side by side.

    python benchmarks/peers/phenaki_training_sampling.py --peer-python PEER_VENV/bin/python \
        [--rounds 5] [--candidates K] [--json]
    python benchmarks/peers/phenaki_training_sampling.py --smoke [--candidates 2] [--json]
        # seconds: the same steps at phenaki:micro, one round; the peer only where this python
        # has phenaki-pytorch

jzoo's `phenaki:tiny_shapes` (16 frames at 32x32; C-ViViT with 4x4 patches and
5-frame tubelets -> 4 x 8 x 8 = 256 tokens, codebook 1024; a 4-layer, width-128
MaskGIT transformer with cross-attention to 24 text tokens of width 128)
against phenaki-pytorch's `CViViT` + `MaskGit` + `Phenaki` built from the same
config: the same widths, depths, heads and head width, patch and tubelet sizes,
codebook size and token grid. phenaki-pytorch's feed-forwards are GEGLU; their
hidden width is set so that each MLP has jzoo's parameters and FLOPs (the
C-ViViT does not pass `ff_mult` on, so its feed-forwards are rebuilt). What
stays different: phenaki-pytorch's quantizer is its default lookup-free one
(jzoo: factorized l2-normalised codes), its positions are a learned table plus
a continuous relative-position-bias MLP and a depthwise-conv PEG per MaskGIT
layer (jzoo: factorized learned time/row/column embeddings), and its C-ViViT
loss in this no-GAN setting is the reconstruction MSE alone (jzoo adds the VQ
commitment term).

Measured, in rounds that alternate jzoo and the peer (minimum over rounds):
  * the tokenizer (C-ViViT) training step and the transformer (MaskGIT)
    training step, each at its stage's training batch size in the config: forward +
    backward + global-norm clipping + AdamW + an EMA update. The transformer
    step encodes the clips with the frozen C-ViViT on both sides
    (`jzoo.bench.bench_training`'s step; phenaki-pytorch's `Phenaki.forward`
    on videos).
  * sampling 4 videos: the config's MaskGIT steps and classifier-free guidance
    (24 and 2.0) on both sides (jzoo runs the conditional and unconditional
    passes as one batch of 8, phenaki-pytorch as two batches of 4), then the
    C-ViViT decoder to pixels. One draw per prompt by default (the peer has no
    candidate selection); `--candidates K` samples as the bundle does
    (`sample.candidates`, 4 there: K token grids per prompt, the most likely
    kept), and the peer then samples K x 4 videos.
Text: random embeddings of jzoo's T5 width (128) on both sides, so no T5 runs
(jzoo's frozen encoder is patched out; phenaki-pytorch's `encode_texts` returns
them).

Install the peer in its own virtual environment (`--peer-python`):
`pip install phenaki-pytorch==0.5.0 -c constraints.txt`, `torch==2.13.0` in
it (the machine's CPU build). See imagen_training_sampling.py for the offline
T5 config and the torchvision stub that both peers need.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import _common  # noqa: E402 - benchmarks/_common.py
from imagen_training_sampling import (  # noqa: E402
    PEER_PRELUDE, Peer, alternate, best, jzoo_train_step, text_embeddings, timed)

CONFIG, SAMPLES, ROUNDS, TRAIN_REPEATS = "phenaki:tiny_shapes", 4, 5, 2

PEER = PEER_PRELUDE + """
from importlib.metadata import version
from phenaki_pytorch import CViViT, MaskGit, Phenaki
from phenaki_pytorch.attention import FeedForward
cfg = json.loads(sys.argv[1])
tk, tr, n = cfg["tokenizer"], cfg["transformer"], cfg["samples"]
bt, bm = cfg["tokenizer_batch"], cfg["transformer_batch"]  # each stage's training batch
cvivit = CViViT(dim=tk["width"], codebook_size=tk["codebook_size"], image_size=tk["resolution"],
                patch_size=tk["patch_size"], temporal_patch_size=tk["temporal_patch"],
                spatial_depth=tk["spatial_layers"], temporal_depth=tk["temporal_layers"],
                dim_head=tk["head_dim"], heads=tk["num_heads"], use_vgg_and_gan=False)
# GEGLU hidden = 2/3 * mult * dim: mult = mlp_dim / width gives jzoo's MLP parameters and FLOPs.
for t in (cvivit.enc_spatial_transformer, cvivit.enc_temporal_transformer,
          cvivit.dec_spatial_transformer, cvivit.dec_temporal_transformer):
  for layer in t.layers:
    layer[3] = FeedForward(tk["width"], mult=tk["mlp_dim"] / tk["width"])
maskgit = MaskGit(dim=tr["width"], num_tokens=tk["codebook_size"], max_seq_len=cfg["tokens"],
                  depth=tr["num_layers"], heads=tr["width"] // tr["head_dim"],
                  dim_head=tr["head_dim"], ff_mult=tr["mlp_dim"] / tr["width"],
                  dim_context=cfg["text_dim"])
phenaki = Phenaki(maskgit=maskgit, cvivit=cvivit, steps=cfg["steps"], cond_drop_prob=0.1,
                  text_embed_dim=cfg["text_dim"], max_text_len=cfg["text_len"])
video = torch.rand(max(bt, bm), 3, tk["frames"], tk["resolution"], tk["resolution"]) * 2 - 1
text = torch.randn(max(bm, n), cfg["text_len"], cfg["text_dim"])
phenaki.encode_texts = lambda texts, output_device=None: text[:len(texts)]

train_tokenizer = trainer(cvivit, lambda: cvivit(video[:bt]))
train_transformer = trainer(maskgit, lambda: phenaki(video[:bm], text_embeds=text[:bm]))

def sample():
  phenaki.sample(texts=["-"] * n, num_frames=tk["frames"], cond_scale=cfg["guidance"])

with FlopCounterMode(display=False) as tok_flops, torch.no_grad():
  cvivit(video[:1], return_recons_only=True)
with FlopCounterMode(display=False) as tr_flops, torch.no_grad():
  maskgit(torch.zeros(1, cfg["tokens"], dtype=torch.long), context=text[:1],
          text_mask=torch.ones(1, cfg["text_len"], dtype=torch.bool),
          video_patch_shape=tuple(cfg["grid"]))
for fn in (train_tokenizer, train_transformer, sample):  # warm-up
  fn()
count = lambda m: sum(p.numel() for p in m.parameters())
serve(dict(tokenizer_params=count(cvivit), transformer_params=count(maskgit),
           tokenizer_gflops=tok_flops.get_total_flops() / 1e9,
           transformer_gflops=tr_flops.get_total_flops() / 1e9,
           phenaki_pytorch=version("phenaki-pytorch")),
      {"train_tokenizer": train_tokenizer, "train_transformer": train_transformer,
       "sample": sample})
"""


def jzoo_side(config_ref=CONFIG, candidates=1):
  """(info, {name: call}) for jzoo's `config_ref` drawing `candidates` token grids per video,
  compiled and warmed up."""
  import jax
  import jax.numpy as jnp

  from jzoo import config as config_lib
  from jzoo.models import params as params_lib
  from jzoo.models import phenaki
  from jzoo.models.base import Request
  config = config_lib.load(config_ref, [f"sample.candidates={candidates}"])
  calls, info = {}, {}
  for stage in ("tokenizer", "transformer"):
    calls["train_" + stage], info[stage + "_batch"], info[stage + "_compile_s"] = (
        jzoo_train_step(config, stage))

  model = phenaki.build(config)
  params = {s: params_lib.random_params(model, s, jax.random.PRNGKey(0)) for s in model.stages}
  length, width = model.text_length, model.text_encoder.width
  text = text_embeddings((SAMPLES, length), width)
  # What the peer gets too, for every row: sampling with candidates encodes the prompts
  # repeated K times (K x SAMPLES rows, prompt-minor).
  model.text_encoder.encode = lambda p, tokens, mask: jnp.tile(
      text, (tokens.shape[0] // SAMPLES, 1, 1))
  ones = jnp.ones((SAMPLES, length), jnp.int32)
  steps, guidance = int(config.sample.steps), float(config.sample.guidance)
  sample = jax.jit(lambda p, rng: model.generate_video(
      p, Request(tokens=ones, mask=ones, steps=steps, guidance=guidance), rng))
  keys = iter(jax.random.split(jax.random.PRNGKey(5), 1000))
  calls["sample"] = lambda: jax.block_until_ready(sample(params, next(keys)))

  tk, tr = config.tokenizer, config.transformer
  grid = (model.time_tokens, model.grid, model.grid)
  video = jnp.zeros((1, int(tk.frames), int(tk.resolution), int(tk.resolution), 3))
  tokens = jnp.zeros((1, *grid), jnp.int32)

  def gflops(fn, *args):
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"] / 1e9

  info.update(
      tokenizer_params=params_lib.count_params(params["tokenizer"]),
      transformer_params=params_lib.count_params(params["transformer"]),
      tokenizer_gflops=gflops(lambda p, v: model.tokenizer.apply({"params": p}, v),
                              params["tokenizer"], video),
      transformer_gflops=gflops(lambda p, t: model.transformer.apply(
          {"params": p}, t, text[:1], ones[:1]), params["transformer"], tokens),
      grid=grid, tokens=int(tokens.size), steps=steps, guidance=guidance,
      candidates=candidates, cpu_rows=int(config.sample.get("cpu_rows", 0)), text_len=length,
      text_dim=width, jax=jax.__version__,
      peer_config={k: {f: v for f, v in c.to_dict().items() if f != "train"}
                   for k, c in (("tokenizer", tk), ("transformer", tr))})
  for call in calls.values():  # warm-up: the first runs after a compile are slower
    call()
  return info, calls


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--peer-python", default=None,
                 help="python of the peer's virtual environment (required, but with --smoke)")
  p.add_argument("--config", default=CONFIG, help="jzoo's config; the peer is derived from it")
  p.add_argument("--candidates", type=int, default=1,
                 help="jzoo's sample.candidates (the bundle's: 4); the peer samples K x as many")
  p.add_argument("--rounds", type=int, default=ROUNDS)
  p.add_argument("--patience", type=float, default=10,
                 help="seconds to wait, before each timed call, for other jobs to leave the CPUs")
  p.add_argument("--json", action="store_true")
  args = _common.parse_args(p, dict(config="phenaki:micro", rounds=1, patience=0))
  python = _common.peer_python(args, "phenaki-pytorch", ("torch", "phenaki_pytorch"))
  load_before = os.getloadavg()

  ours, calls = jzoo_side(args.config, args.candidates)
  cfg = ours.pop("peer_config")
  if python:
    peer = Peer(python, PEER, dict(
        cfg, tokenizer_batch=ours["tokenizer_batch"], transformer_batch=ours["transformer_batch"],
        samples=SAMPLES * args.candidates, tokens=ours["tokens"],
        grid=ours["grid"], steps=ours["steps"], guidance=ours["guidance"],
        text_len=ours["text_len"], text_dim=ours["text_dim"]))
  names = ("train_tokenizer", "train_transformer", "sample")
  cases = []
  for name in names:
    repeats = 1 if name == "sample" else TRAIN_REPEATS
    cases.append(("jzoo_" + name, timed(calls[name]), repeats))
    if python:
      cases.append(("peer_" + name, lambda name=name: peer.time(name), repeats))
  times = alternate(cases, args.rounds, args.patience)
  if python:
    peer.close()

  b = {k: best(v) for k, v in times.items()}
  side = lambda key: b[key]["seconds"] if key in b else None  # noqa: E731 - None: peer skipped
  result = dict(jzoo=ours, peer=peer.info if python else None, best=b, all=times,
                speedup={k: _common.ratio(side("peer_" + k), side("jzoo_" + k)) for k in names},
                config=args.config, candidates=args.candidates, smoke=args.smoke,
                load_avg_before=load_before, load_avg_after=os.getloadavg())
  if _common.print_json(args, result):
    return
  t, h, w = ours["grid"]
  tk = cfg["tokenizer"]
  print(f"{args.config}, {tk['frames']} frames at {tk['resolution']}x{tk['resolution']} = "
        f"{t}x{h}x{w} tokens; training batch {ours['tokenizer_batch']} (tokenizer) / "
        f"{ours['transformer_batch']} (MaskGIT); {SAMPLES} videos x {ours['steps']} MaskGIT "
        f"steps, {args.candidates} candidate(s) each (the peer: {SAMPLES * args.candidates} "
        f"videos), guidance {ours['guidance']:g} on both sides; min over {args.rounds} "
        "alternating rounds")
  print(f"{'':34}{'params tok / MaskGIT':>22}{'GFLOP/video':>14}{'tok step':>10}"
        f"{'MaskGIT step':>14}{'sampling':>10}")
  peer_info = peer.info if python else dict.fromkeys(
      ("tokenizer_params", "transformer_params", "tokenizer_gflops", "transformer_gflops"))
  peer_name = (f"phenaki-pytorch {peer.info['phenaki_pytorch']} ({peer.info['threads']} threads)"
               if python else "phenaki-pytorch: skipped")
  for name, info, key in ((f"jzoo (jax {ours['jax']})", ours, "jzoo"),
                          (peer_name, peer_info, "peer")):
    params = (f"{_common.fmt(info['tokenizer_params'], ',')} / "
              f"{_common.fmt(info['transformer_params'], ',')}")
    flops = (f"{_common.fmt(info['tokenizer_gflops'], '.2f')} / "
             f"{_common.fmt(info['transformer_gflops'], '.2f')}")
    print(f"{name:34}{params:>22}{flops:>14}" +
          "".join(f"{_common.fmt(side(key + '_' + k), '.3f', 's'):>{width}}"
                  for k, width in zip(names, (10, 14, 10))))
  ratios = " / ".join(_common.fmt(_common.ratio(peer_info[k], ours[k]), ".3f", "x")
                      for k in ("tokenizer_params", "transformer_params"))
  print(f"{'peer / jzoo (> 1: jzoo faster)':34}{ratios:>22}{'':14}" +
        "".join(f"{_common.fmt(result['speedup'][k], '.2f', 'x'):>{width}}"
                for k, width in zip(names, (10, 14, 10))))
  busy = max(v["busy"] for v in b.values())
  print(f"jzoo compile: tokenizer step {ours['tokenizer_compile_s']:.0f} s, MaskGIT step "
        f"{ours['transformer_compile_s']:.0f} s. Other jobs' CPU share before the best calls "
        f"<= {busy:.0%}; load average {load_before[0]:.1f} -> {result['load_avg_after'][0]:.1f}")


if __name__ == "__main__":
  main()

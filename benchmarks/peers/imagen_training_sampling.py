"""Imagen U-Net training step and sampling, jzoo vs imagen-pytorch (lucidrains, 2.1.0).

    python benchmarks/peers/imagen_training_sampling.py --peer-python PEER_VENV/bin/python \
        [--stage base|sr] [--rounds 5] [--json]
    python benchmarks/peers/imagen_training_sampling.py --smoke [--json]  # seconds: the same
        # steps at imagen:micro, one round; the peer only where this python has imagen-pytorch

jzoo's `imagen:tiny_shapes` stage (`base`: 32x32; `sr`: 32->64) against an
imagen-pytorch `Unet` + `Imagen` built from the same stage config: the same
widths at the same resolutions (channels * channel_mult), the same number of
residual blocks per level (imagen-pytorch adds a first, cross-attending block
to every level, so it gets num_res_blocks - 1 more), self- and cross-attention
at the same levels with the same head width, the same text length and width,
v-prediction on a cosine schedule, dynamic thresholding. imagen-pytorch's
extras that jzoo's U-Net lacks are switched off (attention pooling of the
text, cross-embed input conv, global-context attention, final ResNet block,
pixel-shuffle upsampling). imagen-pytorch's middle blocks always cross-attend
with 8 heads of 64; for `sr` they are rebuilt with the levels' heads, or they
alone would hold half of jzoo's SR parameters (`base` matches without it).
What stays different: the peer's skip connections feed every up block (jzoo's
feed the first block of each level), its downsampling is a pixel-unshuffle +
1x1 conv (jzoo: a strided 3x3 conv), its norms are RMS norms (jzoo: GroupNorm)
and its attention is cosine-sim with null keys, plus a feed-forward after
self-attention. Both sides print their U-Net parameter count and forward
GFLOPs per image (XLA cost analysis / torch's FlopCounterMode).

Measured, in rounds that alternate jzoo and the peer (other jobs share the
cores, so each number is the minimum over rounds):
  * one training step at the stage's training batch size (32 base, 16 sr):
    forward + backward + global-norm clipping + AdamW + an EMA update on both
    sides. jzoo's step is `jzoo.bench.bench_training`'s, with its frozen text
    encoder's output replaced by random embeddings of its width (128); the
    peer gets the same kind of embeddings, so no T5 runs on either side.
  * sampling 4 images with the config's number of steps (20 base, 8 sr),
    without classifier-free guidance on either side (one U-Net call per step),
    from the same random text embeddings. Samplers differ (jzoo DPM++(2M),
    imagen-pytorch ancestral DDPM): the steps are matched, not the sampler.

The peer runs in its own virtual environment (`--peer-python`): install
`imagen-pytorch==2.1.0` there with torch pinned to the machine's CPU build
(`pip install imagen-pytorch==2.1.0 -c constraints.txt`, `torch==2.13.0` in
it). At import, imagen-pytorch reads a T5 config from the Hugging Face hub
(a default argument) and pulls in torchvision, which a CUDA build cannot load
next to a CPU torch: the peer side answers the config with T5-base's width
offline and stubs torchvision (see PEER_PRELUDE); no T5 weights are loaded.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from unittest import mock

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import _common  # noqa: E402 - benchmarks/_common.py

CONFIG, SAMPLES, ROUNDS, TRAIN_REPEATS = "imagen:tiny_shapes", 4, 5, 3

# Shared by both peer scripts: keep the protocol on the real stdout (the peers print
# advice), offline T5 config, torchvision stubbed when a CUDA build cannot load, the train
# step factory and the serve loop.
PEER_PRELUDE = _common.PATH_GUARD + """
import importlib, json, sys, time, types
out, sys.stdout = sys.stdout, sys.stderr
try:
  import torchvision  # noqa: F401
except Exception:
  for k in [k for k in sys.modules if k.startswith("torchvision")]:
    del sys.modules[k]
  sys.modules["torchvision"] = None  # find_spec -> None: transformers and datasets skip it
  import datasets, kornia, transformers  # noqa: F401
  from transformers import T5Config, T5EncoderModel, T5Tokenizer  # noqa: F401
  class _Any:  # what training utilities (transforms, datasets) would build; never called here
    def __init__(self, *a, **k): pass
    def __call__(self, *a, **k): return _Any()
    def __getattr__(self, attr): return _Any
  def _attr(attr):
    if attr.startswith("__"):
      raise AttributeError(attr)
    return type(attr, (_Any,), {})
  for name in ("torchvision", "torchvision.datasets", "torchvision.transforms",
               "torchvision.transforms.functional", "torchvision.utils", "torchvision.io",
               "torchvision.models"):
    stub = types.ModuleType(name)
    stub.__path__, stub.__getattr__ = [], _attr
    sys.modules[name] = stub
    if "." in name:
      setattr(sys.modules[name.rsplit(".", 1)[0]], name.rsplit(".", 1)[1], stub)
import transformers
# T5-v1.1-base's width, without the hub (only read as a default argument; embeddings are given).
transformers.T5Config.from_pretrained = classmethod(lambda cls, name, **kw: cls(d_model=768))
import torch
from torch.utils.flop_counter import FlopCounterMode
torch.manual_seed(0)

def trainer(module, loss_fn):
  # One AdamW step (clip 1.0) + EMA 0.999 update, like jzoo's train step.
  params = [p for p in module.parameters() if p.requires_grad]
  opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0, foreach=True)
  ema = [p.detach().clone() for p in params]
  def step():
    loss = loss_fn()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    with torch.no_grad():
      torch._foreach_lerp_(ema, params, 1 - 0.999)
  return step

def serve(ready, commands):
  # One JSON line when built and warmed up, then one per command read from stdin.
  print(json.dumps(dict(ready, threads=torch.get_num_threads(), torch=torch.__version__)),
        file=out, flush=True)
  sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
  for line in sys.stdin:
    sync()
    t0 = time.perf_counter()
    commands[line.strip()]()
    sync()
    print(json.dumps({"seconds": time.perf_counter() - t0}), file=out, flush=True)
"""

PEER = PEER_PRELUDE + """
from importlib.metadata import version
from imagen_pytorch import Imagen, NullUnet, Unet
from imagen_pytorch.imagen_pytorch import CrossAttention
cfg = json.loads(sys.argv[1])
b, n, r = cfg["batch"], cfg["samples"], cfg["resolution"]
length, width = cfg["text_len"], cfg["text_dim"]
sr = cfg["unet"]["lowres_cond"]
imagen = Imagen(
    unets=(NullUnet(), Unet(**cfg["unet"])) if sr else Unet(**cfg["unet"]),
    image_sizes=(r // 2, r) if sr else r, timesteps=(1, cfg["steps"]) if sr else cfg["steps"],
    text_embed_dim=width, pred_objectives="v", noise_schedules="cosine", cond_drop_prob=0.1,
    min_snr_loss_weight=False, auto_normalize_img=False, dynamic_thresholding_percentile=0.995)
unet_number = 2 if sr else 1
unet = imagen.unets[unet_number - 1]
if cfg["mid_cross_attn"]:  # the middle blocks ignore attn_heads / attn_dim_head: 8 heads of 64
  for block in (unet.mid_block1, unet.mid_block2):
    dim = block.block2.project.out_channels
    block.cross_attn = CrossAttention(dim=dim, **cfg["mid_cross_attn"])
dev = torch.device(cfg["device"])
imagen = imagen.to(dev)
images = torch.rand(b, 3, r, r, device=dev) * 2 - 1
text = torch.randn(b, length, width, device=dev)
mask = torch.ones(b, length, dtype=torch.bool, device=dev)
low = torch.rand(n, 3, r // 2, r // 2, device=dev) * 2 - 1
# bfloat16 compute with float32 parameters, as jzoo's train.dtype=bfloat16
amp = lambda: torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg["dtype"] == "bfloat16")

def loss():
  with amp():
    return imagen(images, text_embeds=text, text_masks=mask, unet_number=unet_number)

with FlopCounterMode(display=False) as flops, torch.no_grad():
  unet(images[:1], torch.rand(1), text_embeds=text[:1], text_mask=mask[:1],
       **(dict(lowres_cond_img=images[:1], lowres_noise_times=torch.rand(1)) if sr else {}))
info = dict(params=sum(p.numel() for p in unet.parameters()), gflops=flops.get_total_flops() / 1e9,
            imagen_pytorch=version("imagen-pytorch"))
if cfg["count_only"]:
  serve(info, {})
  sys.exit()

train = trainer(unet, loss)

def sample():
  extra = dict(start_at_unet_number=2, start_image_or_video=low) if sr else {}
  with amp():
    imagen.sample(text_embeds=text[:n], text_masks=mask[:n], cond_scale=1., use_tqdm=False,
                  **extra)

for fn in (train, train, sample):  # warm-up
  fn()
serve(info, {"train": train, "sample": sample})
"""


def stage_settings(stage, overrides=(), config_ref=CONFIG):
  from jzoo import config as config_lib
  config = config_lib.load(config_ref, list(overrides))
  s = config.stages[stage]
  steps = config.sample.steps if stage == "base" else config.sample.sr_steps
  return config, s, steps


def peer_unet(s, text_len, text_dim, sr):
  """imagen-pytorch Unet kwargs matching a jzoo U-Net stage config."""
  top = s.channels * s.channel_mult[-1]
  return dict(
      dim=s.channels, dim_mults=tuple(s.channel_mult),
      # Every peer level starts with an extra (cross-attending) ResNet block.
      num_resnet_blocks=tuple(n - 1 for n in s.num_res_blocks),
      layer_attns=tuple(s.self_attention), layer_cross_attns=tuple(s.cross_attention),
      attend_at_middle=bool(s.self_attention[-1]),
      attn_dim_head=s.head_dim, attn_heads=max(2, top // s.head_dim),  # the peer needs >= 2 heads
      cond_dim=s.text_dim, text_embed_dim=text_dim, max_text_len=text_len, lowres_cond=sr,
      # Blocks level i at resolution / 2**i, as jzoo's levels (memory_efficient moves level 0 down).
      memory_efficient=False,
      # Extras jzoo's U-Net does not have.
      attn_pool_text=False, init_cross_embed=False, init_conv_kernel_size=3,
      use_global_context_attn=False, final_resnet_block=False, pixel_shuffle_upsample=False)


def parse_peer_overrides(pairs):
  """["num_resnet_blocks=1,2,2", "attn_heads=4"] -> {"num_resnet_blocks": (1, 2, 2), ...}."""
  import ast
  out = {}
  for pair in pairs:
    key, sep, value = pair.partition("=")
    if not sep:
      sys.exit(f"--peer-override {pair!r}: write KEY=VALUE, e.g. num_resnet_blocks=1,2,2")
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value
  return out


def text_embeddings(shape, width):
  """The random text embeddings both sides get in place of a T5's output."""
  import jax
  return jax.random.normal(jax.random.PRNGKey(1), (*shape, width))


def jzoo_train_step(config, stage):
  """(train_once, batch size, compile seconds): `jzoo.bench.bench_training`'s step, kept callable.

  bench_training builds the trainer, a random batch and the compiled step, then times a
  closure; keeping that closure lets its steps alternate with the peer's. The frozen T5's
  output is replaced by random embeddings, as on the peer's side."""
  from jzoo import bench
  from jzoo.text.frozen import FrozenTextEncoder
  kept = {}

  def keep(fn, repeats):
    kept["run"] = fn
    fn()  # compiles (traced under the patch below)
    return 1.0

  def encode(self, params, tokens, mask):
    return text_embeddings(tokens.shape, self.width)

  t0 = time.perf_counter()
  with mock.patch.object(bench, "_time", keep), mock.patch.object(FrozenTextEncoder, "encode",
                                                                    encode):
    info = bench.bench_training(config, stage, 1)
  return kept["run"], info["batch_size"], time.perf_counter() - t0


def peer_mid_cross_attn(s):
  """The levels' cross-attention for imagen-pytorch's middle blocks, which otherwise have 8
  heads of 64 whatever attn_heads says: 394K parameters, half of jzoo's whole SR U-Net. The base
  stage matches jzoo's parameters and FLOPs within 1% without this, so only `sr` uses it."""
  return dict(context_dim=s.text_dim, dim_head=s.head_dim,
              heads=max(2, s.channels * s.channel_mult[-1] // s.head_dim))


def jzoo_model(stage, overrides=(), config_ref=CONFIG):
  """(config, stage settings, sampling steps, model, params, conditioning of SAMPLES images)."""
  import jax
  import jax.numpy as jnp

  from jzoo.models import imagen
  from jzoo.models import params as params_lib
  config, s, steps = stage_settings(stage, overrides, config_ref)
  model = imagen.build(config)
  params = params_lib.random_params(model, stage, jax.random.PRNGKey(0))
  r, width = int(s.resolution), model.text_encoder.width
  text = text_embeddings((SAMPLES, model.text_length), width)
  mask = jnp.ones((SAMPLES, model.text_length), jnp.int32)
  cond = {"text": text, "mask": mask}
  if stage != "base":  # the SR input: a low-resolution image, noise-augmented as in generate
    low = jax.random.uniform(jax.random.PRNGKey(2), (SAMPLES, r // 2, r // 2, 3), minval=-1)
    level = jnp.full((SAMPLES,), float(config.sample.sr_noise_aug))
    cond.update(model._augment(low, (r, r), level, jax.random.PRNGKey(3)))
  return config, s, steps, model, params, cond


def jzoo_counts(stage, overrides=(), config_ref=CONFIG):
  """jzoo's U-Net size: {params, gflops (XLA cost analysis of one image's forward), ...}."""
  import jax
  import jax.numpy as jnp
  from jzoo.models import params as params_lib

  config, s, steps, model, params, cond = jzoo_model(stage, overrides, config_ref)
  r = int(s.resolution)
  unet = model.unets[stage]
  one = {k: v[:1] for k, v in cond.items()}
  extra = {k: one[k] for k in ("low_res", "aug_logsnr") if k in one}
  forward = jax.jit(lambda p, x: unet.apply({"params": p}, x, jnp.zeros((1,)), one["text"],
                                            one["mask"], **extra))
  cost = forward.lower(params, jnp.zeros((1, r, r, 3))).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return dict(params=params_lib.count_params(params), gflops=cost["flops"] / 1e9, steps=steps,
              batch=int(s.train.batch_size), resolution=r, text_len=model.text_length,
              text_dim=model.text_encoder.width, jax=jax.__version__)


def jzoo_side(stage, overrides=(), config_ref=CONFIG):
  """({batch, compile seconds}, train_once, sample_once) for jzoo's stage, compiled."""
  import jax

  from jzoo.parallel import compiler
  config, s, steps, model, params, cond = jzoo_model(stage, overrides, config_ref)
  train_once, batch, train_compile = jzoo_train_step(config, stage)
  r = int(s.resolution)

  def sample(p, rng):  # no guidance: one U-Net call per step (unguided=True)
    noise = jax.random.normal(rng, (SAMPLES, r, r, 3))
    return model._sample_stage(stage, p, cond, steps, 1.0, True, noise, rng)

  # compiled as jzoo.sample compiles generation: with the config's XLA CPU options
  sample = compiler.jit(sample, ynn_fusions=compiler.ynn_fusions_of(config))

  t0 = time.perf_counter()
  jax.block_until_ready(sample(params, jax.random.PRNGKey(4)))
  sample_compile = time.perf_counter() - t0

  info = dict(batch=batch, train_compile_s=train_compile, sample_compile_s=sample_compile)
  keys = iter(jax.random.split(jax.random.PRNGKey(5), 1000))
  sample_once = lambda: jax.block_until_ready(sample(params, next(keys)))  # noqa: E731
  for call in (train_once, sample_once, sample_once):  # the first runs after a compile are slower
    call()
  return info, train_once, sample_once


class Peer:
  """The peer as a subprocess that times one command per line."""

  def __init__(self, python, code, cfg):
    self.proc = subprocess.Popen([python, "-c", code, json.dumps(cfg)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 **_common.peer_process())
    self.info = self._read()

  def _read(self):
    line = self.proc.stdout.readline()
    if not line:
      sys.exit(f"the peer failed:\n{self.proc.stderr.read()[-3000:]}")
    return json.loads(line)

  def time(self, command):
    self.proc.stdin.write(command + "\n")
    self.proc.stdin.flush()
    return self._read()["seconds"]

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def others_busy(interval=0.3):
  """Share of the machine's CPU time used over `interval` s while this benchmark idles."""
  def read():
    with open("/proc/stat") as f:
      v = [int(x) for x in f.readline().split()[1:8]]
    return v[3] + v[4], sum(v)  # idle + iowait, total
  idle0, total0 = read()
  time.sleep(interval)
  idle1, total1 = read()
  return 1 - (idle1 - idle0) / max(total1 - total0, 1)


def alternate(cases, rounds, patience):
  """Runs `cases` [(name, fn -> seconds, repeats)] in turn, `rounds` times, each call after
  waiting up to `patience` s for other jobs to leave the CPUs.

  Returns {name: [(seconds, other jobs' CPU share just before)]}."""
  out = {name: [] for name, _, _ in cases}
  for _ in range(rounds):
    for name, fn, repeats in cases:
      for _ in range(repeats):
        deadline = time.time() + patience
        while (busy := others_busy()) > 0.15 and time.time() < deadline:
          time.sleep(1)
        out[name].append((fn(), busy))
  return out


def timed(fn):
  """fn -> a call that returns its seconds."""
  def run():
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
  return run


def best(times):
  """The fastest call and the other jobs' CPU share just before it."""
  return dict(zip(("seconds", "busy"), min(times)))


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--peer-python", default=None,
                 help="python of the peer's virtual environment (required, but with --smoke)")
  p.add_argument("--config", default=CONFIG, help="jzoo's config; the peer is derived from it")
  p.add_argument("--stage", default="base", choices=("base", "sr"))
  p.add_argument("--rounds", type=int, default=ROUNDS)
  p.add_argument("--patience", type=float, default=10,
                 help="seconds to wait, before each timed call, for other jobs to leave the CPUs")
  p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                 help="the peer's torch device (jzoo runs on JAX's default backend)")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                 help="compute dtype on both sides (parameters stay float32)")
  p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                 help="a --config override, e.g. stages.base.channels=128 "
                      "(the peer is derived from the overridden stage)")
  p.add_argument("--peak-tflops", type=float, default=None,
                 help="the chip's peak at --dtype (H100 SXM bf16 dense: 989): prints MFU")
  p.add_argument("--peer-override", action="append", default=[], metavar="KEY=VALUE",
                 help="an imagen-pytorch Unet argument over the derived one, e.g. "
                      "num_resnet_blocks=1,2,2 (to match the parameter counts at other widths)")
  p.add_argument("--peer-mid-attn", default="auto", choices=("auto", "levels", "fixed"),
                 help="the peer's middle cross-attention: the levels' heads, or its fixed 8 heads "
                      "of 64 (auto: levels for sr, fixed for base)")
  p.add_argument("--params-only", action="store_true",
                 help="build both U-Nets, print their parameters and GFLOPs, time nothing")
  p.add_argument("--json", action="store_true")
  args = _common.parse_args(p, dict(config="imagen:micro", rounds=1, patience=0))
  python = _common.peer_python(args, "imagen-pytorch", ("torch", "imagen_pytorch"))
  load_before = os.getloadavg()
  overrides = list(args.override) + [f"train.dtype={args.dtype}"]

  ours = jzoo_counts(args.stage, overrides, args.config)
  _, s, _ = stage_settings(args.stage, overrides, args.config)
  unet = dict(peer_unet(s, ours["text_len"], ours["text_dim"], args.stage != "base"),
              **parse_peer_overrides(args.peer_override))
  mid = args.peer_mid_attn if args.peer_mid_attn != "auto" else (
      "levels" if args.stage == "sr" else "fixed")
  peer_cfg = dict(
      unet=unet, mid_cross_attn=peer_mid_cross_attn(s) if mid == "levels" else None,
      batch=ours["batch"], samples=SAMPLES, resolution=ours["resolution"], steps=ours["steps"],
      text_len=ours["text_len"], text_dim=ours["text_dim"], device=args.device, dtype=args.dtype)
  counted = None
  if python:
    counted = Peer(python, PEER, dict(peer_cfg, count_only=True))
    counted.close()
  peer_info = counted.info if counted else {"params": None, "gflops": None}
  ratio = _common.ratio(peer_info["params"], ours["params"])
  sizes = (f"U-Net parameters: jzoo {ours['params']:,}, "
           f"peer {_common.fmt(peer_info['params'], ',')} (ratio {_common.fmt(ratio, '.3f')}); "
           f"forward GFLOP/image: jzoo {ours['gflops']:.3f}, "
           f"peer {_common.fmt(peer_info['gflops'], '.3f')}; peer Unet {json.dumps(unet)}")
  if args.params_only:
    print(json.dumps(dict(jzoo=ours, peer=peer_info, param_ratio=ratio, peer_unet=unet))
          if args.json else sizes)
    return
  # the matched size; a ratio of unmatched models means little (the micro smoke's
  # U-Nets are not matched)
  if ratio is not None and not args.smoke and not 0.9 <= ratio <= 1.1:
    sys.exit(f"{sizes}\nThe parameter counts differ by more than 10%: match them with "
             "--peer-override num_resnet_blocks=... or --peer-mid-attn (try --params-only first).")

  timing, jzoo_train, jzoo_sample = jzoo_side(args.stage, overrides, args.config)
  ours.update(timing)
  peer = Peer(python, PEER, dict(peer_cfg, count_only=False)) if python else None
  cases = [("jzoo_train", timed(jzoo_train), TRAIN_REPEATS),
           ("peer_train", lambda: peer.time("train"), TRAIN_REPEATS),
           ("jzoo_sample", timed(jzoo_sample), 1),
           ("peer_sample", lambda: peer.time("sample"), 1)]
  times = alternate([c for c in cases if peer or not c[0].startswith("peer")], args.rounds,
                    args.patience)
  if peer:
    peer.close()
    peer_info = peer.info

  b = {k: best(v) for k, v in times.items()}
  side = lambda key: b[key]["seconds"] if key in b else None  # noqa: E731 - None: peer skipped
  result = dict(
      stage=args.stage, config=args.config, jzoo=ours, peer=peer_info if python else None,
      best=b, all=times, param_ratio=ratio, peer_unet=unet,
      train_speedup=_common.ratio(side("peer_train"), side("jzoo_train")),
      sample_speedup=_common.ratio(side("peer_sample"), side("jzoo_sample")),
      load_avg_before=load_before, load_avg_after=os.getloadavg(), overrides=overrides,
      device=args.device, smoke=args.smoke)
  if args.peak_tflops:  # model FLOPs as maxdiffusion counts them: 3x the forward, no remat credit
    for name, info in (("jzoo", ours), ("peer", peer_info)):
      seconds = side(name + "_train")
      result[name + "_mfu"] = None if seconds is None else (
          3 * info["gflops"] * 1e9 * ours["batch"] / seconds / (args.peak_tflops * 1e12))
  if _common.print_json(args, result):
    return
  r = ours["resolution"]
  print(f"{args.config} {' '.join(args.override)} {args.stage} U-Net at {r}x{r}, "
        f"{args.dtype}, peer on {args.device}; training batch {ours['batch']}; "
        f"{SAMPLES} samples x {ours['steps']} steps, no guidance; min over {args.rounds} "
        "alternating rounds")
  rows = [(f"jzoo (jax {ours['jax']})", ours, "jzoo"),
          (f"imagen-pytorch {peer_info['imagen_pytorch']} ({peer_info['threads']} threads)"
           if python else "imagen-pytorch: skipped", peer_info, "peer")]
  print(f"{'':36}{'params':>11}{'GFLOP/img':>11}{'train step':>12}{'sampling':>10}")
  for name, info, key in rows:
    print(f"{name:36}{_common.fmt(info['params'], ','):>11}{_common.fmt(info['gflops'], '.3f'):>11}"
          f"{_common.fmt(side(key + '_train'), '.3f', 's'):>12}"
          f"{_common.fmt(side(key + '_sample'), '.3f', 's'):>10}")
  print(f"{'peer / jzoo (> 1: jzoo faster)':36}{_common.fmt(ratio, '.3f', 'x'):>11}{'':11}"
        f"{_common.fmt(result['train_speedup'], '.2f', 'x'):>12}"
        f"{_common.fmt(result['sample_speedup'], '.2f', 'x'):>10}")
  if args.peak_tflops:
    print(f"MFU of the train step at {args.peak_tflops:g} TFLOP/s peak: jzoo "
          f"{_common.fmt(result['jzoo_mfu'], '.1%')}, "
          f"peer {_common.fmt(result['peer_mfu'], '.1%')}")
  busy = max(v["busy"] for v in b.values())
  print(f"targets: train >= 1x, sampling >= 2x. jzoo compile: train "
        f"{ours['train_compile_s']:.0f} s, "
        f"sampling {ours['sample_compile_s']:.0f} s. Other jobs' CPU share before the best calls "
        f"<= {busy:.0%}; load average {load_before[0]:.1f} -> {result['load_avg_after'][0]:.1f}")


if __name__ == "__main__":
  main()

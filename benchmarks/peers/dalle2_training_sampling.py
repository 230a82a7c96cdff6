"""DALL-E 2 (unCLIP) prior and decoder: training steps and sampling, jzoo vs DALLE2-pytorch
(lucidrains, 1.15.6), side by side.

    python benchmarks/peers/dalle2_training_sampling.py --peer-python PEER_PYTHON \
        [--peer-path DIR] [--rounds 5] [--json]
    python benchmarks/peers/dalle2_training_sampling.py --smoke [--json]  # seconds: the same
        # steps at dalle2:micro, one round; the peer only where this python has dalle2-pytorch

jzoo's `dalle2:tiny_shapes` prior (a 4-layer causal transformer of width 128
over 24 text tokens, the text embedding, the time, the noised image embedding
and a query; x0-prediction, cosine schedule) and decoder (a 32x32 U-Net, 32
channels x (1, 2, 4), conditioned on the CLIP image embedding as 4 context
tokens plus the time embedding, and on CLIP's text states; v-prediction)
against DALLE2-pytorch's `DiffusionPriorNetwork` + `DiffusionPrior` and `Unet`
+ `Decoder` built from the same config blocks (`config.prior`,
`config.stages.decoder`; `peer_prior`, `peer_unet`):
  * prior: the same width (= the embedding width), depth, heads, head width and
    text length; x0-prediction on a cosine schedule, the embedding scaled to
    norm sqrt(dim) (both), caption dropout `text_drop`. The peer's SwiGLU
    feed-forwards get hidden width 2/3 * 4 * width, so that they have the
    parameters and FLOPs of jzoo's 4x GELU MLPs; its continuous time embedding
    (sinusoids + MLP), as jzoo's log-SNR embedding.
  * decoder: the same channels at the same resolutions on the up path, the
    same head width, self-attention at the same levels, cross-attention at the
    same levels with jzoo's heads (DALLE2-pytorch's ResNet blocks always
    cross-attend with 8 heads of 64, which alone would be 1.8M parameters, half
    of jzoo's U-Net: they are rebuilt), 4 image-embedding tokens, text states of
    CLIP's width, GroupNorm with the same groups, a 3x3 input conv, nearest
    upsampling + conv, v-prediction on a cosine schedule, dynamic thresholding
    (0.995), image / caption dropout 0.1 / 0.5, a fixed variance (jzoo's
    `variance=fixed`: the peer's learned variance is off). The peer's blocks per
    level are jzoo's num_res_blocks - 1 (each peer level starts with an extra
    block), plus one at the lowest level: the peer's down path runs each level
    at the previous level's width, and without that block it has 0.80x
    jzoo's parameters. The peer's image-to-tokens projection is an Identity
    when the embedding is as wide as the context (128 both), which fails for 4
    tokens at batch > 1: it gets the Linear jzoo has (then 1.001x).
What stays different: the peer's prior attention is multi-query (one key/value
head) with a null key, rotary embeddings and a T5 relative-position bias (jzoo:
full multi-head attention, learned positions), and its unconditional pass also
swaps the noised image embedding for a learned null (it needs an image dropout
> 0 for guidance; it gets `text_drop` for both). The peer's U-Net concatenates a
skip into every up block (jzoo: once per level), downsamples by pixel-unshuffle
+ 1x1 conv (jzoo: a strided 3x3 conv), has a final ResNet block, attends with
LayerNorms and a null key/value, and its levels cross-attend only the time and
image tokens (the text tokens only in the middle blocks; jzoo: image + text
tokens at every cross-attention level). Both sides print their parameter counts
and forward GFLOPs (one embedding / one image; XLA cost analysis / torch's
FlopCounterMode).

Measured, in rounds that alternate jzoo and the peer (other jobs share the
cores, so each number is the minimum over rounds):
  * one training step of the prior and of the decoder at each stage's training
    batch size (128 and 32): forward + backward + global-norm clipping + AdamW
    + an EMA update on both sides; jzoo's is `jzoo.bench.bench_training`'s.
    The frozen CLIP's outputs (text states, text and image embeddings) are
    random tensors of its widths on both sides, so no CLIP runs.
  * sampling for 4 captions: the prior with `sample.prior_steps` DDIM steps
    (eta 0), guidance `sample.prior_guidance` and `sample.prior_candidates` (2)
    embeddings per caption, the one closest to the caption's text embedding
    kept (the peer: `DiffusionPrior.p_sample_loop`, then `DiffusionPrior.sample`'s
    CLIP-similarity pick, written out because `sample` itself embeds raw text
    with a CLIP); the decoder with `sample.steps` steps and guidance
    `sample.guidance` (the peer: `Decoder.sample`, DDIM with eta 0). Both sides
    make the same number of network calls: the peer's prior DDIM with T
    timesteps calls the network T - 1 times (its last time is -1, where it
    returns x0), so it gets prior_steps + 1. Each call is guided (a conditional
    and an unconditional pass: jzoo runs them as one batch, the peer as two).
    The decoder's samplers differ (jzoo DPM++(2M), the peer DDIM): the steps
    are matched, not the sampler. The prior + decoder total is the sum of the
    two minima.

DALLE2-pytorch imports torchvision at import time and this peer has none: the
peer program stubs it (PEER_PRELUDE; nothing the benchmark calls uses it), and
it is built with `clip=None`, so it never fetches a CLIP. Install the peer with
torch pinned to the machine's CPU build (`pip install dalle2-pytorch==1.15.6 -c
constraints.txt`, or its pure-python packages with `pip --target DIR`, then
`--peer-path DIR`, which is prepended to the peer's PYTHONPATH).
"""

import argparse
import contextlib
import os
import sys
from unittest import mock

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import _common  # noqa: E402 - benchmarks/_common.py
import imagen_training_sampling as imagen  # noqa: E402
from imagen_training_sampling import Peer, alternate, best, timed  # noqa: E402

CONFIG, CAPTIONS, ROUNDS, TRAIN_REPEATS = "dalle2:tiny_shapes", 4, 5, 3
NAMES = ("train_prior", "train_decoder", "sample_prior", "sample_decoder")

# torchvision stubbed by a meta-path finder (dalle2_pytorch subclasses and calls into it at
# import), then imagen's prelude from `import torch` on: the seed, `trainer` and `serve`.
PEER_PRELUDE = _common.PATH_GUARD + """
import importlib.abc, importlib.machinery, json, sys, time, types
out, sys.stdout = sys.stdout, sys.stderr
class _Any:  # whatever torchvision would have built; never called by the benchmark
  def __init__(self, *a, **k): pass
  def __call__(self, *a, **k): return _Any()
  def __getattr__(self, attr): return _Any
  def __mro_entries__(self, bases): return (object,)
def _attr(attr):
  if attr.startswith("__"):
    raise AttributeError(attr)
  return _Any
class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  def find_spec(self, name, path, target=None):
    if name == "torchvision" or name.startswith("torchvision."):
      return importlib.machinery.ModuleSpec(name, self, is_package=True)
  def create_module(self, spec):
    module = types.ModuleType(spec.name)
    module.__path__, module.__getattr__ = [], _attr
    return module
  def exec_module(self, module): pass
sys.meta_path.insert(0, _StubFinder())
""" + imagen.PEER_PRELUDE[imagen.PEER_PRELUDE.index("\nimport torch\n"):]

PEER = PEER_PRELUDE + """
from importlib.metadata import version
from einops import rearrange
import dalle2_pytorch.dalle2_pytorch as d2
from dalle2_pytorch import Decoder, DiffusionPrior, DiffusionPriorNetwork, Unet
d2.tqdm = lambda it, *a, **k: it  # no progress bars: they would fill the unread stderr pipe
cfg = json.loads(sys.argv[1])
d, length, width = cfg["embed_dim"], cfg["text_len"], cfg["text_dim"]
n, k, r = cfg["captions"], cfg["candidates"], cfg["resolution"]
bp, bd = cfg["prior_batch"], cfg["decoder_batch"]
prior = DiffusionPrior(DiffusionPriorNetwork(**cfg["prior_net"]), image_embed_dim=d,
                       cond_drop_prob=cfg["prior_drop"], predict_x_start=True,
                       beta_schedule="cosine", condition_on_text_encodings=True)
decoder = Decoder(Unet(**cfg["unet"]), image_size=r, learned_variance=False, predict_v=True,
                  beta_schedule="cosine", auto_normalize_img=False, use_dynamic_thres=True,
                  dynamic_thres_percentile=cfg["percentile"], sample_timesteps=cfg["steps"],
                  image_cond_drop_prob=cfg["image_drop"], text_cond_drop_prob=cfg["text_drop"])
unet = decoder.unets[0]  # the Decoder rebuilds the Unet it is given: change this one
# With image_embed_dim == cond_dim the peer skips its image-to-tokens projection (Identity),
# which then fails for more than one token at batch > 1: the projection jzoo has.
tokens, cond_dim = cfg["unet"]["num_image_tokens"], cfg["unet"]["cond_dim"]
unet.image_to_tokens = torch.nn.Sequential(torch.nn.Linear(d, cond_dim * tokens),
                                           d2.Rearrange("b (n d) -> b n d", n=tokens))
for block in unet.modules():  # cross-attention with jzoo's heads, not the fixed 8 x 64
  if isinstance(block, d2.ResnetBlock) and block.cross_attn is not None:
    dim = block.block1.project.out_channels
    block.cross_attn = d2.CrossAttention(dim=dim, context_dim=cond_dim,
                                         dim_head=cfg["head_dim"],
                                         heads=max(1, dim // cfg["head_dim"]))
# CLIP's outputs: l2-normalised embeddings (as its adapters return them) and text states.
embed = lambda b: d2.l2norm(torch.randn(b, d))
text_embed, image_embed = embed(max(bp, bd, n * k)), embed(max(bp, bd, n * k))
text = torch.randn(max(bp, bd, n * k), length, width)
images = torch.rand(bd, 3, r, r) * 2 - 1

# DiffusionPrior.forward scales image_embed in place: a fresh copy every step.
train_prior = trainer(prior, lambda: prior(text_embed=text_embed[:bp],
                                           image_embed=image_embed[:bp].clone(),
                                           text_encodings=text[:bp]))
train_decoder = trainer(unet, lambda: decoder(images, image_embed=image_embed[:bd],
                                              text_encodings=text[:bd]))

def sample_prior():
  # DiffusionPrior.sample on given text embeddings: k draws per caption, the closest kept.
  te, states = (t[:n].repeat_interleave(k, 0) for t in (text_embed, text))
  z = prior.p_sample_loop((n * k, d), text_cond=dict(text_embed=te, text_encodings=states),
                          cond_scale=cfg["prior_guidance"], timesteps=cfg["prior_steps"] + 1,
                          eta=0.)
  te, z = (rearrange(t, "(b r) d -> b r d", r=k) for t in (te, z))
  pick = torch.einsum("b r d, b r d -> b r", d2.l2norm(te), d2.l2norm(z)).argmax(-1)
  return z[torch.arange(n), pick]

def sample_decoder():
  decoder.sample(image_embed=image_embed[:n], text_encodings=text[:n],
                 cond_scale=cfg["guidance"])

def gflops(fn):
  with FlopCounterMode(display=False) as flops, torch.no_grad():
    fn()
  return flops.get_total_flops() / 1e9

info = dict(
    prior_params=sum(p.numel() for p in prior.net.parameters()),
    decoder_params=sum(p.numel() for p in unet.parameters()),
    prior_gflops=gflops(lambda: prior.net(image_embed[:1], torch.zeros(1, dtype=torch.long),
                                          text_embed=text_embed[:1], text_encodings=text[:1])),
    decoder_gflops=gflops(lambda: unet(images[:1], torch.zeros(1, dtype=torch.long),
                                       image_embed=image_embed[:1], text_encodings=text[:1])),
    dalle2_pytorch=version("dalle2-pytorch"))
commands = {"train_prior": train_prior, "train_decoder": train_decoder,
            "sample_prior": sample_prior, "sample_decoder": sample_decoder}
for fn in (train_prior, train_prior, train_decoder, train_decoder, sample_prior, sample_decoder):
  fn()  # warm-up
serve(info, commands)
"""


def peer_prior(p, embed_dim, text_len):
  """DiffusionPriorNetwork kwargs matching jzoo's `config.prior` (the peer's width is the
  embedding's: jzoo's must be too)."""
  if p.num_heads * p.head_dim != embed_dim:
    sys.exit(f"DALLE2-pytorch's prior is as wide as the embedding ({embed_dim}); jzoo's is "
             f"{p.num_heads} x {p.head_dim}")
  return dict(dim=embed_dim, depth=p.num_layers, heads=p.num_heads, dim_head=p.head_dim,
              # SwiGLU with 2/3 * 4 * width hidden units: a 4x GELU MLP's parameters and FLOPs
              ff_mult=8 / 3, max_text_len=text_len,
              num_timesteps=None)  # continuous time embedding, as jzoo's log-SNR one


def peer_unet(s, embed_dim, text_len, text_dim):
  """DALLE2-pytorch Unet kwargs matching a jzoo decoder stage config."""
  blocks = [n - 1 for n in s.num_res_blocks]  # every peer level starts with an extra block
  # The peer's down path runs level i at level i-1's width: one more block at the lowest level
  # brings its parameters to jzoo's.
  blocks[-1] += 1
  return dict(
      dim=s.channels, dim_mults=tuple(s.channel_mult), num_resnet_blocks=tuple(blocks),
      self_attn=tuple(s.self_attention), attn_dim_head=s.head_dim,
      attn_heads=s.channels * s.channel_mult[-1] // s.head_dim,
      image_embed_dim=embed_dim, num_image_tokens=s.image_embed_tokens, cond_dim=s.text_dim,
      text_embed_dim=text_dim, cond_on_text_encodings=True, cond_on_image_embeds=True,
      max_text_len=text_len, resnet_groups=s.norm_groups,
      # Extras jzoo's U-Net does not have.
      init_cross_embed=False, init_conv_kernel_size=3, pixel_shuffle_upsample=False)


@contextlib.contextmanager
def without_clip():
  """DallE2's frozen-CLIP outputs replaced by random ones of CLIP's widths (text states
  [B, L, W], scaled text and image embeddings [B, D]) while compiling: no CLIP runs."""
  import jax

  from jzoo.models import dalle2

  def text_condition(self, clip_params, tokens, mask):
    b, length = tokens.shape
    width = self.clip.clip_config.text.hidden_size
    states = jax.random.normal(jax.random.PRNGKey(1), (b, length, width))
    return states, dalle2.scaled(jax.random.normal(jax.random.PRNGKey(2), (b, self.embed_dim)))

  def image_embedding(self, clip_params, images):
    b = images.shape[0]
    return dalle2.scaled(jax.random.normal(jax.random.PRNGKey(3), (b, self.embed_dim)))

  with mock.patch.object(dalle2.DallE2, "text_condition", text_condition), \
       mock.patch.object(dalle2.DallE2, "image_embedding", image_embedding):
    yield


def jzoo_side(config):
  """(info, {name: call}): both train steps and both samplers of `config`, compiled and warmed
  up, with sizes (parameters, forward GFLOPs)."""
  import jax
  import jax.numpy as jnp

  from jzoo.models import dalle2
  from jzoo.models import params as params_lib
  from jzoo.parallel import compiler
  from jzoo.text.contrastive import CLIP_STAGE
  calls, info = {}, {}
  with without_clip():
    for stage in ("prior", "decoder"):
      calls["train_" + stage], info[stage + "_batch"], info[stage + "_compile_s"] = (
          imagen.jzoo_train_step(config, stage))
    model = dalle2.build(config)
    params = {s: params_lib.random_params(model, s, jax.random.PRNGKey(0))
              for s in ("prior", "decoder")}
    # the stand-in ignores tokens, as a decoder without its own text layers does
    tokens = jnp.ones((CAPTIONS, model.text_length), jnp.int32)
    s, r = config.sample, int(config.stages.decoder.resolution)
    text, _ = model.text_condition(None, tokens, tokens)
    z = model.image_embedding(None, jnp.zeros((CAPTIONS, r, r, 3)))

    def sample_prior(p, rng):
      return model.sample_prior({CLIP_STAGE: {}, "prior": p}, tokens, tokens, rng)

    def sample_decoder(p, rng):  # generate_stages' first stage, from the embeddings z
      cond = {"text": text, "tokens": tokens, "mask": tokens, "image_embed": z}
      uncond = dict(cond, mask=jnp.zeros_like(tokens), image_embed=jnp.zeros_like(z))
      noise_rng, rng = jax.random.split(rng)
      noise = jax.random.normal(noise_rng, (CAPTIONS, r, r, 3))
      return model._sample_stage("decoder", p, cond, uncond, int(s.steps), float(s.guidance),
                                 noise, rng)

    keys = iter(jax.random.split(jax.random.PRNGKey(5), 10000))
    for name, fn in (("prior", sample_prior), ("decoder", sample_decoder)):
      # compiled as jzoo.sample compiles generation: with the config's XLA CPU options
      fn = compiler.jit(fn, ynn_fusions=compiler.ynn_fusions_of(config))
      calls["sample_" + name] = (lambda fn=fn, p=params[name]:
                                 jax.block_until_ready(fn(p, next(keys))))

    def gflops(fn, *args):
      cost = jax.jit(fn).lower(*args).compile().cost_analysis()
      return (cost[0] if isinstance(cost, list) else cost)["flops"] / 1e9

    one = jnp.zeros((1,))
    info.update(
        prior_params=params_lib.count_params(params["prior"]),
        decoder_params=params_lib.count_params(params["decoder"]),
        prior_gflops=gflops(lambda p: model.prior.apply(
            {"params": p}, z[:1], one, z[:1], text[:1], tokens[:1]), params["prior"]),
        decoder_gflops=gflops(lambda p: model.unets["decoder"].apply(
            {"params": p}, jnp.zeros((1, r, r, 3)), one, text[:1], tokens[:1], tokens[:1],
            z[:1]), params["decoder"]),
        embed_dim=model.embed_dim, text_len=model.text_length, text_dim=text.shape[-1],
        resolution=r, steps=int(s.steps), guidance=float(s.guidance),
        prior_steps=int(s.prior_steps), prior_guidance=float(s.prior_guidance),
        candidates=int(s.prior_candidates), jax=jax.__version__)
    for call in calls.values():  # compiles the samplers; the first runs after a compile are slower
      call()
      call()
  return info, calls


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--peer-python", default=None,
                 help="a python with torch and dalle2-pytorch (required, but with --smoke)")
  p.add_argument("--peer-path", default="",
                 help="folder prepended to the peer's PYTHONPATH (dalle2-pytorch installed there "
                      "with pip --target)")
  p.add_argument("--config", default=CONFIG, help="jzoo's config; the peer is derived from it")
  p.add_argument("--rounds", type=int, default=ROUNDS)
  p.add_argument("--patience", type=float, default=10,
                 help="seconds to wait, before each timed call, for other jobs to leave the CPUs")
  p.add_argument("--json", action="store_true")
  args = _common.parse_args(p, dict(config="dalle2:micro", rounds=1, patience=0))
  if args.peer_path:  # the environment of every peer process this one starts, checks included
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [args.peer_path] + [p for p in [os.environ.get("PYTHONPATH")] if p])
  python = _common.peer_python(args, "dalle2-pytorch", ("torch", "dalle2_pytorch"))
  load_before = os.getloadavg()

  from jzoo import config as config_lib
  config = config_lib.load(args.config)
  ours, calls = jzoo_side(config)
  peer_cfg = dict(
      prior_net=peer_prior(config.prior, ours["embed_dim"], ours["text_len"]),
      unet=peer_unet(config.stages.decoder, ours["embed_dim"], ours["text_len"],
                     ours["text_dim"]),
      head_dim=config.stages.decoder.head_dim, prior_drop=config.prior.text_drop,
      image_drop=config.stages.decoder.image_drop, text_drop=config.stages.decoder.text_drop,
      percentile=config.sample.percentile, captions=CAPTIONS,
      **{k: ours[k] for k in ("embed_dim", "text_len", "text_dim", "resolution", "steps",
                              "guidance", "prior_steps", "prior_guidance", "candidates",
                              "prior_batch", "decoder_batch")})
  peer = Peer(python, PEER, peer_cfg) if python else None
  peer_info = peer.info if peer else dict.fromkeys(
      ("prior_params", "decoder_params", "prior_gflops", "decoder_gflops"))
  param_ratio = {k: _common.ratio(peer_info[k + "_params"], ours[k + "_params"])
                 for k in ("prior", "decoder")}
  # the matched size; the micro smoke's networks are too small to match
  off = [k for k, v in param_ratio.items() if v is not None and not 0.9 <= v <= 1.1]
  if off and not args.smoke:
    peer.close()
    sys.exit(f"parameter counts differ by more than 10% ({param_ratio}): jzoo "
             f"{ours['prior_params']:,} / {ours['decoder_params']:,}, peer "
             f"{peer_info['prior_params']:,} / {peer_info['decoder_params']:,}")

  cases = []
  for name in NAMES:
    repeats = TRAIN_REPEATS if name.startswith("train") else 1
    cases.append(("jzoo_" + name, timed(calls[name]), repeats))
    if peer:
      cases.append(("peer_" + name, lambda name=name: peer.time(name), repeats))
  times = alternate(cases, args.rounds, args.patience)
  if peer:
    peer.close()

  b = {k: best(v) for k, v in times.items()}
  for side in ("jzoo", "peer"):  # the total: the sum of the two minima
    if side + "_sample_prior" in b:
      parts = [b[f"{side}_sample_{s}"] for s in ("prior", "decoder")]
      b[side + "_sample_total"] = dict(seconds=sum(x["seconds"] for x in parts),
                                       busy=max(x["busy"] for x in parts))
  seconds = lambda key: b[key]["seconds"] if key in b else None  # noqa: E731 - None: skipped
  rows = NAMES + ("sample_total",)
  result = dict(config=args.config, jzoo=ours, peer=peer_info if peer else None, best=b,
                all=times, param_ratio=param_ratio, peer_config=peer_cfg,
                speedup={k: _common.ratio(seconds("peer_" + k), seconds("jzoo_" + k))
                         for k in rows},
                load_avg_before=load_before, load_avg_after=os.getloadavg(), smoke=args.smoke)
  if _common.print_json(args, result):
    return
  print(f"{args.config}: training batch {ours['prior_batch']} (prior) / {ours['decoder_batch']} "
        f"(decoder); {CAPTIONS} captions: prior {ours['prior_steps']} DDIM steps x "
        f"{ours['candidates']} candidates, guidance {ours['prior_guidance']:g}; decoder "
        f"{ours['steps']} steps at {ours['resolution']}x{ours['resolution']}, guidance "
        f"{ours['guidance']:g}; min over {args.rounds} alternating rounds")
  peer_name = (f"DALLE2-pytorch {peer_info['dalle2_pytorch']} ({peer_info['threads']} threads)"
               if peer else "DALLE2-pytorch: skipped")
  print(f"{'':28}{'jzoo (jax ' + ours['jax'] + ')':>20}{peer_name:>38}"
        f"{'peer / jzoo (> 1: jzoo faster)':>33}")
  for key, label in (("prior_params", "prior parameters"),
                     ("decoder_params", "decoder parameters")):
    print(f"{label:28}{ours[key]:>20,}{_common.fmt(peer_info[key], ','):>38}"
          f"{_common.fmt(param_ratio[key[:-7]], '.3f', 'x'):>33}")
  for key, label in (("prior_gflops", "prior GFLOP / embedding"),
                     ("decoder_gflops", "decoder GFLOP / image")):
    print(f"{label:28}{ours[key]:>20.3f}{_common.fmt(peer_info[key], '.3f'):>38}"
          f"{_common.fmt(_common.ratio(peer_info[key], ours[key]), '.3f', 'x'):>33}")
  labels = {"train_prior": f"train step, prior ({ours['prior_batch']})",
            "train_decoder": f"train step, decoder ({ours['decoder_batch']})",
            "sample_prior": "sampling, prior", "sample_decoder": "sampling, decoder",
            "sample_total": "sampling, prior + decoder"}
  ms = lambda key: _common.fmt(  # noqa: E731
      None if seconds(key) is None else seconds(key) * 1e3, ".1f", " ms")
  for k in rows:
    print(f"{labels[k]:28}{ms('jzoo_' + k):>20}{ms('peer_' + k):>38}"
          f"{_common.fmt(result['speedup'][k], '.2f', 'x'):>33}")
  busy = max(v["busy"] for v in b.values())
  print(f"targets: sampling (prior + decoder) >= 2x, train steps >= 1x. jzoo compile: prior "
        f"step {ours['prior_compile_s']:.0f} s, decoder step {ours['decoder_compile_s']:.0f} s. "
        f"Other jobs' CPU share before the best calls <= {busy:.0%}; load average "
        f"{load_before[0]:.1f} -> {result['load_avg_after'][0]:.1f}")


if __name__ == "__main__":
  main()

"""Makes the golden files of the whole Karlo pipeline (jzoo.models.karlo) from diffusers'
UnCLIPPipeline.

jzoo's tests must not need torch, so the reference run is made here once and stored in
tests/golden/:

  karlo_pipeline/     a Karlo folder in the diffusers layout (model_index.json as
                      kakaobrain/karlo-v1-alpha has it; tokenizer, text_encoder
                      (CLIPTextModelWithProjection), prior, text_proj, decoder,
                      super_res_first, super_res_last and the three UnCLIPScheduler folders),
                      every component Karlo's structure at a tiny size (text and image
                      embeddings 32, 16 text tokens, a 16 px decoder, a 16 -> 32 upsampler),
                      random float16-representable weights (make_karlo_unet_golden.randomize)
  karlo_pipeline_golden.npz
                      two prompts, their token ids and mask (the tokenizer's), the three
                      starting latents (prior, decoder, super-resolution; NHWC images), the
                      variance noise every scheduler step drew, in order, and what the
                      pipeline computed: the prior's image embeddings, the 16 px decoder
                      output (clamped) and the final 32 px images in [0, 1], at 3 prior,
                      3 decoder and 3 super-resolution steps with the default guidance
                      (prior 4, decoder 8)

The variance noise is recorded by wrapping the scheduler module's randn_tensor, so jzoo can
replay exactly the same draws.

Run it in the reference environment, outside the repo root (the repo's folder shadows a pip
package):
  cd /tmp && /work/refvenv/bin/python /work/main/scripts/make_karlo_pipeline_golden.py
Made with torch 2.13.0+cpu, diffusers 0.42.1, transformers 5.25, numpy 2.4.6 (Python 3.11).
"""

import functools
import json
import os
import shutil
import sys

import numpy as np
import torch

import diffusers.schedulers.scheduling_unclip as unclip_sched
from diffusers import PriorTransformer, UNet2DConditionModel, UNet2DModel, UnCLIPScheduler
from diffusers.pipelines.deprecated.unclip import UnCLIPPipeline
from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_karlo_unet_golden import TINY, randomize  # pylint: disable=wrong-import-position

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden")
FOLDER = os.path.join(GOLDEN, "karlo_pipeline")
TEXT_LENGTH, EMBED = 16, 32
PROMPTS = ["a red circle", "a blue square above a red circle"]
STEPS = dict(prior_num_inference_steps=3, decoder_num_inference_steps=3,
             super_res_num_inference_steps=3)
# kakaobrain/karlo-v1-alpha's model_index.json (diffusers 0.12 names text_proj's library "unclip").
MODEL_INDEX = {
    "_class_name": "UnCLIPPipeline", "_diffusers_version": "0.12.0.dev0",
    "decoder": ["diffusers", "UNet2DConditionModel"],
    "decoder_scheduler": ["diffusers", "UnCLIPScheduler"],
    "prior": ["diffusers", "PriorTransformer"],
    "prior_scheduler": ["diffusers", "UnCLIPScheduler"],
    "super_res_first": ["diffusers", "UNet2DModel"],
    "super_res_last": ["diffusers", "UNet2DModel"],
    "super_res_scheduler": ["diffusers", "UnCLIPScheduler"],
    "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
    "text_proj": ["unclip", "UnCLIPTextProjModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
}
SCHEDULERS = {  # Karlo's scheduler configs
    "prior_scheduler": dict(variance_type="fixed_small_log", prediction_type="sample",
                            clip_sample_range=5.0),
    "decoder_scheduler": dict(variance_type="learned_range", prediction_type="epsilon",
                              clip_sample_range=1.0),
    "super_res_scheduler": dict(variance_type="fixed_small_log", prediction_type="epsilon",
                                clip_sample_range=1.0),
}


def components(gen):
  tokenizer = CLIPTokenizer.from_pretrained(os.path.join(GOLDEN, "clip_tiny"),
                                            model_max_length=TEXT_LENGTH)
  text_config = CLIPTextConfig(
      vocab_size=len(tokenizer), hidden_size=EMBED, intermediate_size=2 * EMBED,
      num_attention_heads=2, num_hidden_layers=2, max_position_embeddings=TEXT_LENGTH,
      projection_dim=EMBED, bos_token_id=tokenizer.bos_token_id,
      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
  text_encoder = randomize(CLIPTextModelWithProjection(text_config), gen)
  prior = PriorTransformer(num_attention_heads=2, attention_head_dim=16, num_layers=2,
                           embedding_dim=EMBED, num_embeddings=TEXT_LENGTH,
                           additional_embeddings=4, dropout=0.0)
  randomize(prior, gen)
  with torch.no_grad():  # the CLIP statistics Karlo's prior de-normalises with
    prior.clip_mean.copy_((0.1 * torch.randn(1, EMBED, generator=gen)).half().float())
    prior.clip_std.copy_((1 + 0.2 * torch.rand(1, EMBED, generator=gen)).half().float())
  text_proj = randomize(UnCLIPTextProjModel(**{**TINY["text_proj"], "clip_embeddings_dim": EMBED}),
                        gen)
  decoder = randomize(UNet2DConditionModel(**TINY["decoder"]), gen)
  sr = {**TINY["super_res_first"], "sample_size": 32}
  super_res_first = randomize(UNet2DModel(**sr), gen)
  super_res_last = randomize(UNet2DModel(**{**sr, "sample_size": None}), gen)
  schedulers = {k: UnCLIPScheduler(beta_schedule="squaredcos_cap_v2", num_train_timesteps=1000,
                                   clip_sample=True, **v) for k, v in SCHEDULERS.items()}
  return dict(tokenizer=tokenizer, text_encoder=text_encoder, prior=prior, text_proj=text_proj,
              decoder=decoder, super_res_first=super_res_first, super_res_last=super_res_last,
              **schedulers)


def save(parts):
  shutil.rmtree(FOLDER, ignore_errors=True)
  for name, part in parts.items():
    folder = os.path.join(FOLDER, name)
    if name == "tokenizer":
      part.save_pretrained(folder)
    elif hasattr(part, "half"):  # float16 files (the weights are float16 values already)
      part.half().save_pretrained(folder, safe_serialization=True)
      part.float()
    else:
      part.save_pretrained(folder)
  with open(os.path.join(FOLDER, "model_index.json"), "w") as f:
    json.dump(MODEL_INDEX, f, indent=2)


def main():
  gen = torch.Generator().manual_seed(0)
  parts = components(gen)
  save(parts)
  pipe = UnCLIPPipeline(**parts)
  b = len(PROMPTS)
  prior_latents = torch.randn(b, EMBED, generator=gen)
  decoder_latents = torch.randn(b, 3, 16, 16, generator=gen)
  super_res_latents = torch.randn(b, 3, 32, 32, generator=gen)

  drawn = []
  original = unclip_sched.randn_tensor

  def recording(*args, **kwargs):
    z = original(*args, **kwargs)
    drawn.append(z.clone())
    return z

  unclip_sched.randn_tensor = recording
  captured = {}
  prior_post = pipe.prior.post_process_latents

  def post(latents):
    captured["image_embeddings"] = prior_post(latents).clone()
    return captured["image_embeddings"]

  pipe.prior.post_process_latents = post

  with torch.no_grad():
    out = pipe(PROMPTS, prior_latents=prior_latents, decoder_latents=decoder_latents,
               super_res_latents=super_res_latents, generator=torch.Generator().manual_seed(1),
               output_type="np", **STEPS)
  unclip_sched.randn_tensor = original

  tokens = parts["tokenizer"](PROMPTS, padding="max_length", max_length=TEXT_LENGTH,
                              truncation=True, return_tensors="np")
  nhwc = lambda t: t.permute(0, 2, 3, 1).numpy()
  # Noise per phase: the prior draws [B, EMBED], the decoder [B, 3, 16, 16], SR [B, 3, 32, 32].
  phases = {"prior": [], "decoder": [], "super_res": []}
  for z in drawn:
    key = "prior" if z.ndim == 2 else "decoder" if z.shape[-1] == 16 else "super_res"
    phases[key].append(z.numpy() if z.ndim == 2 else nhwc(z))
  golden = dict(
      prompts=np.array(PROMPTS), ids=tokens["input_ids"].astype(np.int32),
      mask=tokens["attention_mask"].astype(np.int32), prior_latents=prior_latents.numpy(),
      decoder_latents=nhwc(decoder_latents), super_res_latents=nhwc(super_res_latents),
      prior_noise=np.stack(phases["prior"]), decoder_noise=np.stack(phases["decoder"]),
      super_res_noise=np.stack(phases["super_res"]),
      image_embeddings=captured["image_embeddings"].numpy(), images=out.images.astype(np.float32),
      steps=np.array([STEPS["prior_num_inference_steps"], STEPS["decoder_num_inference_steps"],
                      STEPS["super_res_num_inference_steps"]], np.int32),
      guidance=np.array([4.0, 8.0], np.float32))
  golden.update(_decoder_image(pipe, parts, golden))
  np.savez_compressed(os.path.join(GOLDEN, "karlo_pipeline_golden.npz"), **golden)
  total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(FOLDER) for f in fs)
  print(f"karlo_pipeline: {total / 1e3:.0f} KB")
  for k, v in sorted(golden.items()):
    print(k, np.shape(v))


def _decoder_image(pipe, parts, golden):
  """The 16 px image the decoder stage produced: the pipeline's super-resolution input, read
  off by running the pipeline again with the same inputs and stopping at F.interpolate."""
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  seen = {}
  interpolate = F.interpolate

  @functools.wraps(interpolate)  # the pipeline asks its signature whether it takes antialias
  def capture(x, *args, **kwargs):
    if kwargs.get("mode") == "bicubic":  # the decoder's image (the U-Nets upsample "nearest")
      seen["small"] = x.clone()
    return interpolate(x, *args, **kwargs)

  noises = iter([torch.from_numpy(z if z.ndim == 2 else np.ascontiguousarray(z.transpose(0, 3, 1, 2)))
                 for key in ("prior_noise", "decoder_noise", "super_res_noise")
                 for z in golden[key]])
  unclip_sched.randn_tensor = lambda *a, **k: next(noises)
  F.interpolate = capture
  nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
  try:
    with torch.no_grad():
      again = pipe(list(golden["prompts"]), prior_latents=torch.from_numpy(golden["prior_latents"]),
                   decoder_latents=nchw(golden["decoder_latents"]),
                   super_res_latents=nchw(golden["super_res_latents"]), output_type="np", **STEPS)
  finally:
    F.interpolate = interpolate
  diff = float(np.abs(again.images - golden["images"]).max())
  assert diff < 1e-6, f"the replayed noise must reproduce the run (max |diff| {diff})"
  return {"decoder_images": seen["small"].permute(0, 2, 3, 1).numpy()}


if __name__ == "__main__":
  main()

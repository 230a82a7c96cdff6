"""Makes the Karlo prior and UnCLIPScheduler golden files from diffusers.

jzoo's tests must not need torch, so the reference outputs are computed here once
and stored in tests/golden/:

  karlo_prior/               a diffusers PriorTransformer folder (config.json,
                             diffusion_pytorch_model.safetensors): Karlo's structure at a
                             tiny size (embedding 32, 2 layers, 2 heads x 16, 8 text
                             tokens, 4 additional), random weights, random clip_mean/std
  karlo_prior_golden.npz     prior inputs (a text mask with padding, integer timesteps)
                             and outputs, post_process_latents; UnCLIPScheduler betas /
                             alphas_cumprod / set_timesteps tables; for each of
                             (fixed_small_log, sample, clip 5.0), (fixed_small_log,
                             epsilon, clip 1.0), (learned_range, epsilon, clip 1.0),
                             (learned_range, sample, clip 2.0): a 4-step loop of a
                             1000-step squaredcos_cap_v2 schedule from saved noise, with
                             the noise every step drew and the result.

The scheduler's "model" is `toy_model` below, a closed-form function of (x, t) that
tests/test_discrete_diffusion.py computes the same way.

Run it in the reference environment, from outside the repository (the repository's
top-level folders would shadow pip packages of the same name):
  cd /tmp && /work/refvenv/bin/python /work/main/scripts/make_karlo_prior_golden.py
Made with torch 2.13.0+cpu, diffusers 0.42.1, safetensors 0.8.0, numpy 2.4.6.
"""

import json
import os

import numpy as np
import torch

import diffusers.schedulers.scheduling_unclip as unclip_sched
from diffusers.models.transformers.prior_transformer import PriorTransformer

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden")
FOLDER = os.path.join(GOLDEN, "karlo_prior")
CONFIG = dict(num_attention_heads=2, attention_head_dim=16, num_layers=2, embedding_dim=32,
              num_embeddings=8, additional_embeddings=4, dropout=0.0)
SCHEDULER_CASES = (  # (variance_type, prediction_type, clip_sample_range)
    ("fixed_small_log", "sample", 5.0),    # Karlo's prior_scheduler
    ("fixed_small_log", "epsilon", 1.0),   # Karlo's super_res_scheduler
    ("learned_range", "epsilon", 1.0),     # Karlo's decoder_scheduler
    ("learned_range", "sample", 2.0),
)
STEPS = 4
BATCH, DIM = 3, 6


def toy_model(x, t, learned):
  """A fixed closed-form "network" of (x [B, D], t [B] int): numpy float64 math."""
  s = np.asarray(t, np.float64)[:, None] / 1000.0
  j = np.arange(x.shape[1], dtype=np.float64)[None]
  out = np.tanh(0.7 * x + np.sin(3.0 * s + 0.5 * j)) * (1.5 - s)
  if learned:  # the variance half, in [-1, 1]
    out = np.concatenate([out, np.cos(2.0 * x + s + 0.3 * j) * 0.9], axis=1)
  return out.astype(np.float32)


def prior_golden(out):
  torch.manual_seed(0)
  prior = PriorTransformer(**CONFIG).eval()
  with torch.no_grad():
    for p in prior.parameters():  # diffusers inits several of these to zero
      p.copy_(torch.randn_like(p) * (0.3 if p.ndim > 1 else 0.1))
    prior.clip_std.copy_(torch.rand_like(prior.clip_std) + 0.5)
  prior.save_pretrained(FOLDER, safe_serialization=True)

  g = torch.Generator().manual_seed(1)
  b, d, length = 4, CONFIG["embedding_dim"], CONFIG["num_embeddings"]
  x_t = torch.randn(b, d, generator=g)
  text_emb = torch.randn(b, d, generator=g)
  tokens = torch.randn(b, length, d, generator=g)
  lengths = torch.tensor([length, 5, 1, 3])
  mask = torch.arange(length)[None] < lengths[:, None]
  timesteps = torch.tensor([0, 17, 512, 999])
  with torch.no_grad():
    pred = torch.stack([
        prior(x_t[i:i + 1], timestep=timesteps[i], proj_embedding=text_emb[i:i + 1],
              encoder_hidden_states=tokens[i:i + 1], attention_mask=mask[i:i + 1]
              ).predicted_image_embedding[0] for i in range(b)])
    batched = prior(x_t, timestep=timesteps, proj_embedding=text_emb,
                    encoder_hidden_states=tokens, attention_mask=mask).predicted_image_embedding
    post = prior.post_process_latents(pred)
  assert torch.allclose(pred, batched, atol=1e-5)
  out.update(prior_x_t=x_t, prior_text_emb=text_emb, prior_tokens=tokens, prior_mask=mask,
             prior_timesteps=timesteps, prior_out=pred, prior_post=post)


def scheduler_golden(out):
  sched = unclip_sched.UnCLIPScheduler(num_train_timesteps=1000)
  out.update(betas=sched.betas, alphas_cumprod=sched.alphas_cumprod)
  for n in (2, 4, 7, 25, 27, 64):
    sched.set_timesteps(n)
    out[f"timesteps_{n}"] = sched.timesteps

  # step's noise comes from randn_tensor: feed it saved noise and keep what it asked for.
  queue = []
  unclip_sched.randn_tensor = lambda shape, **kw: queue.pop(0)
  for k, (variance, prediction, clip_range) in enumerate(SCHEDULER_CASES):
    sched = unclip_sched.UnCLIPScheduler(num_train_timesteps=1000, variance_type=variance,
                                         prediction_type=prediction, clip_sample=True,
                                         clip_sample_range=clip_range)
    sched.set_timesteps(STEPS)
    g = torch.Generator().manual_seed(10 + k)
    x = torch.randn(BATCH, DIM, generator=g) * 1.5
    step_noise = torch.randn(STEPS, BATCH, DIM, generator=g)
    out[f"case{k}_init"] = x.clone()
    out[f"case{k}_noise"] = step_noise
    for i, t in enumerate(sched.timesteps):
      queue[:] = [step_noise[i]]
      model_out = torch.from_numpy(toy_model(x.numpy(), np.full(BATCH, int(t)),
                                             variance == "learned_range"))
      prev = None if i + 1 == STEPS else sched.timesteps[i + 1]
      x = sched.step(model_out, t, x, prev_timestep=prev).prev_sample
      assert not queue or t == 0  # every step but the last drew its saved noise
    out[f"case{k}_final"] = x


def main():
  out = {}
  prior_golden(out)
  scheduler_golden(out)
  arrays = {k: (v.numpy() if torch.is_tensor(v) else np.asarray(v)) for k, v in out.items()}
  arrays["scheduler_cases"] = np.asarray([json.dumps(c) for c in SCHEDULER_CASES])
  np.savez(os.path.join(GOLDEN, "karlo_prior_golden.npz"), **arrays)
  print({k: v.shape for k, v in arrays.items()})


if __name__ == "__main__":
  main()

"""Makes the golden files of jzoo.nn.diffusers_unet from diffusers' own modules.

jzoo's tests must not need torch, so the reference outputs are computed here once and stored
in tests/golden/:

  karlo_tiny/{decoder,text_proj,super_res_first,super_res_last}/
      diffusers folders (config.json + diffusion_pytorch_model.safetensors, random weights)
      shaped like kakaobrain/karlo-v1-alpha's: the same block types, class_embed_type,
      resnet_time_scale_shift, layers_per_block (3), learned-variance out_channels (6) and
      in/out channels, with tiny widths (16, 32), 8 norm groups, head width 8 (2 and 4 heads)
  karlo_tiny/if_like/
      a UNet2DConditionModel with DeepFloyd IF's options (gelu, encoder_hid_dim,
      addition_embed_type "text", class_embed_type "timestep", cross_attention_norm
      "group_norm", resnet_skip_time_act, scale factors 1.414, only_cross_attention)
  karlo_unet_golden.npz
      inputs and outputs, images in jzoo's NHWC layout: text proj with and without
      classifier-free guidance, the decoder on the text proj's outputs with a padded attention
      mask and without a mask, both super-resolution U-Nets, the IF-like U-Net
  karlo_unet_shapes.json
      {component: {tensor name: shape}} of the *real* Karlo configs' state_dicts (built on
      torch's meta device: no weights), so the tests check the full-size parameter trees too

Every weight is randomized (diffusers zero-inits the guidance embedding and torch inits norms
to 1/0) and rounded to float16, which the safetensors files store (half the bytes); the
reference forward runs in float32 on those same values.

Run it in the reference environment, outside the repo root (the repo's folder shadows a pip
package):
  cd /tmp && /work/refvenv/bin/python /work/main/scripts/make_karlo_unet_golden.py
Made with torch 2.13.0+cpu, diffusers 0.42.1, numpy 2.4.6, safetensors 0.8.0 (Python 3.11).
"""

import json
import os
import shutil

import numpy as np
import torch
from diffusers import UNet2DConditionModel, UNet2DModel
from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden")
FOLDER = os.path.join(GOLDEN, "karlo_tiny")

# kakaobrain/karlo-v1-alpha (see jzoo/nn/diffusers_unet.py's docstring).
KARLO = {
    "decoder": (UNet2DConditionModel, dict(
        act_fn="silu", attention_head_dim=64, block_out_channels=[320, 640, 960, 1280],
        center_input_sample=False, class_embed_type="identity", cross_attention_dim=1536,
        down_block_types=["ResnetDownsampleBlock2D"] + ["SimpleCrossAttnDownBlock2D"] * 3,
        downsample_padding=1, dual_cross_attention=False, flip_sin_to_cos=True, freq_shift=0,
        in_channels=3, layers_per_block=3, mid_block_scale_factor=1,
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", norm_eps=1e-05, norm_num_groups=32,
        num_class_embeds=None, only_cross_attention=False, out_channels=6,
        resnet_time_scale_shift="scale_shift", sample_size=64,
        up_block_types=["SimpleCrossAttnUpBlock2D"] * 3 + ["ResnetUpsampleBlock2D"],
        upcast_attention=False, use_linear_projection=False)),
    "text_proj": (UnCLIPTextProjModel, dict(
        clip_embeddings_dim=768, clip_extra_context_tokens=4, cross_attention_dim=1536,
        time_embed_dim=1280)),
    "super_res_first": (UNet2DModel, dict(
        act_fn="silu", add_attention=False, attention_head_dim=8,
        block_out_channels=[320, 640, 960, 1280], center_input_sample=False,
        down_block_types=["ResnetDownsampleBlock2D"] * 4, downsample_padding=1,
        flip_sin_to_cos=True, freq_shift=0, in_channels=6, layers_per_block=3,
        mid_block_scale_factor=1, norm_eps=1e-05, norm_num_groups=32, out_channels=3,
        resnet_time_scale_shift="default", sample_size=256, time_embedding_type="positional",
        up_block_types=["ResnetUpsampleBlock2D"] * 4)),
}
KARLO["super_res_last"] = (UNet2DModel, {**KARLO["super_res_first"][1], "sample_size": None})

TINY = {
    "decoder": {**KARLO["decoder"][1], "attention_head_dim": 8, "block_out_channels": [16, 32],
                "cross_attention_dim": 24, "norm_num_groups": 8, "sample_size": 16,
                "down_block_types": ["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"],
                "up_block_types": ["SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"]},
    "text_proj": dict(clip_embeddings_dim=16, clip_extra_context_tokens=4, cross_attention_dim=24,
                      time_embed_dim=64),
    "super_res_first": {**KARLO["super_res_first"][1], "block_out_channels": [16, 32],
                        "norm_num_groups": 8, "sample_size": 16,
                        "down_block_types": ["ResnetDownsampleBlock2D"] * 2,
                        "up_block_types": ["ResnetUpsampleBlock2D"] * 2},
}
TINY["super_res_last"] = {**TINY["super_res_first"], "sample_size": None}
IF_LIKE = dict(
    act_fn="gelu", addition_embed_type="text", addition_embed_type_num_heads=2,
    attention_head_dim=8, block_out_channels=[8, 16, 24], class_embed_type="timestep",
    cross_attention_dim=32, cross_attention_norm="group_norm",
    down_block_types=["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D",
                      "SimpleCrossAttnDownBlock2D"],
    encoder_hid_dim=12, encoder_hid_dim_type="text_proj", in_channels=6, layers_per_block=[1, 2, 1],
    mid_block_scale_factor=1.4142271248762552, mid_block_type="UNetMidBlock2DSimpleCrossAttn",
    norm_num_groups=4, only_cross_attention=[False, True, False], out_channels=6,
    resnet_out_scale_factor=1.4142271248762552, resnet_skip_time_act=True,
    resnet_time_scale_shift="scale_shift", time_embedding_act_fn="gelu",
    up_block_types=["SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D",
                    "ResnetUpsampleBlock2D"])


def randomize(model, gen):
  """Every parameter random and float16-representable: kernels ~ N(0, 1/fan_in), norm scales
  1 + N(0, 0.1^2), biases and vectors N(0, 0.1^2)."""
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim >= 2 and name.endswith("weight"):
        v = torch.randn(p.shape, generator=gen) * p[0].numel() ** -0.5
      elif "norm" in name and name.endswith("weight"):
        v = 1 + 0.1 * torch.randn(p.shape, generator=gen)
      else:
        v = 0.1 * torch.randn(p.shape, generator=gen)
      p.copy_(v.half().float())
  return model.eval()


def save(model, name):
  folder = os.path.join(FOLDER, name)
  shutil.rmtree(folder, ignore_errors=True)
  model.half().save_pretrained(folder, safe_serialization=True)
  model.float()
  return folder


def nhwc(t):
  return t.permute(0, 2, 3, 1).numpy()


def nchw(a):
  return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))


def meta_shapes(cls, config):
  with torch.device("meta"):
    model = cls(**config)
  return {k: list(v.shape) for k, v in model.state_dict().items()}


def main():
  gen = torch.Generator().manual_seed(0)
  rnd = lambda *shape: torch.randn(shape, generator=gen)
  out = {}

  text_proj = randomize(UnCLIPTextProjModel(**TINY["text_proj"]), gen)
  decoder = randomize(UNet2DConditionModel(**TINY["decoder"]), gen)
  sr_first = randomize(UNet2DModel(**TINY["super_res_first"]), gen)
  sr_last = randomize(UNet2DModel(**TINY["super_res_last"]), gen)
  if_like = randomize(UNet2DConditionModel(**IF_LIKE), gen)
  for name, model in (("text_proj", text_proj), ("decoder", decoder),
                      ("super_res_first", sr_first), ("super_res_last", sr_last),
                      ("if_like", if_like)):
    save(model, name)

  with torch.no_grad():
    # Text proj, as UnCLIPPipeline calls it: without guidance, and with it (the prompt inputs
    # then hold the unconditional half first).
    b, length, e = 2, 6, TINY["text_proj"]["clip_embeddings_dim"]
    image, prompt, hidden = rnd(b, e), rnd(b, e), rnd(b, length, e)
    ehs, add = text_proj(image_embeddings=image, prompt_embeds=prompt,
                         text_encoder_hidden_states=hidden, do_classifier_free_guidance=False)
    out.update(tp_image=image.numpy(), tp_prompt=prompt.numpy(), tp_hidden=hidden.numpy(),
               tp_states=ehs.numpy(), tp_time=add.numpy())
    prompt2, hidden2 = rnd(2 * b, e), rnd(2 * b, length, e)
    ehs2, add2 = text_proj(image_embeddings=image, prompt_embeds=prompt2,
                           text_encoder_hidden_states=hidden2, do_classifier_free_guidance=True)
    out.update(tp_cfg_prompt=prompt2.numpy(), tp_cfg_hidden=hidden2.numpy(),
               tp_cfg_states=ehs2.numpy(), tp_cfg_time=add2.numpy())

    # Decoder on the text proj's outputs; the mask pads the text of the second sample and
    # keeps the 4 extra context tokens, as the pipeline does.
    x = rnd(b, 3, 16, 16)
    t = torch.tensor([999, 17])
    text_mask = torch.tensor([[1] * length, [1] * 3 + [0] * (length - 3)], dtype=torch.bool)
    mask = torch.nn.functional.pad(text_mask, (4, 0), value=True)
    y = decoder(x, t, encoder_hidden_states=ehs, class_labels=add, attention_mask=mask).sample
    y0 = decoder(x, t, encoder_hidden_states=ehs, class_labels=add).sample
    out.update(dec_x=nhwc(x), dec_t=t.numpy(), dec_states=ehs.numpy(), dec_labels=add.numpy(),
               dec_mask=mask.numpy().astype(np.int32), dec_out=nhwc(y), dec_out_nomask=nhwc(y0))

    xs, ts = rnd(b, 6, 16, 16), torch.tensor([5, 800])
    out.update(sr_x=nhwc(xs), sr_t=ts.numpy(), sr_first_out=nhwc(sr_first(xs, ts).sample),
               sr_last_out=nhwc(sr_last(xs, ts).sample))

    xi, ti, ctx, noise = rnd(b, 6, 16, 16), torch.tensor([3, 640]), rnd(b, 5, 12), \
        torch.tensor([100, 250])
    yi = if_like(xi, ti, encoder_hidden_states=ctx, class_labels=noise).sample
    out.update(if_x=nhwc(xi), if_t=ti.numpy(), if_states=ctx.numpy(), if_labels=noise.numpy(),
               if_out=nhwc(yi))

  np.savez_compressed(os.path.join(GOLDEN, "karlo_unet_golden.npz"),
                      **{k: np.asarray(v) for k, v in out.items()})
  shapes = {name: meta_shapes(cls, config) for name, (cls, config) in KARLO.items()}
  with open(os.path.join(GOLDEN, "karlo_unet_shapes.json"), "w") as f:
    json.dump({"configs": {k: {"_class_name": cls.__name__, **c} for k, (cls, c) in KARLO.items()},
               "shapes": shapes}, f)
  for name in sorted(os.listdir(FOLDER)):
    size = sum(os.path.getsize(os.path.join(FOLDER, name, f))
               for f in os.listdir(os.path.join(FOLDER, name)))
    print(f"{name}: {size / 1e3:.0f} KB")
  for k, v in sorted(out.items()):
    print(k, np.shape(v), float(np.abs(np.asarray(v, np.float64)).max()))


if __name__ == "__main__":
  main()

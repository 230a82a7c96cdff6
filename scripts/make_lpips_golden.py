"""Makes the LPIPS-VGG parity golden files from the lpips package 0.1.4.

jzoo's tests must not need torch, so the reference outputs are computed here
once and stored in tests/golden/:

  lpips_golden.npz     uint8 image pairs (3 pairs of 64x64, one pair of 48x40;
                       the network sees u8 / 127.5 - 1), lpips' distances of
                       each pair and the gradient of the summed distances
                       w.r.t. the first image of each pair
  lpips_lin_tiny.pth   the recipe's lin-layer weights, saved like the released
                       weights/v0.1/vgg.pth (same names and shapes, legacy
                       torch.save format as that file), for the .pth loader

The network is `lpips.LPIPS(net='vgg', version='0.1')` in eval mode, built with
`pnet_rand=True, pretrained=False` so nothing is downloaded, then given every
weight from `jzoo.nn.lpips.random_state_dict(0)` (a NumPy-only recipe the
test reruns) by a strict load_state_dict.

Run it in a separate environment (not jzoo's; jax and flax are there only to
import the recipe from jzoo):
  /work/t5ref-venv/bin/pip install lpips==0.1.4 --no-deps
  JAX_PLATFORMS=cpu /work/t5ref-venv/bin/python scripts/make_lpips_golden.py
Made with torch 2.13.0+cpu, torchvision 0.28.0 (its C ops unused), lpips 0.1.4.
"""

import collections
import os
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F

# The venv's torchvision wheel is a CUDA build next to a CPU torch, so its C ops do not
# load and registering their fake kernels fails on import. Only the pure-Python VGG16
# is needed here; skip that registration.
sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
import torchvision  # noqa: E402

import lpips  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
from jzoo.nn import lpips as jz_lpips  # noqa: E402  (random_state_dict, expected names)
from jzoo.io.weight_files import read_torch_state_dict  # noqa: E402

OUT = os.path.join(ROOT, "tests", "golden")
SEED = 0
_SLICES = (0, 4, 9, 16, 23, 30)  # lpips.pretrained_networks.vgg16's slice bounds


def lpips_name(name):
  """jzoo/torchvision name 'features.17.weight' -> the LPIPS module's 'net.slice4.17.weight'."""
  if not name.startswith("features."):
    return name  # lin{k}.model.1.weight is the same in both
  index = int(name.split(".")[1])
  k = next(k for k in range(5) if _SLICES[k] <= index < _SLICES[k + 1])
  return f"net.slice{k + 1}.{name[len('features.'):]}"


def build_model():
  """lpips.LPIPS(net='vgg') holding random_state_dict(SEED); downloads nothing."""
  model = lpips.LPIPS(net="vgg", version="0.1", pretrained=False, pnet_rand=True, verbose=False)
  state = model.state_dict()
  recipe = {lpips_name(k): torch.from_numpy(v) for k, v in jz_lpips.random_state_dict(SEED).items()}
  # Every trainable weight of the model comes from the recipe (`lins.k` aliases `link`).
  expected = {k for k in state if not k.startswith(("scaling_layer.", "lins."))}
  assert expected == set(recipe), expected ^ set(recipe)
  for k in state:
    if k.startswith("lins."):
      state[k] = recipe["lin" + k[len("lins."):]]
  model.load_state_dict(state | recipe, strict=True)
  torch.testing.assert_close(model.scaling_layer.shift.flatten(), torch.tensor(jz_lpips.SHIFT))
  torch.testing.assert_close(model.scaling_layer.scale.flatten(), torch.tensor(jz_lpips.SCALE))
  return model.eval()


def smooth_images(rng, n, h, w):
  """uint8 [n, h, w, 3]: smooth random colour fields plus pixel noise."""
  coarse = torch.from_numpy(rng.uniform(0, 255, (n, 3, 6, 6)))
  smooth = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
  smooth = smooth.permute(0, 2, 3, 1).numpy()
  return np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)


def image_pairs():
  """(x, y) uint8 pairs: y is x distorted by noise, a colour shift and a 1-pixel shift."""
  rng = np.random.default_rng(1)
  x64, x48 = smooth_images(rng, 3, 64, 64), smooth_images(rng, 1, 48, 40)
  y64 = x64.astype(np.float64)
  y64[0] += rng.normal(0, 25, y64[0].shape)
  y64[1] += np.array([30.0, -20.0, 10.0])
  y64[2] = np.roll(y64[2], 1, axis=1)
  y48 = x48 + rng.normal(0, 40, x48.shape)
  to_u8 = lambda a: np.clip(a, 0, 255).astype(np.uint8)
  return x64, to_u8(y64), x48, to_u8(y48)


def to_input(u8):
  """uint8 NHWC -> float32 NCHW in [-1, 1], exactly as the test does it in NumPy."""
  return torch.from_numpy(u8.astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2).contiguous()


def distances_and_grad(model, x_u8, y_u8):
  x = to_input(x_u8).requires_grad_(True)
  d = model(x, to_input(y_u8)).reshape(-1)  # [N, 1, 1, 1] -> [N]
  d.sum().backward()
  return d.detach().numpy(), x.grad.permute(0, 2, 3, 1).numpy()


def main():
  torch.manual_seed(0)
  model = build_model()
  x64, y64, x48, y48 = image_pairs()
  d64, g64 = distances_and_grad(model, x64, y64)
  d48, g48 = distances_and_grad(model, x48, y48)
  np.savez_compressed(os.path.join(OUT, "lpips_golden.npz"), seed=np.int64(SEED),
                      x64=x64, y64=y64, d64=d64, grad64=g64, x48=x48, y48=y48, d48=d48,
                      grad48=g48)

  # The lin layers as lpips' released file holds them (that file is in the legacy format).
  lin = collections.OrderedDict(
      (k, torch.from_numpy(v)) for k, v in jz_lpips.random_state_dict(SEED).items()
      if k.startswith("lin"))
  torch.save(lin, os.path.join(OUT, "lpips_lin_tiny.pth"), _use_new_zipfile_serialization=False)

  # jzoo's torch-free reader on the real released lin weights shipped with the package.
  real_path = os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "vgg.pth")
  real = torch.load(real_path, map_location="cpu")
  ours = read_torch_state_dict(real_path)
  assert list(ours) == list(real)
  for k, v in real.items():
    assert np.array_equal(ours[k], v.numpy()), k
  print("real lin weights read exactly:", {k: tuple(v.shape) for k, v in ours.items()})
  print("d64", d64, "d48", d48)
  print("max |grad64|", float(np.abs(g64).max()), "max |grad48|", float(np.abs(g48).max()))
  print("torch", torch.__version__, "torchvision", torchvision.__version__,
        "lpips", getattr(lpips, "__version__", "0.1.4"))


if __name__ == "__main__":
  main()

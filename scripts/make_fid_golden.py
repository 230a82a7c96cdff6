"""Makes the FID InceptionV3 parity golden files from pytorch-fid 0.3.0.

jzoo's tests must not need torch, so the reference outputs are computed here
once and stored in tests/golden/:

  fid_inception_golden.npz    three uint8 images (299x299, 64x48 upsampled,
                              330x310 downsampled), pytorch-fid's 2048-d pool3
                              features of each, and two small bilinear resizes
                              (up, down) of float images, as F.interpolate does them
  fid_inception_tiny.pth      a tiny state_dict with known values (torch.save's
  fid_inception_tiny_legacy.pth  zip format / its legacy pre-1.6 format) for the reader

The network is pytorch-fid's `InceptionV3([3], resize_input=True,
normalize_input=True, use_fid_inception=True)`, but with the random weights of
`jzoo.eval.inception.random_state_dict(0)` (a NumPy-only recipe) instead of the
downloaded ones: `load_state_dict_from_url` is replaced, so nothing is fetched,
and the 24M-parameter weights need not be stored.

Run it in a separate environment (not jzoo's; jax and flax are there only to
import the recipe from jzoo):
  /work/t5ref-venv/bin/pip install pytorch-fid==0.3.0 --no-deps
  /work/t5ref-venv/bin/pip install scipy jax==0.10.2 flax==0.12.8
  JAX_PLATFORMS=cpu /work/t5ref-venv/bin/python scripts/make_fid_golden.py
Made with torch 2.13.0+cpu, torchvision 0.28.0+cu130 (its C ops unused), pytorch-fid 0.3.0.
"""

import collections
import os
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F

# The venv's torchvision wheel is a CUDA build next to a CPU torch, so its C ops do not
# load and registering their fake kernels fails on import. Only the pure-Python models
# are needed here; skip that registration.
sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
import torchvision  # noqa: E402

import pytorch_fid  # noqa: E402
import pytorch_fid.inception  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
from jzoo.eval import inception  # noqa: E402  (for random_state_dict and the expected names)

OUT = os.path.join(ROOT, "tests", "golden")
SEED = 0


def build_model():
  """pytorch-fid's FID InceptionV3 holding random_state_dict(SEED); fetches nothing."""
  state = {k: torch.from_numpy(v) for k, v in inception.random_state_dict(SEED).items()}
  state["fc.weight"] = torch.zeros(1008, 2048)  # the classifier is not used for pool3
  state["fc.bias"] = torch.zeros(1008)
  pytorch_fid.inception.load_state_dict_from_url = lambda url, **kw: state
  built = []  # the torchvision-named network inside the wrapper, to check its names
  make = pytorch_fid.inception.fid_inception_v3
  pytorch_fid.inception.fid_inception_v3 = lambda: built.append(make()) or built[-1]
  model = pytorch_fid.inception.InceptionV3([3], resize_input=True, normalize_input=True,
                                            use_fid_inception=True).eval()
  # Every weight came from the recipe (a strict load), and jzoo expects exactly these names.
  loaded = {k: v for k, v in built[0].state_dict().items()
            if not k.endswith("num_batches_tracked") and not k.startswith("fc.")}
  expected = set(inception.torch_shapes())
  assert set(loaded) == expected, set(loaded) ^ expected
  for k, v in loaded.items():
    assert torch.equal(v, state[k]), k
  return model


def test_images():
  """uint8 [H, W, 3] images: smooth random colour fields plus pixel noise."""
  rng = np.random.default_rng(1)
  images = []
  for h, w in ((299, 299), (64, 48), (330, 310)):
    coarse = rng.uniform(0, 255, (1, 8, 8, 3))
    smooth = F.interpolate(torch.from_numpy(coarse).permute(0, 3, 1, 2), size=(h, w),
                           mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    images.append(np.clip(smooth + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8))
  return images


def resize_cases():
  """Float NHWC images in [0, 1] and pytorch-fid's preprocessing of them to a small square."""
  rng = np.random.default_rng(2)
  cases = {}
  for name, (h, w), size in (("up", (7, 5), 13), ("down", (20, 17), 9)):
    x = rng.uniform(0, 1, (2, h, w, 3)).astype(np.float32)
    y = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(size, size),
                      mode="bilinear", align_corners=False)
    cases[f"resize_{name}_in"] = x
    cases[f"resize_{name}_out"] = (2 * y - 1).permute(0, 2, 3, 1).numpy()
  return cases


def tiny_state_dict():
  """Known values the test rebuilds with NumPy; views, a Parameter and several dtypes."""
  return collections.OrderedDict([
      ("conv.weight",
       torch.nn.Parameter(torch.arange(54, dtype=torch.float32).reshape(2, 3, 3, 3) / 8)),
      ("bn.running_var", torch.tensor([0.25, 0.5, 1.75])),
      ("transposed", torch.arange(12, dtype=torch.float32).reshape(3, 4).t()),  # strides (1, 4)
      ("slice", torch.arange(10, dtype=torch.float64)[2:8:2]),  # offset 2, stride 2
      ("half", torch.tensor([1.5, -2.0], dtype=torch.float16)),
      ("bn.num_batches_tracked", torch.tensor(7)),  # int64 scalar
  ])


def main():
  torch.manual_seed(0)
  os.makedirs(OUT, exist_ok=True)
  model = build_model()
  images = test_images()
  with torch.no_grad():
    feats = [model(torch.from_numpy(im).permute(2, 0, 1)[None].float() / 255)[0].reshape(-1)
             for im in images]  # as pytorch-fid's ToTensor: uint8 / 255
  feats = torch.stack(feats).numpy().astype(np.float32)
  np.savez_compressed(
      os.path.join(OUT, "fid_inception_golden.npz"),
      image_299=images[0], image_64x48=images[1], image_330x310=images[2], features=feats,
      seed=np.int64(SEED), **resize_cases())
  torch.save(tiny_state_dict(), os.path.join(OUT, "fid_inception_tiny.pth"))
  torch.save(tiny_state_dict(), os.path.join(OUT, "fid_inception_tiny_legacy.pth"),
             _use_new_zipfile_serialization=False)
  print("features", feats.shape, "mean |f|", float(np.abs(feats).mean()),
        "max", float(feats.max()))
  print("torch", torch.__version__, "torchvision", torchvision.__version__,
        "pytorch-fid", pytorch_fid.__version__)


if __name__ == "__main__":
  main()

"""The bundled models' samples for fixed seeds, against samples saved from an earlier main.

  python scripts/check_bundled_samples.py            # compare; exit 1 when a model drifts
  python scripts/check_bundled_samples.py --save     # (re)write tests/golden/bundled_samples/

A refactor of the platform must leave what the bundled weights generate unchanged: each case
below is generated and compared with its saved uint8 array (max |difference| <= --tolerance,
1 uint8 level by default, for other CPUs' float rounding). The saved files record the commit
they were made on.
"""

import argparse
import os
import subprocess
import sys

import numpy as np

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden",
                      "bundled_samples")

# name -> list of (case, prompts, options); every case generates at seed 0 and 1. A "start"
# option (SAVED, F) starts every video from the first F frames of saved sample SAVED (seed 0).
CASES = {
    "imagen-tiny-shapes": [
        ("t2i", ["a large red circle in the center", "a blue square to the left of a green triangle"], {}),
    ],
    "dalle2-tiny-shapes": [
        ("t2i", ["a large red circle in the center", "a blue square to the left of a green triangle"], {}),
    ],
    "phenaki-tiny-shapes": [
        ("t2v", ["a red circle moving right", "a yellow triangle moving up"], {}),
        ("story", ["a red circle moving right", "a red circle moving down"], {"story": True}),
        ("start", ["a blue square moving left"], {"start": ("phenaki-tiny-shapes-t2v-0", 1)}),
    ],
    "nuwa-tiny-shapes": [
        ("t2v", ["a red circle moving right", "a small green square moving down"], {}),
        ("start", ["a red circle moving right"], {"start": ("nuwa-tiny-shapes-t2v-0", 2)}),
    ],
}


def generate(name, prompts, options, seed):
  import jzoo
  if "start" in options:
    saved, frames = options["start"]
    start = np.load(os.path.join(GOLDEN, f"{saved}.npz"))["samples"][0, :frames]
    options = dict(options, start=start)
  if hasattr(jzoo, "load"):  # the pipeline API (platform v2)
    pipe = jzoo.load(name)
    return np.asarray(pipe(prompts, seed=seed, **options))
  from jzoo import api  # the API of the main the samples were saved from
  model, params = api.load(name)
  return np.asarray(api.generate(model, params, prompts, seed=seed, **options))


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--save", action="store_true", help="write the samples instead of comparing")
  p.add_argument("--model", action="append", help="only these models (default: all)")
  p.add_argument("--tolerance", type=int, default=1)
  args = p.parse_args()
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
  os.makedirs(GOLDEN, exist_ok=True)
  failed = []
  for name in args.model or sorted(CASES):
    for case, prompts, options in CASES[name]:
      for seed in (0, 1):
        path = os.path.join(GOLDEN, f"{name}-{case}-{seed}.npz")
        x = generate(name, prompts, options, seed)
        if args.save:
          np.savez_compressed(path, samples=x, commit=commit, prompts=np.array(prompts))
          print(f"saved {path} {x.shape} (commit {commit})")
          continue
        saved = np.load(path)
        ref = saved["samples"]
        if ref.shape != x.shape:
          failed.append(name)
          print(f"FAIL {name} {case} seed {seed}: shape {x.shape} != saved {ref.shape}")
          continue
        diff = np.abs(x.astype(np.int16) - ref.astype(np.int16))
        ok = int(diff.max()) <= args.tolerance
        failed += [] if ok else [name]
        print(f"{'ok  ' if ok else 'FAIL'} {name} {case} seed {seed}: max |diff| {int(diff.max())}, "
              f"{int((diff > 0).sum())} of {diff.size} values differ (saved at {saved['commit']})")
  if failed:
    sys.exit(1)


if __name__ == "__main__":
  main()

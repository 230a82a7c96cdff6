"""The input pipeline alone (examples/s): the thread-prefetch pipeline it replaced against Grain
with 0 and N worker processes, side by side in one run, on a folder of PNG and JPEG files.

    python benchmarks/input_pipeline.py [--images 512] [--size 64] [--resolution 64] \
        [--batch 32] [--steps 16] [--rounds 3] [--workers 0,2] [--json]

Writes `--images` random captioned `--size`² images (half PNG, half JPEG) into a temporary
folder, reads them as `folder:` at `--resolution` with shuffling, and times `--steps` global
batches (`next(pipeline)`: decode, resize/crop, stack, tokenize, jax.Array over the mesh) after
one untimed batch, in alternating rounds (best round kept). Every variant must give the same
batches. Prints a table, then one JSON object (only the JSON with `--json`). `--smoke`: 16
images, 2 batches of 4, one round (seconds; its numbers mean nothing).
"""

import argparse
import json
import os
import queue
import sys
import tempfile
import threading
import time

import _common  # noqa: E402 - benchmarks/_common.py: this script's folder is sys.path[0]

from jzoo.data.pipeline import EpochOrder, InputPipeline, collate


class ThreadPrefetchPipeline(InputPipeline):
  """The pipeline before Grain (main d6fb7a0), compactly: one thread reads the host's batches in
  order (source[i] + collate) into a queue of `prefetch`."""

  def __next__(self):
    if self._iterator is None:
      self._iterator = queue.Queue(self.prefetch)
      threading.Thread(target=self._produce, args=(self.position, self._iterator),
                       daemon=True).start()
    local = self._iterator.get()
    self.position += self.global_batch_size
    return self._to_global(local)

  def _produce(self, position, out):
    order = EpochOrder(len(self.source), self.seed, self.shuffle)
    while out is self._iterator:  # until close()
      start = position + self.process_index * self.local_batch_size
      out.put(collate([self.source[order(start + i)] for i in range(self.local_batch_size)],
                      self.tokenizer, self.text_length))
      position += self.global_batch_size

  def close(self):
    self._iterator = None  # the thread stops after its batch in hand (or blocks on a full queue)


def write_images(root, count, size):
  import numpy as np
  from PIL import Image
  rng = np.random.default_rng(0)
  for i in range(count):
    # Smooth gradients plus noise: JPEG and PNG sizes like photos', not like pure noise.
    ramp = np.linspace(0, 255, size)[None, :, None] * rng.uniform(0, 1, (1, 1, 3))
    image = np.clip(ramp + rng.normal(0, 24, (size, size, 3)), 0, 255).astype(np.uint8)
    ext = ".png" if i % 2 == 0 else ".jpg"
    Image.fromarray(image).save(os.path.join(root, f"image{i}{ext}"))
    with open(os.path.join(root, f"image{i}.txt"), "w") as f:
      f.write(f"a large red circle in the center number {i}")


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--images", type=int, default=512)
  p.add_argument("--size", type=int, default=64, help="side of the written images")
  p.add_argument("--resolution", type=int, default=64, help="side the pipeline reads them at")
  p.add_argument("--batch", type=int, default=32, help="global batch")
  p.add_argument("--steps", type=int, default=16, help="timed batches per round")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--workers", default="0,2", help="comma list of Grain worker counts")
  p.add_argument("--prefetch", type=int, default=2)
  p.add_argument("--json", action="store_true", help="print only the JSON object")
  args = _common.parse_args(p, dict(images=16, batch=4, steps=2, rounds=1))
  import jax
  import numpy as np

  from jzoo.data.sources import get_source
  from jzoo.parallel.mesh import make_mesh
  from jzoo.text.tokenizer import Tokenizer
  mesh = make_mesh({"data": -1}, jax.devices()[:1])
  tokenizer = Tokenizer.load("shapes")
  variants = {"thread prefetch": (ThreadPrefetchPipeline, {})}
  variants.update({f"grain {w} workers": (InputPipeline, {"workers": w})
                   for w in map(int, args.workers.split(","))})
  best = {k: 0.0 for k in variants}
  first_s = {k: float("inf") for k in variants}
  with tempfile.TemporaryDirectory() as root:
    write_images(root, args.images, args.size)
    source = get_source(f"folder:{root}", "train", resolution=args.resolution)
    reference = None
    for _ in range(args.rounds):
      for name, (cls, kw) in variants.items():
        pipe = cls(source, tokenizer, global_batch_size=args.batch, text_length=24, mesh=mesh,
                   prefetch=args.prefetch, **kw)
        t0 = time.perf_counter()
        first = jax.block_until_ready(next(pipe))  # starts threads / worker processes
        first_s[name] = min(first_s[name], time.perf_counter() - t0)
        got = {k: np.asarray(v) for k, v in first.items()}
        reference = reference or got
        if any(not np.array_equal(got[k], reference[k]) for k in reference):
          sys.exit(f"{name} gives another first batch than {next(iter(variants))}")
        t0 = time.perf_counter()
        for _ in range(args.steps):
          jax.block_until_ready(next(pipe))
        best[name] = max(best[name], args.steps * args.batch / (time.perf_counter() - t0))
        pipe.close()
  base = best["thread prefetch"]
  result = {"images": args.images, "size": args.size, "resolution": args.resolution,
            "batch": args.batch, "steps": args.steps, "rounds": args.rounds,
            "prefetch": args.prefetch, "cpus": os.cpu_count(),
            "examples_per_s": best, "first_batch_s": first_s,
            "vs_thread_prefetch": {k: v / base for k, v in best.items()}}
  if not args.json:
    print(f"{args.images} PNG/JPEG {args.size}px -> {args.resolution}px, batch {args.batch}, "
          f"{args.steps} batches, best of {args.rounds} alternating rounds, {os.cpu_count()} CPUs")
    print(f"{'':20s}{'examples/s':>12s}{'vs thread':>11s}{'first batch':>13s}")
    for name in variants:
      print(f"{name:20s}{best[name]:>12.1f}{best[name] / base:>10.2f}x{first_s[name]:>12.2f}s")
  print(json.dumps(result))


if __name__ == "__main__":
  main()

"""Sampling time of phenaki-tiny-shapes with K candidates per prompt, side by side in one run.

  python scripts/time_candidates.py 8 1 4     # 8 videos, K = 1 then K = 4

Each K is compiled and run once, then timed over a second call with another seed.
"""

import sys
import time

from jzoo import api
from jzoo import sample
from jzoo.data import shapes


def main(num, *ks):
  loaded, params = api.load("phenaki-tiny-shapes")
  captions = [shapes.video_scene("test", i, 32, 16)["caption"] for i in range(num)]
  for k in ks:
    model = sample.with_sampling(loaded, [f"sample.candidates={k}"])
    start = time.perf_counter()
    api.generate(model, params, captions, seed=0, batch_size=num)
    first = time.perf_counter() - start
    start = time.perf_counter()
    api.generate(model, params, captions, seed=1, batch_size=num)
    print(f"candidates={k}: {num} videos in {time.perf_counter() - start:.2f} s after compile "
          f"({first:.2f} s with compile)", flush=True)


if __name__ == "__main__":
  main(int(sys.argv[1]), *(int(k) for k in sys.argv[2:]))

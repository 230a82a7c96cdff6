"""Sampling time of a bundled model with several `sample.*` settings, side by side in one run.

  python scripts/time_sampling.py phenaki-tiny-shapes 8 candidates=1 candidates=4
  python scripts/time_sampling.py phenaki-tiny-shapes 8 cpu_rows=0 cpu_rows=2

NUM `test` captions, one batch. Each setting (comma-separated `sample.*` overrides) is compiled
and run once, then timed over a second call with another seed; the line also says how many
output bytes differ from the first setting's (0: the same samples).
"""

import sys
import time

import numpy as np

import jzoo
from jzoo import evaluate


def main(name, num, *settings):
  loaded = jzoo.load(name)
  dataset, shape = evaluate.dataset_of(loaded.model), tuple(loaded.output_shape)
  captions = [evaluate.scene(dataset, "test", i, shape)["caption"] for i in range(num)]
  first_output = None
  for setting in settings:
    pipe = loaded.with_sampling(*setting.split(","))
    start = time.perf_counter()
    pipe(captions, seed=0, batch_size=num)
    with_compile = time.perf_counter() - start
    start = time.perf_counter()
    out = pipe(captions, seed=1, batch_size=num)
    seconds = time.perf_counter() - start
    first_output = out if first_output is None else first_output
    differ = int(np.sum(out != first_output))
    print(f"{setting}: {num} samples in {seconds:.2f} s after compile ({with_compile:.2f} s "
          f"with compile); bytes differing from {settings[0]}'s: {differ}", flush=True)


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:])

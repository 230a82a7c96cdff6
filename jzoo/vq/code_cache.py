"""Precomputed codes of a frozen tokenizer over a dataset split.

A frozen tokenizer gives the same codes for a clip at every step, so the stage
that models them (the Phenaki MaskGIT transformer) can train on codes computed
once: the train step then neither renders nor decodes pixels and holds no
tokenizer encoder. This is how MaskGIT-style models are usually trained
(pre-tokenized data). The cost: a finite set of clips (the first N examples of
the split, N = --limit), where the on-the-fly stream draws fresh ones.

`python -m jzoo.cache_codes` writes a cache folder; training reads it with
`--config.tokenizer.cache=FOLDER`. Files:

  meta.json      grid (codes per clip), codebook_size, rows, dataset, split, the tokenizer
                 weights it came from
  captions.json  the examples' captions, row order
  codes.npy      uint16 (or int32 for codebooks over 65,536) [rows, *grid] (read memory-mapped)
"""

import json
import os

import numpy as np

from jzoo.data.pipeline import pixels_of
from jzoo.errors import DataError

META, CAPTIONS, CODES = "meta.json", "captions.json", "codes.npy"
# How else a model gets its frozen tokenizer: the end of the error when it has none.
FROZEN_FROM = "start from an export (--config.train.frozen_from=EXPORT)"


def build(directory, source, count, encode, grid, codebook_size, *, batch_size=64, read=None,
          dataset="", split="", origin=""):
  """Encodes examples 0..count-1 of `source` with `encode(pixels float [B, ...] in [-1, 1]) ->
  codes [B, *grid]` and writes the cache.

  `encode` sees full batches only (the last one is padded), so a jitted encoder compiles once.
  `read(indices) -> list of examples` may render them in parallel (default: one by one).
  `origin` says which tokenizer weights made the codes; training compares it with its own."""
  if count <= 0:
    raise DataError("no examples to cache")
  read = read or (lambda indices: [source[i] for i in indices])
  dtype = np.uint16 if codebook_size <= np.iinfo(np.uint16).max + 1 else np.int32
  os.makedirs(directory, exist_ok=True)
  codes = np.lib.format.open_memmap(os.path.join(directory, CODES + ".tmp"), "w+", dtype,
                                    (count, *grid))
  captions = []
  for start in range(0, count, batch_size):
    stop = min(start + batch_size, count)
    examples = read(range(start, stop))
    _, pixels = pixels_of(examples)
    pad = batch_size - (stop - start)
    chunk = np.asarray(encode(np.pad(pixels, ((0, pad),) + ((0, 0),) * (pixels.ndim - 1))))
    chunk = chunk[:stop - start]
    if chunk.shape[1:] != tuple(grid) or chunk.min() < 0 or chunk.max() >= codebook_size:
      raise DataError(f"the tokenizer gave codes of shape {chunk.shape[1:]} in "
                      f"[{chunk.min()}, {chunk.max()}], not {tuple(grid)} in [0, {codebook_size})")
    codes[start:stop] = chunk.astype(dtype)
    captions += [ex["caption"] for ex in examples]
  codes.flush()
  del codes
  # Everything is written under temporary names first, and meta.json last: an interrupted build
  # leaves no cache that looks complete.
  with open(os.path.join(directory, CAPTIONS + ".tmp"), "w") as f:
    json.dump(captions, f)
  os.replace(os.path.join(directory, CODES + ".tmp"), os.path.join(directory, CODES))
  os.replace(os.path.join(directory, CAPTIONS + ".tmp"), os.path.join(directory, CAPTIONS))
  meta = {"grid": [int(g) for g in grid], "codebook_size": int(codebook_size), "rows": count,
          "dataset": dataset, "split": split, "source": origin}
  with open(os.path.join(directory, META), "w") as f:
    json.dump(meta, f, indent=2)
  return meta


class CodeCache:
  """Read side, an example source (jzoo.data.sources): `cache[i] -> {"codes": int32 [*grid],
  "caption": str}`."""

  def __init__(self, directory):
    self.directory = directory
    path = os.path.join(directory, META)
    if not os.path.isfile(path):
      raise DataError(f"{directory!r} is not a code cache (no {META}); build one with "
                      "python -m jzoo.cache_codes --config MODEL --workdir DIR --out FOLDER")
    with open(path) as f:
      self.meta = json.load(f)
    with open(os.path.join(directory, CAPTIONS)) as f:
      self._captions = json.load(f)
    self._codes = np.load(os.path.join(directory, CODES), mmap_mode="r")

  def __len__(self):
    return len(self._captions)

  def __getitem__(self, index):
    return {"codes": np.asarray(self._codes[index], np.int32), "caption": self._captions[index]}

  def caption(self, index):
    return self._captions[index]

  def check(self, *, grid, codebook_size, dataset, origin=None):
    """A clear error when this cache was made for another code grid, codebook, dataset or
    tokenizer."""
    for name, have, want in (("grid", tuple(self.meta["grid"]), tuple(grid)),
                             ("codebook_size", self.meta["codebook_size"], codebook_size),
                             ("dataset", self.meta["dataset"], dataset)):
      if have != want:
        raise DataError(f"code cache {self.directory!r} has {name} {have}, the model needs "
                        f"{want}; rebuild it with python -m jzoo.cache_codes")
    if self.meta.get("split") != "train":
      raise DataError(f"code cache {self.directory!r} holds the {self.meta.get('split')!r} split; "
                      "training reads 'train': rebuild it with --split train")
    if origin is not None and self.meta.get("source") != origin:
      raise DataError(f"code cache {self.directory!r} was made from {self.meta.get('source')!r}, "
                      f"but the model's tokenizer is {origin!r}; rebuild it with "
                      "python -m jzoo.cache_codes")

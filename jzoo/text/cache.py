"""Precomputed frozen-text-encoder embeddings of a dataset's captions.

A frozen encoder gives the same embeddings for a caption at every step, so a
stage that reads it (an Imagen U-Net, the Phenaki transformer) can train on
embeddings computed once: the train step then holds no encoder (T5-XXL is 4.6B
parameters, more than Imagen's 2B base) and does none of its FLOPs.

`python -m jzoo.cache_text` writes a cache folder; training reads it with
`--config.text_encoder.cache=FOLDER`. Rows are keyed by caption text, so a
dataset whose examples repeat captions (`shapes`: 1,548 distinct captions in
100,000 images) stores each once. Files:

  meta.json        text_length, width, tokenizer, the encoder it came from, count
  captions.json    the captions, row order
  embeddings.npy   float16 [rows, text_length, width] (read memory-mapped)
  mask.npy         int8 [rows, text_length]: 1 on real tokens (incl. eos)
"""

import json
import os

import numpy as np

from jzoo.errors import DataError

META, CAPTIONS, EMBEDDINGS, MASK = "meta.json", "captions.json", "embeddings.npy", "mask.npy"
FLOAT16_MAX = float(np.finfo(np.float16).max)


def build(directory, captions, encode, tokenizer, text_length, width, *, batch_size=256,
          source=""):
  """Encodes the distinct `captions` with `encode(tokens, mask) -> [B, L, width]` and writes the
  cache.

  `encode` sees full batches only (the last one is padded), so a jitted encoder compiles once.
  `source` says which encoder weights made the embeddings; training compares it with its own.
  """
  unique = list(dict.fromkeys(captions))
  if not unique:
    raise DataError("no captions to cache")
  os.makedirs(directory, exist_ok=True)
  tokens, mask = tokenizer.encode_batch(unique, text_length)
  rows = len(unique)
  embeddings = np.lib.format.open_memmap(os.path.join(directory, EMBEDDINGS + ".tmp"), "w+",
                                         np.float16, (rows, text_length, width))
  for start in range(0, rows, batch_size):
    stop = min(start + batch_size, rows)
    pad = batch_size - (stop - start)
    chunk = np.asarray(encode(np.pad(tokens[start:stop], ((0, pad), (0, 0))),
                              np.pad(mask[start:stop], ((0, pad), (0, 0)))), np.float32)
    chunk = chunk[:stop - start]
    if not np.isfinite(chunk).all() or np.abs(chunk).max() > FLOAT16_MAX:
      raise DataError("the text encoder's embeddings overflow float16; the cache stores float16")
    embeddings[start:stop] = chunk.astype(np.float16)
  embeddings.flush()
  del embeddings
  # Everything is written under temporary names first: an interrupted build leaves no cache
  # that looks complete.
  np.save(os.path.join(directory, MASK + ".tmp.npy"), mask.astype(np.int8))
  with open(os.path.join(directory, CAPTIONS + ".tmp"), "w") as f:
    json.dump(unique, f)
  os.replace(os.path.join(directory, EMBEDDINGS + ".tmp"), os.path.join(directory, EMBEDDINGS))
  os.replace(os.path.join(directory, MASK + ".tmp.npy"), os.path.join(directory, MASK))
  os.replace(os.path.join(directory, CAPTIONS + ".tmp"), os.path.join(directory, CAPTIONS))
  meta = {"text_length": int(text_length), "width": int(width), "rows": rows,
          "tokenizer": tokenizer.name, "source": source}
  with open(os.path.join(directory, META), "w") as f:
    json.dump(meta, f, indent=2)
  return meta


class TextEmbeddingCache:
  """Read side: `lookup(captions) -> (embeddings float32 [B, L, D], mask int32 [B, L])`."""

  def __init__(self, directory):
    self.directory = directory
    path = os.path.join(directory, META)
    if not os.path.isfile(path):
      raise DataError(f"{directory!r} is not a text-embedding cache (no {META}); build one with "
                      "python -m jzoo.cache_text --config MODEL --workdir DIR --out FOLDER")
    with open(path) as f:
      self.meta = json.load(f)
    with open(os.path.join(directory, CAPTIONS)) as f:
      self._rows = {caption: i for i, caption in enumerate(json.load(f))}
    self._embeddings = np.load(os.path.join(directory, EMBEDDINGS), mmap_mode="r")
    self._mask = np.load(os.path.join(directory, MASK))

  @property
  def text_length(self):
    return int(self.meta["text_length"])

  @property
  def width(self):
    return int(self.meta["width"])

  def __len__(self):
    return len(self._rows)

  def check(self, *, text_length, width, source=None):
    """A clear error when this cache was made for another text length, encoder width or encoder."""
    for name, want in (("text_length", text_length), ("width", width)):
      if int(self.meta[name]) != int(want):
        raise DataError(f"text-embedding cache {self.directory!r} has {name} {self.meta[name]}, "
                        f"the model needs {want}; rebuild it with python -m jzoo.cache_text")
    if source is not None and self.meta.get("source") != source:
      raise DataError(f"text-embedding cache {self.directory!r} was made from "
                      f"{self.meta.get('source')!r}, but the model's text encoder is {source!r}; "
                      "rebuild it with python -m jzoo.cache_text")

  def lookup(self, captions):
    try:
      rows = [self._rows[c] for c in captions]
    except KeyError as e:
      short = e.args[0] if len(e.args[0]) <= 60 else e.args[0][:57] + "..."
      raise DataError(f"caption {short!r} is not in the text-embedding cache {self.directory!r} "
                      f"({len(self)} captions); rebuild it over this dataset with "
                      "python -m jzoo.cache_text") from None
    order = np.argsort(rows)  # sorted reads from the memory map
    embeddings = np.empty((len(rows), self.text_length, self.width), np.float32)
    embeddings[order] = self._embeddings[np.asarray(rows)[order]]
    return embeddings, self._mask[rows].astype(np.int32)

"""The input pipeline: batches sharded over the mesh's data axes, each host reading only its slice.

Examples are addressed by a global position (examples consumed so far), so the
iterator state is one integer that goes into every checkpoint. Step `s` reads
positions `[s*B, (s+1)*B)`; host `p` of `P` reads its contiguous `B/P` of them.
Finite sources (folders, prepared TFDS splits) are visited in a fresh
permutation each epoch, seeded by (seed, epoch); the procedural `shapes`
streams are already random per index and are read in order.
"""

import queue
import threading

import jax
import numpy as np

from jzoo.errors import ConfigError
from jzoo.parallel.mesh import batch_sharding


class _PermutationCache:
  """Keeps the current epoch's permutation so that shuffled reads are O(1)."""

  def __init__(self, length, seed, shuffle):
    self.length, self.seed, self.shuffle = length, seed, shuffle
    self._epoch, self._perm = None, None

  def __call__(self, position):
    if not self.shuffle:
      return position % self.length
    epoch, offset = divmod(position, self.length)
    if epoch != self._epoch:
      self._epoch = epoch
      self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.length)
    return int(self._perm[offset])


def pixels_of(examples):
  """(key, float32 pixels in [-1, 1]) of a list of {image|video uint8, ...} examples."""
  key = "video" if "video" in examples[0] else "image"
  return key, np.stack([ex[key] for ex in examples]).astype(np.float32) / 127.5 - 1.0


def collate(examples, tokenizer, text_length, text_cache=None):
  """List of {image|video uint8, caption} -> numpy batch: pixels in [-1, 1], the captions'
  tokens and mask, or with a jzoo.text.cache.TextEmbeddingCache their cached embeddings ("text")
  and mask."""
  batch = {}
  if "codes" in examples[0]:  # a jzoo.vq.code_cache.CodeCache: a frozen tokenizer's codes
    batch["codes"] = np.stack([ex["codes"] for ex in examples]).astype(np.int32)
  else:
    key, pixels = pixels_of(examples)
    batch[key] = pixels
  captions = [ex["caption"] for ex in examples]
  if text_cache is not None:
    batch["text"], batch["mask"] = text_cache.lookup(captions)
    return batch
  tokens, mask = tokenizer.encode_batch(captions, text_length)
  batch["tokens"] = np.asarray(tokens, np.int32)
  batch["mask"] = np.asarray(mask, np.int32)
  return batch


class InputPipeline:
  """Iterator of global, sharded batches. `position` is the resumable state."""

  def __init__(self, source, tokenizer, *, global_batch_size, text_length, mesh, seed=0,
               shuffle=True, position=0, prefetch=2, process_index=None, process_count=None,
               text_cache=None):
    self.source = source
    self.tokenizer = tokenizer
    self.text_cache = text_cache
    self.text_length = text_length
    self.mesh = mesh
    self.global_batch_size = global_batch_size
    self.process_index = jax.process_index() if process_index is None else process_index
    self.process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size % self.process_count:
      raise ConfigError(f"train.batch_size {global_batch_size} must divide evenly over "
                        f"{self.process_count} hosts")
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    if global_batch_size % data_parallel:
      raise ConfigError(f"train.batch_size {global_batch_size} must be a multiple of the data-parallel "
                        f"size {data_parallel} (mesh data×fsdp); change --config.train.batch_size")
    self.local_batch_size = global_batch_size // self.process_count
    self._index = _PermutationCache(len(source), seed, shuffle)
    self.position = position
    self._prefetch = prefetch
    self._queue = None
    self._thread = None

  # --- host-side reading --------------------------------------------------
  def _read_local(self, position):
    start = position + self.process_index * self.local_batch_size
    examples = [self.source[self._index(start + i)] for i in range(self.local_batch_size)]
    return collate(examples, self.tokenizer, self.text_length, self.text_cache)

  def _to_global(self, local):
    return {k: jax.make_array_from_process_local_data(batch_sharding(self.mesh, v.ndim), v)
            for k, v in local.items()}

  def _producer(self, position):
    try:
      while True:
        self._queue.put((position, self._read_local(position)))
        position += self.global_batch_size
    except Exception as e:  # surfaced in __next__
      self._queue.put((None, e))

  # --- iterator ------------------------------------------------------------
  def __iter__(self):
    return self

  def __next__(self):
    if self._prefetch <= 0:
      local = self._read_local(self.position)
    else:
      if self._thread is None:
        self._queue = queue.Queue(self._prefetch)
        self._thread = threading.Thread(target=self._producer, args=(self.position,), daemon=True)
        self._thread.start()
      position, local = self._queue.get()
      if position is None:
        raise local
      assert position == self.position, (position, self.position)
    self.position += self.global_batch_size
    return self._to_global(local)

  def get_state(self):
    return {"position": int(self.position)}

  def set_state(self, state):
    if self._thread is not None:
      raise RuntimeError("set_state before iterating")
    self.position = int(state["position"])

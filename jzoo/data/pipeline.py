"""The input pipeline: batches sharded over the mesh's data axes, each host reading only its slice.

Examples are addressed by a global position (examples consumed so far), so the
iterator state is one integer that goes into every checkpoint. Step `s` reads
positions `[s*B, (s+1)*B)`; host `p` of `P` reads its contiguous `B/P` of them.
With `shuffle` (config.data.shuffle, on by default) every source, the
procedural `shapes` train streams included (their length is `train_size`), is
visited in a fresh permutation each epoch, seeded by (seed, epoch); without
it, positions wrap around the source in order.

Reading runs on Grain (github.com/google/grain), the loader of big_vision and
MaxText. Every source (sources.py) is a Grain random-access data source (`len`,
`[i]`); the pipeline is

  MapDataset.source(source)       the examples by source index
  -> HostOrder                    the k-th example this host reads (positions -> indices)
  -> batch(B/P, stack_examples)   decoded, rendered and stacked: one element per step
  -> to_iter_dataset(...)         `prefetch` batches read ahead by as many threads
  -> mp_prefetch(workers)         optional: `workers` processes, worker w reading steps
                                  w, w+workers, ...; Grain interleaves them back in order

Batching comes before the worker split, so each worker holds whole steps and the
batch of a position does not depend on `workers` or `prefetch`. Text (tokens, and
the rows of caption-keyed frozen-output caches: a text encoder's embeddings) is
added in this process: it is cheap, and keeps the tokenizer and the caption
index out of the workers. Example-keyed caches (a tokenizer's codes) are part of
the source (frozen_cache.JoinedSource): their rows are read with the example.

`workers=0` (the default, and what tests use) reads in threads of this process,
which suits the procedural streams, code caches and small images. Decoding-heavy
folders and TFDS splits on accelerator hosts want worker processes (Grain starts
them with `spawn`: the source is pickled, JAX is not forked).
"""

import sys

import grain
import jax
import numpy as np

from jzoo.data.shapes import relation_swapped
from jzoo.errors import ConfigError
from jzoo.parallel.mesh import batch_sharding

UNBOUNDED = sys.maxsize  # HostOrder's length: positions run on over epochs


class EpochOrder:
  """position -> source index: a fresh permutation per epoch seeded by (seed, epoch), or in order.

  Keeps the current epoch's permutation, so shuffled reads are O(1). Reader threads may ask
  for two epochs at once (a step across the boundary): the cache is one (epoch, permutation)
  tuple, swapped whole, so a thread never pairs one epoch with another's permutation."""

  def __init__(self, length, seed, shuffle):
    self.length, self.seed, self.shuffle = length, seed, shuffle
    self._cached = (None, None)

  def __call__(self, position):
    if not self.shuffle:
      return position % self.length
    epoch, offset = divmod(position, self.length)
    cached = self._cached
    if cached[0] != epoch:
      cached = self._cached = (epoch, np.random.default_rng([self.seed, epoch]).permutation(
          self.length))
    return int(cached[1][offset])


class HostOrder(grain.MapDataset):
  """Element `k`: the k-th example one host reads from global position `start` on, i.e. position
  `start + (k // L)·B + p·L + k % L` (B the global batch, L = B/P the host's share, p the host)."""

  def __init__(self, parent, *, start, global_batch_size, local_batch_size, process_index, seed,
               shuffle):
    super().__init__(parent)
    self._start, self._global, self._local = start, global_batch_size, local_batch_size
    self._offset = process_index * local_batch_size
    self._order = EpochOrder(len(parent), seed, shuffle)

  def __len__(self):
    return UNBOUNDED

  def __str__(self):
    return (f"HostOrder(start={self._start}, global_batch_size={self._global}, "
            f"local_batch_size={self._local}, offset={self._offset})")

  def position(self, k):
    step, i = divmod(k, self._local)
    return self._start + step * self._global + self._offset + i

  def __getitem__(self, k):
    if isinstance(k, slice):
      return self.slice(k)
    return self._parent[self._order(self.position(k))]


def pixels_of(examples):
  """(key, float32 pixels in [-1, 1]) of a list of {image|video uint8, ...} examples."""
  key = "video" if "video" in examples[0] else "image"
  return key, np.stack([ex[key] for ex in examples]).astype(np.float32) / 127.5 - 1.0


PIXELS = ("image", "video")


def stack_examples(examples):
  """List of {image|video uint8, caption, arrays of example-keyed caches} -> {pixels in [-1, 1],
  each array stacked [B, ...] (codes, embeddings: their cache's declared dtypes), "caption":
  [str]}: the part of `collate` done where examples are read."""
  first = examples[0]
  batch = {}
  if any(k in first for k in PIXELS):
    key, pixels = pixels_of(examples)
    batch[key] = pixels
  for key in first:
    if key not in PIXELS and key != "caption":
      batch[key] = np.stack([np.asarray(ex[key]) for ex in examples])
  batch["caption"] = [ex["caption"] for ex in examples]
  return batch


def add_text(batch, tokenizer, text_length, caches=(), tokens=True, negatives=False):
  """stack_examples' batch with its captions replaced by their tokens and mask (`tokens`), by
  the tokens of their relation-swapped twins (`negatives`: "negative_tokens"/"negative_mask",
  the caption itself where it names no relation) and by the rows of each caption-keyed
  frozen-output cache (jzoo.data.frozen_cache.FrozenCache: a text encoder's embeddings "text"
  and their "mask")."""
  batch = dict(batch)
  captions = batch.pop("caption")
  if tokens:
    ids, mask = tokenizer.encode_batch(captions, text_length)
    batch["tokens"] = np.asarray(ids, np.int32)
    batch["mask"] = np.asarray(mask, np.int32)
  if negatives:
    twins = [relation_swapped(c) or c for c in captions]
    ids, mask = tokenizer.encode_batch(twins, text_length)
    batch["negative_tokens"] = np.asarray(ids, np.int32)
    batch["negative_mask"] = np.asarray(mask, np.int32)
  for cache in caches:
    batch.update(cache.lookup(captions))
  return batch


def collate(examples, tokenizer, text_length, caches=(), tokens=True):
  """List of {image|video uint8 | cached arrays, caption} -> numpy batch: pixels in [-1, 1],
  the cached arrays, the captions' tokens and mask, and the caption-keyed caches' rows."""
  return add_text(stack_examples(examples), tokenizer, text_length, caches, tokens)


def _readable_profiling_flag():
  """grain 0.2.18's mp_prefetch reads the absl flag --grain_enable_multiprocess_worker_profiling
  when JAX is imported, which raises UnparsedFlagAccessError in programs that do not parse absl
  flags (google/grain#1355, fixed after that release): mark the flag as given, at its default,
  as Grain's own workers do with their flags."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  name = "grain_enable_multiprocess_worker_profiling"
  if not flags.FLAGS.is_parsed() and name in flags.FLAGS:
    flags.FLAGS[name].present = True


class InputPipeline:
  """Iterator of global, sharded batches. `position` is the resumable state.

  prefetch: batches read ahead (and reader threads); 0 reads each batch when asked.
  workers: Grain worker processes (0: read in this process).
  caches: caption-keyed frozen-output caches whose rows each batch gets by caption, in this
    process (example-keyed ones are part of `source`: frozen_cache.JoinedSource).
  tokens: whether batches carry the captions' "tokens" and "mask" (DataSpec.tokens).
  negatives: whether they carry the relation-swapped twins' tokens (DataSpec.negatives)."""

  def __init__(self, source, tokenizer, *, global_batch_size, text_length, mesh, seed=0,
               shuffle=True, position=0, prefetch=2, workers=0, process_index=None,
               process_count=None, caches=(), tokens=True, negatives=False):
    self.source = source
    self.tokenizer = tokenizer
    self.caches = tuple(caches)
    self.tokens = bool(tokens)
    self.negatives = bool(negatives)
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
    self.seed, self.shuffle = seed, shuffle
    self.prefetch, self.workers = int(prefetch), int(workers)
    self.position = position
    self._iterator = None  # Grain's, started from `position` by the first next()

  def local_batches(self, start):
    """Grain IterDataset of this host's numpy batches (captions not yet tokenized) of the steps
    from global position `start` on."""
    ds = HostOrder(grain.MapDataset.source(self.source), start=start,
                   global_batch_size=self.global_batch_size, local_batch_size=self.local_batch_size,
                   process_index=self.process_index, seed=self.seed, shuffle=self.shuffle)
    ds = ds.batch(self.local_batch_size, batch_fn=stack_examples)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=self.prefetch,
                                              prefetch_buffer_size=self.prefetch))
    if self.workers:
      _readable_profiling_flag()
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=self.workers, per_worker_buffer_size=max(1, self.prefetch)))
    return ds

  def _to_global(self, local):
    return {k: jax.make_array_from_process_local_data(batch_sharding(self.mesh, v.ndim), v)
            for k, v in local.items()}

  def __iter__(self):
    return self

  def __next__(self):
    if self._iterator is None:
      self._iterator = iter(self.local_batches(self.position))
    local = add_text(next(self._iterator), self.tokenizer, self.text_length, self.caches,
                     self.tokens, self.negatives)
    self.position += self.global_batch_size
    return self._to_global(local)

  def get_state(self):
    return {"position": int(self.position)}

  def set_state(self, state):
    """Moves to `state["position"]`; reading restarts there (before or after iterating)."""
    self.close()
    self.position = int(state["position"])

  def close(self):
    """Stops the reader threads and worker processes; the next next() starts them again."""
    if self._iterator is not None:
      self._iterator.close()
      self._iterator = None

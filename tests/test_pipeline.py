"""The input pipeline: global sharded batches, per-host slices, resumable position, the same
batches position for position as the thread-prefetch pipeline it replaced (checkpoints resume)."""

import grain.python as grain_python
import jax
import numpy as np
import pytest
from PIL import Image

from jzoo.data import shapes
from jzoo.data.pipeline import EpochOrder, InputPipeline, collate
from jzoo.data.sources import get_source
from jzoo.parallel.mesh import make_mesh
from jzoo.text.tokenizer import Tokenizer

TEXT_LENGTH = 24


def _pipeline(mesh, source=None, **kw):
  source = source or get_source("shapes", "train", resolution=16)
  kw.setdefault("global_batch_size", 8)
  return InputPipeline(source, Tokenizer.load("shapes"), text_length=TEXT_LENGTH, mesh=mesh, **kw)


def _old_batch(source, position, *, global_batch_size, seed, shuffle, process_index=0,
               process_count=1):
  """Host `process_index`'s batch at `position` as the thread-prefetch pipeline (main d6fb7a0)
  read it: its positions, a fresh permutation per epoch seeded by (seed, epoch), then collate."""
  local = global_batch_size // process_count
  n = len(source)

  def index(pos):
    if not shuffle:
      return pos % n
    epoch, offset = divmod(pos, n)
    return int(np.random.default_rng([seed, epoch]).permutation(n)[offset])

  start = position + process_index * local
  examples = [source[index(start + i)] for i in range(local)]
  return collate(examples, Tokenizer.load("shapes"), TEXT_LENGTH)


def _assert_same(batch, expected):
  assert sorted(batch) == sorted(expected)
  for key, value in expected.items():
    np.testing.assert_array_equal(np.asarray(batch[key]), value, err_msg=key)


@pytest.fixture(scope="module")
def folder_source(tmp_path_factory):
  """10 captioned PNGs: a finite source whose epochs end mid-batch for a batch of 4."""
  root = tmp_path_factory.mktemp("pngs")
  rng = np.random.default_rng(0)
  for i in range(10):
    Image.fromarray(rng.integers(0, 256, (12, 12, 3), np.uint8)).save(root / f"im{i}.png")
    (root / f"im{i}.txt").write_text(f"a {shapes.SHAPES[i % 3]} number {i}")
  return get_source(f"folder:{root}", "train", resolution=8)


@pytest.fixture(scope="module")
def tfds_source(tmp_path_factory):
  """The `shapes/micro` TFDS split (ArrayRecord, 24 examples), prepared locally."""
  return get_source("tfds:shapes/micro", "train", resolution=16,
                    data_dir=str(tmp_path_factory.mktemp("tfds")))


def test_sources_are_grain_data_sources(folder_source, tfds_source):
  for source in (folder_source, tfds_source, get_source("shapes", "test", resolution=16),
                 get_source("moving_shapes", "test", resolution=16, frames=2)):
    assert isinstance(source, grain_python.RandomAccessDataSource)


def test_batches_are_sharded_over_the_data_axes_and_match_the_source():
  mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  pipe = _pipeline(mesh, shuffle=False, prefetch=0)
  batch = next(pipe)
  assert batch["image"].shape == (8, 16, 16, 3) and batch["image"].dtype == np.float32
  assert batch["tokens"].shape == (8, 24) and batch["mask"].shape == (8, 24)
  # Batch axis over data×fsdp (4 shards), replicated over tensor.
  shard_rows = {(s.index[0].start, s.index[0].stop) for s in batch["image"].addressable_shards}
  assert len(shard_rows) == 4
  for i in range(8):
    ex = shapes.image_example("train", i, 16)
    np.testing.assert_allclose(np.asarray(batch["image"][i]), ex["image"] / 127.5 - 1.0, atol=1e-6)
    n = int(np.asarray(batch["mask"][i]).sum())
    assert Tokenizer.load("shapes").decode(np.asarray(batch["tokens"][i, :n])) == ex["caption"]
  assert pipe.get_state() == {"position": 8}


@pytest.mark.parametrize("hosts", [1, 2])
@pytest.mark.parametrize("stream", ["folder", "tfds", "shapes"])
def test_same_batches_as_the_thread_prefetch_pipeline(stream, hosts, request):
  """Shuffled, several steps: the finite sources' across epoch boundaries (mid-batch for the
  folder's 10), the shapes stream's from a position far into it; each simulated host gets its
  slice."""
  mesh = make_mesh({"data": -1}, jax.devices()[:1])
  source, start, steps = {
      "folder": lambda: (request.getfixturevalue("folder_source"), 0, 6),
      "tfds": lambda: (request.getfixturevalue("tfds_source"), 16, 3),
      "shapes": lambda: (get_source("shapes", "train", resolution=16), 123_456, 2)}[stream]()
  kw = dict(global_batch_size=4, seed=5, shuffle=True)
  for p in range(hosts):
    pipe = _pipeline(mesh, source, position=start, process_index=p, process_count=hosts, **kw)
    for step in range(steps):
      _assert_same(next(pipe), _old_batch(source, start + 4 * step, process_index=p,
                                          process_count=hosts, **kw))
    assert pipe.position == start + 4 * (step + 1)


def test_set_state_resumes_mid_epoch(folder_source):
  mesh = make_mesh({"data": -1}, jax.devices()[:2])
  kw = dict(global_batch_size=4, seed=1, shuffle=True)
  pipe = _pipeline(mesh, folder_source, **kw)
  next(pipe)
  next(pipe)
  for position in (14, 6):  # epoch 1 offset 4; then back, after reading, into epoch 0
    pipe.set_state({"position": position})
    for step in range(2):
      _assert_same(next(pipe), _old_batch(folder_source, position + 4 * step, **kw))
    assert pipe.get_state() == {"position": position + 8}


def test_worker_processes_give_the_same_batches(folder_source):
  mesh = make_mesh({"data": -1}, jax.devices()[:1])
  kw = dict(global_batch_size=4, seed=2, shuffle=True, process_index=1, process_count=2)
  pipe = _pipeline(mesh, folder_source, workers=2, **kw)
  pipe.set_state({"position": 6})  # before reading: the workers start once (seconds each)
  try:
    for position in (6, 10, 14):  # steps alternate between the two workers
      _assert_same(next(pipe), _old_batch(folder_source, position, **kw))
  finally:
    pipe.close()


def test_shuffled_finite_source_visits_every_example_once_per_epoch():
  order = EpochOrder(10, seed=0, shuffle=True)
  epoch0 = [order(i) for i in range(10)]
  epoch1 = [order(i) for i in range(10, 20)]
  assert sorted(epoch0) == list(range(10)) and sorted(epoch1) == list(range(10))
  assert epoch0 != epoch1
  assert [order(i) for i in range(10)] == epoch0  # back to epoch 0: the same permutation

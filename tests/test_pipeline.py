"""The input pipeline: global sharded batches, per-host slices, resumable position."""

import jax
import numpy as np

from jzoo.data import shapes
from jzoo.data.pipeline import InputPipeline
from jzoo.data.sources import get_source
from jzoo.parallel.mesh import make_mesh
from jzoo.text.tokenizer import Tokenizer


def _pipeline(mesh, **kw):
  source = get_source("shapes", "train", resolution=16)
  kw.setdefault("global_batch_size", 8)
  return InputPipeline(source, Tokenizer.load("shapes"), text_length=24, mesh=mesh, **kw)


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


def test_each_host_reads_only_its_slice():
  mesh = make_mesh({"data": -1}, jax.devices()[:1])
  full = _pipeline(mesh, shuffle=True, prefetch=0, seed=3, process_index=0, process_count=1)
  halves = [_pipeline(mesh, shuffle=True, prefetch=0, seed=3, process_index=p, process_count=2,
                      global_batch_size=8) for p in range(2)]
  for _ in range(2):
    whole = full._read_local(full.position)
    parts = [h._read_local(h.position) for h in halves]
    assert parts[0]["image"].shape[0] == 4
    np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), whole["image"])
    full.position += 8
    for h in halves:
      h.position += 8


def test_position_resumes_the_same_stream_with_prefetch():
  mesh = make_mesh({"data": -1}, jax.devices()[:2])
  a = _pipeline(mesh, seed=1, shuffle=False)
  batches = [np.asarray(next(a)["tokens"]) for _ in range(3)]
  b = _pipeline(mesh, seed=1, shuffle=False)
  b.set_state({"position": 8})
  np.testing.assert_array_equal(np.asarray(next(b)["tokens"]), batches[1])


def test_shuffled_finite_source_visits_every_example_once_per_epoch():
  from jzoo.data.pipeline import _PermutationCache
  order = _PermutationCache(10, seed=0, shuffle=True)
  epoch0 = [order(i) for i in range(10)]
  epoch1 = [order(i) for i in range(10, 20)]
  assert sorted(epoch0) == list(range(10)) and sorted(epoch1) == list(range(10))
  assert epoch0 != epoch1

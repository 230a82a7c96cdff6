"""Frozen-output caches (jzoo/data/frozen_cache.py; python -m jzoo.cache_text, jzoo.cache_codes):
one folder format for a frozen stage's outputs. A cache holds what the frozen stage computes; a
stage trained on it sees the same loss as one that runs the frozen stage, and its train step
holds none of it; a cache made by other weights, for other shapes or from other data is refused;
the caption index is on disk, exact (hash collisions included) and fast at 200,000 captions; an
interrupted build leaves the previous cache as it was."""

import json
import os
import pickle
import re
import shutil
import time

import jax
import numpy as np
import pytest

from jzoo import cache_codes, cache_text, loading, registry
from jzoo import config as config_lib
from jzoo.data import frozen_cache
from jzoo.data.frozen_cache import CacheWriter, FrozenCache, JoinedSource
from jzoo.data.pipeline import EpochOrder, InputPipeline, collate
from jzoo.data.sources import get_source
from jzoo.errors import DataError
from jzoo.io import checkpoint
from jzoo.models import params as params_lib
from jzoo.parallel import mesh as mesh_lib
from jzoo.stage import Input, code_cache_input, text_cache_input
from jzoo.text.tokenizer import Tokenizer
from jzoo.training.loop import Trainer, train_and_evaluate
from tests.model_helpers import noisy

STEPS, BATCH, ROWS = 3, 8, 20  # ROWS not a multiple of the batch: the last one is padded


def _config(model, stage, *extra):
  return config_lib.load(f"{model}:micro", [
      f"stage={stage}", f"train.steps={STEPS}", f"train.checkpoint_every={STEPS}",
      f"train.batch_size={BATCH}", "train.log_every=1", *extra])


def _train(config, workdir):
  return train_and_evaluate(config, workdir, devices=jax.devices()[:1], progress=False)


def _edit_meta(folder, **provenance):
  with open(os.path.join(folder, "meta.json")) as f:
    meta = json.load(f)
  meta["provenance"].update(provenance)
  with open(os.path.join(folder, "meta.json"), "w") as f:
    json.dump(meta, f)


# --- the format, without a model ---------------------------------------------------------------

EMB = Input("clip", "caption", (("emb", (3,), "float32"), ("n", (), "int32")), "clip.cache",
            "python -m jzoo.cache_clip")


def _rows_of(captions):
  """What a fake encoder computes from captions: a function of the caption's number."""
  i = np.array([int(c.rsplit(" ", 1)[1]) for c in captions])
  # Exact in float16, and together unique per caption number (up to ~1,000,000).
  return {"emb": np.stack([(i % 997) * 0.5, -(i // 997) * 0.25, np.full(len(i), 7.0)],
                          1).astype(np.float32),
          "n": (i % 1000).astype(np.int32)}


def _compute(batch):
  return batch, _rows_of(batch)


def _build(folder, captions, compute=_compute, batch_size=64):
  return frozen_cache.build(folder, EMB, captions, compute, {"source": "fake weights"},
                            batch_size=batch_size, bounds={"n": (0, 999)})


def test_two_hundred_thousand_captions_are_built_and_looked_up_exactly(tmp_path):
  n = 200_000
  captions = [f"a {('red', 'green', 'blue')[i % 3]} thing number {i}" for i in range(n)]
  started = time.monotonic()
  meta = _build(str(tmp_path / "c"), captions + captions[:100], batch_size=8192)  # repeats once
  built = time.monotonic() - started
  assert meta["rows"] == n
  assert (meta["arrays"]["emb"]["dtype"], meta["arrays"]["n"]["dtype"]) == ("float16", "int16")
  started = time.monotonic()
  cache = FrozenCache(str(tmp_path / "c"), EMB).check(EMB, {"source": "fake weights"})
  pick = np.random.default_rng(0).choice(n, 2000, replace=False)
  got = cache.lookup([captions[i] for i in pick])
  looked_up = time.monotonic() - started
  want = _rows_of([captions[i] for i in pick])
  assert got["emb"].dtype == np.float32 and got["n"].dtype == np.int32
  np.testing.assert_array_equal(got["n"], want["n"])
  np.testing.assert_array_equal(got["emb"], want["emb"])  # float16 on disk, exact here
  assert cache.caption(12345) == captions[12345] and len(cache) == n
  assert built < 10 and looked_up < 2, (built, looked_up)
  assert len(pickle.dumps(cache)) < 4096  # pickles as its folder: workers reopen the maps
  with pytest.raises(DataError, match=r"caption 'a purple.*\.\.\.' is not in .*cache_clip"):
    cache.lookup([captions[0], "a purple thing " + "very " * 20])


def test_a_hash_collision_still_finds_the_right_row(tmp_path, monkeypatch):
  real = frozen_cache.key_hash
  monkeypatch.setattr(frozen_cache, "key_hash", lambda data: real(data) & 0x3)  # 4 buckets
  captions = [f"caption {i}" for i in range(300)]
  _build(str(tmp_path / "c"), captions)
  cache = FrozenCache(str(tmp_path / "c"))
  hashes = np.load(tmp_path / "c" / "index_hashes.npy")
  assert len(np.unique(hashes)) == 4  # ~75 captions share each hash
  query = captions[::-1] + captions[:7]
  np.testing.assert_array_equal(cache.lookup(query)["n"], _rows_of(query)["n"])
  with pytest.raises(DataError, match="caption 'caption 300'"):
    cache.lookup(["caption 300"])  # same hash bucket as others, not in the cache
  with pytest.raises(DataError, match="given twice"):
    with CacheWriter(str(tmp_path / "d"), EMB, 2) as w:
      w.append(["caption 1", "caption 1"], _rows_of(["caption 1", "caption 1"]))


def test_an_interrupted_build_leaves_the_previous_cache_as_it_was(tmp_path):
  folder = str(tmp_path / "c")
  old = [f"old caption {i}" for i in range(100)]
  _build(folder, old)
  before = {f: open(os.path.join(folder, f), "rb").read() for f in os.listdir(folder)}
  calls = []

  def failing(batch):
    calls.append(len(batch))
    if len(calls) == 3:
      raise RuntimeError("the device went away")
    return _compute(batch)

  with pytest.raises(RuntimeError, match="went away"):
    _build(folder, [f"new caption {i}" for i in range(500)], failing)
  assert calls == [64, 64, 64]  # full batches only
  assert sorted(os.listdir(tmp_path)) == ["c"]  # no half-built sibling left behind
  assert {f: open(os.path.join(folder, f), "rb").read() for f in os.listdir(folder)} == before
  np.testing.assert_array_equal(FrozenCache(folder).lookup(old[:5])["n"], _rows_of(old[:5])["n"])
  # Mid-build the path still holds the old cache; once complete, the new one.
  seen = []

  def peeking(batch):
    seen.append(FrozenCache(folder).lookup(old[:1])["n"][0])
    return _compute(batch)

  _build(folder, [f"new caption {i}" for i in range(100)], peeking)
  assert seen == [0, 0]
  cache = FrozenCache(folder)
  assert len(cache) == 100 and cache.caption(0) == "new caption 0"
  with pytest.raises(DataError, match="not in"):
    cache.lookup(old[:1])
  # Never replaces a folder that is not a cache; an interrupted build is not a cache.
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "notes.txt").write_text("keep")
  with pytest.raises(DataError, match="exists and is not a cache"):
    _build(str(tmp_path / "mine"), old)
  with pytest.raises(DataError, match="not a frozen-output cache .no meta.json.; build one with "
                                      "python -m jzoo.cache_clip"):
    FrozenCache(str(tmp_path / "mine"), EMB)
  # A cache of the earlier text-embedding format is refused when read, replaced when rebuilt.
  legacy = tmp_path / "legacy"
  legacy.mkdir()
  (legacy / "meta.json").write_text('{"text_length": 16, "width": 32, "rows": 3, "source": ""}')
  (legacy / "captions.json").write_text("[]")
  with pytest.raises(DataError, match="older or another format.*build one with python -m "
                                      "jzoo.cache_clip"):
    FrozenCache(str(legacy), EMB)
  _build(str(legacy), old[:3])
  assert sorted(os.listdir(legacy)) == sorted(os.listdir(folder))


def test_the_writer_refuses_wrong_shapes_ranges_and_float16_overflow(tmp_path):
  grid = code_cache_input((2, 3))
  for bounds, chunk, message in (
      ((0, 63), np.zeros((2, 3, 2), np.int32), r"shape \(3, 2\) per row"),
      ((0, 63), np.full((2, 2, 3), 64), r"lie in \[64, 64\], not in \[0, 63\]"),
      ((0, 63), np.zeros((2, 2, 3), np.float32), "are float32"),
      ((0, 65535), np.full((2, 2, 3), 65535), None),
      ((0, 65536), np.full((2, 2, 3), 65536), None)):
    folder = str(tmp_path / "codes")
    try:
      with CacheWriter(folder, grid, 2, {"dataset": "d"}, bounds={"codes": bounds}) as w:
        w.append(["a", "b"], {"codes": chunk})
    except DataError as e:
      assert message and re.search(message, str(e)), str(e)
      assert not os.path.exists(folder)
      continue
    assert message is None
    cache = FrozenCache(folder)
    stored = np.load(os.path.join(folder, "codes.npy"), mmap_mode="r").dtype
    assert stored == (np.uint16 if bounds[1] < 65536 else np.int32)
    assert cache[1]["codes"].dtype == np.int32 and int(cache[1]["codes"].max()) == chunk.max()
    assert cache[1]["caption"] == "b"
    shutil.rmtree(folder)
  with pytest.raises(DataError, match="overflow float16"):
    with CacheWriter(str(tmp_path / "e"), EMB, 1, bounds={"n": (0, 9)}) as w:
      w.append(["x"], {"emb": np.full((1, 3), 1e6, np.float32), "n": np.zeros(1, np.int32)})
  with pytest.raises(DataError, match="got 1 of its 2 rows"):
    with CacheWriter(str(tmp_path / "f"), EMB, 2) as w:
      w.append(["x"], {"emb": np.zeros((1, 3)), "n": np.zeros(1, np.int32)})
  assert sorted(os.listdir(tmp_path)) == []


def test_example_keyed_rows_join_the_dataset_in_the_pipeline_with_workers_and_resume(tmp_path):
  """A cache of per-example arrays beside the pixels (as DALL-E 2's CLIP image embeddings will
  be): joined by index, limited to its rows, read in Grain workers, resumed exactly."""
  source = get_source("shapes", "train", resolution=8)
  inp = Input("clip", "example", (("image_emb", (4,), "float32"),), "clip.cache", "make it")
  rows = 12
  frozen_cache.build(str(tmp_path / "c"), inp, range(rows),
                     lambda idx: ([source.caption(i) for i in idx],
                                  {"image_emb": np.asarray(idx, np.float32)[:, None] * [1, 2, 3, 4]}),
                     {"dataset": "shapes", "split": "train"}, batch_size=5)
  cache = FrozenCache(str(tmp_path / "c")).check(inp, {"dataset": "shapes", "split": "train"})
  joined = pickle.loads(pickle.dumps(JoinedSource(source, [cache])))
  assert len(joined) == rows and joined.caption(3) == source.caption(3)
  np.testing.assert_array_equal(joined[3]["image"], source[3]["image"])
  np.testing.assert_array_equal(joined[3]["image_emb"], [3, 6, 9, 12])
  mesh = mesh_lib.make_mesh({"data": -1}, jax.devices()[:1])
  tokenizer = Tokenizer.load("shapes")
  kw = dict(global_batch_size=4, text_length=24, mesh=mesh, seed=3, shuffle=True)
  order = EpochOrder(rows, seed=3, shuffle=True)
  pipe = InputPipeline(joined, tokenizer, workers=2, **kw)
  pipe.set_state({"position": 8})  # in worker processes; the next step starts epoch 1
  try:
    for position in (8, 12):
      batch = next(pipe)
      want = collate([joined[order(position + i)] for i in range(4)], tokenizer, 24)
      assert sorted(batch) == ["image", "image_emb", "mask", "tokens"]
      for key in want:
        np.testing.assert_array_equal(np.asarray(batch[key]), want[key], err_msg=key)
  finally:
    pipe.close()
  with pytest.raises(DataError, match="row 0 has caption"):
    JoinedSource(get_source("shapes", "test", resolution=8), [cache])


# --- text encoder embeddings (caption-keyed) -----------------------------------------------------

@pytest.fixture(scope="module")
def text_cached(tmp_path_factory):
  """A micro text encoder trained a few steps, and the cache of the captions the base reads."""
  workdir = str(tmp_path_factory.mktemp("imagen"))
  _train(_config("imagen", "text_encoder", "data.shuffle=False"), workdir)
  out = os.path.join(workdir, "cache")
  cache_text.main(["--config", "imagen:micro", "--workdir", workdir, "--out", out,
                   "--limit", str(STEPS * BATCH), "--batch-size", "16"])
  return workdir, out


def _captions(n):
  source = get_source("shapes", "train", resolution=16)
  return [source.caption(i) for i in range(n)], source


def test_text_cache_holds_the_frozen_encoders_embeddings(text_cached):
  workdir, out = text_cached
  config = _config("imagen", "base")
  model = registry.build_model(config)
  inp = text_cache_input(config.text.length, model.text_encoder.width)
  cache = FrozenCache(out).check(inp, loading.input_provenance(model, inp, workdir, config,
                                                               "shapes"))
  captions, source = _captions(STEPS * BATCH)
  assert [source[i]["caption"] for i in range(4)] == captions[:4]  # caption() = the example's
  assert len(cache) == len(set(captions))
  assert cache.meta["arrays"]["text"]["dtype"] == "float16"
  assert cache.meta["arrays"]["mask"]["dtype"] == "int8"
  assert cache.provenance == {"source": f"text_encoder checkpoint step {STEPS}",
                              "tokenizer": "shapes"}
  tokens, mask = Tokenizer.load(config.text.tokenizer).encode_batch(captions, config.text.length)
  want = np.asarray(model.text_encoder.encode(checkpoint.load_params(workdir, "text_encoder"),
                                              tokens, mask))
  got = cache.lookup(captions)
  np.testing.assert_array_equal(got["mask"], mask)
  np.testing.assert_allclose(got["text"], want, rtol=1e-3, atol=1e-3 * np.abs(want).max())
  with pytest.raises(DataError, match="'a purple hexagon' is not in the text_encoder cache.*"
                                      "jzoo.cache_text"):
    cache.lookup(["a purple hexagon"])


def test_a_stage_on_cached_embeddings_sees_the_encoders_loss_and_holds_no_encoder(text_cached):
  workdir, out = text_cached
  plain = _config("imagen", "base", "data.shuffle=False")
  with_cache = _config("imagen", "base", "data.shuffle=False", f"text_encoder.cache={out}")
  model, cached_model = registry.build_model(plain), registry.build_model(with_cache)
  assert model.frozen_stages("base") == ("text_encoder",)
  assert cached_model.frozen_stages("base") == ()
  batch_spec = params_lib.abstract_batch(cached_model, "base", 2)
  assert sorted(batch_spec) == ["image", "mask", "text"] and batch_spec["text"].shape == (2, 16, 32)

  captions, source = _captions(BATCH)
  tokens, mask = Tokenizer.load(plain.text.tokenizer).encode_batch(captions, plain.text.length)
  image = np.stack([source[i]["image"] for i in range(BATCH)]).astype(np.float32) / 127.5 - 1
  rows = FrozenCache(out).lookup(captions)
  # Fresh U-Net weights zero their residual and output convolutions, so the loss would not see
  # the text at all: every weight is perturbed.
  params = noisy(params_lib.random_params(model, "base", jax.random.PRNGKey(0)), scale=0.1)
  frozen = {"text_encoder": checkpoint.load_params(workdir, "text_encoder")}
  rng = jax.random.PRNGKey(1)
  loss = float(model.loss("base", params, {"image": image, "tokens": tokens, "mask": mask},
                          rng, frozen)[0])
  loss_of = lambda t, m: float(cached_model.loss("base", params, {"image": image, "text": t,
                                                                  "mask": m}, rng, {})[0])
  assert abs(loss_of(rows["text"], rows["mask"]) - loss) < 1e-4 * loss
  assert abs(loss_of(rows["text"][::-1], rows["mask"][::-1]) - loss) > 2e-3 * loss  # others'

  mesh = mesh_lib.make_mesh(with_cache.mesh, jax.devices()[:1])
  assert Trainer(with_cache, mesh).frozen_abstract()[0] == {}  # nothing of the encoder in the step
  _train(with_cache, workdir)
  assert checkpoint.latest_step(workdir, "base") == STEPS


def test_a_stale_or_foreign_text_cache_is_refused(text_cached, tmp_path):
  workdir, out = text_cached
  stale = str(tmp_path / "stale")
  shutil.copytree(out, stale)
  _edit_meta(stale, source="text_encoder checkpoint step 1")  # made before the encoder trained on
  other_tokenizer = str(tmp_path / "tok")
  shutil.copytree(out, other_tokenizer)
  _edit_meta(other_tokenizer, tokenizer="/elsewhere/spm.model")
  codes = str(tmp_path / "codes")
  with CacheWriter(codes, code_cache_input((1,)), 1) as w:
    w.append(["x"], {"codes": np.zeros((1, 1), np.int32)})
  for cache, message in (
      (stale, "was made from source 'text_encoder checkpoint step 1', but this run needs "
              f"'text_encoder checkpoint step {STEPS}'; rebuild it with python -m jzoo.cache_text"),
      (other_tokenizer, "made from tokenizer '/elsewhere/spm.model', but this run needs 'shapes'"),
      (codes, "is a tokenizer cache .keyed by example., but --config.text_encoder.cache needs a "
              "text_encoder cache .keyed by caption.; build one with python -m jzoo.cache_text"),
      (str(tmp_path / "empty"), "not a frozen-output cache .no meta.json.; build one with "
                                "python -m jzoo.cache_text")):
    with pytest.raises(DataError, match=message):
      _train(_config("imagen", "base", f"text_encoder.cache={cache}"), workdir)
  with pytest.raises(DataError, match=r"'text' of shape \(16, 32\) per row, the model needs "
                                      r"\(12, 32\); rebuild it with python -m jzoo.cache_text"):
    FrozenCache(out).check(text_cache_input(12, 32))
  with pytest.raises(DataError, match=r"'text' of shape \(16, 32\) per row, the model needs "
                                      r"\(16, 64\)"):
    FrozenCache(out).check(text_cache_input(16, 64))


# --- tokenizer codes (example-keyed) -------------------------------------------------------------

@pytest.fixture(scope="module")
def code_cached(tmp_path_factory):
  """Micro text encoder and tokenizer trained a few steps, and the codes of ROWS train clips."""
  workdir = str(tmp_path_factory.mktemp("phenaki"))
  for stage in ("text_encoder", "tokenizer"):
    _train(_config("phenaki", stage), workdir)
  out = os.path.join(workdir, "codes")
  cache_codes.main(["--config", "phenaki:micro", "--workdir", workdir, "--out", out,
                    "--limit", str(ROWS), "--batch-size", "8", "--workers", "2"])
  return workdir, out


def _clips(model, n):
  spec = model.data_spec("tokenizer")
  source = get_source("moving_shapes", "train", size=spec.size, frames=spec.frames)
  examples = [source[i] for i in range(n)]
  video = np.stack([ex["video"] for ex in examples]).astype(np.float32) / 127.5 - 1.0
  return video, [ex["caption"] for ex in examples]


def test_code_cache_holds_the_frozen_tokenizers_codes(code_cached):
  workdir, out = code_cached
  model = registry.build_model(_config("phenaki", "transformer"))
  cache = FrozenCache(out)
  assert len(cache) == ROWS and cache.meta["arrays"]["codes"]["shape"] == list(model.code_grid)
  assert cache.meta["arrays"]["codes"]["dtype"] == "int8"  # codes 0..63 of a codebook of 64
  assert cache.provenance == {"source": f"tokenizer checkpoint step {STEPS}",
                              "dataset": "moving_shapes", "split": "train", "codebook_size": 64}
  video, captions = _clips(model, ROWS)
  want = np.asarray(model.encode_video(checkpoint.load_params(workdir, "tokenizer"), video))
  got = np.stack([cache[i]["codes"] for i in range(ROWS)])
  assert got.dtype == np.int32 and len(np.unique(want)) > 1
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(cache.rows([5, 2, 5])["codes"], want[[5, 2, 5]])
  assert [cache.caption(i) for i in range(ROWS)] == captions
  assert [cache[i]["caption"] for i in range(3)] == captions[:3]


def test_a_transformer_on_cached_codes_sees_the_same_loss_and_holds_no_tokenizer(code_cached):
  workdir, out = code_cached
  plain = _config("phenaki", "transformer")
  with_cache = _config("phenaki", "transformer", f"tokenizer.cache={out}")
  model, cached_model = registry.build_model(plain), registry.build_model(with_cache)
  assert "tokenizer" in model.frozen_stages("transformer")
  assert "tokenizer" not in cached_model.frozen_stages("transformer")
  batch_spec = params_lib.abstract_batch(cached_model, "transformer", 2)
  assert "video" not in batch_spec and batch_spec["codes"].shape == (2, *model.code_grid)

  video, captions = _clips(model, BATCH)
  tokens, mask = Tokenizer.load(plain.text.tokenizer).encode_batch(captions, plain.text.length)
  codes = FrozenCache(out).rows(range(BATCH))["codes"]
  params = noisy(params_lib.random_params(model, "transformer", jax.random.PRNGKey(0)), scale=0.1)
  frozen = {s: checkpoint.load_params(workdir, s) for s in ("text_encoder", "tokenizer")}
  rng = jax.random.PRNGKey(1)
  batch = {"tokens": tokens, "mask": mask}
  loss = float(model.loss("transformer", params, dict(batch, video=video), rng, frozen)[0])
  loss_of = lambda c: float(cached_model.loss(
      "transformer", params, dict(batch, codes=c),
      rng, {"text_encoder": frozen["text_encoder"]})[0])
  assert abs(loss_of(codes) - loss) < 1e-5 * loss
  assert abs(loss_of(codes[::-1]) - loss) > 1e-3 * loss  # other clips' codes

  mesh = mesh_lib.make_mesh(with_cache.mesh, jax.devices()[:1])
  assert "tokenizer" not in Trainer(with_cache, mesh).frozen_abstract()[0]
  _train(with_cache, workdir)
  assert checkpoint.latest_step(workdir, "transformer") == STEPS
  bundle = os.path.join(workdir, "export")  # stands alone: no path of this machine's cache
  loading.export_bundle(workdir, "phenaki-micro", cached_model.stages, with_cache, bundle)
  with open(os.path.join(bundle, "config.json")) as f:
    assert json.load(f)["tokenizer"]["cache"] == ""


def test_a_stale_or_foreign_code_cache_is_refused(code_cached, tmp_path):
  workdir, out = code_cached
  config = _config("phenaki", "transformer")
  model = registry.build_model(config)
  inp = code_cache_input(model.code_grid)
  want = loading.input_provenance(model, inp, workdir, config, "moving_shapes")
  for key, value, message in (
      ("source", "tokenizer checkpoint step 1", "was made from source 'tokenizer checkpoint step 1'"
                                                f", but this run needs 'tokenizer checkpoint step "
                                                f"{STEPS}'; rebuild it with python -m "
                                                "jzoo.cache_codes"),
      ("split", "test", "made from split 'test', but this run needs 'train'"),
      ("dataset", "shapes", "made from dataset 'shapes', but this run needs 'moving_shapes'")):
    stale = str(tmp_path / key)
    shutil.copytree(out, stale)
    _edit_meta(stale, **{key: value})
    with pytest.raises(DataError, match=message):
      _train(_config("phenaki", "transformer", f"tokenizer.cache={stale}"), workdir)
  with pytest.raises(DataError, match="not a frozen-output cache .no meta.json.; build one with "
                                      "python -m jzoo.cache_codes"):
    _train(_config("phenaki", "transformer", f"tokenizer.cache={tmp_path / 'none'}"), workdir)
  with pytest.raises(DataError, match=r"'codes' of shape \(3, 4, 4\) per row, the model needs "
                                      r"\(3, 8, 8\)"):
    FrozenCache(out).check(code_cache_input((3, 8, 8)), want)
  with pytest.raises(DataError, match="made from codebook_size 64, but this run needs 128"):
    FrozenCache(out).check(inp, dict(want, codebook_size=128))
  assert FrozenCache(out).check(inp, want).keyed_by == "example"

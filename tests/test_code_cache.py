"""Precomputed tokenizer codes (jzoo/vq/code_cache.py, python -m jzoo.cache_codes): the cache
holds what the frozen tokenizer encodes, the transformer trained on it sees the same loss as one
that encodes the clips itself, its train step holds no tokenizer, and a stale cache is refused."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from jzoo import cache_codes, loading, registry
from jzoo.models import params as params_lib
from jzoo import config as config_lib
from jzoo.data.sources import get_source
from jzoo.errors import DataError
from jzoo.parallel import mesh as mesh_lib
from jzoo.text.tokenizer import Tokenizer
from jzoo.io import checkpoint
from jzoo.training.loop import Trainer, train_and_evaluate
from jzoo.vq.code_cache import CodeCache
from tests.model_helpers import noisy

STEPS, BATCH, ROWS = 3, 8, 20  # ROWS not a multiple of the batch: the last one is padded
COMMON = [f"train.batch_size={BATCH}", "train.log_every=1"]


def _config(stage, *extra):
  return config_lib.load("phenaki:micro", [f"stage={stage}", f"train.steps={STEPS}",
                                           f"train.checkpoint_every={STEPS}", *COMMON, *extra])


def _train(config, workdir):
  train_and_evaluate(config, workdir, devices=jax.devices()[:1], progress=False)


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
  """Micro text encoder and tokenizer trained a few steps, and the codes of ROWS train clips."""
  workdir = str(tmp_path_factory.mktemp("phenaki"))
  for stage in ("text_encoder", "tokenizer"):
    _train(_config(stage), workdir)
  out = os.path.join(workdir, "codes")
  cache_codes.main(["--config", "phenaki:micro", "--workdir", workdir, "--out", out,
                    "--limit", str(ROWS), "--batch-size", "8", "--workers", "2"])
  return workdir, out


def _clips(model, n):
  spec = model.data_spec("tokenizer")
  source = get_source("moving_shapes", "train", resolution=spec.resolution, frames=spec.frames)
  examples = [source[i] for i in range(n)]
  video = np.stack([ex["video"] for ex in examples]).astype(np.float32) / 127.5 - 1.0
  return video, [ex["caption"] for ex in examples]


def test_cache_holds_the_frozen_tokenizers_codes(cached):
  workdir, out = cached
  model = registry.build_model(_config("transformer"))
  cache = CodeCache(out)
  assert len(cache) == ROWS and cache.meta["grid"] == list(model.code_grid)
  video, captions = _clips(model, ROWS)
  want = np.asarray(model.encode_video(checkpoint.load_params(workdir, "tokenizer"), video))
  got = np.stack([cache[i]["codes"] for i in range(ROWS)])
  assert got.dtype == np.int32 and len(np.unique(want)) > 1
  np.testing.assert_array_equal(got, want)
  assert [cache.caption(i) for i in range(ROWS)] == captions
  assert [cache[i]["caption"] for i in range(3)] == captions[:3]


def test_a_transformer_on_cached_codes_sees_the_same_loss_and_holds_no_tokenizer(cached):
  workdir, out = cached
  plain, with_cache = _config("transformer"), _config("transformer", f"tokenizer.cache={out}")
  model, cached_model = registry.build_model(plain), registry.build_model(with_cache)
  assert "tokenizer" in model.frozen_stages("transformer")
  assert "tokenizer" not in cached_model.frozen_stages("transformer")
  batch_spec = params_lib.abstract_batch(cached_model, "transformer", 2)
  assert "video" not in batch_spec and batch_spec["codes"].shape == (2, *model.code_grid)

  video, captions = _clips(model, BATCH)
  tokens, mask = Tokenizer.load(plain.text.tokenizer).encode_batch(captions, plain.text.length)
  codes = np.stack([CodeCache(out)[i]["codes"] for i in range(BATCH)])
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


def test_a_stale_or_foreign_cache_is_refused(cached, tmp_path):
  workdir, out = cached
  stale = str(tmp_path / "stale")
  shutil.copytree(out, stale)
  with open(os.path.join(stale, "meta.json")) as f:
    meta = json.load(f)
  meta["source"] = "tokenizer checkpoint step 1"  # another tokenizer's codes
  with open(os.path.join(stale, "meta.json"), "w") as f:
    json.dump(meta, f)
  for cache, message in ((stale, "was made from .*step 1.*rebuild"),
                         (str(tmp_path), "not a code cache.*jzoo.cache_codes")):
    with pytest.raises(DataError, match=message):
      _train(_config("transformer", f"tokenizer.cache={cache}"), workdir)
  with pytest.raises(DataError, match=r"grid \(3, 4, 4\), the model needs \(3, 8, 8\)"):
    CodeCache(out).check(grid=(3, 8, 8), codebook_size=64, dataset="moving_shapes")
  with pytest.raises(DataError, match="codebook_size 64, the model needs 128"):
    CodeCache(out).check(grid=(3, 4, 4), codebook_size=128, dataset="moving_shapes")

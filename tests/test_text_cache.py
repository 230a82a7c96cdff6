"""Precomputed text embeddings (jzoo/text/cache.py, python -m jzoo.cache_text): the cache holds
what the frozen encoder computes, a stage trained on it sees the same loss as one that runs the
encoder, and its train step holds no encoder."""

import json
import os

import jax
import numpy as np
import pytest

from jzoo import cache_text, registry
from jzoo.models import params as params_lib
from jzoo import config as config_lib
from jzoo.data.sources import get_source
from jzoo.errors import DataError
from jzoo.text.cache import TextEmbeddingCache
from jzoo.text.tokenizer import Tokenizer
from jzoo.io import checkpoint
from jzoo.training.loop import Trainer, train_and_evaluate
from jzoo.parallel import mesh as mesh_lib
from tests.model_helpers import noisy

STEPS, BATCH = 3, 8
COMMON = [f"train.batch_size={BATCH}", "data.shuffle=False", "train.log_every=1"]


def _config(stage, *extra):
  return config_lib.load("imagen:micro", [f"stage={stage}", f"train.steps={STEPS}",
                                          f"train.checkpoint_every={STEPS}", *COMMON, *extra])


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
  """A micro text encoder trained a few steps, and the cache of the captions the base reads."""
  workdir = str(tmp_path_factory.mktemp("imagen"))
  train_and_evaluate(_config("text_encoder"), workdir, devices=jax.devices()[:1], progress=False)
  out = os.path.join(workdir, "cache")
  cache_text.main(["--config", "imagen:micro", "--workdir", workdir, "--out", out,
                   "--limit", str(STEPS * BATCH), "--batch-size", "16"])
  return workdir, out


def _captions(n):
  source = get_source("shapes", "train", resolution=16)
  return [source.caption(i) for i in range(n)], source


def test_cache_holds_the_frozen_encoders_embeddings(cached):
  workdir, out = cached
  cache = TextEmbeddingCache(out)
  captions, source = _captions(STEPS * BATCH)
  assert [source[i]["caption"] for i in range(4)] == captions[:4]  # caption() = the example's
  assert len(cache) == len(set(captions))
  config = _config("base")
  model = registry.build_model(config)
  tokens, mask = Tokenizer.load(config.text.tokenizer).encode_batch(captions, config.text.length)
  want = np.asarray(model.text_encoder.encode(checkpoint.load_params(workdir, "text_encoder"),
                                              tokens, mask))
  got, got_mask = cache.lookup(captions)
  np.testing.assert_array_equal(got_mask, mask)
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())  # float16
  with pytest.raises(DataError, match="not in the text-embedding cache.*jzoo.cache_text"):
    cache.lookup(["a purple hexagon"])


def test_a_stage_on_cached_embeddings_sees_the_encoders_loss_and_holds_no_encoder(cached):
  workdir, out = cached
  plain, with_cache = _config("base"), _config("base", f"text_encoder.cache={out}")
  model, cached_model = registry.build_model(plain), registry.build_model(with_cache)
  assert model.frozen_stages("base") == ("text_encoder",)
  assert cached_model.frozen_stages("base") == ()
  assert "text" in params_lib.abstract_batch(cached_model, "base", 2)

  captions, source = _captions(BATCH)
  tokens, mask = Tokenizer.load(plain.text.tokenizer).encode_batch(captions, plain.text.length)
  image = np.stack([source[i]["image"] for i in range(BATCH)]).astype(np.float32) / 127.5 - 1
  text, cached_mask = TextEmbeddingCache(out).lookup(captions)
  # Fresh U-Net weights zero their residual and output convolutions, so the loss would not see
  # the text at all: every weight is perturbed.
  params = noisy(params_lib.random_params(model, "base", jax.random.PRNGKey(0)), scale=0.1)
  frozen = {"text_encoder": checkpoint.load_params(workdir, "text_encoder")}
  rng = jax.random.PRNGKey(1)
  loss = float(model.loss("base", params, {"image": image, "tokens": tokens, "mask": mask},
                          rng, frozen)[0])
  loss_of = lambda t, m: float(cached_model.loss("base", params, {"image": image, "text": t,
                                                                  "mask": m}, rng, {})[0])
  assert abs(loss_of(text, cached_mask) - loss) < 1e-4 * loss
  assert abs(loss_of(text[::-1], cached_mask[::-1]) - loss) > 2e-3 * loss  # other captions'

  mesh = mesh_lib.make_mesh(with_cache.mesh, jax.devices()[:1])
  assert Trainer(with_cache, mesh).frozen_abstract()[0] == {}  # nothing of the encoder in the step
  train_and_evaluate(with_cache, workdir, devices=jax.devices()[:1], progress=False)
  assert checkpoint.latest_step(workdir, "base") == STEPS


def test_a_stale_or_foreign_cache_is_refused(cached, tmp_path):
  workdir, out = cached
  stale = str(tmp_path / "stale")
  os.makedirs(stale)
  for name in os.listdir(out):
    with open(os.path.join(out, name), "rb") as src, open(os.path.join(stale, name), "wb") as dst:
      dst.write(src.read())
  with open(os.path.join(stale, "meta.json")) as f:
    meta = json.load(f)
  meta["source"] = "text_encoder checkpoint step 1"  # made before the encoder trained on
  with open(os.path.join(stale, "meta.json"), "w") as f:
    json.dump(meta, f)
  for cache, message in ((stale, "was made from .*step 1.*rebuild"),
                         (str(tmp_path), "not a text-embedding cache")):
    with pytest.raises(DataError, match=message):
      train_and_evaluate(_config("base", f"text_encoder.cache={cache}"), workdir,
                         devices=jax.devices()[:1], progress=False)
  with pytest.raises(DataError, match="text_length 16, the model needs 12"):
    TextEmbeddingCache(out).check(text_length=12, width=32)

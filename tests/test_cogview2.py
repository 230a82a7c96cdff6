"""CogView2 (micro config): CogLM's mixed masks and its cached decoding against teacher forcing,
the SR transformer's windows, LoPAR's rounds, cluster sampling, editing, and training through the
real trainer on 8 fake devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jzoo import config as config_lib
from jzoo import sample
from jzoo.configs import cogview2 as cogview2_configs
from jzoo.errors import ConfigError, UserError
from jzoo.models import cogview2
from jzoo.models.base import REGION_EDIT, Request
from jzoo.nn import patterns
from jzoo.nn.token_transformer import TokenTransformer
from jzoo.sampling import lopar
from jzoo.vq import clusters
from tests.model_helpers import caption_batch, noisy, square_batch, train_micro_stages

B = 2


def micro_config(*overrides):
  return config_lib.load("cogview2:micro", list(overrides))


@pytest.fixture(scope="module")
def model():
  return cogview2.build(micro_config())


@pytest.fixture(scope="module")
def params(model):
  batch = square_batch(model, "coglm", B)
  return noisy({stage: model.init(stage, jax.random.PRNGKey(i), batch)["params"]
                for i, stage in enumerate(model.stages)})


# --- configs -------------------------------------------------------------------------------------

def test_configs_build_and_levels():
  for variant in cogview2_configs.VARIANTS:
    for stage in ("tokenizer", "coglm", "sr"):
      assert cogview2_configs.get_config(f"{variant},stage={stage}").stage == stage
  tiny = cogview2.build(config_lib.load("cogview2:tiny_shapes"))
  assert (tiny.coarse_grid, tiny.fine_grid, tiny.output_shape) == ((8, 8), (16, 16), (64, 64))
  paper = cogview2.build(config_lib.load("cogview2:paper"))
  assert (paper.coarse_grid, paper.fine_grid) == ((20, 20), (60, 60))
  with pytest.raises(ConfigError, match="multiple of"):
    cogview2.build(micro_config("tokenizer.resolution=20"))
  with pytest.raises(ConfigError, match="sr.factor"):
    cogview2.build(micro_config("sr.factor=1"))


# --- CogLM: mixed masking ------------------------------------------------------------------------

def test_random_regions_are_the_whole_grid_or_one_rectangle():
  regions = np.asarray(cogview2.random_regions(jax.random.PRNGKey(0), 400, (8, 8), 0.5, 0.25))
  whole = regions.all(axis=1)
  assert 0.4 < whole.mean() < 0.6
  for r in regions[~whole].reshape(-1, 8, 8):
    rows, cols = np.nonzero(r.any(1))[0], np.nonzero(r.any(0))[0]
    assert len(rows) >= 2 and len(cols) >= 2  # ceil(0.25 * 8) = 2
    box = np.zeros_like(r)
    box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    np.testing.assert_array_equal(r, box)  # a filled rectangle, nothing else


def test_region_order_lists_the_region_first_in_raster_order():
  region = jnp.asarray([[False, True, False, True, True, False]])
  cells, count = cogview2.region_order(region)
  np.testing.assert_array_equal(cells, [[1, 3, 4, 0, 2, 5]])
  assert int(count[0]) == 3


def _coglm_logits(model, params, tokens, codes, region):
  image, cells, previous, _, _ = model.coglm_inputs(codes, region)
  return model.coglm.apply({"params": params["coglm"]}, tokens, image, cells, previous)


def test_coglm_masks_region_causal_context_bidirectional(model, params):
  """A region token sees the caption, all of the image outside the region (before and after it
  in raster order) and the region tokens before it, never itself or later ones."""
  n = model.coglm.num_cells  # 2x2 coarse grid
  tokens, _ = caption_batch(model.text_length, 1)
  codes = jnp.asarray([[[3, 5], [7, 9]]])
  region = jnp.asarray([[False, True, True, False]])  # cells 1, 2; context 0 and 3
  base = _coglm_logits(model, params, tokens, codes, region)
  other_context = _coglm_logits(model, params, tokens, codes.at[0, 1, 1].set(11), region)
  assert float(jnp.abs(other_context[0, 0] - base[0, 0]).max()) > 1e-4  # cell 3 is after cell 1
  later_region = _coglm_logits(model, params, tokens, codes.at[0, 1, 0].set(11), region)
  np.testing.assert_array_equal(later_region[0, 0], base[0, 0])  # cell 2 is after cell 1
  assert float(jnp.abs(later_region[0, 1] - base[0, 1]).max()) == 0  # nor its own code
  earlier = _coglm_logits(model, params, tokens, codes.at[0, 0, 1].set(11), region)
  assert float(jnp.abs(earlier[0, 1] - base[0, 1]).max()) > 1e-4  # cell 2 reads cell 1's code
  caption = _coglm_logits(model, params, tokens.at[0, 0].set(17), codes, region)
  assert float(jnp.abs(caption[0, 0] - base[0, 0]).max()) > 1e-4
  assert base.shape == (1, n, model.config.tokenizer.codebook_size)


def test_coglm_cached_decoding_equals_teacher_forcing(model, params):
  tokens, _ = caption_batch(model.text_length, B)
  codes = jax.random.randint(jax.random.PRNGKey(1), (B, *model.coarse_grid), 0, 64)
  region = jnp.asarray([[True, True, True, True], [False, True, False, True]])
  image, cells, previous, _, valid = model.coglm_inputs(codes, region)
  p = {"params": params["coglm"]}
  forced = model.coglm.apply(p, tokens, image, cells, previous)
  cache = model.coglm.apply(p, tokens, image, None, None, prefill=True)
  for k in range(model.coglm.num_cells):
    logits, cache = model.coglm.apply(p, None, None, cells[:, k], previous[:, k], cache=cache,
                                      position=k)
    np.testing.assert_allclose(logits, forced[:, k], atol=2e-5)


def test_coglm_loss_reads_the_region_only(model, params):
  batch = square_batch(model, "coglm", B)
  loss, metrics = model.loss("coglm", params["coglm"], batch, jax.random.PRNGKey(0),
                             {"tokenizer": params["tokenizer"]})
  assert np.isfinite(float(loss)) and 0 < float(metrics["region_fraction"]) <= 1


def test_text_drop_empties_the_caption(model, params):
  """text_drop=1: every caption is all padding, the loss that of the zeroed tokens."""
  batch = square_batch(model, "coglm", B)
  frozen, rng = {"tokenizer": params["tokenizer"]}, jax.random.PRNGKey(3)
  dropped = cogview2.build(micro_config("coglm.text_drop=1.0"))
  loss = dropped.loss("coglm", params["coglm"], batch, rng, frozen)[0]
  empty = dict(batch, tokens=jnp.zeros_like(batch["tokens"]))
  np.testing.assert_allclose(loss, model.loss("coglm", params["coglm"], empty, rng, frozen)[0],
                             rtol=1e-6)
  assert abs(float(loss) - float(model.loss("coglm", params["coglm"], batch, rng, frozen)[0])) > 1e-5


def test_guided_stage_one_draws_from_the_guided_logits(model, params):
  """Greedy stage 1 under guidance w picks, cell by cell, the argmax of u + w (c - u) of the
  teacher-forced caption (c) and empty-caption (u) passes over the codes it drew; w = 1 is
  exactly the unguided sampler."""
  tokens, _ = caption_batch(model.text_length, B)
  known = jnp.zeros((B, *model.coarse_grid), jnp.int32)
  region = jnp.ones((B, model.coglm.num_cells), bool)
  p, w = params["coglm"], 3.0
  codes = cogview2.sample_region(model.coglm, p, tokens, known, region, jax.random.PRNGKey(0),
                                 top_k=1, guidance=w)
  image, cells, previous, targets, _ = model.coglm_inputs(codes, region)
  forced = lambda t: model.coglm.apply({"params": p}, t, image, cells, previous)
  cond, uncond = forced(tokens), forced(jnp.zeros_like(tokens))
  np.testing.assert_array_equal(jnp.argmax(uncond + w * (cond - uncond), -1), targets)
  assert not np.array_equal(jnp.argmax(cond, -1), targets)  # guidance changed the draw
  draw = lambda g: cogview2.sample_region(model.coglm, p, tokens, known, region,
                                          jax.random.PRNGKey(5), guidance=g)
  np.testing.assert_array_equal(draw(1.0), draw(None))


# --- super-resolution: windows, LoPAR --------------------------------------------------------------

def test_direct_sr_attends_only_inside_its_windows():
  """One layer, radius 1 in the 8x8 fine grid, cross radius 1 onto the 4x4 coarse grid: the
  logits of fine cell (3, 3) move with the fine tokens within 1 and the coarse tokens within 1
  of (1, 1), and with nothing else."""
  net = TokenTransformer(16, 32, 1, 16, 32, grid=(1, 8, 8), pattern=patterns.Nearby((0, 1, 1)),
                         text=None, causal=False, condition_radius=(0, 1, 1), condition_layers=0)
  fine = jax.random.randint(jax.random.PRNGKey(0), (1, 1, 8, 8), 0, 16)
  coarse = jax.random.randint(jax.random.PRNGKey(1), (1, 1, 4, 4), 0, 16)
  variables = noisy(net.init(jax.random.PRNGKey(2), fine, condition=coarse))
  at = lambda f, c: net.apply(variables, f, condition=c)[0, 0, 3, 3]
  base = at(fine, coarse)
  for i in range(8):
    for j in range(8):
      moved = float(jnp.abs(at(fine.at[0, 0, i, j].add(1) % 16, coarse) - base).max()) > 0
      assert moved == (abs(i - 3) <= 1 and abs(j - 3) <= 1), (i, j)
  for i in range(4):
    for j in range(4):
      moved = float(jnp.abs(at(fine, coarse.at[0, 0, i, j].add(1) % 16) - base).max()) > 0
      assert moved == (abs(i - 1) <= 1 and abs(j - 1) <= 1), (i, j)


def test_lopar_fills_every_position_in_its_round():
  """Greedy logits that name how many [MASK]s the canvas shows: a position drawn in round r
  gets the number of positions of rounds >= r (no initial canvas: nothing later is drawn yet)
  or of round r alone (an initial canvas shows its tokens elsewhere), so every position is
  drawn in its own round, once."""
  priority = lopar.priority_map((6, 6), (3, 3)).reshape(-1)
  initial = jnp.full((1, 36), 5, jnp.int32)
  logits_fn = lambda t: jax.nn.one_hot(jnp.broadcast_to(jnp.sum(t == 40, 1, keepdims=True),
                                                        t.shape), 41)
  sizes = np.bincount(np.asarray(priority))
  for start, per_round in ((None, np.cumsum(sizes[::-1])[::-1]), (initial, sizes)):
    out = lopar.decode(logits_fn, jnp.zeros((1, 36), jnp.int32), jnp.zeros((1, 36), bool),
                       jax.random.PRNGKey(0), priority=priority, mask_id=40, temperature=0.0,
                       initial=start)
    np.testing.assert_array_equal(out[0], per_round[np.asarray(priority)])
  np.testing.assert_array_equal(lopar.round_values((60, 40, 20), priority), [60, 40, 20, 20, 20])


def test_super_resolve_keeps_given_fine_tokens(model, params):
  coarse = jnp.asarray([[[1, 2], [3, 4]]] * B)
  n = int(np.prod(model.fine_grid))
  known = jnp.full((B, n), 7, jnp.int32)
  given = jnp.arange(n)[None].repeat(B, 0) % 3 == 0
  tokens, mask = caption_batch(model.text_length, B)
  fine = model.super_resolve(params, coarse, tokens, mask, jax.random.PRNGKey(0), known, given)
  np.testing.assert_array_equal(np.asarray(fine).reshape(B, n)[np.asarray(given)], 7)
  assert int(jnp.max(fine)) < model.mask_id


# --- cluster sampling ------------------------------------------------------------------------------

def test_kmeans_and_top_clusters_filter():
  vectors = jnp.asarray([[0.0, 0], [0.1, 0], [5, 5], [5.1, 5], [9, 0], [9, 0.1]])
  labels = np.asarray(clusters.kmeans_labels(vectors, 3))
  assert labels[0] == labels[1] and labels[2] == labels[3] and labels[4] == labels[5]
  assert len(set(labels.tolist())) == 3
  logits = jnp.asarray([[3.0, 2.9, 1.0, 0.5, 2.5, 2.4]])
  kept = np.isfinite(np.asarray(clusters.top_clusters_filter(logits, labels, 3, 2)))[0]
  np.testing.assert_array_equal(kept, [True, True, False, False, True, True])
  assert np.isfinite(np.asarray(clusters.top_clusters_filter(logits, labels, 3, 0))).all()


# --- generation and editing ------------------------------------------------------------------------

def test_generate_and_edit_keep_the_outside(model, params):
  batch = square_batch(model, "coglm", B)
  req = Request(batch["tokens"], batch["mask"])
  out = jax.jit(lambda p, r: model.generate(p, r, jax.random.PRNGKey(0)))(params, req)
  assert out.shape == (B, 16, 16, 3) and out.dtype == jnp.uint8
  clustered = cogview2.build(micro_config("sample.clusters=4", "sample.cluster_top_k=2"))
  assert clustered.generate(params, req, jax.random.PRNGKey(0)).shape == (B, 16, 16, 3)
  assert model.can(REGION_EDIT)
  region = np.zeros((B, 16, 16), bool)
  region[:, 2:9, 3:12] = True
  known = jnp.asarray(np.asarray(batch["image"]))
  edit = Request(batch["tokens"], batch["mask"], extra={"known": known, "region": jnp.asarray(region)})
  edited = np.asarray(model.generate(params, edit, jax.random.PRNGKey(1)))
  original = np.round((np.asarray(known) + 1) * 127.5).astype(np.uint8)
  np.testing.assert_array_equal(edited[~region], original[~region])


@pytest.mark.parametrize("mask, message", [
    (np.zeros((16, 16)), "empty"), (np.ones((16, 16)), "whole image"),
    (np.ones((8, 8)), "the image's size")])
def test_bad_edit_masks_are_one_line_errors(model, mask, message):
  with pytest.raises(UserError, match=message):
    model.check_edit((16, 16, 3), mask.astype(bool))
  with pytest.raises(UserError, match="edits 16x16"):
    model.check_edit((32, 32, 3), np.ones((32, 32), bool))


# --- training through the real trainer ---------------------------------------------------------------

def test_micro_trains_on_8_devices_samples_and_edits(tmp_path, capsys):
  workdir = str(tmp_path / "cogview2")
  train_micro_stages("cogview2", ("tokenizer", "coglm", "sr"), workdir, 12)
  out = str(tmp_path / "x.png")
  sample.main(["--model", "cogview2-micro", "--checkpoint", workdir, "--out", out])
  with Image.open(out) as im:
    assert im.size == (16, 16)
  image = np.zeros((16, 16, 3), np.uint8)
  image[2:6, 2:6] = (255, 0, 0)
  Image.fromarray(image).save(tmp_path / "in.png")
  mask = np.zeros((16, 16), np.uint8)
  mask[8:16, 8:16] = 255
  Image.fromarray(mask).save(tmp_path / "region.png")
  edited = str(tmp_path / "edited.png")
  sample.main(["--model", "cogview2-micro", "--checkpoint", workdir, "--image",
               str(tmp_path / "in.png"), "--mask", str(tmp_path / "region.png"), "--prompt",
               "a small blue circle in the bottom right corner", "--out", edited])
  result = np.asarray(Image.open(edited).convert("RGB"))
  np.testing.assert_array_equal(result[:8], image[:8])
  np.testing.assert_array_equal(result[:, :8], image[:, :8])
  Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "empty.png")
  with pytest.raises(SystemExit) as e:
    sample.main(["--model", "cogview2-micro", "--checkpoint", workdir, "--image",
                 str(tmp_path / "in.png"), "--mask", str(tmp_path / "empty.png"), "--prompt",
                 "a small blue circle in the bottom right corner", "--out", edited])
  assert e.value.code == 2 and "--mask is empty" in capsys.readouterr().err

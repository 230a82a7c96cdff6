"""Karlo (dalle2:karlo): a diffusers UnCLIPPipeline folder run by jzoo's modules, against the
golden run of diffusers itself (scripts/make_karlo_pipeline_golden.py: the same starting latents
and the same variance noise at every step), and the one-line errors of a broken folder."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jzoo import config as config_lib
from jzoo import pipeline, registry, sample
from jzoo.errors import CheckpointError, ConfigError, PromptError
from jzoo.models import karlo
from jzoo.models import params as params_lib
from tests import cli_helpers

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
FOLDER = os.path.join(GOLDEN, "karlo_pipeline")


@pytest.fixture(scope="module")
def golden():
  return dict(np.load(os.path.join(GOLDEN, "karlo_pipeline_golden.npz")))


@pytest.fixture(scope="module")
def pipe():
  return pipeline.load("dalle2-karlo", checkpoint=FOLDER)


def test_a_karlo_folder_loads_as_dalle2_karlo(pipe):
  assert pipe.name == "dalle2-karlo" and pipe.stages == karlo.COMPONENTS
  assert pipe.output_shape == (32, 32) and pipe.model.text_length == 16
  assert pipe.model.config.karlo.folder == os.path.abspath(FOLDER)


def test_the_tokenizer_gives_transformers_ids(pipe, golden):
  ids, mask = pipe.tokenizer.encode_batch(list(golden["prompts"]), pipe.model.text_length)
  np.testing.assert_array_equal(ids, golden["ids"])
  np.testing.assert_array_equal(mask, golden["mask"])


def test_sampling_matches_unclip_pipeline(pipe, golden):
  """3 prior, 3 decoder and 3 super-resolution steps at guidance 4 and 8 from diffusers' latents
  and variance noise: every stage's result within 1e-4 of UnCLIPPipeline's (the bar is 1e-3)."""
  last = lambda a: np.concatenate([a, a[-1:]], 0)  # the last step (t = 0) draws no noise
  noise = {"prior": golden["prior_latents"], "decoder": golden["decoder_latents"],
           "super_res": golden["super_res_latents"], "prior_steps": last(golden["prior_noise"]),
           "decoder_steps": last(golden["decoder_noise"]),
           "super_res_steps": last(golden["super_res_noise"])}
  steps, guidance = tuple(int(s) for s in golden["steps"]), tuple(float(g) for g in golden["guidance"])
  out = jax.jit(lambda p, i, m: pipe.model.sample(p, i, m, jax.random.PRNGKey(0), steps=steps,
                                                  guidance=guidance, noise=noise))(
      pipe.params, jnp.asarray(golden["ids"]), jnp.asarray(golden["mask"]))
  np.testing.assert_allclose(out["image_embeddings"], golden["image_embeddings"], atol=1e-4)
  np.testing.assert_allclose(out["decoder_images"], golden["decoder_images"], atol=1e-4)
  images = np.clip(np.asarray(out["images"]) * 0.5 + 0.5, 0, 1)
  np.testing.assert_allclose(images, golden["images"], atol=1e-4)
  assert golden["images"].std() > 0.05  # not a constant image: the comparison has content


def test_sample_cli_runs_the_whole_pipeline(tmp_path, capsys):
  out = str(tmp_path / "k.png")
  code, stdout, err = cli_helpers.run_main(sample.main, [
      "--model", "dalle2-karlo", "--checkpoint", FOLDER, "--prompt", "a red circle",
      "--steps", "2", "--out", out], capsys)
  assert code == 0, err
  assert stdout.strip() == out
  image = np.asarray(Image.open(out))
  assert image.shape == (32, 32, 3) and image.dtype == np.uint8


def test_a_too_long_prompt_is_refused_not_truncated(pipe):
  with pytest.raises(PromptError, match="this model takes at most 16"):
    pipe(["a red circle " * 10])


def _broken(tmp_path, edit):
  folder = tmp_path / "karlo"
  shutil.copytree(FOLDER, folder)
  edit(folder)
  return str(folder)


def _set(path, **changes):
  with open(path) as f:
    d = json.load(f)
  d.update(changes)
  with open(path, "w") as f:
    json.dump(d, f)


@pytest.mark.parametrize("edit,message", [
    (lambda f: os.remove(f / "decoder" / "config.json"), "decoder/config.json: missing"),
    (lambda f: os.remove(f / "prior_scheduler" / "scheduler_config.json"),
     "prior_scheduler/scheduler_config.json: missing"),
    (lambda f: os.remove(f / "super_res_last" / "diffusion_pytorch_model.safetensors"),
     "no diffusion_pytorch_model.safetensors"),
    (lambda f: os.remove(f / "text_encoder" / "model.safetensors"), "no model.safetensors"),
    (lambda f: _set(f / "prior" / "config.json", embedding_dim=48),
     "the prior's embedding_dim is 48 but the text encoder's projection_dim is 32"),
    (lambda f: _set(f / "decoder" / "config.json", block_out_channels=[16, 48]),
     "has shape"),
    (lambda f: _set(f / "model_index.json", _class_name="StableDiffusionPipeline"),
     "jzoo imports UnCLIPPipeline folders"),
])
def test_a_broken_folder_is_a_one_line_error_naming_the_file(tmp_path, edit, message):
  folder = _broken(tmp_path, edit)
  with pytest.raises(CheckpointError, match=message) as e:
    pipeline.load("dalle2-karlo", checkpoint=folder)
  assert "\n" not in str(e.value)


def test_the_cli_exits_2_on_a_broken_folder(tmp_path, capsys):
  folder = _broken(tmp_path, lambda f: os.remove(f / "text_proj" / "config.json"))
  code, _, err = cli_helpers.run_main(sample.main, ["--model", "dalle2-karlo", "--checkpoint",
                                                    folder], capsys)
  assert code == 2 and "text_proj/config.json: missing" in err
  assert len(err.strip().splitlines()) == 1


def test_without_checkpoint_the_cli_asks_for_the_folder(capsys):
  code, _, err = cli_helpers.run_main(sample.main, ["--model", "dalle2-karlo"], capsys)
  assert code == 2 and "pass --checkpoint DIR, their folder (docs/models/dalle2-karlo.md)" in err
  assert "jzoo.train" not in err


def test_karlo_is_sampled_not_trained():
  model = registry.build_model(config_lib.load("dalle2:karlo"))
  assert all(model.stage(s).untrainable for s in model.stages)
  with pytest.raises(ConfigError, match="imported for sampling"):
    model.loss("prior", {}, {}, jax.random.PRNGKey(0), {})


def test_the_train_cli_says_karlo_is_not_trained_here(tmp_path, capsys):
  from jzoo import train
  code, _, err = cli_helpers.run_main(train.main, ["--config", "dalle2:karlo", "--workdir",
                                                   str(tmp_path)], capsys)
  assert code == 2 and "imported for sampling" in err and len(err.strip().splitlines()) == 1


def test_without_a_folder_the_sizes_are_karlos():
  """dalle2:karlo alone has Karlo's published sizes (python -m jzoo.plan; the Karlo README: a
  1B prior, a 900M decoder, a 700M upsampler) and the ViT-L/14 text tower."""
  model = registry.build_model(config_lib.load("dalle2:karlo"))
  counts = {s: params_lib.count_params(params_lib.abstract_params(model, s)) for s in model.stages}
  assert model.output_shape == (256, 256) and model.text_length == 77
  assert 123e6 < counts["text_encoder"] < 124e6  # CLIP ViT-L/14's text tower + projection
  for stage, published in (("prior", 1e9), ("decoder", 900e6), ("super_res_first", 700e6)):
    assert abs(counts[stage] / published - 1) < 0.1, (stage, counts[stage])
  assert counts["super_res_first"] == counts["super_res_last"]
  with pytest.raises(CheckpointError, match="pass --checkpoint DIR"):
    model.text_tokenizer()

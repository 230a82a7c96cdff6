"""jzoo.load pipelines, declared capabilities, config migration and the CLIs' new-user errors.
Nothing here compiles a model: generation itself is checked by the model tests, the contract
tests and test_bundled."""

import io
import json

import pytest

import jzoo
from jzoo import config as config_lib
from jzoo import loading, pipeline, registry
from jzoo.errors import CapabilityError, CheckpointError, ConfigError
from jzoo.models import base
from jzoo import sample
from tests import cli_helpers


def test_load_gives_a_pipeline_that_says_what_it_can_do():
  pipe = jzoo.load("phenaki-tiny-shapes")
  assert isinstance(pipe, pipeline.Pipeline) and pipe.name == "phenaki-tiny-shapes"
  assert pipe.stages == ("text_encoder", "tokenizer", "transformer")
  assert set(pipe.params) == set(pipe.stages)
  assert {base.TEXT_TO_VIDEO, base.STORY, base.IMAGE_TO_VIDEO} <= pipe.capabilities
  assert pipe.config.sample.candidates == 4
  assert pipe.with_sampling(candidates=1).config.sample.candidates == 1
  assert pipe.with_sampling("candidates=2").params is pipe.params  # the same weights
  with pytest.raises(ConfigError, match="nosuch"):
    pipe.with_sampling(nosuch=1)
  imagen = jzoo.load()
  assert imagen.name == registry.DEFAULT_MODEL and imagen.capabilities == {base.TEXT_TO_IMAGE}


def test_a_request_the_model_cannot_serve_names_what_it_can():
  model = registry.build_model(config_lib.load("imagen:micro"))
  with pytest.raises(CapabilityError, match=r"cannot do story; it can: text-to-image"):
    pipeline.generate(model, {}, ["a red circle moving right"] * 2, story=True, name="imagen-micro")
  with pytest.raises(CapabilityError, match="cannot do video-prediction"):
    pipeline.generate(model, {}, ["x"], start=[[[[0, 0, 0]]]], name="imagen-micro")


def test_out_of_grammar_prompts_warn_and_in_grammar_ones_do_not():
  images = registry.build_model(config_lib.load("imagen:micro"))
  videos = registry.build_model(config_lib.load("phenaki:micro"))
  readme = "a small blue square to the left of a red circle"  # two-object captions carry no size
  assert "docs/SHAPES.md" in pipeline.out_of_grammar(images, readme)
  assert pipeline.out_of_grammar(images, "a blue square to the left of a red circle") is None
  assert pipeline.out_of_grammar(images, "a red circle moving right") is not None  # a video caption
  assert pipeline.out_of_grammar(videos, "a red circle moving right") is None
  pipe = pipeline.Pipeline(images, {}, "imagen-micro")
  warn = io.StringIO()
  pipe.check_prompts([readme, "a large red circle in the center"], warn=warn)
  assert warn.getvalue().count("\n") == 1 and readme in warn.getvalue()


def run_main(argv, capsys):
  return cli_helpers.run_main(sample.main, argv, capsys)


def _export_folder(tmp_path, family):
  folder = tmp_path / f"{family}-export"
  folder.mkdir()
  (folder / "config.json").write_text(config_lib.load(f"{family}:micro").to_json())
  return str(folder)


def test_checkpoint_of_another_model_says_which_model_it_holds(tmp_path, capsys):
  folder = _export_folder(tmp_path, "phenaki")
  with pytest.raises(CheckpointError, match=r"holds 'phenaki-micro' .* not 'imagen-micro'; pass "
                                            r"--model phenaki-micro"):
    pipeline.load("imagen-micro", checkpoint=folder)
  # Without a name, the folder's own model; a folder is also a name_or_dir.
  assert pipeline.load(checkpoint=folder).name == "phenaki-micro"
  assert pipeline.load(folder).model.config.model == "phenaki"
  code, _, err = run_main(["--model", "imagen-micro", "--checkpoint", folder], capsys)
  assert code == 2 and "holds 'phenaki-micro'" in err and len(err.strip().splitlines()) == 1


def test_a_prompts_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
  path = tmp_path / "prompts.txt"
  path.write_bytes(b"a red circle \xff\xfe in the center\n")
  code, _, err = run_main(["--model", "imagen-micro", "--random-weights", "--prompts-file",
                           str(path)], capsys)
  assert code == 2 and "not UTF-8" in err and len(err.strip().splitlines()) == 1


def test_migrate_brings_an_old_bundle_up_to_todays_keys():
  old = json.loads(loading.load_config("phenaki-tiny-shapes").to_json())
  for block, key in (("sample", "candidates"), ("sample", "cpu_rows"), ("tokenizer", "cache"),
                     ("train", "freeze"), ("transformer", "text_positions")):
    del old[block][key]
  del old["xla_cpu_ynn_fusions"]
  new = config_lib.migrate(old)
  assert new["sample"]["candidates"] == 1 and new["sample"]["cpu_rows"] == 0  # old behaviour
  assert new["tokenizer"]["cache"] == "" and new["train"]["freeze"] == ""
  assert new["transformer"]["text_positions"] is False and new["xla_cpu_ynn_fusions"] == ""
  assert "candidates" not in config_lib.migrate(
      json.loads(loading.load_config("imagen-tiny-shapes").to_json()))["sample"]  # per family
  kept = config_lib.migrate(json.loads(loading.load_config("phenaki-tiny-shapes").to_json()))
  assert kept["sample"]["candidates"] == 4  # keys it has are kept


def test_sample_help_keeps_the_story_example_and_documents_every_flag(capsys):
  code, out, _ = run_main(["--help"], capsys)
  assert code == 0
  assert '--prompt "a red circle moving right" --prompt "a red circle moving down"' in out
  words = " ".join(out.split())  # argparse wraps the flags' help
  assert "same seed gives the same output" in words and "gif for video models" in words


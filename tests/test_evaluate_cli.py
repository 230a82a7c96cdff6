"""python -m jzoo.evaluate and evaluate(): known accuracies on a fake model, report files, CLI errors."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from jzoo import evaluate as evaluate_lib
from jzoo import registry
from jzoo.data import shapes
from jzoo.errors import UserError
from jzoo.eval import report as report_lib
from jzoo.models.base import RECONSTRUCT, TEXT_TO_IMAGE, TEXT_TO_VIDEO, Model
from jzoo.pipeline import Pipeline
from jzoo.text.tokenizer import Tokenizer
from tests import cli_helpers


class FakeModel(Model):
  """Renders the dataset's own example for each caption (through the real generate path: tokens in,
  pixels out, under jit), corrupted for the examples in `corrupt`: so the right accuracy is known."""

  stages = ("fake",)
  extra_capabilities = ()

  def __init__(self, task, output_shape, split, num, corrupt):
    # Models compare (and jit caches) by type and config, so everything that changes what
    # `generate` does goes in the config.
    super().__init__(ml_collections.ConfigDict(dict(
        text=dict(tokenizer="shapes", length=32), sample=dict(steps=1, guidance=0.0),
        fake=dict(task=task, output_shape=list(output_shape), split=split, num=num,
                  corrupt=sorted(corrupt)))))
    self.capabilities = frozenset({task, *self.extra_capabilities})
    self._shape, self.split, self.corrupt = tuple(output_shape), split, set(corrupt)
    self.index = {}
    for i in range(num):
      self.index.setdefault(self._scene(i)["caption"], i)
    self.tokenizer = Tokenizer.load("shapes")

  @property
  def output_shape(self):
    return self._shape

  def _scene(self, i):
    if self.task == TEXT_TO_VIDEO:
      return shapes.video_scene(self.split, i, self._shape[-1], self._shape[0])
    return shapes.image_scene(self.split, i, self._shape[-1])

  def _render(self, caption):
    i = self.index[caption]
    objects = self._scene(i)["objects"]
    if self.task == TEXT_TO_VIDEO:
      video = shapes.render_video(objects, self._shape[-1], self._shape[0])
      return video[::-1] if i in self.corrupt else video  # played backwards: wrong directions
    if i in self.corrupt:  # the first object in a colour the caption does not name
      used = {o["color"] for o in objects}
      objects = [dict(objects[0], color=next(c for c in shapes.COLORS if c not in used))] + objects[1:]
    return shapes.render_image(objects, self._shape[-1])

  def generate(self, params, request, rng):
    def render(tokens):
      return np.stack([self._render(self.tokenizer.decode(t)) for t in np.asarray(tokens)])
    out = jax.ShapeDtypeStruct((request.tokens.shape[0],) + self._shape + (3,), jnp.uint8)
    return jax.pure_callback(render, out, request.tokens)


def _expected(model, num):
  return [model.index[model._scene(i)["caption"]] not in model.corrupt for i in range(num)]


def _check_files(report, out_dir, marks=True):
  assert set(os.listdir(out_dir)) == {"report.json", "report.md", "grid.png"}
  with open(os.path.join(out_dir, "report.json")) as f:
    saved = json.load(f)
  assert saved["accuracy"] == report["accuracy"] and saved["num"] == report["num"]
  if "samples" in report:
    assert [s["caption"] for s in saved["samples"]] == [s["caption"] for s in report["samples"]]
  with open(os.path.join(out_dir, "report.md")) as f:
    md = f.read()
  assert f"| accuracy | {report['accuracy']:.3f} ({report['correct']}/{report['num']}) |" in md
  assert md.count("| FAIL |") == report["num"] - report["correct"]
  grid = np.asarray(Image.open(os.path.join(out_dir, "grid.png")))
  assert grid.ndim == 3 and grid.shape[2] == 3
  if not marks:  # samples of random weights could hold any colour
    return saved
  marks = {tuple(p) for p in grid.reshape(-1, 3)}  # a green frame per pass, a red one per fail
  assert (report_lib._PASS in marks) == (report["correct"] > 0)
  assert (report_lib._FAIL in marks) == (report["correct"] < report["num"])
  return saved


def test_evaluate_images_gives_the_known_accuracy(tmp_path):
  num, corrupt = 12, {1, 4, 5, 9}
  model = FakeModel(TEXT_TO_IMAGE, (64, 64), "test", num, corrupt)
  report = evaluate_lib.evaluate(Pipeline(model, {}, "fake"), "test", num, seed=0,
                                 out_dir=str(tmp_path), batch_size=5,
                                 name="fake")
  expected = _expected(model, num)
  assert report["correct"] == sum(expected) and report["accuracy"] == pytest.approx(np.mean(expected))
  assert [s["correct"] for s in report["samples"]] == expected
  assert report["attributes"]["color"] == pytest.approx(np.mean(expected))
  assert report["attributes"]["shape"] == report["attributes"]["count"] == 1.0
  forms = [model._scene(i)["form"] for i in range(num)]
  for form, block in report["forms"].items():
    assert block["num"] == forms.count(form)
    assert block["correct"] == sum(e for e, f in zip(expected, forms) if f == form)
  assert "relation" in report["forms"]["two"]["attributes"] and "size" in report["forms"]["one"]["attributes"]
  assert report["frechet_distance"] > 0 and "frechet_video_distance" not in report
  _check_files(report, tmp_path)


def test_evaluate_a_perfect_model_on_the_compositional_split():
  model = FakeModel(TEXT_TO_IMAGE, (32, 32), "compositional", 6, corrupt=())
  report = evaluate_lib.evaluate(Pipeline(model, {}, "fake"), "compositional", 6)
  assert report["accuracy"] == 1.0 and report["output_shape"] == [32, 32]
  assert report["frechet_distance"] == pytest.approx(0.0, abs=1e-6)  # the real examples themselves
  assert "files" not in report


def test_evaluate_videos_gives_the_known_accuracy(tmp_path):
  num, corrupt = 6, {0, 3}
  model = FakeModel(TEXT_TO_VIDEO, (8, 32, 32), "test", num, corrupt)
  report = evaluate_lib.evaluate(Pipeline(model, {}, "fake"), "test", num, out_dir=str(tmp_path))
  expected = _expected(model, num)
  assert [s["correct"] for s in report["samples"]] == expected
  assert report["attributes"]["direction"] == pytest.approx(np.mean(expected))
  assert report["attributes"]["color"] == report["attributes"]["count"] == 1.0
  assert report["frechet_distance"] > 0 and report["frechet_video_distance"] > 0
  saved = _check_files(report, tmp_path)
  assert saved["dataset"] == "moving_shapes" and saved["output_shape"] == [8, 32, 32]


class FakeTokenizerModel(FakeModel):
  """A video model with a visual tokenizer whose round trip shifts every value by 0.1."""

  extra_capabilities = (RECONSTRUCT,)

  def reconstruct(self, params, video):
    return video - 0.1


def test_evaluate_reports_the_tokenizer_psnr():
  model = FakeTokenizerModel(TEXT_TO_VIDEO, (4, 32, 32), "test", 5, corrupt=())
  report = evaluate_lib.evaluate(Pipeline(model, {}, "fake"), "test", 5, batch_size=2)
  assert report["tokenizer_psnr"] == pytest.approx(10 * np.log10(4 / 0.01), abs=1e-3)
  assert report["tokenizer_accuracy"] == 1.0  # a shift by 0.1 keeps every colour readable
  assert "tokenizer PSNR 26.02 dB" in evaluate_lib.headline(dict(report, model="fake"))
  assert "tokenizer_psnr" not in evaluate_lib.evaluate(Pipeline(FakeModel(TEXT_TO_VIDEO, (4, 32, 32),
                                                                 "test", 2, ()), {}, "fake"), "test", 2)


CLIP_TINY = os.path.join(os.path.dirname(__file__), "golden", "clip_tiny")


def test_evaluate_adds_fid_and_clip_score():
  """With the metric networks given (random Inception weights, the tiny golden CLIP), the report
  carries FID (0 for a model that renders the real samples) and the CLIP score of its pairs."""
  from jzoo.text import clip as clip_lib
  from jzoo.eval import inception
  model = FakeModel(TEXT_TO_VIDEO, (4, 32, 32), "test", 3, corrupt=())
  fid_params = inception.params_from_state_dict(inception.random_state_dict(0))
  clip = clip_lib.load_clip(CLIP_TINY)
  report = evaluate_lib.evaluate(Pipeline(model, {}, "fake"), "test", 3, fid_params=fid_params,
                                 clip=clip)
  assert report["fid"] == pytest.approx(0.0, abs=1e-3)
  middle = [shapes.render_video(model._scene(i)["objects"], 32, 4)[2] for i in range(3)]
  want = clip_lib.clip_score(middle, [model._scene(i)["caption"] for i in range(3)], *clip)[0]
  assert report["clip_score"] == pytest.approx(want) and 0 <= want <= 100
  assert "FID 0.00" in evaluate_lib.headline(dict(report, model="fake"))
  assert "fid" not in evaluate_lib.evaluate(Pipeline(model, {}, "fake"), "test", 2)


def test_evaluate_from_a_later_caption_scores_those_captions():
  # Settings are tuned on captions the cards' scores (the first 500) skip: `first` moves the window.
  model = FakeModel(TEXT_TO_IMAGE, (32, 32), "test", 9, corrupt={4, 7})
  report = evaluate_lib.evaluate(Pipeline(model, {}, "fake"), "test", 5, first=3)
  want = _expected(model, 8)[3:]
  assert [s["index"] for s in report["samples"]] == [3, 4, 5, 6, 7]
  assert [s["caption"] for s in report["samples"]] == [model._scene(i)["caption"] for i in range(3, 8)]
  assert [s["correct"] for s in report["samples"]] == want and report["first"] == 3
  assert report["correct"] == sum(want) < 5


@pytest.mark.parametrize("split,num,first,message", [
    ("train", 4, 0, "unknown split"), ("test", 0, 0, "positive"), ("test", 2001, 0, "runs past the 2000"),
    ("test", 2, 1999, "runs past the 2000"), ("test", 2, -1, "non-negative")])
def test_evaluate_rejects_bad_requests(split, num, first, message):
  model = FakeModel(TEXT_TO_IMAGE, (32, 32), "test", 1, corrupt=())
  with pytest.raises(UserError, match=message):
    evaluate_lib.evaluate(Pipeline(model, {}, "fake"), split, num, first=first)


def run_main(argv, capsys):
  return cli_helpers.run_main(evaluate_lib.main, argv, capsys)


@pytest.mark.parametrize("argv,message", [
    (["--model", "nosuch"], "unknown model 'nosuch'"),
    (["--model", "imagen-micro", "--split", "train"], "unknown split 'train'"),
    (["--model", "imagen-micro", "--num", "0"], "--num must be a positive integer"),
    (["--model", "imagen-micro", "--first", "-3"], "--first must be a non-negative integer"),
    (["--model", "imagen-micro", "--steps", "-1"], "--steps must be a positive integer"),
    (["--model", "imagen-micro", "--fid-weights", "/no/such.pth"], "/no/such.pth"),
    (["--model", "imagen-micro", "--clip", "/no/such/clip"], "no such CLIP folder"),
    (["--model", "imagen-micro", "--config.text.length=8"], "only sampling settings change"),
])
def test_cli_user_errors_are_one_line(argv, message, capsys):
  code, out, err = run_main(argv, capsys)
  assert code == 2
  assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_cli_on_imagen_micro(tmp_path, capsys):
  out_dir = tmp_path / "eval"
  code, out, err = run_main(["--model", "imagen-micro", "--random-weights", "--num", "4", "--steps", "2",
                             "--out", str(out_dir), "--json"], capsys)
  assert code == 0, err
  summary = json.loads(out)  # one JSON object
  assert summary["model"] == "imagen-micro" and summary["num"] == 4 and summary["steps"] == 2
  assert 0 <= summary["accuracy"] <= 1 and summary["frechet_distance"] >= 0
  assert "samples" not in summary
  saved = _check_files(summary, out_dir, marks=False)
  assert len(saved["samples"]) == 4


def test_cli_names_a_checkpoint_by_its_path(tmp_path, capsys):
  # An export folder (here the bundled one's): the report names it, not the --model default.
  folder = registry.MODELS["imagen-tiny-shapes"].weights_dir
  code, out, err = run_main(["--checkpoint", folder + "/", "--num", "1", "--steps", "1",
                             "--out", str(tmp_path / "eval"), "--json"], capsys)
  assert code == 0, err
  assert json.loads(out)["model"] == os.path.normpath(folder)

"""python -m jzoo.sample: outputs where promised, same seed same output, one-line errors with exit 2."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jzoo import sample
from tests import cli_helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO = ["--model", "imagen-micro", "--random-weights", "--steps", "2"]


def run_main(argv, capsys):
  return cli_helpers.run_main(sample.main, argv, capsys)


def test_writes_a_png_and_the_same_seed_gives_the_same_image(tmp_path, capsys):
  a, b, c = (str(tmp_path / n) for n in ("a.png", "b.png", "c.png"))
  for path, seed in ((a, 1), (b, 1), (c, 2)):
    code, out, err = run_main(MICRO + ["--prompt", "a small red circle in the center", "--out", path,
                                       "--seed", str(seed)], capsys)
    assert code == 0, err
    assert out.strip() == path
  img_a, img_b, img_c = (np.asarray(Image.open(p)) for p in (a, b, c))
  assert img_a.shape == (32, 32, 3) and img_a.dtype == np.uint8
  np.testing.assert_array_equal(img_a, img_b)
  assert np.any(img_a != img_c)


def test_prompts_file_writes_one_file_per_line(tmp_path, capsys):
  prompts = tmp_path / "p.txt"
  prompts.write_text("a small red circle in the center\na blue square above a green triangle\n")
  out_dir = tmp_path / "out"
  code, out, err = run_main(MICRO + ["--prompts-file", str(prompts), "--out", str(out_dir)], capsys)
  assert code == 0, err
  assert sorted(os.listdir(out_dir)) == ["0000.png", "0001.png"]
  assert out.split() == [str(out_dir / "0000.png"), str(out_dir / "0001.png")]


def test_num_makes_a_directory(tmp_path, capsys):
  code, out, err = run_main(MICRO + ["--num", "3", "--out", str(tmp_path / "d")], capsys)
  assert code == 0, err
  assert sorted(os.listdir(tmp_path / "d")) == ["0000.png", "0001.png", "0002.png"]


@pytest.mark.parametrize("argv,message", [
    (["--model", "nosuch"], "unknown model 'nosuch'; choose one of: "),
    (MICRO + ["--prompt", "  "], "empty prompt"),
    (MICRO + ["--prompt", "a small red circle " * 20], "tokens (with eos); this model takes at most 16"),
    (MICRO + ["--prompts-file", "/nonexistent/p.txt"], "prompts file '/nonexistent/p.txt' does not exist"),
    (MICRO + ["--steps", "0"], "--steps must be a positive integer"),
    (MICRO + ["--num", "-1"], "--num must be a positive integer"),
    (["--model", "imagen-micro", "--checkpoint", "/nonexistent/ckpt"],
     "checkpoint directory '/nonexistent/ckpt' does not exist"),
    (["--model", "imagen-micro"], "has no bundled weights; pass --checkpoint DIR"),
    (MICRO + ["--format", "gif"], "makes images; use --format png"),
    (MICRO + ["--config.model=nuwa"], "only sampling settings change at sampling time"),
    (MICRO + ["--config.sample.nosuch=1"], "unknown config key 'sample.nosuch'"),
    (MICRO + ["--config.sample.sampler=euler"], "sampler"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
  code, out, err = run_main(argv, capsys)
  assert code == 2
  lines = err.strip().splitlines()
  assert len(lines) == 1, err
  assert message in lines[0]
  assert "Traceback" not in err


def test_config_sample_overrides_change_the_sampler(tmp_path, capsys):
  images = []
  for name, extra in (("a.png", []), ("b.png", ["--config.sample.sampler=ddpm"]),
                      ("c.png", ["--config.sample.sampler", "ddpm"])):
    path = str(tmp_path / name)
    code, out, err = run_main(MICRO + ["--out", path] + extra, capsys)
    assert code == 0, err
    images.append(np.asarray(Image.open(path)))
  assert np.any(images[0] != images[1])  # the override reached the sampler
  np.testing.assert_array_equal(images[1], images[2])  # both flag spellings


def test_unwritable_output_path(tmp_path, capsys):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  code, _, err = run_main(MICRO + ["--out", str(blocker / "sub" / "x.png")], capsys)
  assert code == 2 and "cannot write to" in err and str(blocker) in err
  assert len(err.strip().splitlines()) == 1


def test_corrupt_checkpoint_names_the_path(tmp_path, capsys):
  stage_dir = tmp_path / "text_encoder" / "checkpoints" / "5"
  stage_dir.mkdir(parents=True)
  (stage_dir / "garbage").write_text("not a checkpoint")
  code, _, err = run_main(["--model", "imagen-micro", "--checkpoint", str(tmp_path),
                           "--out", str(tmp_path / "x.png")], capsys)
  assert code == 2
  assert str(tmp_path) in err and len(err.strip().splitlines()) == 1


def test_list_prints_the_table(capsys):
  code, out, _ = run_main(["--list"], capsys)
  assert code == 0
  header, *rows = out.strip().splitlines()
  assert header.split() == ["name", "task", "output", "params", "bundled"]
  micro = [r for r in rows if r.startswith("imagen-micro")][0].split()
  assert micro[1] == "text-to-image" and micro[2] == "32x32" and int(micro[3].replace(",", "")) > 0


def test_module_entry_point_exit_code():
  result = subprocess.run([sys.executable, "-m", "jzoo.sample", "--model", "nosuch"],
                          capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      result.stderr.strip()] and "unknown model" in result.stderr


# --- image-conditioned tasks (unCLIP) ----------------------------------------------------------
DALLE2 = ["--model", "dalle2-micro", "--random-weights", "--steps", "2"]


@pytest.fixture
def square_png(tmp_path):
  image = np.zeros((32, 32, 3), np.uint8)
  image[8:20, 10:22] = (200, 30, 30)
  path = tmp_path / "in.png"
  Image.fromarray(image).save(path)
  return str(path)


def test_image_variations_write_one_png_each(tmp_path, square_png, capsys):
  out_dir = tmp_path / "variations"
  code, out, err = run_main(DALLE2 + ["--image", square_png, "--num", "2", "--out", str(out_dir)],
                            capsys)
  assert code == 0, err
  assert out.split() == [str(out_dir / "0000.png"), str(out_dir / "0001.png")]
  a, b = (np.asarray(Image.open(out_dir / f)) for f in ("0000.png", "0001.png"))
  assert a.shape == (32, 32, 3) and np.any(a != b)  # two draws, not one image twice


@pytest.mark.parametrize("extra,message", [
    (["--image", "/nonexistent/in.png"], "--image '/nonexistent/in.png' does not exist"),
    (["--image", "NOT_AN_IMAGE"], "as an image or GIF"),
    (["--image2", "SQUARE"], "--image2 needs --image"),
    (["--alpha", "0.5"], "--alpha needs --image"),
    (["--image", "SQUARE", "--alpha", "1.5", "--image2", "SQUARE"], "--alpha must be in [0, 1]"),
    (["--image", "SQUARE", "--image2", "SQUARE", "--edit", "a red circle"], "not both"),
    (["--image", "SQUARE", "--edit", "a red circle"], "--edit needs one --prompt"),
    (["--image", "SQUARE", "--alpha", "0.5"], "--alpha needs --image2 or --edit"),
])
def test_image_task_bad_input_is_one_line_and_exit_2(extra, message, tmp_path, square_png, capsys):
  junk = tmp_path / "junk.png"
  junk.write_text("not a png")
  extra = [square_png if a == "SQUARE" else str(junk) if a == "NOT_AN_IMAGE" else a for a in extra]
  code, out, err = run_main(DALLE2 + extra, capsys)
  assert code == 2
  lines = err.strip().splitlines()
  assert len(lines) == 1 and message in lines[0], err


def test_image_tasks_need_a_model_that_has_them(square_png, capsys):
  code, out, err = run_main(MICRO + ["--image", square_png], capsys)
  assert code == 2 and "cannot do image-variations" in err, err

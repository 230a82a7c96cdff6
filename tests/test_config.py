import os

import pytest

from jzoo import config as config_lib
from jzoo.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_file_and_packaged_names_give_the_same_config():
  by_file = config_lib.load(os.path.join(ROOT, "tests", "toy_model.py"))
  assert by_file.train.steps == 6
  packaged = config_lib.load("imagen:micro")
  from_file = config_lib.load(os.path.join(ROOT, "configs", "imagen.py") + ":micro")
  assert packaged.to_dict() | {"config_ref": None} == from_file.to_dict() | {"config_ref": None}


def test_overrides_are_typed():
  c = config_lib.load(os.path.join(ROOT, "tests", "toy_model.py"),
                      ["train.steps=100", "optim.lr=1", "data.shuffle=false", "mesh.data=2"])
  assert c.train.steps == 100 and isinstance(c.train.steps, int)
  assert c.optim.lr == 1.0 and isinstance(c.optim.lr, float)
  assert c.data.shuffle is False
  assert c.mesh.data == 2


@pytest.mark.parametrize("override,message", [
    ("train.stepz=3", "unknown config key 'train.stepz'"),
    ("nope.steps=3", "unknown config key 'nope'"),
    ("train.steps", "needs the form"),
    ("train.steps=abc", "train.steps"),
])
def test_bad_overrides_are_config_errors(override, message):
  with pytest.raises(ConfigError, match=message):
    config_lib.load(os.path.join(ROOT, "tests", "toy_model.py"), [override])


def test_unknown_config_name_and_file():
  with pytest.raises(ConfigError, match="no packaged config 'nosuch'"):
    config_lib.load("nosuch:micro")
  with pytest.raises(ConfigError, match="does not exist"):
    config_lib.load("configs/nosuch.py:micro")


def test_locked_config_rejects_new_keys():
  c = config_lib.load("imagen:micro")
  with pytest.raises(AttributeError):
    c.train.new_key = 1


def test_split_config_overrides():
  rest, overrides = config_lib.split_config_overrides(
      ["--config", "x:y", "--config.train.steps=3", "--config.optim.lr", "0.1", "--workdir", "w"])
  assert rest == ["--config", "x:y", "--workdir", "w"]
  assert overrides == ["train.steps=3", "optim.lr=0.1"]


def test_overriding_the_running_stages_training_block_reaches_the_run():
  c = config_lib.load("nuwa:tiny_shapes", ["stage=tokenizer", "tokenizer.train.batch_size=32",
                                           "tokenizer.train.lr=0.002",
                                           "transformer.train.batch_size=64"])
  assert (c.train.batch_size, c.optim.lr) == (32, 0.002)  # the other stage's block: no effect
  c = config_lib.load("nuwa:tiny_shapes", ["stage=transformer", "tokenizer.train.batch_size=32",
                                           "transformer.train.batch_size=64"])
  assert c.train.batch_size == 64
  c = config_lib.load("nuwa:tiny_shapes", ["stage=transformer", "transformer.train.steps=5",
                                           "train.steps=7"])
  assert c.train.steps == 7  # a direct train.* override wins

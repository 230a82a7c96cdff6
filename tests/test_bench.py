import pytest

from jzoo import bench
from tests.test_training import toy_config


def test_training_throughput_is_measured():
  result = bench.bench_training(toy_config(), "denoiser", steps=2)
  assert result["stage"] == "denoiser" and result["batch_size"] == 8
  assert result["step_s"] > 0
  assert result["examples_per_s"] == pytest.approx(8 / result["step_s"])


def test_bad_arguments_are_user_errors():
  with pytest.raises(SystemExit) as e:
    bench.main(["--num", "0"])
  assert e.value.code == 2
  with pytest.raises(SystemExit) as e:
    bench.main(["--only", "nosuch"])
  assert e.value.code == 2


def test_each_stage_is_timed_at_its_own_batch_size():
  from jzoo import config as config_lib
  config = config_lib.load("phenaki:micro", ["tokenizer.train.batch_size=16",
                                             "transformer.train.batch_size=2"])
  # The config as a whole carries its running stage's (transformer) batch.
  assert config.stage == "transformer" and config.train.batch_size == 2
  assert config_lib.stage_train_defaults(config, "tokenizer").batch_size == 16
  result = bench.bench_training(config, "tokenizer", steps=1)
  assert result["stage"] == "tokenizer" and result["batch_size"] == 16
  assert config_lib.stage_train_defaults(config, "no_such_stage") is None

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

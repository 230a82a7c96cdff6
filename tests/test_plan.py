"""python -m jzoo.plan: abstract parameter counts, and AOT compilation for a TPU topology."""

import importlib.util
import json
import os

import pytest

from jzoo import config as config_lib
from jzoo import plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(ROOT, "tests", "toy_model.py")
needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="libtpu not installed (pip install -e '.[tpu]')")


def test_parameter_counts_are_abstract_and_exact():
  config = config_lib.load(TOY)
  result = plan.plan(config)
  # Denoiser(vocab=640, width=16): embed 640*16; conv 3*3*3*16+16; dense 16*16+16;
  # 16*64+64; 64*16+16; conv 3*3*16*3+3.
  expected = 640 * 16 + (27 * 16 + 16) + (16 * 16 + 16) + (16 * 64 + 64) + (64 * 16 + 16) + (144 * 3 + 3)
  assert result["params"] == {"denoiser": expected}
  assert result["text_encoder_params"] == 0


def test_json_output(capsys):
  plan.main(["--config", TOY, "--json"])
  out = json.loads(capsys.readouterr().out)
  assert set(out) >= {"params", "text_encoder_params"}


@pytest.mark.tpu_aot
@needs_libtpu
def test_aot_compile_for_a_tpu_topology(capsys):
  plan.main(["--config", TOY, "--topology", "v5e:2x2", "--mesh", "data=2,fsdp=2", "--batch", "8",
             "--json"])
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert out["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1}
  assert out["fits"] is True and 0 < out["per_chip_bytes"] < out["hbm_bytes"] == 16 * 2**30
  assert out["flops_per_step"] > 0 and 0 < out["mfu_at_roofline"] <= 1


@needs_libtpu
def test_not_fitting_gets_a_suggestion(monkeypatch):
  # A chip with almost no HBM: nothing fits, and the report says so instead of failing.
  monkeypatch.setitem(plan.CHIPS, "v5e", plan.Chip("tiny", 1024, 197e12, 8e11))
  result = plan.plan(config_lib.load(TOY, ["train.batch_size=8"]), "v5e:2x2")
  assert result["fits"] is False and result["suggestion"] is None


def test_bad_topology_is_a_user_error():
  with pytest.raises(plan.UserError, match="unknown topology"):
    plan.plan(config_lib.load(TOY), "h100:8")


@pytest.mark.tpu_aot
@needs_libtpu
def test_a_step_the_compiler_refuses_gets_a_suggestion(capsys):
  # At this batch the TPU compiler itself refuses the step (its temporaries exceed the HBM):
  # reported as not fitting, with what it needed, and half the batch fits.
  plan.main(["--config", TOY, "--topology", "v5e:2x2", "--mesh", "data=1,fsdp=4",
             "--batch", "786432", "--config.train.remat=full", "--json"])
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert out["fits"] is False and out["memory"] is None and "HBM" in out["compile_error"]
  assert out["per_chip_bytes"] > out["hbm_bytes"]
  assert out["suggestion"]["change"] == "--config.train.batch_size=393216"
  assert out["suggestion"]["per_chip_bytes"] < out["hbm_bytes"]


def test_out_of_memory_message_is_read():
  message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
             "temporaries (26.92G) exceeds available HBM (15.75G).")
  assert plan._out_of_memory(message) == int(26.92 * 2**30)
  assert plan._out_of_memory("INVALID_ARGUMENT: something else") is None

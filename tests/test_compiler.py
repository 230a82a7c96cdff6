"""jzoo.parallel.compiler: the per-config XLA CPU options of the train step and generation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jzoo import config as config_lib
from jzoo.errors import ConfigError
from jzoo.parallel import compiler


@pytest.fixture(autouse=True)
def fresh_probe(monkeypatch):
  monkeypatch.delenv("JZOO_XLA_DEFAULTS", raising=False)
  compiler._cpu_options.cache_clear()
  yield
  compiler._cpu_options.cache_clear()


def conv_net(x, w):
  for _ in range(3):
    x = jax.nn.silu(jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC")))
    x = x - x.mean(axis=(1, 2, 3), keepdims=True)
  return x


def inputs():
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 32))  # big enough for XLA to use YNNPACK
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 32, 32)) * 0.1
  return x, w


def test_imagen_asks_for_eltwise_and_reduce_only_others_keep_xla_defaults():
  assert config_lib.load("imagen:micro").xla_cpu_ynn_fusions == "eltwise,reduce"
  for name in ("phenaki:micro", "nuwa:micro"):
    assert config_lib.load(name).xla_cpu_ynn_fusions == ""
  assert compiler.ynn_fusions_of({"model": "written before the key existed"}) == ""


def test_options_are_applied_and_change_the_compiled_program_not_the_result():
  options = compiler.compiler_options("eltwise,reduce")
  if options is None:
    pytest.skip("this jaxlib refuses xla_cpu_experimental_ynn_fusion_type")
  assert options == {compiler.YNN_FUSION_OPTION:
                     "LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_REDUCE"}
  x, w = inputs()
  tuned = compiler.jit(conv_net, ynn_fusions="eltwise,reduce")
  plain = jax.jit(conv_net)
  # XLA's default hands the convolutions to YNNPACK; with the option they stay with XLA
  # (the program differs), and the numbers agree to float32 rounding.
  assert tuned.lower(x, w).compile().as_text() != plain.lower(x, w).compile().as_text()
  np.testing.assert_allclose(tuned(x, w), plain(x, w), rtol=1e-5, atol=1e-5)


def test_empty_setting_and_the_escape_hatches_keep_xla_defaults(monkeypatch):
  assert compiler.compiler_options("") is None
  monkeypatch.setenv("JZOO_XLA_DEFAULTS", "1")
  assert compiler.compiler_options("eltwise,reduce") is None
  monkeypatch.delenv("JZOO_XLA_DEFAULTS")
  compiler._cpu_options.cache_clear()
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot")
  assert compiler.compiler_options("eltwise,reduce") is None  # the user's flag wins


def test_an_option_xla_refuses_is_dropped_not_fatal(monkeypatch):
  monkeypatch.setattr(compiler, "YNN_FUSION_OPTION", "xla_cpu_no_such_option_in_any_jaxlib")
  assert compiler.compiler_options("eltwise") is None
  x, w = inputs()
  np.testing.assert_allclose(compiler.jit(conv_net, ynn_fusions="eltwise")(x, w),
                             jax.jit(conv_net)(x, w), rtol=1e-6)


def test_a_misspelt_fusion_kind_is_a_one_line_config_error():
  with pytest.raises(ConfigError, match="convolution.*not among.*individual_convolution"):
    compiler.compiler_options("eltwise,convolution")


def test_trainer_and_generation_compile_with_the_configs_options(monkeypatch):
  from jzoo import pipeline
  from jzoo.parallel import mesh as mesh_lib
  from jzoo.training.loop import Trainer
  seen = []
  real = compiler.jit

  def spy(fun, **kwargs):
    seen.append(kwargs.get("ynn_fusions"))
    return real(fun, **kwargs)

  monkeypatch.setattr(compiler, "jit", spy)
  config = config_lib.load("imagen:micro")
  Trainer(config, mesh_lib.make_mesh(config.mesh)).jit_step(None)  # builds, does not compile
  pipeline._jitted_generate.cache_clear()
  pipeline._jitted_generate(compiler.ynn_fusions_of(config))
  pipeline._jitted_generate.cache_clear()
  assert seen == ["eltwise,reduce", "eltwise,reduce"]


def test_cpu_chunked_runs_rows_a_few_at_a_time_with_the_same_result():
  calls = []

  def fn(x, pair):
    calls.append(x.shape[0])  # traced once per distinct chunk shape
    return {"sum": x @ w + pair[0] * pair[1][:, None], "rows": x.sum(1)}

  w = jax.random.normal(jax.random.PRNGKey(1), (5, 3))  # closed over: not split
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 5))  # every argument is split by rows
  pair = (jax.random.normal(jax.random.PRNGKey(2), (6, 3)), jnp.arange(6.0))
  direct = fn(x, pair)
  for rows, chunk in [(2, 2), (4, 2), (6, 6), (0, 6), (7, 1)]:  # the chunk is gcd(6, rows)
    calls.clear()
    out = jax.jit(compiler.cpu_chunked(fn, rows))(x, pair)
    assert calls == [chunk]
    # Eager against jitted chunks: XLA may fuse the sum differently (a few float32 ulps).
    np.testing.assert_allclose(out["sum"], direct["sum"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["rows"], direct["rows"], rtol=1e-5, atol=1e-6)

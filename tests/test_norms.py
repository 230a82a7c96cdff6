"""jzoo.nn.layers.GroupNorm against flax's nn.GroupNorm: same parameters, same outputs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jzoo.nn import layers


@pytest.mark.parametrize("shape,groups", [((2, 8, 8, 32), 8), ((3, 4, 6, 6, 16), 32),
                                          ((2, 5, 12), 4), ((2, 16, 16, 6), 32)])
def test_group_norm_equals_flax_and_keeps_its_parameter_layout(shape, groups):
  x = 3.0 * jax.random.normal(jax.random.PRNGKey(0), shape) + 1.5
  ours = layers.GroupNorm(groups)
  params = ours.init(jax.random.PRNGKey(1), x)["params"]
  c = shape[-1]
  assert jax.tree_util.tree_map(jnp.shape, nn.unbox(params)) == {
      "GroupNorm_0": {"scale": (c,), "bias": (c,)}}
  params = {"GroupNorm_0": {"scale": jnp.linspace(0.5, 2.0, c), "bias": jnp.linspace(-1, 1, c)}}
  ref = nn.GroupNorm(num_groups=layers.num_groups(c, groups), epsilon=1e-5)
  want = ref.apply({"params": params["GroupNorm_0"]}, x)
  np.testing.assert_allclose(ours.apply({"params": params}, x), want, rtol=1e-5, atol=1e-5)
  # and the gradients, through a non-linear loss
  loss = lambda f: lambda x: jnp.sum(jnp.sin(f(x)))  # noqa: E731
  g_ours = jax.grad(loss(lambda x: ours.apply({"params": params}, x)))(x)
  g_ref = jax.grad(loss(lambda x: ref.apply({"params": params["GroupNorm_0"]}, x)))(x)
  np.testing.assert_allclose(g_ours, g_ref, rtol=1e-4, atol=1e-5)


def test_group_norm_returns_its_dtype_with_float32_statistics():
  x = (100.0 + jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 8))).astype(jnp.bfloat16)
  ours = layers.GroupNorm(4, dtype=jnp.bfloat16)
  y = ours.apply(ours.init(jax.random.PRNGKey(1), x), x)
  assert y.dtype == jnp.bfloat16
  # normalised per group: mean 0, variance 1 (bfloat16 output precision)
  y = np.asarray(y, np.float32).reshape(2, -1, 4, 2)
  np.testing.assert_allclose(y.mean(axis=(1, 3)), 0.0, atol=0.05)
  np.testing.assert_allclose(y.var(axis=(1, 3)), 1.0, atol=0.05)

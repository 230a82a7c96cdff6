"""jzoo.nn.selection.kth_largest against numpy's sort."""

import jax.numpy as jnp
import numpy as np
import pytest

from jzoo.nn import selection


def rows(seed):
  rng = np.random.default_rng(seed)
  x = (rng.normal(size=(3, 4, 257)) * 10.0 ** rng.integers(-30, 30, (3, 4, 257))).astype(np.float32)
  x[0, 0, :100] = 0.5          # ties
  x[0, 1, ::3] = 0.0           # zeros, positive and negative
  x[0, 1, 1::3] = -0.0
  x[1, 0, :5] = [np.inf, -np.inf, np.finfo(np.float32).max, -np.finfo(np.float32).tiny, 1e-45]
  x[2, 3] = -np.abs(x[2, 3])   # all negative
  return x.astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1])
def test_kth_largest_equals_sorting(seed):
  x = rows(seed)
  ks = (1, 2, 100, 101, 256, 257)
  got = np.asarray(selection.kth_largest(jnp.asarray(x), ks))
  want = -np.sort(-x, axis=-1)[..., [k - 1 for k in ks]]
  assert got.shape == (3, 4, len(ks))
  # exact: the selected values are the row's own values, bit for bit (-0.0 and 0.0 aside)
  np.testing.assert_array_equal(got, want)


def test_kth_largest_rejects_k_outside_the_row():
  with pytest.raises(ValueError, match="1..5"):
    selection.kth_largest(jnp.zeros((2, 5)), (0,))
  with pytest.raises(ValueError, match="1..5"):
    selection.kth_largest(jnp.zeros((2, 5)), (6,))

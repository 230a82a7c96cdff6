"""Fréchet distances: zero on a set against itself, growing with a shift, right on known Gaussians."""

import numpy as np
import pytest
from scipy import linalg

from jzoo.data import shapes
from jzoo.eval import frechet


def test_closed_forms():
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
  assert frechet.frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-6)
  shift = rng.normal(size=6)
  # Same covariance, mean moved: the distance is the squared shift, exactly.
  assert frechet.frechet_distance(feats, feats + shift) == pytest.approx(shift @ shift, rel=1e-9)
  # Diagonal covariances: sum of (sigma_a - sigma_b)^2.
  var_a, var_b = rng.uniform(0.1, 2, size=5), rng.uniform(0.1, 2, size=5)
  value = frechet.frechet_distance_from_stats(np.zeros(5), np.diag(var_a), np.ones(5), np.diag(var_b))
  assert value == pytest.approx(5 + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2), rel=1e-9)


def test_agrees_with_scipy_sqrtm_when_well_conditioned():
  rng = np.random.default_rng(1)
  a = rng.normal(size=(300, 8))
  b = rng.normal(size=(300, 8)) @ rng.normal(size=(8, 8)) * 0.5 + 1.0
  (mu_a, cov_a), (mu_b, cov_b) = frechet.gaussian_stats(a), frechet.gaussian_stats(b)
  covmean = linalg.sqrtm(cov_a @ cov_b).real
  expected = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * covmean)
  assert frechet.frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)


def test_singular_covariances():
  # Few samples in many dimensions with constant features, as in a small evaluation.
  rng = np.random.default_rng(2)
  feats = np.concatenate([rng.normal(size=(4, 20)), np.zeros((4, 30))], axis=1)
  assert frechet.frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-6)
  value = frechet.frechet_distance(feats, feats + 0.1)
  assert np.isfinite(value) and value == pytest.approx(50 * 0.01, rel=1e-6)
  with pytest.raises(ValueError, match="N >= 2"):
    frechet.frechet_distance(feats[:1], feats)


def test_image_features_distance_grows_with_the_shift():
  images = [shapes.image_example("test", i)["image"] for i in range(120)]
  real = frechet.features(images[:60])
  assert real.shape == (60, frechet.IMAGE_FEATURE_DIM)
  np.testing.assert_array_equal(real, frechet.features(images[:60]))  # deterministic
  assert frechet.frechet_distance(real, real) == pytest.approx(0.0, abs=1e-6)
  # Shift the set: objects slide right by k pixels (and out of the canvas): the distance grows with k.
  def slide(x, k):
    y = np.zeros_like(x)
    y[:, k:] = x[:, :x.shape[1] - k]
    return y
  dists = [frechet.frechet_distance(real, frechet.features([slide(x, k) for x in images[:60]]))
           for k in (4, 8, 16)]
  assert 0.01 < dists[0] < dists[1] < dists[2], dists
  # Another 60 real samples are nearer than all of them painted red.
  other = frechet.features(images[60:])
  red = frechet.features([np.stack([x.max(-1), 0 * x[..., 1], 0 * x[..., 2]], -1) for x in images[60:]])
  assert frechet.frechet_distance(real, other) < frechet.frechet_distance(real, red)
  # In feature space: twice the shift, four times the distance.
  delta = 0.05 * np.ones(real.shape[1])
  one, two = (frechet.frechet_distance(real, real + k * delta) for k in (1, 2))
  assert 0 < one and two == pytest.approx(4 * one, rel=1e-6)


def test_video_features_distance():
  videos = [shapes.video_example("test", i)["video"] for i in range(60)]
  real = frechet.features(videos[:30])
  assert real.shape == (30, frechet.VIDEO_FEATURE_DIM)
  assert frechet.frechet_distance(real, real) == pytest.approx(0.0, abs=1e-6)
  same = frechet.frechet_distance(real, frechet.features(videos[30:]))
  still = frechet.frechet_distance(real, frechet.features([np.repeat(v[:1], len(v), 0) for v in videos[30:]]))
  assert same < still, (same, still)
  # A video whose objects move up has its motion features where an image set would not.
  v = shapes.video_example("test", 0)
  feats = frechet.video_features(v["video"])
  motion = feats[frechet.IMAGE_FEATURE_DIM:]
  direction = v["objects"][0]["direction"]
  assert motion[2 * len(shapes.COLORS) + shapes.DIRECTIONS.index(direction)] >= 1

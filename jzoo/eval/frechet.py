"""Fréchet distances on the alignment evaluator's features (FID / FVD without a learned network).

The features are fixed and deterministic, so numbers are comparable across
machines and runs, and they measure what the `shapes` datasets are about:

- image (118 values): for each of the 7 palette colours, the fraction of each
  cell of a 4x4 grid that it covers (112), then the detector's object count,
  its count per shape (3) and per size (2);
- video (137 values): the image features averaged over frames (118), then for
  each palette colour the displacement (dx, dy)/S of its coverage centroid
  from the first to the last frame (14), the tracker's object count per
  motion direction (4) and its object count (1).

`frechet_distance` is the usual ||mu_a - mu_b||^2 + Tr(Sa + Sb - 2 (Sa Sb)^1/2).
"""

import numpy as np
from scipy import linalg

from jzoo.data import shapes
from jzoo.eval import alignment

GRID = 4  # coverage histograms over a GRID x GRID spatial grid
IMAGE_FEATURE_DIM = len(alignment.COLOR_NAMES) * GRID * GRID + 1 + len(shapes.SHAPES) + len(shapes.SIZES)
VIDEO_FEATURE_DIM = IMAGE_FEATURE_DIM + 2 * len(alignment.COLOR_NAMES) + len(shapes.DIRECTIONS) + 1


def _color_coverage(image):
  """[7, H, W] coverage of each palette colour."""
  index, coverage = alignment.classify_pixels(image)
  ks = np.arange(len(alignment.COLOR_NAMES))[:, None, None]
  return np.where(index[None] == ks, coverage[None], 0.0)


def _grid_means(maps):
  """[C, H, W] -> [C, GRID, GRID] cell means (cells as even as the side allows)."""
  h, w = maps.shape[-2:]
  rows = np.minimum(np.arange(h) * GRID // h, GRID - 1)
  cols = np.minimum(np.arange(w) * GRID // w, GRID - 1)
  sums = np.zeros(maps.shape[:-2] + (GRID, GRID))
  np.add.at(sums, (Ellipsis, rows[:, None], cols[None, :]), maps)
  counts = np.zeros((GRID, GRID))
  np.add.at(counts, (rows[:, None], cols[None, :]), 1.0)
  return sums / counts


def image_features(image, detections=None):
  """The fixed feature vector [IMAGE_FEATURE_DIM] of one uint8 [S,S,3] image."""
  cover = _grid_means(_color_coverage(image)).reshape(-1)
  dets = alignment.detect_objects(image) if detections is None else detections
  stats = [len(dets)] + [sum(d["shape"] == s for d in dets) for s in shapes.SHAPES]
  stats += [sum(d["size"] == s for d in dets) for s in shapes.SIZES]
  return np.concatenate([cover, np.asarray(stats, np.float64)])


def video_features(video):
  """The fixed feature vector [VIDEO_FEATURE_DIM] of one uint8 [T,S,S,3] video."""
  video = np.asarray(video)
  size = video.shape[1]
  detections = [alignment.detect_objects(f) for f in video]
  frames = np.stack([image_features(f, d) for f, d in zip(video, detections)]).mean(axis=0)
  first, last = _color_coverage(video[0]), _color_coverage(video[-1])
  ys, xs = np.mgrid[:size, :size] + 0.5
  motion = []
  for a, b in zip(first, last):
    if a.sum() > 0 and b.sum() > 0:
      ca = np.array([(a * xs).sum(), (a * ys).sum()]) / a.sum()
      cb = np.array([(b * xs).sum(), (b * ys).sum()]) / b.sum()
      motion.extend((cb - ca) / size)
    else:
      motion.extend((0.0, 0.0))
  objects = alignment.track_objects(video, detections)
  motion += [sum(o["direction"] == d for o in objects) for d in shapes.DIRECTIONS]
  motion.append(len(objects))
  return np.concatenate([frames, np.asarray(motion, np.float64)])


def features(samples):
  """[N, D] features of uint8 images [N,S,S,3] or videos [N,T,S,S,3] (a list of them also works)."""
  samples = [np.asarray(x) for x in samples]
  if not samples:
    raise ValueError("no samples to compute features of")
  fn = video_features if samples[0].ndim == 4 else image_features
  return np.stack([fn(x) for x in samples])


def gaussian_stats(feats):
  """(mean [D], covariance [D, D]) of features [N, D], N >= 2."""
  feats = np.asarray(feats, np.float64)
  if feats.ndim != 2 or feats.shape[0] < 2:
    raise ValueError(f"need features [N, D] with N >= 2 samples, got shape {feats.shape}")
  return feats.mean(axis=0), np.cov(feats, rowvar=False).reshape(feats.shape[1], feats.shape[1])


def _clean(eigenvalues):
  """Eigenvalues at the level of rounding noise (either sign) -> 0: a singular covariance's zeros
  would otherwise add sqrt(noise) each to the trace."""
  noise = max(eigenvalues.max(initial=0.0), 0.0) * eigenvalues.size * np.finfo(np.float64).eps
  return np.where(eigenvalues > noise, eigenvalues, 0.0)


def _psd_sqrt(cov):
  """Symmetric square root of a positive semi-definite matrix."""
  w, v = linalg.eigh(cov)
  return (v * np.sqrt(_clean(w))) @ v.T


def frechet_distance_from_stats(mu_a, cov_a, mu_b, cov_b):
  """Fréchet distance between the Gaussians N(mu_a, cov_a) and N(mu_b, cov_b).

  Tr((Sa Sb)^1/2) is computed as Tr((Sa^1/2 Sb Sa^1/2)^1/2), whose argument is
  symmetric PSD: exact for the singular covariances that few samples and
  constant features give, where a general `scipy.linalg.sqrtm(Sa @ Sb)` goes
  complex and inaccurate (pytorch-fid patches that with an eps*I offset).
  """
  mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
  cov_a, cov_b = np.atleast_2d(cov_a).astype(np.float64), np.atleast_2d(cov_b).astype(np.float64)
  if mu_a.shape != mu_b.shape or cov_a.shape != cov_b.shape:
    raise ValueError(f"feature dimensions differ: {mu_a.shape} vs {mu_b.shape}")
  root_a = _psd_sqrt(cov_a)
  middle = root_a @ cov_b @ root_a
  eig = linalg.eigvalsh((middle + middle.T) / 2)
  tr_covmean = np.sqrt(_clean(eig)).sum()
  diff = mu_a - mu_b
  value = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * tr_covmean
  return float(max(value, 0.0))


def frechet_distance(feats_a, feats_b):
  """Fréchet distance between two sets of features [Na, D] and [Nb, D] (Na, Nb >= 2)."""
  return frechet_distance_from_stats(*gaussian_stats(feats_a), *gaussian_stats(feats_b))


def image_frechet_distance(images_a, images_b):
  """Fréchet distance between two sets of images on the evaluator's image features."""
  return frechet_distance(features(images_a), features(images_b))


def video_frechet_distance(videos_a, videos_b):
  """Fréchet video distance between two sets of videos on the evaluator's video features."""
  return frechet_distance(features(videos_a), features(videos_b))

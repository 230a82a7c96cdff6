"""FID: the Fréchet distance of pytorch-fid's InceptionV3 pool3 features.

  params = inception.load_inception_params("pt_inception-2015-12-05-6726825d.pth")
  score = fid(real_images, generated_images, params)

Images are uint8 [0, 255] or float [0, 1], [N, H, W, 3] (or a list of [H, W, 3]
images of any sizes); each is resized to 299x299 as pytorch-fid does. The
distance itself is `frechet.frechet_distance` (float64, exact for the singular
covariances of small sets). See docs/metrics/fid.md.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jzoo.eval import frechet
from jzoo.eval import inception

# Two jits: the network compiles once per batch size, the cheap resize once per image shape.
_preprocess = jax.jit(inception.preprocess)


@jax.jit
def _pool3(params, x):
  return inception.InceptionV3().apply({"params": params}, x)


def inception_features(images, params, batch_size=50):
  """[N, 2048] float32 pool3 features of N images (see the module docstring for inputs)."""
  n = len(images)
  if n == 0:
    raise ValueError("no images to compute features of")
  batch_size = min(batch_size, n)
  out = []
  for start in range(0, n, batch_size):
    batch = images[start:start + batch_size]
    if isinstance(batch, np.ndarray | jax.Array):
      x = _preprocess(batch)
    else:  # a list: images may differ in size
      x = jnp.concatenate([_preprocess(np.asarray(im)[None]) for im in batch])
    real = x.shape[0]
    if real < batch_size:  # pad the last batch so it reuses the compiled network
      x = jnp.pad(x, ((0, batch_size - real), (0, 0), (0, 0), (0, 0)))
    out.append(np.asarray(_pool3(params, x))[:real])
  return np.concatenate(out)


def fid(images_a, images_b, params, batch_size=50):
  """FID between two image sets (>= 2 images each; use thousands for a meaningful score)."""
  return frechet.frechet_distance(inception_features(images_a, params, batch_size),
                                  inception_features(images_b, params, batch_size))

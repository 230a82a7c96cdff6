"""NUWA's VQ-GAN tokenizer: image and video shapes, per-frame independence of the video tokens,
the decode_codes / __call__ round trip, a short training run and the parameters' logical names."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jzoo.vq.cvivit import tokenizer_loss
from jzoo.vq.vqgan import VQGAN
from tests.model_helpers import assert_tokenizer_learns, fit

B, SIZE = 2, 16
MICRO = dict(channels=16, channel_mult=(1, 2, 2), num_res_blocks=1, codebook_size=64, code_dim=8,
             embed_dim=16, norm_groups=8)


def random_images(shape, seed=0):
  return jax.random.uniform(jax.random.PRNGKey(seed), shape, minval=-1, maxval=1)


def sampled_params(model, x, seed=0, noise=0.0):
  """Parameters drawn in numpy from the same distributions as the modules' initialisers (Glorot
  uniform kernels, unit-normal codebook, unit norm scales, zero biases), plus `noise` x N(0, 1) on
  the biases and norm parameters so that no zero-initialised path is trivially constant.

  Cheaper than `jax.jit(model.init)`, whose compile (mostly the random number generation)
  costs seconds on CPU."""
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), x))["params"]
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in, fan_out = np.prod(leaf.shape[:-1]), np.prod(leaf.shape[:-2]) * leaf.shape[-1]
      limit = np.sqrt(3.0 / ((fan_in + fan_out) / 2))
      value = rng.uniform(-limit, limit, leaf.shape)
    elif name == "codebook":
      value = rng.normal(0.0, 1.0, leaf.shape)
    else:  # biases, norm scales (ones) and norm biases
      value = float(name == "scale") + noise * rng.normal(0.0, 1.0, leaf.shape)
    return jnp.asarray(value, jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def tokenizer():
  """A micro VQ-GAN with perturbed parameters and jitted encode / decode / apply."""
  model = VQGAN(**MICRO)
  variables = {"params": sampled_params(model, random_images((1, SIZE, SIZE, 3)), noise=0.02)}
  encode = jax.jit(lambda x: model.apply(variables, x, method=model.encode))
  decode = jax.jit(lambda c: model.apply(variables, c, method=model.decode_codes))
  forward = jax.jit(lambda x: model.apply(variables, x))
  return model, encode, decode, forward


def test_image_and_video_shapes(tokenizer):
  model, encode, decode, _ = tokenizer
  assert model.downsample_factor == 4
  image = random_images((B, SIZE, SIZE, 3))
  codes, z_q, aux = encode(image)
  assert codes.shape == (B, 4, 4) and codes.dtype == jnp.int32
  assert z_q.shape == (B, 4, 4, MICRO["embed_dim"])
  assert set(aux) == {"vq_loss", "codebook_usage", "perplexity"}
  assert all(v.shape == () for v in aux.values())
  assert np.all((np.asarray(codes) >= 0) & (np.asarray(codes) < MICRO["codebook_size"]))
  pixels = decode(codes)
  assert pixels.shape == (B, SIZE, SIZE, 3) and pixels.dtype == jnp.float32

  video = random_images((B, 3, SIZE, SIZE, 3))
  codes, z_q, _ = encode(video)
  assert codes.shape == (B, 3, 4, 4) and codes.dtype == jnp.int32
  assert z_q.shape == (B, 3, 4, 4, MICRO["embed_dim"])
  frames = decode(codes)
  assert frames.shape == (B, 3, SIZE, SIZE, 3) and frames.dtype == jnp.float32

  with pytest.raises(ValueError, match="multiples of 4"):
    encode(random_images((B, 18, SIZE, 3)))


def test_video_codes_are_per_frame(tokenizer):
  _, encode, decode, _ = tokenizer
  video = random_images((B, 3, SIZE, SIZE, 3))
  codes, _, _ = encode(video)
  for t in range(3):
    frame_codes, _, _ = encode(video[:, t])
    np.testing.assert_array_equal(codes[:, t], frame_codes)

  changed = video.at[:, 1].set(random_images((B, SIZE, SIZE, 3), seed=7))
  codes2, _, _ = encode(changed)
  np.testing.assert_array_equal(codes[:, 0], codes2[:, 0])
  np.testing.assert_array_equal(codes[:, 2], codes2[:, 2])
  assert np.any(np.asarray(codes[:, 1] != codes2[:, 1]))

  # Decoding is per frame too: new codes in frame 1 change frame 1's pixels only.
  new_codes = codes.at[:, 1].set((codes[:, 1] + 1) % MICRO["codebook_size"])
  frames, frames2 = decode(codes), decode(new_codes)
  np.testing.assert_allclose(frames[:, 0], frames2[:, 0], atol=1e-6)
  np.testing.assert_allclose(frames[:, 2], frames2[:, 2], atol=1e-6)
  assert not np.allclose(frames[:, 1], frames2[:, 1], atol=1e-4)


def test_decode_codes_matches_reconstruction(tokenizer):
  _, encode, decode, forward = tokenizer
  for shape in ((B, SIZE, SIZE, 3), (B, 3, SIZE, SIZE, 3)):  # shapes compiled already
    x = random_images(shape, seed=3)
    reconstruction, codes, _ = forward(x)
    np.testing.assert_array_equal(codes, encode(x)[0])
    np.testing.assert_allclose(decode(codes), reconstruction, atol=1e-5, rtol=1e-5)


def coloured_squares():
  """Four 16x16 images in [-1, 1]: a coloured square of a different colour, size and place on a
  black background."""
  images = np.full((4, SIZE, SIZE, 3), -1.0, np.float32)
  for i, (colour, (y, x, s)) in enumerate(zip(
      [(1, -1, -1), (-1, 1, -1), (-1, -1, 1), (1, 1, -1)],
      [(2, 2, 8), (6, 4, 6), (0, 8, 8), (4, 6, 10)])):
    images[i, y:y + s, x:x + s] = colour
  return jnp.asarray(images)


def test_training_reduces_the_loss():
  model = VQGAN(**MICRO)
  images = coloured_squares()
  params = sampled_params(model, images)
  assert_tokenizer_learns(fit(
      lambda p, _: tokenizer_loss(model.apply({"params": p}, images), images), params, 40))


def test_every_parameter_has_logical_names():
  model = VQGAN(**MICRO)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), random_images((1, SIZE, SIZE, 3)))
  leaves = jax.tree_util.tree_leaves(variables["params"], is_leaf=lambda x: hasattr(x, "names"))
  assert len(leaves) > 10
  for leaf in leaves:
    assert hasattr(leaf, "names"), leaf
    assert len(leaf.names) == leaf.value.ndim, leaf
  # The quantizer's codebook is sharded over the vocabulary, RGB outputs over nothing.
  params = variables["params"]
  assert params["quantizer"]["codebook"].names == ("vocab", None)
  assert params["decoder"]["conv_out"]["kernel"].names == (None, None, "conv_in", None)

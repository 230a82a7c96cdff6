"""C-ViViT and its vector quantizer: causality in time, shapes, the image prefix property, frame
count errors, the quantizer's lookup and straight-through gradient, and a short training run."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jzoo.vq.cvivit import CViViT, tokenizer_loss
from jzoo.vq.quantizer import VectorQuantizer
from tests.model_helpers import assert_tokenizer_learns, fit

B, SIZE = 2, 16
MICRO = dict(patch_size=4, temporal_patch=2, width=32, num_heads=2, head_dim=16, mlp_dim=64,
             spatial_layers=1, temporal_layers=1, codebook_size=64, code_dim=8,
             max_time_tokens=8, image_size=SIZE)


def random_video(frames, seed=0):
  return jax.random.uniform(jax.random.PRNGKey(seed), (B, frames, SIZE, SIZE, 3), minval=-1,
                            maxval=1)


def random_params(module, *args, seed=1):
  """Random parameters of the right shapes. The real initialisers zero every residual branch's
  output projection, so the temporal attention would mix nothing and causality would hold
  trivially; random weights make every path live."""
  shapes = jax.eval_shape(lambda r: module.init(r, *args), jax.random.PRNGKey(0))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    fan_in = int(np.prod(leaf.shape[:-1])) or 1
    scale = 1.0 / np.sqrt(fan_in) if leaf.ndim > 1 else 0.1
    is_scale = getattr(path[-1], "key", None) == "scale"  # LayerNorm scales around 1
    return jnp.asarray(rng.normal(0.0, scale, leaf.shape) + is_scale, jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, nn.unbox(shapes)["params"])


@pytest.fixture(scope="module")
def tokenizer():
  """A micro C-ViViT with random weights and jitted encode / decode (compiles dominate on CPU)."""
  model = CViViT(**MICRO)
  params = random_params(model, random_video(9))
  encode = jax.jit(lambda v: model.apply({"params": params}, v, method=model.encode))
  decode = jax.jit(lambda c: model.apply({"params": params}, c, method=model.decode_codes))
  return model, params, encode, decode


def test_encoder_and_decoder_are_causal_in_time(tokenizer):
  _, _, encode, decode = tokenizer
  video = random_video(9)
  changed = video.at[:, 5].set(-video[:, 5])  # frame 5 is in time token 1 + (5 - 1) // 2 = 3
  codes, z_q, _ = encode(video)
  codes2, z_q2, _ = encode(changed)
  np.testing.assert_array_equal(codes[:, :3], codes2[:, :3])
  np.testing.assert_allclose(z_q[:, :3], z_q2[:, :3], atol=1e-6)
  assert np.any(np.asarray(codes[:, 3] != codes2[:, 3]))
  # ...and the change reaches the later time token 4 through the temporal attention, so the
  # equalities above test a mask, not a model that never mixes time steps.
  assert np.any(np.asarray(codes[:, 4] != codes2[:, 4]))

  new_codes = codes.at[:, 3].set((codes[:, 3] + 1) % MICRO["codebook_size"])
  frames, frames2 = decode(codes), decode(new_codes)
  np.testing.assert_allclose(frames[:, :5], frames2[:, :5], atol=1e-6)  # time tokens 0, 1, 2
  assert not np.allclose(frames[:, 5:7], frames2[:, 5:7], atol=1e-3)  # time token 3
  assert not np.allclose(frames[:, 7:], frames2[:, 7:], atol=1e-3)  # time token 4, via attention


def test_shapes_and_image_prefix(tokenizer):
  model, params, encode, decode = tokenizer
  video = random_video(9)
  for frames in (1, 5, 9):
    t = 1 + (frames - 1) // 2
    assert model.num_time_tokens(frames) == t and model.num_frames(t) == frames
    codes, z_q, aux = jax.eval_shape(encode, video[:, :frames])
    assert codes.shape == (B, t, 4, 4) and codes.dtype == jnp.int32
    assert z_q.shape == (B, t, 4, 4, MICRO["width"])
    assert all(v.shape == () for v in aux.values())
    out = jax.eval_shape(decode, codes)
    assert out.shape == (B, frames, SIZE, SIZE, 3) and out.dtype == jnp.float32
    recon, _, _ = jax.eval_shape(lambda v: model.apply({"params": params}, v), video[:, :frames])
    assert recon.shape == (B, frames, SIZE, SIZE, 3)

  # An image tokenizes like the first time step of any video that starts with it.
  image_codes, image_z, _ = encode(video[:, :1])
  video_codes, video_z, _ = encode(video)
  np.testing.assert_array_equal(image_codes[:, 0], video_codes[:, 0])
  np.testing.assert_allclose(image_z[:, 0], video_z[:, 0], atol=1e-6)
  assert decode(image_codes).shape == (B, 1, SIZE, SIZE, 3)


def test_bad_frame_count_and_too_many_time_steps(tokenizer):
  model, _, encode, _ = tokenizer
  with pytest.raises(ValueError, match=r"C-ViViT needs 1 \+ k·2 frames .*got 4"):
    encode(random_video(4))
  with pytest.raises(ValueError, match="got 0"):
    model.num_time_tokens(0)
  with pytest.raises(ValueError, match="max_time_tokens=8"):
    jax.eval_shape(encode, random_video(1 + 2 * 8))


def test_quantizer_lookup_roundtrip_and_straight_through():
  vq = VectorQuantizer(codebook_size=8, code_dim=4, features=6)
  z = jax.random.normal(jax.random.PRNGKey(3), (3, 5, 6))
  params = nn.unbox(jax.jit(vq.init)(jax.random.PRNGKey(4), z))["params"]
  z_q, codes, aux = jax.jit(lambda x: vq.apply({"params": params}, x))(z)
  assert z_q.shape == z.shape and codes.shape == (3, 5) and codes.dtype == jnp.int32

  # Generation's path gives the training path's z_q for the same codes.
  decoded = jax.jit(lambda c: vq.apply({"params": params}, c, method=vq.decode_codes))(codes)
  np.testing.assert_allclose(decoded, z_q, atol=1e-6)

  # The codes are the nearest normalised codes to the normalised down-projections (numpy).
  p = jax.tree_util.tree_map(np.asarray, params)
  normalize = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
  pin = p["project_in"]
  low = normalize(np.asarray(z).reshape(-1, 6) @ pin["kernel"] + pin["bias"])
  book = normalize(p["codebook"])
  dist = np.sum((low[:, None, :] - book[None, :, :]) ** 2, axis=-1)
  np.testing.assert_array_equal(np.asarray(codes).reshape(-1), np.argmin(dist, axis=-1))
  used = len(np.unique(np.argmin(dist, axis=-1)))
  np.testing.assert_allclose(aux["codebook_usage"], used / 8, rtol=1e-6)
  assert 1.0 <= aux["perplexity"] <= used + 1e-4 and aux["vq_loss"] > 0

  # Straight-through: d sum(z_q) / dz is the gradient of the identity path (no lookup).
  grad = jax.jit(jax.grad(lambda x: jnp.sum(vq.apply({"params": params}, x)[0])))(z)

  def identity_path(x):
    pin, pout = params["project_in"], params["project_out"]
    low = x @ pin["kernel"] + pin["bias"]
    low = low / jnp.linalg.norm(low, axis=-1, keepdims=True)
    return jnp.sum(low @ pout["kernel"] + pout["bias"])

  expected = jax.jit(jax.grad(identity_path))(z)
  assert np.abs(np.asarray(grad)).max() > 1e-3
  np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-5)


def moving_blobs(frames=5):
  """Two videos of a smooth Gaussian blob sliding across a gradient background, in [-1, 1]."""
  yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
  videos = []
  for b in range(B):
    clip = []
    for f in range(frames):
      cx, cy = 0.25 + 0.1 * f, 0.3 + 0.2 * b + 0.05 * f
      blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.02)
      rgb = np.stack([blob, 0.5 * blob + 0.3 * xx, yy * (1 - blob)], axis=-1)
      clip.append(2.0 * rgb - 1.0)
    videos.append(clip)
  return jnp.asarray(np.array(videos), jnp.float32)


def test_training_reduces_the_loss():
  model = CViViT(**MICRO)
  video = moving_blobs()
  params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), video))["params"]
  assert_tokenizer_learns(fit(lambda p, _: tokenizer_loss(model.apply({"params": p}, video), video),
                              params, 30))

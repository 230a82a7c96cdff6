"""The tokenizers' loss options: the EMA codebook (VectorQuantizer.ema_decay > 0) against its
formula in NumPy, with no gradient into it; and, through the real trainer, the EMA state written
over the parameters, the L1 reconstruction and the LPIPS perceptual term from a weights file."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jzoo.training import checkpoint
from jzoo.training.metrics import read_metrics
from jzoo.vq.cvivit import tokenizer_loss
from jzoo.vq.quantizer import VectorQuantizer
from tests.model_helpers import train_micro_stages

K, D, E, DECAY = 6, 3, 5, 0.8


def test_ema_state_follows_the_formula_and_gets_no_gradient():
  vq = VectorQuantizer(K, D, E, ema_decay=DECAY, l2_normalize=False)
  z = jax.random.normal(jax.random.PRNGKey(0), (4, 7, E))
  params = dict(nn.unbox(vq.init(jax.random.PRNGKey(1), z))["params"])
  assert "codebook" not in params and params["ema_count"].shape == (K,)
  params["ema_count"] = params["ema_count"] * jnp.arange(1.0, K + 1.0)  # unequal counts
  (_, codes, aux) = vq.apply({"params": params}, z)
  flat = np.asarray(vq.apply({"params": params}, z, method=lambda m, z: m.project_in(z)))
  flat, codes = flat.reshape(-1, D), np.asarray(codes).reshape(-1)
  # The lookup reads sum / (Laplace-smoothed count): every vector's code is its nearest row.
  count, total = np.asarray(params["ema_count"]), np.asarray(params["ema_sum"])
  n = count.sum()
  book = total / ((count + 1e-5) / (n + K * 1e-5) * n)[:, None]
  np.testing.assert_array_equal(codes, np.argmin(((flat[:, None] - book[None]) ** 2).sum(-1), 1))
  counts = np.bincount(codes, minlength=K)
  sums = np.stack([flat[codes == k].sum(0) for k in range(K)])
  np.testing.assert_allclose(aux["state"]["ema_count"], DECAY * count + (1 - DECAY) * counts,
                             rtol=1e-6)
  np.testing.assert_allclose(aux["state"]["ema_sum"], DECAY * total + (1 - DECAY) * sums,
                             rtol=1e-5, atol=1e-6)
  # The codebook gets no gradient; the loss is the commitment term only.
  loss = lambda p: vq.apply({"params": p}, z)[2]["vq_loss"]
  grads = jax.grad(loss)(params)
  assert float(jnp.abs(grads["ema_sum"]).max()) == 0 and float(jnp.abs(grads["ema_count"]).max()) == 0
  assert float(jnp.abs(grads["project_in"]["kernel"]).max()) > 0
  outputs = (jnp.zeros((2, 2)), None, aux)
  assert "state_updates" in tokenizer_loss(outputs, jnp.zeros((2, 2)))[1]


def test_trainer_applies_ema_codebook_l1_and_perceptual_terms(tmp_path):
  """NUWA micro's VQ-GAN through the real trainer on 8 devices, with an EMA codebook, L1
  reconstruction and LPIPS (random weights in a safetensors file). The EMA counts after t steps
  sum to d^t K + (1 - d^t) N (N latent vectors per batch), which only the EMA update gives (the
  optimizer would leave them at their initial ones); the perceptual term is logged and in the loss."""
  import safetensors.numpy
  from jzoo.eval import lpips
  weights = str(tmp_path / "lpips.safetensors")
  safetensors.numpy.save_file(lpips.random_state_dict(0), weights)
  steps, decay, weight = 6, 0.9, 0.5
  workdir = tmp_path / "run"
  train_micro_stages("nuwa", ("tokenizer",), str(workdir), steps, (
      f"tokenizer.codebook_ema={decay}", "tokenizer.reconstruction_loss=l1",
      f"tokenizer.perceptual_weight={weight}", f"tokenizer.perceptual_weights={weights}"))
  params = checkpoint.load_params(str(workdir), "tokenizer", item="params")
  counts = np.asarray(params["quantizer"]["ema_count"])
  k = counts.size
  n = 8 * 3 * 4 * 4  # batch 8 clips x 3 frames x 4 x 4 latents (nuwa:micro)
  np.testing.assert_allclose(counts.sum(), decay ** steps * k + (1 - decay ** steps) * n,
                             rtol=1e-4)
  for m in read_metrics(os.path.join(workdir, "tokenizer")):
    assert m["perceptual"] > 0
    assert m["loss"] > m["vq_loss"] + weight * m["perceptual"]  # + the L1 term

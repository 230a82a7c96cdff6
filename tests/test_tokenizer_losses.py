"""The tokenizers' loss options: the EMA codebook (VectorQuantizer.ema_decay > 0) against its
formula in NumPy, with no gradient into it; and, through the real trainer, the EMA state written
over the parameters, the L1 reconstruction and the LPIPS perceptual term from a weights file."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jzoo.io import checkpoint
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


def test_adversarial_terms_reach_only_their_own_player():
  """The generator term's gradient never reaches the discriminator, and both are off before
  `adversarial_start`."""
  from jzoo.models import nuwa
  from tests.test_nuwa import batch_for, micro_config
  gan = lambda *o: nuwa.build(micro_config("tokenizer.adversarial_weight=0.5",
                                           "tokenizer.discriminator_channels=8", *o))
  model = gan()
  batch = batch_for(model)
  params = nn.unbox(model.init("tokenizer", jax.random.PRNGKey(0), batch))["params"]
  grads = lambda m: jax.grad(lambda p: m.loss("tokenizer", p, batch, jax.random.PRNGKey(1),
                                              {})[0])(params)
  g1, g2 = grads(model), grads(gan("tokenizer.adversarial_weight=2.0"))
  same = jax.tree_util.tree_map(lambda a, b: bool(jnp.allclose(a, b)), g1["discriminator"],
                                g2["discriminator"])
  assert all(jax.tree_util.tree_leaves(same))  # the discriminator sees only its hinge loss
  assert float(jnp.abs(g1["discriminator"]["conv_in"]["kernel"]).max()) > 0
  assert not np.allclose(g1["decoder"]["conv_out"]["kernel"], g2["decoder"]["conv_out"]["kernel"])
  late = gan("tokenizer.adversarial_start=5")
  loss, metrics = late.loss("tokenizer", params, batch, jax.random.PRNGKey(1), {})
  plain = nuwa.build(micro_config()).loss("tokenizer", params, batch, jax.random.PRNGKey(1), {})[0]
  assert float(metrics["adversarial_on"]) == 0 and float(loss) == pytest.approx(float(plain))
  assert float(jnp.abs(grads(late)["discriminator"]["conv_in"]["kernel"]).max()) == 0


def test_trainer_applies_ema_codebook_l1_perceptual_and_adversarial_terms(tmp_path):
  """NUWA micro's VQ-GAN through the real trainer on 8 devices, with an EMA codebook, L1
  reconstruction, LPIPS (random weights in a safetensors file) and a discriminator from step 3.
  The EMA counts after t steps sum to d^t K + (1 - d^t) N (N latent vectors per batch), which only
  the EMA update gives (the optimizer would leave them at their initial ones); the perceptual term
  is logged and in the loss; the adversarial terms switch on at their step."""
  import safetensors.numpy
  from jzoo.nn import lpips
  weights = str(tmp_path / "lpips.safetensors")
  safetensors.numpy.save_file(lpips.random_state_dict(0), weights)
  steps, decay, weight = 6, 0.9, 0.5
  workdir = tmp_path / "run"
  train_micro_stages("nuwa", ("tokenizer",), str(workdir), steps, (
      f"tokenizer.codebook_ema={decay}", "tokenizer.reconstruction_loss=l1",
      f"tokenizer.perceptual_weight={weight}", f"tokenizer.perceptual_weights={weights}",
      "tokenizer.adversarial_weight=0.1", "tokenizer.adversarial_start=3",
      "tokenizer.discriminator_channels=8"), decreasing=False)  # the GAN terms join at step 4
  params = checkpoint.load_params(str(workdir), "tokenizer", item="params")
  counts = np.asarray(params["quantizer"]["ema_count"])
  k = counts.size
  n = 8 * 3 * 4 * 4  # batch 8 clips x 3 frames x 4 x 4 latents (nuwa:micro)
  np.testing.assert_allclose(counts.sum(), decay ** steps * k + (1 - decay ** steps) * n,
                             rtol=1e-4)
  assert float(params["discriminator"]["step"]) == steps
  records = read_metrics(os.path.join(workdir, "tokenizer"))
  assert [m["adversarial_on"] for m in records] == [0, 0, 0, 1, 1, 1]
  assert records[2]["loss"] < records[0]["loss"]  # learning before the GAN terms join
  for m in records[:3]:
    assert m["perceptual"] > 0
    assert m["loss"] > m["vq_loss"] + weight * m["perceptual"]  # + the L1 term

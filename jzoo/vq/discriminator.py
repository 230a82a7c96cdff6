"""The adversarial term of the tokenizers' training loss: VQ-GAN's PatchGAN discriminator
(Esser et al. 2021; Isola et al. 2017's NLayerDiscriminator) with the hinge loss.

  --config.tokenizer.adversarial_weight=0.1 --config.tokenizer.adversarial_start=2000

The discriminator's parameters sit in the tokenizer stage's parameters under NAME, and
both players train in the one optimizer step with stop-gradients keeping them apart:
the tokenizer gets the gradient of `weight * -mean(D(x_rec))` with D frozen, the
discriminator that of the hinge loss on real frames and (frozen) reconstructions. Both
terms are off until the discriminator's own step counter (a non-gradient parameter the
trainer advances through `state_updates`, like a batch-norm's batch count) reaches
`adversarial_start`, so the tokenizer first learns to reconstruct, as in VQ-GAN.

Departure from taming-transformers: GroupNorm instead of BatchNorm (no running
statistics to carry), "SAME" padding in the two stride-1 layers so that 16-pixel micro
frames keep a patch grid, and a fixed weight instead of the adaptive one.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

NAME = "discriminator"


class PatchDiscriminator(nn.Module):
  """Frames [N, H, W, 3] -> patch logits [N, H / 2^layers, W / 2^layers, 1]."""
  channels: int = 64
  layers: int = 3

  @nn.compact
  def __call__(self, x):
    self.param("step", nn.initializers.zeros, (), jnp.float32)  # advanced by the trainer
    conv = lambda n, stride, name: nn.Conv(n, (4, 4), (stride, stride), padding=1 if stride > 1
                                           else "SAME", name=name)
    norm = lambda n, name: nn.GroupNorm(min(32, n), name=name)
    x = nn.leaky_relu(conv(self.channels, 2, "conv_in")(x.astype(jnp.float32)), 0.2)
    for i in range(1, self.layers + 1):
      width = self.channels * 2 ** min(i, 3)
      x = conv(width, 2 if i < self.layers else 1, f"conv_{i}")(x)
      x = nn.leaky_relu(norm(width, f"norm_{i}")(x), 0.2)
    return conv(1, 1, "conv_out")(x)


def from_config(tokenizer_config):
  """The discriminator of a tokenizer config, or None when its loss has no adversarial term."""
  if float(tokenizer_config.adversarial_weight) <= 0:
    return None
  return PatchDiscriminator(int(tokenizer_config.discriminator_channels),
                            int(tokenizer_config.discriminator_layers))


def frames(x):
  """[B, (T,) H, W, 3] -> [B * T, H, W, 3] float32."""
  return x.reshape(-1, *x.shape[-3:]).astype(jnp.float32)


def adversarial_loss(module, params, reconstruction, real, weight, start):
  """(loss to add, metrics, state updates) of the hinge GAN terms; see the module docstring."""
  sg = jax.lax.stop_gradient
  fake, real = frames(reconstruction), frames(real)
  generator = -jnp.mean(module.apply({"params": sg(params)}, fake))
  discriminator = (jnp.mean(jax.nn.relu(1.0 - module.apply({"params": params}, real)))
                   + jnp.mean(jax.nn.relu(1.0 + module.apply({"params": params}, sg(fake)))))
  on = (params["step"] >= start).astype(jnp.float32)
  metrics = dict(adversarial_generator=generator, adversarial_discriminator=discriminator,
                 adversarial_on=on)
  return on * (weight * generator + discriminator), metrics, {"step": params["step"] + 1.0}

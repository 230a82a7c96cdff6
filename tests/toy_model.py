"""A tiny text-conditioned denoiser that follows the Model contract, for testing the platform fast.

It is a real model (it trains and its loss falls) but deliberately small, so
that trainer tests on several meshes finish in seconds."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jzoo.models.base import DataSpec, Model, Stage, to_uint8
from jzoo.configs._common import base_config


class Denoiser(nn.Module):
  vocab: int
  width: int = 16

  @nn.compact
  def __call__(self, x, tokens, mask):
    emb = nn.Embed(self.vocab, self.width, embedding_init=nn.with_logical_partitioning(
        nn.initializers.normal(0.02), ("vocab", "embed")))(tokens)
    text = (emb * mask[..., None]).sum(1) / jnp.maximum(mask.sum(1, keepdims=True), 1)
    h = nn.Conv(self.width, (3, 3), kernel_init=nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), (None, None, "conv_in", "conv_out")))(x)
    h = nn.with_logical_constraint(h, ("batch", "height", "width", "embed"))
    h = nn.silu(h + nn.Dense(self.width, kernel_init=nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), ("embed", "mlp")))(text)[:, None, None, :])
    h = nn.Dense(4 * self.width, kernel_init=nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), ("embed", "mlp")))(h)
    h = nn.Dense(self.width, kernel_init=nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), ("mlp", "embed")))(nn.silu(h))
    return nn.Conv(3, (3, 3), kernel_init=nn.with_logical_partitioning(
        nn.initializers.zeros, (None, None, "conv_in", "conv_out")))(h)


class Toy(Model):

  def __init__(self, config):
    super().__init__(config)
    self.net = Denoiser(vocab=config.toy.vocab, width=config.toy.width)
    data = DataSpec("shapes", self.config.toy.resolution, text_length=self.config.text.length)
    self.stage_table = {"denoiser": Stage(data, init=self._init, loss=self._loss)}

  @property
  def output_shape(self):
    return (self.config.toy.resolution,) * 2

  def _init(self, rng, batch):
    return self.net.init(rng, batch["image"], batch["tokens"], batch["mask"])

  def _loss(self, params, batch, rng, frozen):
    x = batch["image"]
    noise = jax.random.normal(rng, x.shape)
    pred = self.net.apply({"params": params}, x + noise, batch["tokens"], batch["mask"])
    loss = jnp.mean((pred - noise) ** 2)
    if self.config.toy.poison:  # for the divergence tests
      loss = loss * jnp.nan
    return loss, {"mse": loss}

  def generate(self, params, request, rng):
    b = request.tokens.shape[0]
    r = self.config.toy.resolution
    x = jax.random.normal(rng, (b, r, r, 3))
    x = x - self.net.apply({"params": params["denoiser"]}, x, request.tokens, request.mask)
    return to_uint8(jnp.clip(x, -1, 1))


def build(config):
  return Toy(config)


def get_config(variant=None):
  c = base_config("tests.toy_model", "denoiser")
  c.toy = ml_collections.ConfigDict(dict(vocab=640, width=16, resolution=16, poison=False))
  c.train.steps = 6
  c.train.batch_size = 8
  c.train.log_every = 1
  c.train.checkpoint_every = 3
  c.optim.warmup_steps = 2
  c.optim.lr = 3e-3
  return c

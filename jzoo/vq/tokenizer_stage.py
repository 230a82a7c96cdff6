"""A visual tokenizer trained as a stage of a model (NUWA's VQ-GAN, Phenaki's C-ViViT, and the
tokenizers of CogView2, GODIVA and CogVideo to come): its variables, its loss with VQ-GAN's
options, and its frozen dependency (the perceptual network), written once for every model.

  stage = TokenizerStage(VQGAN(...), config.tokenizer)
  variables = stage.init(rng, pixels)                  # + a discriminator's when adversarial
  loss, metrics = stage.loss(params, pixels, frozen)   # L1/L2 + VQ (+ LPIPS) (+ hinge GAN)
  stage.frozen_stages()                                 # (PERCEPTUAL,) when the loss has LPIPS
  model_stage = stage.stage(data_spec)                  # the jzoo.stage.Stage a model lists
"""

import jax

from jzoo.stage import Stage

from jzoo.vq import discriminator as disc
from jzoo.vq import perceptual
from jzoo.vq.cvivit import tokenizer_loss


class TokenizerStage:
  """`module` is the tokenizer (its apply returns (reconstruction, codes, vq loss, ...) as
  jzoo.vq.cvivit.tokenizer_loss reads it); `config` the model's `tokenizer` block."""

  def __init__(self, module, config):
    self.module, self.config = module, config

  def frozen_stages(self):
    return (perceptual.PERCEPTUAL,) if perceptual.weight(self.config) > 0 else ()

  def frozen_abstract_params(self, stage):
    """Abstract params of a frozen dependency that is not a stage of the model, else None."""
    return perceptual.abstract_params() if stage == perceptual.PERCEPTUAL else None

  def external_weights(self, stage):
    """The perceptual network's params, from the weight files the config names."""
    return perceptual.load(self.config) if stage == perceptual.PERCEPTUAL else None

  def stage(self, data):
    """The model's tokenizer Stage, trained on the pixels of `data` ("video" when it has frames,
    else "image")."""
    key = "video" if data.frames else "image"
    return Stage(data, init=lambda rng, batch: self.init(rng, batch[key]),
                 loss=lambda params, batch, rng, frozen: self.loss(params, batch[key], frozen),
                 frozen=self.frozen_stages())

  def init(self, rng, pixels):
    """The tokenizer's variables, plus a discriminator's under jzoo.vq.discriminator.NAME when
    the loss is adversarial."""
    module = disc.from_config(self.config)
    if module is None:
      return self.module.init(rng, pixels)
    tokenizer_rng, disc_rng = jax.random.split(rng)
    variables = self.module.init(tokenizer_rng, pixels)
    params = dict(variables["params"])
    params[disc.NAME] = module.init(disc_rng, disc.frames(pixels))["params"]
    return dict(variables, params=params)

  def loss(self, params, pixels, frozen):
    """jzoo.vq.cvivit.tokenizer_loss with the config's options: L1/L2, the perceptual and the
    adversarial terms."""
    tk = self.config
    extra = None
    if perceptual.PERCEPTUAL in frozen:
      extra = (frozen[perceptual.PERCEPTUAL], perceptual.weight(tk))
    outputs = self.module.apply({"params": params}, pixels)  # the discriminator's are unused
    loss, metrics = tokenizer_loss(outputs, pixels, tk.reconstruction_loss, extra)
    module = disc.from_config(tk)
    if module is not None:
      adv, adv_metrics, state = disc.adversarial_loss(
          module, params[disc.NAME], outputs[0], pixels, float(tk.adversarial_weight),
          int(tk.adversarial_start))
      loss = loss + adv
      updates = dict(metrics.pop("state_updates", {}), **{disc.NAME: state})
      metrics = dict(metrics, **adv_metrics, state_updates=updates)
    return loss, metrics

"""The frozen text encoder that conditions every text-to-X model of the zoo.

A T5 encoder (jzoo.text.t5) with the two ways a model gets its weights:
  * public T5 weights from `config.text_encoder.weights` (a Hugging Face
    `model.safetensors` file or folder, or a t5x checkpoint folder);
  * without them, the model's `text_encoder` stage pretrains a small encoder
    on the captions with a masked-token objective (tied output head).
Either way the diffusion / transformer stages read it frozen: no gradients,
no optimizer state. Imagen, Phenaki, ... hold one `FrozenTextEncoder`. It is a
`jzoo.text.encoder.TextEncoder` (sentencepiece tokens; `pooled` is the masked mean).
"""

import dataclasses
import os

import jax
import optax

from jzoo.errors import CheckpointError, ConfigError
from jzoo.stage import Stage, text_cache_input
from jzoo.text.encoder import SENTENCEPIECE, TextEncoder
from jzoo.text.t5 import T5Encoder, t5_config_from_ml_collections

TEXT_ENCODER = "text_encoder"  # the stage name, in every model that has one


class FrozenTextEncoder(TextEncoder):
  """`config.text_encoder` -> T5 module, weight import, masked-token pretraining loss."""
  frozen = True  # even when pretrained in its own stage, the conditioned stages read it frozen
  tokenizer = SENTENCEPIECE

  def __init__(self, config):
    self.config = config.text_encoder
    self.t5_config = t5_config_from_ml_collections(
        dict(config.text_encoder.to_dict(), dtype=str(config.train.dtype)))
    self.module = T5Encoder(self.t5_config)

  @property
  def width(self):
    return self.t5_config.d_model

  @property
  def imported(self):
    """True when public weights are named: the `text_encoder` stage is then not trained."""
    return bool(self.config.weights)

  @property
  def cached(self):
    """True when training reads precomputed embeddings (`config.text_encoder.cache`, a folder
    written by python -m jzoo.cache_text): the train step then holds no encoder."""
    return bool(self.config.cache)

  def frozen_stages(self):
    """What a conditioned stage needs frozen: the encoder, unless its embeddings are cached."""
    return () if self.cached else (TEXT_ENCODER,)

  def embeddings(self, frozen, batch):
    """The batch's frozen text embeddings: the cached ones it carries, or encoded here."""
    if "text" in batch:
      return jax.lax.stop_gradient(batch["text"])
    return self.encode(frozen[TEXT_ENCODER], batch["tokens"], batch["mask"])

  def source(self):
    """The public weights the encoder imports, in words, or None when it is trained here (its
    origin is then its stage's checkpoint or export: `jzoo.loading.text_encoder_origin`)."""
    if self.imported:
      return "weights " + os.path.abspath(os.path.expanduser(str(self.config.weights)))
    return None

  def frozen_abstract_params(self, stage):
    return None  # the encoder is a stage of the model: the trainer builds its abstract params

  def external_weights(self, stage):
    """The public weights the config names, for the encoder's stage; else None."""
    return self.import_weights() if stage == TEXT_ENCODER and self.imported else None

  def init(self, rng, tokens, mask):
    return self.module.init(rng, tokens, mask)

  def encode(self, params, tokens, mask):
    """Frozen embeddings [B, L, d_model] (no gradient reaches the encoder)."""
    return jax.lax.stop_gradient(self.module.apply({"params": params}, tokens, mask))

  def import_weights(self, path=None):
    """T5 encoder params from a Hugging Face safetensors file/dir or a t5x checkpoint dir."""
    from jzoo.text import t5_import
    path = os.path.expanduser(str(path or self.config.weights))
    if not os.path.exists(path):
      raise CheckpointError(f"text encoder weights {path!r} do not exist; set "
                            "--config.text_encoder.weights to a model.safetensors file or folder, "
                            "or to a t5x checkpoint folder")
    is_hf = path.endswith(".safetensors") or path.endswith(".json") or (
        os.path.isdir(path) and any(f.startswith("model.safetensors") for f in os.listdir(path)))
    if not is_hf:
      return t5_import.load_t5x_checkpoint(path, self.t5_config)
    loaded, params = t5_import.load_hf_safetensors(path)
    for field in ("vocab_size", "d_model", "d_kv", "d_ff", "num_heads", "num_layers",
                  "relative_attention_num_buckets", "feed_forward"):
      if getattr(loaded, field) != getattr(self.t5_config, field):
        raise ConfigError(
            f"text encoder weights {path!r} have {field}={getattr(loaded, field)} but the config "
            f"says {getattr(self.t5_config, field)}; set --config.text_encoder.preset (e.g. "
            "t5-v1_1-xxl) or the text_encoder keys to match the checkpoint")
    return params

  def stage(self, data, next_stage):
    """The model's `text_encoder` Stage: masked-token pretraining on the captions of `data`.
    `next_stage` is named when the weights are imported (that stage trains instead)."""
    return Stage(data, init=lambda rng, batch: self.init(rng, batch["tokens"], batch["mask"]),
                 loss=lambda params, batch, rng, frozen: self.pretrain_loss(params, batch, rng,
                                                                            next_stage))

  def conditioned_spec(self, stage_data):
    """`stage_data` (a stage this encoder conditions) with the cached embeddings as its text when
    `text_encoder.cache` names a cache: the batches then carry "text" and "mask", no tokens."""
    if not self.cached:
      return stage_data
    return dataclasses.replace(stage_data, tokens=False, inputs=stage_data.inputs + (
        text_cache_input(stage_data.text_length, self.width),))

  def pretrain_loss(self, params, batch, rng, next_stage):
    """Masked-token pretraining: predict the caption's tokens from a copy with some replaced by a
    sentinel id (the last of the vocabulary), through the tied embedding head."""
    import jax.numpy as jnp
    if self.imported:
      raise ConfigError("config.text_encoder.weights is set, so the text encoder is imported and "
                        f"frozen; train the next stage instead (--config.stage={next_stage})")
    te = self.config
    tokens, mask = batch["tokens"], batch["mask"]
    select_rng, dropout_rng = jax.random.split(rng)
    real = mask > 0
    selected = jax.random.bernoulli(select_rng, float(te.mlm_probability), tokens.shape) & real
    inputs = jnp.where(selected, self.t5_config.vocab_size - 1, tokens)
    logits = self.module.apply({"params": params}, inputs, mask, deterministic=False,
                               rngs={"dropout": dropout_rng}, method=T5Encoder.mlm_logits)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens)
    # Masked positions carry the objective; copying the visible tokens (small weight) keeps every
    # output position tied to its own token, which is what the conditioned models read.
    weights = selected + float(te.mlm_copy_weight) * (real & ~selected)
    loss = jnp.sum(ce * weights) / jnp.maximum(jnp.sum(weights), 1.0)
    correct = (jnp.argmax(logits, -1) == tokens)
    n_sel = jnp.maximum(jnp.sum(selected), 1)
    return loss, {"mlm_loss": jnp.sum(ce * selected) / n_sel,
                  "mlm_accuracy": jnp.sum(correct * selected) / n_sel}

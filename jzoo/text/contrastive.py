"""A CLIP that a model trains on its own captions, or imports: the `clip` stage of unCLIP.

CLIP (Radford et al. 2021): a text and an image tower whose projected, l2-normalised features
are trained with the symmetric contrastive loss over the batch, at a learned temperature
(`logit_scale`, clipped at log 100 as in the paper). On `shapes` many examples share a caption;
the pairs with identical captions are all positives (the target row is uniform over them), so
the loss never pushes apart an image and a caption that describe each other.

`ContrastiveCLIP` is the component a model holds (unCLIP, later Make-A-Video and the
Relative Matching metric): the module, its text encoder (sentencepiece ids, the zoo's captions)
and image encoder behind the protocols of jzoo.text.clip, the `clip` Stage, and the import of a
Hugging Face CLIP folder (`config.clip.weights`), which replaces the stage.
"""

import dataclasses
import os

import jax.numpy as jnp
import optax

from jzoo.errors import CheckpointError, ConfigError
from jzoo.stage import Stage
from jzoo.text import clip as clip_lib
from jzoo.text.clip_tokenizer import CLIPTokenizer
from jzoo.text.encoder import CLIP_BPE, SENTENCEPIECE

CLIP_STAGE = "clip"  # the stage name, in every model that trains one
MAX_LOGIT_SCALE = 4.6052  # log(100)


def normalize(x, eps=1e-6):
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def contrastive_loss(text_features, image_features, logit_scale, same_caption=None,
                     negatives=None):
  """The symmetric InfoNCE loss [] and metrics. `same_caption` [B, B] bool marks extra positives
  (default: the diagonal only). `negatives` = (features [B, D] of each caption's hard-negative
  twin, valid [B] bool, positive [B, B] bool): extra columns of the image-to-text softmax only
  (NegCLIP); a twin is a positive of the images whose caption it equals, and invalid twins
  (captions without one) are left out. "relation_accuracy": how often an image is closer to
  its own caption than to that caption's twin."""
  t, i = normalize(text_features), normalize(image_features)
  scale = jnp.exp(jnp.minimum(logit_scale, MAX_LOGIT_SCALE))
  logits = scale * i @ t.T  # [images, texts]
  b = logits.shape[0]
  positives = jnp.eye(b, dtype=bool) if same_caption is None else same_caption | jnp.eye(b, dtype=bool)
  text_to_image = optax.softmax_cross_entropy(
      logits.T, positives / jnp.sum(positives, axis=1, keepdims=True))  # positives are symmetric
  metrics = {}
  if negatives is not None:
    features, valid, positive = negatives
    extra = scale * i @ normalize(features).T  # [images, twins]
    closer = (jnp.diagonal(logits) > jnp.diagonal(extra)) & valid  # own caption beats its twin
    metrics["relation_accuracy"] = jnp.sum(closer) / jnp.maximum(jnp.sum(valid), 1)
    extra = jnp.where(valid[None, :], extra, -1e9)  # finite: 0 * log_softmax(-inf) is nan
    image_logits = jnp.concatenate([logits, extra], axis=1)
    image_positives = jnp.concatenate([positives, positive & valid[None, :]], axis=1)
  else:
    image_logits, image_positives = logits, positives
  image_to_text = optax.softmax_cross_entropy(
      image_logits, image_positives / jnp.sum(image_positives, axis=1, keepdims=True))
  loss = 0.5 * (jnp.mean(image_to_text) + jnp.mean(text_to_image))
  hit = image_positives[jnp.arange(b), jnp.argmax(image_logits, axis=1)]
  return loss, {"clip_loss": loss, "image_to_text_accuracy": jnp.mean(hit),
                "logit_scale": scale, **metrics}


def config_of(block, text_length):
  """A jzoo.text.clip.CLIPConfig from `config.clip` (sizes of both towers, the embedding width)."""
  text = dict(block.text.to_dict())
  if int(text.get("max_position_embeddings", text_length)) < text_length:
    raise ConfigError(f"config.clip.text.max_position_embeddings is below config.text.length "
                      f"{text_length}; raise it")
  r = int(block.resolution)
  return clip_lib.CLIPConfig(text=clip_lib.TextConfig(**text),
                             vision=clip_lib.VisionConfig(image_size=r, **block.vision.to_dict()),
                             projection_dim=int(block.projection_dim))


class ContrastiveCLIP:
  """`config.clip` -> CLIP module, text/image encoders, the contrastive `clip` Stage."""
  frozen = True  # the stages that read it never update it

  def __init__(self, config):
    self.block = config.clip
    self.clip_config = config_of(self.block, int(config.text.length))
    r = int(self.block.resolution)
    self.module = clip_lib.CLIP(self.clip_config, clip_lib.ImageProcessing(size=r, crop_size=(r, r)))
    # The zoo's sentencepiece ids for a CLIP trained here; an imported one reads its own BPE.
    self.text_encoder = clip_lib.CLIPTextEncoder(
        self.module, tokenizer=CLIP_BPE if self.imported else SENTENCEPIECE)
    self.image_encoder = clip_lib.CLIPImageEncoder(self.module)

  @property
  def embed_dim(self):
    return self.clip_config.projection_dim

  @property
  def imported(self):
    return bool(self.block.weights)

  def prompt_tokenizer(self, length):
    """The imported CLIP folder's BPE tokenizer (its ids are the ones its text tower knows)."""
    return CLIPTokenizer.load(os.path.expanduser(str(self.block.weights)), max_length=length)

  # --- the stage -----------------------------------------------------------
  def stage(self, data, next_stage):
    data = dataclasses.replace(data, negatives=bool(self.block.hard_negatives))
    return Stage(data, init=self.init,
                 loss=lambda params, batch, rng, frozen: self.loss(params, batch, next_stage))

  def init(self, rng, batch):
    pixels = clip_lib.preprocess_jax(batch["image"], self.module.processing)
    return clip_lib._init_clip(self.module, rng, batch["tokens"], batch["mask"], pixels)  # pylint: disable=protected-access

  def loss(self, params, batch, next_stage=None):
    if self.imported:
      raise ConfigError("config.clip.weights is set, so CLIP is imported and frozen; train the "
                        f"next stage instead (--config.stage={next_stage})")
    tokens, mask = batch["tokens"], batch["mask"]
    text = self.module.apply({"params": params}, tokens, mask,
                             method=clip_lib.CLIP.get_text_features)
    pixels = clip_lib.preprocess_jax(batch["image"], self.module.processing)
    image = self.module.apply({"params": params}, pixels, method=clip_lib.CLIP.get_image_features)
    same = jnp.all(tokens[:, None, :] == tokens[None, :, :], axis=-1)
    negatives = None
    if "negative_tokens" in batch:
      twins = batch["negative_tokens"]
      features = self.module.apply({"params": params}, twins, batch["negative_mask"],
                                   method=clip_lib.CLIP.get_text_features)
      valid = jnp.any(twins != tokens, axis=-1)  # the caption names a relation
      positive = jnp.all(tokens[:, None, :] == twins[None, :, :], axis=-1)
      negatives = (features, valid, positive)
    return contrastive_loss(text, image, params["logit_scale"], same, negatives)

  # --- what the other stages read ------------------------------------------
  def text(self, params, tokens, mask):
    """(per-token states [B, L, text width], pooled embedding [B, embed_dim]), frozen."""
    return (self.text_encoder.encode(params, tokens, mask),
            self.text_encoder.pooled(params, tokens, mask))

  def image(self, params, pixels):
    """The image embedding [B, embed_dim] of pixels [B, H, W, 3] in [-1, 1], frozen."""
    return self.image_encoder.encode(params, pixels)

  def frozen_abstract_params(self, stage):
    return None  # CLIP is a stage of the model: the trainer builds its abstract params

  def external_weights(self, stage):
    return self.import_weights() if stage == CLIP_STAGE and self.imported else None

  def source(self):
    if self.imported:
      return "weights " + os.path.abspath(os.path.expanduser(str(self.block.weights)))
    return None

  def import_weights(self):
    """CLIP params from a Hugging Face CLIP folder, which must have this config's sizes."""
    folder = os.path.expanduser(str(self.block.weights))
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
      raise CheckpointError(f"{folder}: no config.json (config.clip.weights must be a Hugging "
                            "Face CLIPModel folder)")
    loaded = clip_lib.clip_config_from_json(config_path)
    for what, ours, theirs in (
        ("projection_dim", self.clip_config.projection_dim, loaded.projection_dim),
        ("text.hidden_size", self.clip_config.text.hidden_size, loaded.text.hidden_size),
        ("vision.hidden_size", self.clip_config.vision.hidden_size, loaded.vision.hidden_size),
        ("vision.image_size", self.clip_config.vision.image_size, loaded.vision.image_size)):
      if ours != theirs:
        raise CheckpointError(f"{config_path}: {what} is {theirs} but config.clip says {ours}; "
                              "set the config.clip sizes to the checkpoint's")
    return clip_lib.load_params(folder, self.module)

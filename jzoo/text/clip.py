"""CLIP (Radford et al. 2021) in Flax linen, loaded from a Hugging Face folder, and the CLIP score.

The architecture is transformers' `CLIPModel`:

* text tower: token + position embeddings, pre-LN encoder layers under a
  causal mask (and the padding mask), `final_layer_norm`, the state at the end
  token, `text_projection`;
* image tower: a patch convolution (no bias), a class embedding, position
  embeddings, `pre_layrnorm`, the same encoder layers, `post_layernorm` of the
  class token, `visual_projection`.

Encoder layers are CLIP's own (q/k/v/out projections with biases, quick_gelu
or the config's `hidden_act`, LayerNorm with the config's eps and a two-pass
variance): jzoo.nn's transformer blocks have bias-free q/k/v projections, GELU
and a fixed eps. Only the attention itself (`dot_product_attention`) and
`causal_mask` are shared.

The parameter tree mirrors Hugging Face's names (`layers.0` -> `layers_0`,
`weight` -> `kernel` / `scale` / `embedding`), so the import is a rename plus
transposes. Nothing is downloaded: `load_clip` reads a folder the user got
elsewhere (e.g. openai/clip-vit-base-patch32). Embeddings run under "highest"
matmul precision, so that GPUs do not drop float32 matmuls to TF32 (nor TPUs
to bfloat16 passes): the metric does not depend on the backend's defaults.

Every parameter carries logical axis names (jzoo.parallel.rules), so CLIP
shards over a mesh like any stage; `load_params` returns plain arrays.

`clip_score` is torchmetrics' CLIPScore: 100 * cos(image embedding, caption
embedding), floored at 0. See docs/metrics/clip_score.md. `CLIPTextEncoder`
and `CLIPImageEncoder` put the two towers behind the zoo's text-encoder
protocol (jzoo.text.encoder) as frozen stages of a model, over the same
module and params.
"""

import dataclasses
import functools
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
from flax import traverse_util

from jzoo.errors import CheckpointError, UserError
from jzoo.io.weight_files import checked_params, open_safetensors
from jzoo.nn import layers
from jzoo.nn.attention import dot_product_attention
from jzoo.nn.transformer import causal_mask
from jzoo.text.clip_tokenizer import CLIPTokenizer, _read_json
from jzoo.text.encoder import CLIP_BPE, TextEncoder

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# Defaults are transformers' CLIPTextConfig / CLIPVisionConfig (openai/clip-vit-base-patch32),
# which fill the keys a config.json leaves out.


@dataclasses.dataclass(frozen=True)
class TextConfig:
  vocab_size: int = 49408
  hidden_size: int = 512
  intermediate_size: int = 2048
  num_attention_heads: int = 8
  num_hidden_layers: int = 12
  max_position_embeddings: int = 77
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  eos_token_id: int = 49407


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  hidden_size: int = 768
  intermediate_size: int = 3072
  num_attention_heads: int = 12
  num_hidden_layers: int = 12
  image_size: int = 224
  patch_size: int = 32
  num_channels: int = 3
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  text: TextConfig = TextConfig()
  vision: VisionConfig = VisionConfig()
  projection_dim: int = 512


@dataclasses.dataclass(frozen=True)
class ImageProcessing:
  """CLIPImageProcessor's settings (preprocessor_config.json); defaults are its own.

  `size`: an int resizes the shortest side to it (aspect kept, the long side
  truncated to an int), a (height, width) pair resizes to exactly that.
  """
  do_convert_rgb: bool = True
  do_resize: bool = True
  size: Any = 224
  resample: int = 3  # PIL's BICUBIC
  do_center_crop: bool = True
  crop_size: tuple = (224, 224)
  do_rescale: bool = True
  rescale_factor: float = 1 / 255
  do_normalize: bool = True
  image_mean: tuple = OPENAI_MEAN
  image_std: tuple = OPENAI_STD


_ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": layers.gelu_exact,
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}


# Every parameter names its logical axes (jzoo.parallel.rules), so CLIP shards over a mesh like
# the other stages: FSDP on "embed", tensor parallelism on "mlp" and "heads". The initializers
# are flax's defaults (what the plain layers used); imported weights replace them anyway.
_named = nn.with_logical_partitioning


def _dense(features, axes, name=None, use_bias=True):
  """nn.Dense with a [in, out] kernel named `axes` and an `axes[1]` bias."""
  return nn.Dense(features, use_bias=use_bias, name=name,
                  kernel_init=_named(nn.initializers.lecun_normal(), axes),
                  bias_init=_named(nn.initializers.zeros, (axes[1],)))


def _embed(num, features, axes, name):
  # jzoo's Embed: the same "embedding" parameter, looked up FSDP-safely (layers.gather_rows).
  init = nn.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)  # nn.Embed's
  return layers.Embed(num, features, embedding_init=_named(init, axes), name=name)


def _layer_norm(eps, name):
  # Two-pass variance, as torch's LayerNorm: CLIP's residual stream has large-valued channels.
  return nn.LayerNorm(epsilon=eps, use_fast_variance=False, name=name,
                      scale_init=_named(nn.initializers.ones, ("norm",)),
                      bias_init=_named(nn.initializers.zeros, ("norm",)))


class Attention(nn.Module):
  heads: int

  @nn.compact
  def __call__(self, x, mask=None):
    b, length, width = x.shape
    # HF's [width, width] kernels stay 2-D (the import is a transpose); their heads * head_dim
    # axis is named "heads", so tensor parallelism splits it at head boundaries.
    split = lambda name: _dense(width, ("embed", "heads"), name)(x).reshape(
        b, length, self.heads, -1)
    y = dot_product_attention(split("q_proj"), split("k_proj"), split("v_proj"), mask)
    return _dense(width, ("heads", "embed"), "out_proj")(y.reshape(b, length, width))


class MLP(nn.Module):
  config: Any

  @nn.compact
  def __call__(self, x):
    c = self.config
    h = _dense(c.intermediate_size, ("embed", "mlp"), "fc1")(x)
    return _dense(c.hidden_size, ("mlp", "embed"), "fc2")(_ACTIVATIONS[c.hidden_act](h))


class EncoderLayer(nn.Module):
  """x + attn(LN(x)); x + fc2(act(fc1(LN(x))))."""
  config: Any  # TextConfig or VisionConfig

  @nn.compact
  def __call__(self, x, mask=None):
    c = self.config
    x = x + Attention(c.num_attention_heads, name="self_attn")(
        _layer_norm(c.layer_norm_eps, "layer_norm1")(x), mask)
    return x + MLP(c, name="mlp")(_layer_norm(c.layer_norm_eps, "layer_norm2")(x))


class Encoder(nn.Module):
  config: Any

  @nn.compact
  def __call__(self, x, mask=None):
    for i in range(self.config.num_hidden_layers):
      x = EncoderLayer(self.config, name=f"layers_{i}")(x, mask)
    return x


class TextEmbeddings(nn.Module):
  config: TextConfig

  @nn.compact
  def __call__(self, ids):
    c = self.config
    tokens = _embed(c.vocab_size, c.hidden_size, ("vocab", "embed"), "token_embedding")(ids)
    positions = _embed(c.max_position_embeddings, c.hidden_size, ("length", "embed"),
                       "position_embedding")(jnp.arange(ids.shape[1]))
    return tokens + positions


class TextTransformer(nn.Module):
  """ids [B, L] (mask [B, L], 1 on real tokens) -> pooled [B, hidden] at the end token, or with
  `pool=False` the final-normed states [B, L, hidden] (HF's last_hidden_state)."""
  config: TextConfig

  @nn.compact
  def __call__(self, ids, mask=None, pool=True):
    c = self.config
    if ids.shape[1] > c.max_position_embeddings:
      raise UserError(f"CLIP text of {ids.shape[1]} tokens is longer than the model's "
                      f"{c.max_position_embeddings}; tokenize with that max_length")
    x = TextEmbeddings(c, name="embeddings")(ids)
    attend = causal_mask(ids.shape[1])
    if mask is not None:
      attend = attend & (mask > 0)[:, None, None, :]
    x = Encoder(c, name="encoder")(x, attend)
    x = _layer_norm(c.layer_norm_eps, "final_layer_norm")(x)
    return pool_end_token(x, ids, c) if pool else x


def pool_end_token(states, ids, config: TextConfig):
  """The final-normed states [B, L, hidden] at each row's end token -> [B, hidden]."""
  if config.eos_token_id == 2:
    # Configs from before transformers PR #24773 have a wrong eos_token_id; there, as in
    # OpenAI's code, the end token is the highest id (the first one, if repeated).
    end = jnp.argmax(ids, axis=-1)
  else:
    end = jnp.argmax(ids == config.eos_token_id, axis=-1)  # the first end token (0 if none)
  return states[jnp.arange(ids.shape[0]), end]


class VisionEmbeddings(nn.Module):
  config: VisionConfig

  @nn.compact
  def __call__(self, pixels):
    c = self.config
    p = c.patch_size
    patches = nn.Conv(c.hidden_size, (p, p), strides=(p, p), padding="VALID", use_bias=False,
                      kernel_init=_named(nn.initializers.lecun_normal(), layers.CONV_AXES),
                      name="patch_embedding")(pixels)
    b = patches.shape[0]
    patches = patches.reshape(b, -1, c.hidden_size)  # row-major over the patch grid, as torch
    cls = self.param("class_embedding", _named(nn.initializers.normal(1.0), ("embed",)),
                     (c.hidden_size,))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, c.hidden_size)), patches], axis=1)
    positions = _embed(x.shape[1], c.hidden_size, ("length", "embed"), "position_embedding")(
        jnp.arange(x.shape[1]))
    return x + positions


class VisionTransformer(nn.Module):
  """Normalized pixels [B, S, S, C] -> pooled [B, hidden] (post-LN class token)."""
  config: VisionConfig

  @nn.compact
  def __call__(self, pixels):
    c = self.config
    if pixels.shape[1:] != (c.image_size, c.image_size, c.num_channels):
      raise UserError(f"CLIP pixels of shape {pixels.shape[1:]} do not match the model's "
                      f"{(c.image_size, c.image_size, c.num_channels)}; use `preprocess`")
    x = VisionEmbeddings(c, name="embeddings")(pixels)
    x = _layer_norm(c.layer_norm_eps, "pre_layrnorm")(x)  # sic, Hugging Face's name
    x = Encoder(c, name="encoder")(x)
    return _layer_norm(c.layer_norm_eps, "post_layernorm")(x[:, 0])


class CLIP(nn.Module):
  """CLIPModel. `processing` carries the folder's image preprocessing settings."""
  config: CLIPConfig = CLIPConfig()
  processing: ImageProcessing = ImageProcessing()

  def setup(self):
    c = self.config
    self.text_model = TextTransformer(c.text)
    self.vision_model = VisionTransformer(c.vision)
    # The projected embeddings are read whole (cosines, a prior's input): not tensor-sharded.
    self.text_projection = _dense(c.projection_dim, ("embed", None), use_bias=False)
    self.visual_projection = _dense(c.projection_dim, ("embed", None), use_bias=False)
    self.logit_scale = self.param("logit_scale", _named(nn.initializers.constant(2.6592), ()),
                                  ())

  def get_text_features(self, ids, mask=None):
    """[B, projection_dim], unnormalized (transformers' get_text_features)."""
    return self.text_projection(self.text_model(ids, mask))

  def text_hidden_states(self, ids, mask=None):
    """[B, L, text hidden_size]: the text tower's final-normed per-token states."""
    return self.text_model(ids, mask, pool=False)

  def get_image_features(self, pixels):
    """[B, projection_dim], unnormalized (transformers' get_image_features)."""
    return self.visual_projection(self.vision_model(pixels))

  def __call__(self, ids, mask, pixels):
    return self.get_text_features(ids, mask), self.get_image_features(pixels)


class CLIPTextWithProjection(nn.Module):
  """transformers' CLIPTextModelWithProjection (Karlo's text encoder): ids [B, L] ->
  (last_hidden_state [B, L, hidden], text_embeds [B, projection_dim])."""
  config: TextConfig
  projection_dim: int

  def setup(self):
    self.text_model = TextTransformer(self.config)
    self.text_projection = _dense(self.projection_dim, ("embed", None), use_bias=False)

  def __call__(self, ids, mask=None):
    states = self.text_model(ids, mask, pool=False)  # one pass serves both outputs
    return states, self.text_projection(pool_end_token(states, ids, self.config))


# --- loading ------------------------------------------------------------------------


def _tower_config(hf, name, cls, path):
  """transformers' CLIPConfig rule: a non-null `{name}_config_dict` replaces `{name}_config`
  entirely (its missing keys take the defaults); missing keys take the defaults."""
  sub = hf.get(f"{name}_config_dict")
  if sub is None:
    sub = hf.get(f"{name}_config") or {}
  kw = {}
  for f in dataclasses.fields(cls):
    value = sub.get(f.name)
    if value is None:
      continue
    if f.name == "eos_token_id" and isinstance(value, list):
      if len(value) != 1:
        raise CheckpointError(f"{path}: text eos_token_id {value} is not one id")
      value = value[0]
    try:
      kw[f.name] = type(f.default)(value)
    except (TypeError, ValueError) as e:
      raise CheckpointError(f"{path}: {name}_config.{f.name}={value!r} ({e})") from e
  c = cls(**kw)
  if c.hidden_act not in _ACTIVATIONS:
    raise CheckpointError(f"{path}: {name} hidden_act {c.hidden_act!r} is not supported "
                          f"({', '.join(_ACTIVATIONS)})")
  if c.hidden_size % c.num_attention_heads:
    raise CheckpointError(f"{path}: {name} hidden_size {c.hidden_size} does not split into "
                          f"{c.num_attention_heads} heads")
  return c


def clip_config_from_json(path) -> CLIPConfig:
  hf = _read_json(path)
  if hf.get("model_type") != "clip":
    raise CheckpointError(f"{path}: model_type is {hf.get('model_type')!r}, not 'clip' "
                          "(a Hugging Face CLIPModel config.json is needed)")
  return CLIPConfig(text=_tower_config(hf, "text", TextConfig, path),
                    vision=_tower_config(hf, "vision", VisionConfig, path),
                    projection_dim=int(hf.get("projection_dim", 512)))


def text_with_projection_from_dict(hf, path) -> CLIPTextWithProjection:
  """The module of a CLIPTextModelWithProjection folder's config.json (as a dict; `path` names
  it in errors)."""
  if hf.get("model_type") != "clip_text_model":
    raise CheckpointError(f"{path}: model_type is {hf.get('model_type')!r}, not "
                          "'clip_text_model' (a CLIPTextModelWithProjection config.json is needed)")
  return CLIPTextWithProjection(_tower_config({"text_config": hf}, "text", TextConfig, path),
                                int(hf.get("projection_dim", 512)))


def _pair(value, what, path):
  """An int, [h, w] or {"height", "width"} as (h, w)."""
  if isinstance(value, int):
    return (value, value)
  if isinstance(value, dict) and {"height", "width"} <= set(value):
    return (int(value["height"]), int(value["width"]))
  if isinstance(value, (list, tuple)) and len(value) == 2:
    return (int(value[0]), int(value[1]))
  raise CheckpointError(f"{path}: unsupported {what} {value!r}")


def image_processing_from_json(path, image_size) -> ImageProcessing:
  """Settings from preprocessor_config.json; without one, CLIPImageProcessor's defaults with
  the model's image_size as resize and crop size."""
  if not os.path.isfile(path):
    return ImageProcessing(size=image_size, crop_size=(image_size, image_size))
  d = {k: v for k, v in _read_json(path).items() if v is not None}
  size = d.get("size", image_size)
  if isinstance(size, dict) and set(size) == {"shortest_edge"}:
    size = int(size["shortest_edge"])
  elif not isinstance(size, int):  # an exact (height, width), e.g. {"height": 224, "width": 224}
    size = _pair(size, "size", path)
  base = ImageProcessing()
  kw = {k: type(getattr(base, k))(d[k]) for k in
        ("do_convert_rgb", "do_resize", "resample", "do_center_crop", "do_rescale",
         "rescale_factor", "do_normalize") if k in d}
  for k in ("image_mean", "image_std"):
    if k in d:
      v = d[k]
      kw[k] = tuple(float(x) for x in (v if isinstance(v, (list, tuple)) else [v] * 3))
  return ImageProcessing(size=size, crop_size=_pair(d.get("crop_size", image_size), "crop_size",
                                                    path), **kw)


def init_variables(model, rng):
  """Boxed variables of a CLIP or CLIPTextWithProjection from the smallest inputs."""
  ids, mask = jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), jnp.int32)
  if isinstance(model, CLIPTextWithProjection):
    return model.init(rng, ids, mask)
  v = model.config.vision
  return model.init(rng, ids, mask, jnp.zeros((1, v.image_size, v.image_size, v.num_channels)))


def param_shapes(model) -> dict:
  """Flat {path tuple: shape} of the model's parameters (abstract, no memory)."""
  tree = jax.eval_shape(lambda: init_variables(model, jax.random.PRNGKey(0)))
  return {k: tuple(v.shape)
          for k, v in traverse_util.flatten_dict(nn.unbox(tree["params"])).items()}


def _flax_path(key, expected):
  """Hugging Face tensor name -> the Flax parameter path it loads into."""
  path = []
  for part in key.split("."):
    if part.isdigit() and path and path[-1] == "layers":
      path[-1] = f"layers_{part}"
    else:
      path.append(part)
  if path[-1] == "weight":
    for leaf in ("kernel", "scale", "embedding"):
      if (*path[:-1], leaf) in expected:
        return (*path[:-1], leaf)
  return tuple(path)


def _to_flax(path, array):
  if path[-1] == "kernel" and array.ndim == 2:  # Linear [out, in] -> Dense [in, out]
    return array.T
  if path[-1] == "kernel" and array.ndim == 4:  # Conv2d [out, in, kh, kw] -> [kh, kw, in, out]
    return array.transpose(2, 3, 1, 0)
  return array


def load_params(folder, model) -> dict:
  """float32 numpy parameters from model.safetensors (single or sharded), checked key by key."""
  folder = os.fspath(folder)
  if not any(os.path.exists(os.path.join(folder, n))
             for n in ("model.safetensors", "model.safetensors.index.json")):
    extra = (" (it has pytorch_model.bin: jzoo reads safetensors only; convert it with "
             "transformers' save_pretrained)") if os.path.exists(
                 os.path.join(folder, "pytorch_model.bin")) else ""
    raise CheckpointError(f"{folder}: no model.safetensors{extra}")
  tensors, _, source = open_safetensors(folder)
  keys = [k for k in tensors if not k.endswith("position_ids")]  # buffers some checkpoints store
  return checked_params(keys, lambda k: tensors[k].get(k), param_shapes(model), _flax_path,
                        _to_flax, source, unexpected=f"not a {_kind(model)} weight",
                        missing=("CLIP parameter", f"a full {_kind(model)} checkpoint is needed"))


def _kind(model):
  return "CLIPTextModelWithProjection" if isinstance(model, CLIPTextWithProjection) else "CLIPModel"


def load_clip(folder):
  """(model, params, tokenizer) from a Hugging Face CLIP folder: config.json, model.safetensors,
  vocab.json + merges.txt (or tokenizer.json), optional preprocessor_config.json."""
  folder = os.fspath(folder)
  if not os.path.isdir(folder):
    raise CheckpointError(f"{folder}: no such CLIP folder (download e.g. "
                          "openai/clip-vit-base-patch32 elsewhere and give its local folder)")
  config_path = os.path.join(folder, "config.json")
  if not os.path.isfile(config_path):
    raise CheckpointError(f"{folder}: no config.json (a Hugging Face CLIPModel folder is needed)")
  config = clip_config_from_json(config_path)
  processing = image_processing_from_json(os.path.join(folder, "preprocessor_config.json"),
                                          config.vision.image_size)
  model = CLIP(config, processing)
  params = load_params(folder, model)
  tokenizer = CLIPTokenizer.load(folder, max_length=config.text.max_position_embeddings)
  return model, params, tokenizer


# --- preprocessing ------------------------------------------------------------------


def _to_rgb(image, convert):
  """uint8 PIL image in RGB, transparency composited onto white (as transformers does)."""
  if not isinstance(image, PIL.Image.Image):
    array = np.asarray(image)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3
                                                          and array.shape[-1] in (1, 3, 4))):
      raise UserError(f"CLIP images must be uint8 [H, W, 3] (or [H, W] / [H, W, 1|4]), got "
                      f"{array.dtype} {array.shape}; convert float images with "
                      "(x * 255).round().astype(np.uint8)")
    image = PIL.Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1
                                else array)
  if not convert or image.mode == "RGB":
    return image
  if "A" in image.getbands() or image.info.get("transparency") is not None:
    white = PIL.Image.new("RGBA", image.size, (255, 255, 255, 255))
    return PIL.Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
  return image.convert("RGB")


def _center_crop(array, height, width):
  """transformers' numpy center crop: zero-pad centered (ceil) if smaller, then crop."""
  h, w = array.shape[:2]
  top, left = (h - height) // 2, (w - width) // 2
  if top < 0 or left < 0:
    ph, pw = max(height, h), max(width, w)
    pad_top, pad_left = -(-(ph - h) // 2), -(-(pw - w) // 2)
    padded = np.zeros((ph, pw) + array.shape[2:], array.dtype)
    padded[pad_top:pad_top + h, pad_left:pad_left + w] = array
    array, top, left = padded, top + pad_top, left + pad_left
  return array[max(top, 0):top + height, max(left, 0):left + width]


def preprocess_image(image, processing: ImageProcessing) -> np.ndarray:
  """One image (uint8 array or PIL) -> float32 [H', W', 3], as transformers' CLIPImageProcessor
  with its PIL backend (CLIPImageProcessorPil) does it."""
  p = processing
  image = _to_rgb(image, p.do_convert_rgb)
  if p.do_resize:
    w, h = image.size
    if isinstance(p.size, int):  # shortest side to `size`; int() as transformers
      new_h, new_w = (int(p.size * h / w), p.size) if w <= h else (p.size, int(p.size * w / h))
    else:
      new_h, new_w = p.size
    image = image.resize((new_w, new_h), resample=p.resample)
  x = np.asarray(image)
  if p.do_center_crop:
    x = _center_crop(x, *p.crop_size)
  if p.do_rescale:
    x = (x.astype(np.float64) * p.rescale_factor).astype(np.float32)
  x = x.astype(np.float32)
  if p.do_normalize:
    x = (x - np.asarray(p.image_mean, np.float32)) / np.asarray(p.image_std, np.float32)
  return x


def preprocess(images, processing: ImageProcessing) -> np.ndarray:
  """uint8 [N, H, W, 3] (or a list of uint8 arrays / PIL images of any sizes) -> [N, S, S, 3]."""
  if isinstance(images, PIL.Image.Image) or (
      isinstance(images, np.ndarray) and images.ndim == 3 and images.shape[-1] in (1, 3, 4)):
    images = [images]  # one image
  return np.stack([preprocess_image(im, processing) for im in images])


# --- embeddings and the score ---------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def _text_features(model, params, ids, mask):
  return model.apply({"params": params}, ids, mask, method=CLIP.get_text_features)


@functools.partial(jax.jit, static_argnums=0)
def _image_features(model, params, pixels):
  return model.apply({"params": params}, pixels, method=CLIP.get_image_features)


def _batched(fn, arrays, batch_size):
  with jax.default_matmul_precision("highest"):  # float32 matmuls on every backend
    return np.concatenate([np.asarray(fn(*(a[i:i + batch_size] for a in arrays)))
                           for i in range(0, len(arrays[0]), batch_size)])


def text_embeddings(model, params, ids, mask, batch_size=256):
  """Unnormalized text features [N, projection_dim] of token ids [N, L] and their mask."""
  return _batched(functools.partial(_text_features, model, params),
                  (np.asarray(ids, np.int32), np.asarray(mask, np.int32)), batch_size)


def image_embeddings(model, params, pixels, batch_size=64):
  """Unnormalized image features [N, projection_dim] of preprocessed pixels [N, S, S, 3]."""
  return _batched(functools.partial(_image_features, model, params),
                  (np.asarray(pixels, np.float32),), batch_size)


def clip_score(images, captions, model, params, tokenizer, batch_size=64, clamp="pair"):
  """CLIP score of images paired with captions: (mean score, per-pair scores [N]).

  A pair's score is 100 * cos(image embedding, caption embedding). `clamp="pair"`
  floors each pair's score at 0 and averages (torchmetrics' documented formula);
  `clamp="mean"` returns the raw per-pair scores and floors their mean, which is
  what torchmetrics' code computes. They differ only when a pair's cosine is
  negative, which trained CLIPs practically never give.
  """
  if clamp not in ("pair", "mean"):
    raise UserError(f"clamp must be 'pair' or 'mean', got {clamp!r}")
  captions = [captions] if isinstance(captions, str) else list(captions)
  if not captions:
    raise UserError("clip_score needs at least one image and caption")
  pixels = preprocess(images, model.processing)
  if len(pixels) != len(captions):
    raise UserError(f"{len(pixels)} images but {len(captions)} captions; give one caption "
                    "per image")
  ids, mask = tokenizer(captions, model.config.text.max_position_embeddings)
  img = image_embeddings(model, params, pixels, batch_size).astype(np.float64)
  txt = text_embeddings(model, params, ids, mask, batch_size).astype(np.float64)
  cos = np.sum(img * txt, -1) / (np.linalg.norm(img, axis=-1) * np.linalg.norm(txt, axis=-1))
  scores = 100 * cos
  if clamp == "pair":
    scores = np.maximum(scores, 0.0)
    return float(scores.mean()), scores
  return float(max(scores.mean(), 0.0)), scores


# --- the towers as frozen encoders of a model ---------------------------------------------
# Both take the whole CLIPModel tree (what `load_clip` returns), so one frozen network feeds
# the text encoder, the image encoder and the CLIP score with the same module and params.


def _clip_model(model_or_config):
  if isinstance(model_or_config, CLIP):
    return model_or_config
  s = model_or_config.vision.image_size  # CLIPImageProcessor's defaults at the tower's size
  return CLIP(model_or_config, ImageProcessing(size=s, crop_size=(s, s)))


def _init_clip(model, rng, ids=None, mask=None, pixels=None):
  """The full CLIP variables (boxed with axis names); a tower not given gets a dummy input."""
  v = model.config.vision
  ids = jnp.zeros((1, 2), jnp.int32) if ids is None else ids
  mask = jnp.ones(ids.shape, jnp.int32) if mask is None else mask
  if pixels is None:
    pixels = jnp.zeros((1, v.image_size, v.image_size, v.num_channels))
  return model.init(rng, ids, mask, pixels)


class CLIPTextEncoder(TextEncoder):
  """CLIP's text tower behind the TextEncoder protocol (frozen, CLIP BPE tokens).

  `encode`: the final-normed per-token states [B, L, text hidden_size]; `pooled`: the projected
  end-token feature [B, projection_dim], exactly `CLIP.get_text_features` (unnormalized).
  Built from a `CLIP` module (`load_clip(folder)[0]`) or a `CLIPConfig`."""
  frozen = True
  tokenizer = CLIP_BPE

  def __init__(self, model_or_config, tokenizer=CLIP_BPE):
    self.model = _clip_model(model_or_config)
    self.width = self.model.config.text.hidden_size
    self.tokenizer = tokenizer  # SENTENCEPIECE for a CLIP trained on the zoo's captions

  @property
  def pooled_width(self):
    return self.model.config.projection_dim

  def init(self, rng, tokens, mask):
    return _init_clip(self.model, rng, tokens, mask)

  def encode(self, params, tokens, mask):
    return jax.lax.stop_gradient(self.model.apply({"params": params}, tokens, mask,
                                                  method=CLIP.text_hidden_states))

  def pooled(self, params, tokens, mask):
    return jax.lax.stop_gradient(self.model.apply({"params": params}, tokens, mask,
                                                  method=CLIP.get_text_features))


def _center_crop_batch(x, height, width):
  """`_center_crop` on [B, H, W, C] in jax (static shapes): zero-pad centered, then crop."""
  h, w = x.shape[1:3]
  ph, pw = max(height, h), max(width, w)
  top, left = -(-(ph - h) // 2), -(-(pw - w) // 2)
  x = jnp.pad(x, ((0, 0), (top, ph - h - top), (left, pw - w - left), (0, 0)))
  top, left = (ph - height) // 2, (pw - width) // 2
  return x[:, top:top + height, left:left + width]


def preprocess_jax(pixels, processing: ImageProcessing):
  """Float pixels [B, H, W, 3] in [-1, 1] (or uint8) -> the tower's normalized input, jittable.

  The steps of `preprocess` in float: resize (jax's antialiased bicubic, which differs from
  PIL's uint8 bicubic by rounding and a little at edges; none when the size already matches),
  center crop, rescale, normalize."""
  p = processing
  if pixels.dtype == jnp.uint8:
    x = pixels.astype(jnp.float32)
  else:
    x = (pixels.astype(jnp.float32) + 1) * 127.5  # the uint8 scale `preprocess` starts from
  b, h, w, c = x.shape
  if c != 3:
    raise UserError(f"CLIP images must have 3 channels, got pixels of shape {pixels.shape}")
  if p.do_resize:
    if isinstance(p.size, int):
      size = (int(p.size * h / w), p.size) if w <= h else (p.size, int(p.size * w / h))
    else:
      size = tuple(p.size)
    if size != (h, w):  # clipped as PIL's uint8 output is
      x = jnp.clip(jax.image.resize(x, (b, *size, c), "bicubic", antialias=True), 0, 255)
  if p.do_center_crop:
    x = _center_crop_batch(x, *p.crop_size)
  if p.do_rescale:
    x = x * p.rescale_factor
  if p.do_normalize:
    x = (x - jnp.asarray(p.image_mean, jnp.float32)) / jnp.asarray(p.image_std, jnp.float32)
  return x


class CLIPImageEncoder:
  """CLIP's image tower as a frozen encoder of a model (e.g. DALL-E 2's image embeddings).

  `encode(params, pixels)`: float pixels [B, H, W, 3] in [-1, 1], the zoo's convention (uint8
  is taken too), preprocessed inside the jitted graph as the CLIP score's `preprocess` does
  (`preprocess_jax`), -> the projected image embedding [B, projection_dim], exactly
  `CLIP.get_image_features` (unnormalized). `width` is projection_dim. The CLIP score keeps
  the numpy `preprocess` (PIL's resize, as transformers) with the same module and params."""
  frozen = True

  def __init__(self, model_or_config):
    self.model = _clip_model(model_or_config)
    self.width = self.model.config.projection_dim

  def init(self, rng, pixels):
    return _init_clip(self.model, rng, pixels=preprocess_jax(pixels, self.model.processing))

  def encode(self, params, pixels):
    x = preprocess_jax(pixels, self.model.processing)
    return jax.lax.stop_gradient(self.model.apply({"params": params}, x,
                                                  method=CLIP.get_image_features))


def load_clip_encoders(folder):
  """(CLIPTextEncoder, CLIPImageEncoder, params, tokenizer) of a Hugging Face CLIP folder."""
  model, params, tokenizer = load_clip(folder)
  return CLIPTextEncoder(model), CLIPImageEncoder(model), params, tokenizer

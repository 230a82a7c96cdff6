"""Kakao Brain's Karlo (kakaobrain/karlo-v1-alpha, unCLIP) from a user's folder, on jzoo's modules.

  python -m jzoo.sample --model dalle2-karlo --checkpoint /path/to/karlo-v1-alpha --prompt "..."

The folder is diffusers' UnCLIPPipeline layout: model_index.json, `tokenizer` (CLIP BPE),
`text_encoder` (CLIPTextModelWithProjection, OpenAI's ViT-L/14 text tower), `prior`
(PriorTransformer), `text_proj` (UnCLIPTextProjModel), `decoder` (UNet2DConditionModel, 64 px,
learned variance), `super_res_first` and `super_res_last` (UNet2DModel, 64 -> 256), and the
three UnCLIPScheduler folders. Each component maps onto its jzoo module (jzoo.text.clip,
jzoo.nn.prior, jzoo.nn.diffusers_unet) and each scheduler onto jzoo.diffusion.discrete. Without
a folder (`python -m jzoo.plan --config dalle2:karlo`) the modules have Karlo's published sizes.

Sampling is UnCLIPPipeline's, step for step:
  text      ids -> (last_hidden_state, text_embeds); the text tower reads no padding mask
            (only its causal one) and the prior and decoder mask the padded keys; guidance
            pairs every caption with the empty one, unconditional half first
  prior     discrete DDPM from N(0, I), prediction "sample", guidance u + g (c - u), then
            denormalised by the prior's clip_mean / clip_std
  decoder   text_proj -> (4 extra context tokens + projected text states, an additive time
            embedding); the learned-variance U-Net, guidance on the epsilon half only (the
            conditional variance half is kept); the result clamped to [-1, 1]
  upsample  the 64 px image resized bicubically (torch's antialiased kernel, a = -0.5, which
            jax.image.resize computes), concatenated to the noise as 3 more channels; every step
            but the last runs super_res_first, the last (t = 0) super_res_last
Steps and guidance: `config.sample` (prior 25 at 4.0, decoder 25 at 8.0, super-resolution 7),
UnCLIPPipeline's defaults; the decoder's steps and guidance are the request's (traced).

The stages are Karlo's components. jzoo samples with them but does not train them: training
the prior and the decoder needs CLIP image embeddings, and the folder holds no image tower.
"""

import json
import os

import jax
import jax.numpy as jnp

from jzoo.diffusion import discrete
from jzoo.errors import CheckpointError, ConfigError
from jzoo.models.base import TEXT_TO_IMAGE, DataSpec, Model, Stage, to_uint8
from jzoo.nn import diffusers_unet
from jzoo.nn import prior as prior_lib
from jzoo.text import clip as clip_lib
from jzoo.text.clip_tokenizer import CLIPTokenizer
from jzoo.text.encoder import CLIP_BPE, TextEncoder

TEXT_ENCODER, PRIOR, TEXT_PROJ = "text_encoder", "prior", "text_proj"
DECODER, SR_FIRST, SR_LAST = "decoder", "super_res_first", "super_res_last"
COMPONENTS = (TEXT_ENCODER, PRIOR, TEXT_PROJ, DECODER, SR_FIRST, SR_LAST)
SCHEDULERS = {PRIOR: "prior_scheduler", DECODER: "decoder_scheduler",
              "super_res": "super_res_scheduler"}
MAX_DECODER_STEPS = 250  # the static bound of the traced decoder step count

# kakaobrain/karlo-v1-alpha's component configs (diffusers' convert_kakao_brain_unclip_to_diffusers
# and OpenAI's clip-vit-large-patch14 text config), for a model built without a folder.
_UNET_COMMON = dict(act_fn="silu", center_input_sample=False, downsample_padding=1,
                    flip_sin_to_cos=True, freq_shift=0, layers_per_block=3,
                    mid_block_scale_factor=1, norm_eps=1e-05, norm_num_groups=32,
                    block_out_channels=[320, 640, 960, 1280])
KARLO_CONFIGS = {
    TEXT_ENCODER: dict(model_type="clip_text_model", vocab_size=49408, hidden_size=768,
                       intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                       max_position_embeddings=77, hidden_act="quick_gelu", eos_token_id=2,
                       projection_dim=768),
    PRIOR: dict(_class_name="PriorTransformer"),  # the class defaults are Karlo's
    TEXT_PROJ: dict(_class_name="UnCLIPTextProjModel", clip_embeddings_dim=768,
                    clip_extra_context_tokens=4, cross_attention_dim=1536, time_embed_dim=1280),
    DECODER: dict(_class_name="UNet2DConditionModel", **_UNET_COMMON, attention_head_dim=64,
                  class_embed_type="identity", cross_attention_dim=1536,
                  down_block_types=["ResnetDownsampleBlock2D"] + ["SimpleCrossAttnDownBlock2D"] * 3,
                  mid_block_type="UNetMidBlock2DSimpleCrossAttn", in_channels=3, out_channels=6,
                  only_cross_attention=False, resnet_time_scale_shift="scale_shift",
                  sample_size=64, up_block_types=["SimpleCrossAttnUpBlock2D"] * 3
                  + ["ResnetUpsampleBlock2D"], upcast_attention=False, use_linear_projection=False),
    SR_FIRST: dict(_class_name="UNet2DModel", **_UNET_COMMON, add_attention=False,
                   attention_head_dim=8, down_block_types=["ResnetDownsampleBlock2D"] * 4,
                   in_channels=6, out_channels=3, resnet_time_scale_shift="default",
                   sample_size=256, time_embedding_type="positional",
                   up_block_types=["ResnetUpsampleBlock2D"] * 4),
}
KARLO_CONFIGS[SR_LAST] = dict(KARLO_CONFIGS[SR_FIRST], sample_size=None)
NO_FOLDER = ("dalle2:karlo has no folder: pass --checkpoint DIR (a Karlo folder in diffusers' "
             "layout)")


def _read_json(path):
  if not os.path.isfile(path):
    raise CheckpointError(f"{path}: missing (a Karlo folder in diffusers' UnCLIPPipeline layout "
                          f"has {', '.join(COMPONENTS)} and the scheduler folders)")
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise CheckpointError(f"{path}: not valid JSON ({e})") from e


def scheduler_from_json(path):
  """A discrete.DiscreteSchedule from an UnCLIPScheduler's scheduler_config.json."""
  d = _read_json(path)
  if d.get("_class_name", "UnCLIPScheduler") != "UnCLIPScheduler":
    raise CheckpointError(f"{path}: _class_name {d['_class_name']!r} is not UnCLIPScheduler")
  keys = ("num_train_timesteps", "beta_schedule", "variance_type", "prediction_type",
          "clip_sample", "clip_sample_range")
  try:
    return discrete.DiscreteSchedule(**{k: d[k] for k in keys if k in d})
  except (ConfigError, TypeError, ValueError) as e:
    raise CheckpointError(f"{path}: {e}") from e


class KarloTextEncoder(TextEncoder):
  """Karlo's CLIP text tower behind the TextEncoder protocol (CLIP BPE tokens, frozen)."""
  frozen = True

  tokenizer = CLIP_BPE

  def __init__(self, module):
    self.module = module
    self.width = module.config.hidden_size

  @property
  def pooled_width(self):
    return self.module.projection_dim

  def init(self, rng, tokens, mask):
    return self.module.init(rng, tokens)

  def encode(self, params, tokens, mask):
    # UnCLIPPipeline runs the tower without the padding mask: the causal mask alone.
    return self.module.apply({"params": params}, tokens)[0]

  def pooled(self, params, tokens, mask):
    return self.module.apply({"params": params}, tokens)[1]


class Karlo(Model):
  capabilities = frozenset({TEXT_TO_IMAGE})

  def __init__(self, config):
    super().__init__(config)
    self.folder = os.path.expanduser(str(config.karlo.folder))
    configs, self.schedules = self._read_configs()
    self.sample_sizes = {name: configs[name].get("sample_size") for name in (DECODER, SR_FIRST)}
    self.text_module = clip_lib.text_with_projection_from_dict(
        configs[TEXT_ENCODER], os.path.join(self.folder, TEXT_ENCODER, "config.json"))
    self.prior = prior_lib.DiffusionPrior(**prior_lib.config_from_diffusers(configs[PRIOR]))
    self.unets = {name: diffusers_unet.module_from_config(diffusers_unet.config_from_diffusers(
        configs[name], os.path.join(self.folder, name, "config.json")))
        for name in (TEXT_PROJ, DECODER, SR_FIRST, SR_LAST)}
    self._check_sizes()
    self.clip_tokenizer = (CLIPTokenizer.load(os.path.join(self.folder, "tokenizer"),
                                              max_length=self.text_length) if self.folder else None)
    self.text_encoder = KarloTextEncoder(self.text_module)
    spec = lambda r: DataSpec("shapes", r, text_length=self.text_length)
    why = ("Karlo's stages are imported for sampling; jzoo does not train them (the prior and "
           "the decoder need CLIP image embeddings, which a Karlo folder has no tower for)")
    self.stage_table = {
        name: Stage(spec(self._resolution(name)),
                    init=lambda rng, batch, name=name: self._init(name, rng),
                    loss=lambda *args: _refuse(why), untrainable=why)
        for name in COMPONENTS}

  # --- the folder ----------------------------------------------------------
  def _read_configs(self):
    """({component: config dict}, {scheduler part: discrete.DiscreteSchedule}), every file read
    now, so that a missing one is named before the first sample."""
    if not self.folder:
      return KARLO_CONFIGS, {part: discrete.karlo(part) for part in SCHEDULERS}
    if not os.path.isdir(self.folder):
      raise CheckpointError(f"{self.folder}: no such Karlo folder (give the local folder of "
                            "kakaobrain/karlo-v1-alpha in diffusers' layout)")
    index_path = os.path.join(self.folder, "model_index.json")
    found = _read_json(index_path).get("_class_name")
    if found != "UnCLIPPipeline":
      raise CheckpointError(f"{index_path}: _class_name is {found!r}; jzoo imports "
                            "UnCLIPPipeline folders (dalle2:karlo)")
    configs = {name: _read_json(os.path.join(self.folder, name, "config.json"))
               for name in COMPONENTS}
    schedules = {part: scheduler_from_json(os.path.join(self.folder, name,
                                                        "scheduler_config.json"))
                 for part, name in SCHEDULERS.items()}
    return configs, schedules

  def _check_sizes(self):
    """The components must fit together: one embedding width, one text length."""
    where = self.folder or "dalle2:karlo"
    text, proj = self.text_module, self.unets[TEXT_PROJ].config
    checks = (("the prior's embedding_dim", self.prior.embed_dim,
               "the text encoder's projection_dim", text.projection_dim),
              ("the prior's embedding_dim", self.prior.embed_dim, "the text encoder's hidden_size",
               text.config.hidden_size),
              ("text_proj's clip_embeddings_dim", proj.clip_embeddings_dim,
               "the prior's embedding_dim", self.prior.embed_dim),
              ("the prior's num_embeddings", self.prior.text_length,
               "the text encoder's max_position_embeddings", text.config.max_position_embeddings),
              ("super_res_first's in_channels", self.unets[SR_FIRST].config.in_channels,
               "2 x the decoder's in_channels", 2 * self.unets[DECODER].config.in_channels))
    for a, x, b, y in checks:
      if x != y:
        raise CheckpointError(f"{where}: {a} is {x} but {b} is {y}; the folder's components do "
                              "not belong together")

  def _resolution(self, name):
    """The pixels a U-Net runs at (super_res_last at super_res_first's, as the pipeline runs it)."""
    size = self.sample_sizes.get(SR_FIRST if name == SR_LAST else name)
    if name in (DECODER, SR_FIRST, SR_LAST) and not size:
      raise CheckpointError(f"{self.folder}/{name}/config.json: no sample_size (the pipeline "
                            "samples at it)")
    return int(size) if size else 64

  @property
  def text_length(self):
    return int(self.prior.text_length)

  @property
  def output_shape(self):
    r = self._resolution(SR_FIRST)
    return (r, r)

  def text_tokenizer(self):
    if self.clip_tokenizer is None:
      raise CheckpointError(NO_FOLDER)
    return self.clip_tokenizer

  # --- weights ---------------------------------------------------------------
  def _init(self, name, rng):
    if name == TEXT_ENCODER:
      return clip_lib.init_variables(self.text_module, rng)
    if name == PRIOR:
      p, e = self.prior, self.prior.embed_dim
      return p.init(rng, jnp.zeros((1, e)), jnp.zeros((1,), jnp.int32), jnp.zeros((1, e)),
                    jnp.zeros((1, p.text_length, e)), jnp.ones((1, p.text_length), jnp.bool_))
    return {"params": diffusers_unet.init_params(self.unets[name], rng)}

  def external_weights(self, stage):
    """Each component's params from the folder (its safetensors, checked name by name)."""
    if stage not in COMPONENTS:
      return None
    if not self.folder:
      raise CheckpointError(NO_FOLDER)
    folder = os.path.join(self.folder, stage)
    if stage == TEXT_ENCODER:
      return clip_lib.load_params(folder, self.text_module)
    _, _, state, source = diffusers_unet.read_diffusers_folder(folder)
    if stage == PRIOR:
      return prior_lib.params_from_diffusers(state, self.prior)["params"]
    return diffusers_unet.params_from_diffusers(state, self.unets[stage], source)

  def source(self):
    return "Karlo folder " + os.path.abspath(self.folder) if self.folder else None

  # --- sampling ----------------------------------------------------------------
  def _unconditional(self, b):
    """The empty caption's ids and mask, [b, L] (guidance's unconditional half)."""
    if self.clip_tokenizer is None:  # no folder: shapes only (plan, the contract's traces)
      ids = jnp.zeros((b, self.text_length), jnp.int32)
      return ids, jnp.zeros_like(ids).at[:, :2].set(1)
    ids, mask = self.clip_tokenizer([""], self.text_length)
    return (jnp.broadcast_to(jnp.asarray(ids), (b, self.text_length)),
            jnp.broadcast_to(jnp.asarray(mask), (b, self.text_length)))

  def encode_text(self, params, tokens, mask):
    """(text_embeds, last_hidden_state, mask), each [2B, ...]: the empty caption's, then the
    captions'."""
    u_ids, u_mask = self._unconditional(tokens.shape[0])
    ids = jnp.concatenate([u_ids, tokens], axis=0)
    states, embeds = self.text_module.apply({"params": params}, ids)
    return embeds, states, jnp.concatenate([u_mask, mask], axis=0).astype(bool)

  def sample_prior(self, params, embeds, states, mask, rng, steps, guidance, noise=None,
                   step_noise=None):
    """The image embeddings [B, D]: the guided prior's sample, denormalised."""
    b = embeds.shape[0] // 2
    prior = self.prior

    def model_fn(x, t):
      out = prior.apply({"params": params}, jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                        embeds, states, mask)
      return discrete.guided(self.schedules[PRIOR], *jnp.split(out, 2), guidance)

    init_rng, rng = jax.random.split(rng)
    x = jax.random.normal(init_rng, (b, prior.embed_dim)) if noise is None else noise
    x = discrete.sample(model_fn, x, rng, self.schedules[PRIOR], steps, step_noise=step_noise)
    return prior.apply({"params": params}, x, method=prior_lib.DiffusionPrior.denormalize)

  def decode(self, params, image_embeddings, embeds, states, mask, rng, steps, guidance,
             noise=None, step_noise=None, max_steps=None):
    """The decoder's 64 px images [B, H, W, 3] in [-1, 1] from the image embeddings."""
    context, time = self.unets[TEXT_PROJ].apply({"params": params[TEXT_PROJ]}, image_embeddings,
                                                embeds, states, True)
    n = self.unets[TEXT_PROJ].config.clip_extra_context_tokens
    context_mask = jnp.pad(mask, ((0, 0), (n, 0)), constant_values=True)
    decoder, schedule = self.unets[DECODER], self.schedules[DECODER]
    c = decoder.config.in_channels
    b = image_embeddings.shape[0]

    def model_fn(x, t):
      out = decoder.apply({"params": params[DECODER]}, jnp.concatenate([x, x]),
                          jnp.concatenate([t, t]), context, time, context_mask)
      return discrete.guided(schedule, *jnp.split(out, 2), guidance)

    init_rng, rng = jax.random.split(rng)
    r = self._resolution(DECODER)
    x = jax.random.normal(init_rng, (b, r, r, c)) if noise is None else noise
    x = discrete.sample(model_fn, x, rng, schedule, steps, step_noise=step_noise,
                        max_steps=max_steps)
    return jnp.clip(x, -1.0, 1.0)

  def upsample(self, params, small, rng, steps, noise=None, step_noise=None):
    """super_res_first / super_res_last from the bicubically resized image."""
    first, last = self.unets[SR_FIRST], self.unets[SR_LAST]
    b, _, _, c = small.shape
    r = self._resolution(SR_FIRST)
    upscaled = jax.image.resize(small, (b, r, r, c), "bicubic", antialias=True)

    def model_fn(x, t):
      h = jnp.concatenate([x, upscaled], axis=-1)
      return jax.lax.cond(t[0] == 0,
                          lambda h: last.apply({"params": params[SR_LAST]}, h, t),
                          lambda h: first.apply({"params": params[SR_FIRST]}, h, t), h)

    init_rng, rng = jax.random.split(rng)
    x = jax.random.normal(init_rng, (b, r, r, c)) if noise is None else noise
    return discrete.sample(model_fn, x, rng, self.schedules["super_res"], steps,
                           step_noise=step_noise)

  def sample(self, params, tokens, mask, rng, *, steps, guidance, noise=None, max_steps=None):
    """{"image_embeddings", "decoder_images", "images" in [-1, 1]} of the captions.

    steps = (prior, decoder, super-resolution), guidance = (prior, decoder); `noise` (parity
    with a reference run): {"prior"|"decoder"|"super_res": the starting latents,
    "<part>_steps": the noise of each step}."""
    noise = noise or {}
    rngs = jax.random.split(rng, 3)
    embeds, states, mask = self.encode_text(params[TEXT_ENCODER], tokens, mask)
    z = self.sample_prior(params[PRIOR], embeds, states, mask, rngs[0], steps[0], guidance[0],
                          noise.get("prior"), noise.get("prior_steps"))
    small = self.decode(params, z, embeds, states, mask, rngs[1], steps[1], guidance[1],
                        noise.get("decoder"), noise.get("decoder_steps"), max_steps)
    images = self.upsample(params, small, rngs[2], steps[2], noise.get("super_res"),
                           noise.get("super_res_steps"))
    return {"image_embeddings": z, "decoder_images": small, "images": images}

  def generate(self, params, request, rng):
    s = self.config.sample
    out = self.sample(params, request.tokens, request.mask, rng,
                      steps=(int(s.prior_steps), request.steps, int(s.sr_steps)),
                      guidance=(float(s.prior_guidance), request.guidance),
                      max_steps=MAX_DECODER_STEPS)
    return to_uint8(out["images"])


def _refuse(why):
  raise ConfigError(why)


def build(config):
  return Karlo(config)

"""Makes the CLIP parity golden files from Hugging Face transformers' CLIPModel.

jzoo's tests must not need torch, so the reference outputs are computed here
once and stored in tests/golden/:

  clip_tiny/               a Hugging Face CLIP folder: config.json, model.safetensors
                           (random weights), vocab.json + merges.txt (a tiny BPE
                           vocabulary in CLIP's format, trained here), the files
                           tokenizer.save_pretrained writes, preprocessor_config.json
  clip_tiny_golden.npz     token ids, text/image embeddings, pixel values, CLIP scores

The vocabulary is trained offline (plain BPE over the words of CLIPTokenizer's
own normalizer and pre-tokenizer) on shapes captions and a few sentences with
punctuation, digits and non-ASCII text, then laid out as OpenAI's
bpe_simple_vocab is: the 256 byte symbols, the same with
the `</w>` end-of-word suffix, one token per merge, <|startoftext|>,
<|endoftext|>. The model's text vocabulary has 2 rows more than the tokenizer
(as if tokens had been added after <|endoftext|>), so that the two pooling
rules of CLIPTextModel (the highest id when eos_token_id == 2, else the first
eos_token_id) give different results on the raw id batch.

Run it in the reference environment (not jzoo's):
  /work/t5ref-venv/bin/python scripts/make_clip_golden.py
Made with torch 2.13.0+cpu, torchvision 0.28.0, transformers 5.24.0,
tokenizers 0.23.3, pillow 13.0.0.
"""

import collections
import importlib.util
import itertools
import json
import os
import random
import shutil

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch

try:
  import torchvision  # noqa: F401
  TORCHVISION = True
except Exception:  # e.g. a CUDA build of torchvision next to CPU torch: its ops do not load
  TORCHVISION = False
  # Hide it, so that transformers imports and uses its PIL backend.
  _find_spec = importlib.util.find_spec
  importlib.util.find_spec = lambda name, *a, **k: (
      None if name.split(".")[0] == "torchvision" else _find_spec(name, *a, **k))

import transformers  # noqa: E402
from tokenizers import Regex, normalizers, pre_tokenizers

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "tests", "golden")
FOLDER = os.path.join(GOLDEN, "clip_tiny")
NUM_MERGES = 200
MAX_LENGTH = 32  # the text tower's max_position_embeddings

COLORS = ("red", "green", "blue", "yellow", "magenta", "cyan", "white")
SHAPES = ("square", "circle", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
POSITIONS = ("in the top left corner", "at the top", "in the center", "on the right",
             "at the bottom", "in the bottom right corner")
RELATIONS = ("to the left of", "to the right of", "above", "below")
OTHER = [
    "Hello, World! It's a test: 1, 2, 3... done?", "Don't stop; we'll see what they've got.",
    "The café on 5th Avenue serves crème brûlée (€4.50) & naïve tea.",
    "Numbers: 3.14159, 2718, 1e-6, 50% off, #42, $100.", "ΟΔΟΣ σοφία και γνώση",
    "日本語のテキストと中文 한국어", "emoji 🙂 👍🏽 ©®™ → ←", "snake_case and hy-phen, e-mail@example.org",
    "I'm sure you'd like it; she'll say it's fine.", "Straße, İstanbul, Ærø, ﬁne ligatures",
]
CAPTIONS = [
    "a red circle moving right and a blue square moving up",
    "a small green triangle in the top left corner",
    "A large YELLOW square to the left of a cyan circle.",
    "a magenta triangle moving down",
    "two white squares!! (maybe 3?)",
    "it's a blue circle, isn't it",
    "",
    # Longer than MAX_LENGTH tokens: truncated, the end token kept.
    " and ".join(f"a {c} {s} moving {d}" for c, s, d in zip(COLORS, SHAPES * 3, DIRECTIONS * 2)),
]
# Tokenizer-only strings: whitespace kinds, contractions, letters/digits of other
# scripts, numerals that are not digits (No/Nl), NFC, final sigma, specials in text.
EXTRA = [
    "Hello, World! It's a TEST.", "DON'T  stop\tthe\nmusic\r\n", "  leading and trailing  ",
    "tabs\x0bvertical\x0cform\x1cfile\x1dgroup\x85nel\u2028line\u00a0nbsp\u3000ideo\u2009thin",
    "zero\u200bwidth\u200djoiner", "numbers 12345 and 3.14159, ½ ² Ⅻ ⅷ ٣ ५ 𝟏𝟐",
    "café cafe\u0301 naïve nai\u0308ve q\u0307", "ΟΔΟΣ σοφίας ΣΊΣΥΦΟΣ", "İstanbul ǅemal ß ﬁ 𝐀𝐁𝐂",
    "日本語のテキスト 中文 한국어 עברית العربية", "emoji 🙂👍🏽 and symbols ©®™ →←",
    "''quoted'' 'single' rock'n'roll y'all we'll they've i'd I'M ''s '", "UPPER lower MiXeD",
    "a <|endoftext|> b <|startoftext|>c<|ENDOFTEXT|>", "under_score hy-phen dot.com e@x.org #h $1 5%",
    "", "   ", "!!!???...", "a" * 40, "moving moving moving circles circled circling",
]

PAD_BANG = [CAPTIONS[0], CAPTIONS[4], "wow!", "a!b <|endoftext|>"]


def corpus():
  rng = random.Random(0)
  lines = []
  for c, s, p in itertools.product(COLORS, SHAPES, POSITIONS):
    lines.append(f"a {rng.choice(['small', 'large'])} {c} {s} {p}")
  for _ in range(200):
    (c1, s1), (c2, s2) = rng.sample(list(itertools.product(COLORS, SHAPES)), 2)
    lines.append(f"a {c1} {s1} {rng.choice(RELATIONS)} a {c2} {s2}")
    lines.append(f"a {c1} {s1} moving {rng.choice(DIRECTIONS)} and a {c2} {s2} moving "
                 f"{rng.choice(DIRECTIONS)}")
  return lines + OTHER * 3


def bytes_to_unicode():
  """OpenAI's map from the 256 bytes to printable characters (GPT-2 / CLIP byte-level BPE)."""
  bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1)))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


def _merge(word, pair):
  out, i = [], 0
  while i < len(word):
    if word[i:i + 2] == pair:
      out.append(pair[0] + pair[1])
      i += 2
    else:
      out.append(word[i])
      i += 1
  return tuple(out)


def train_vocab():
  """(vocab {token: id}, merges [(a, b)]) in CLIP's layout.

  Words come from the normalizer and pre-tokenizer of transformers' CLIPTokenizer (built here
  with `tokenizers`); the merges are learnt by plain BPE with ties broken by the pair's text,
  so that reruns give the same files (the `tokenizers` BpeTrainer breaks ties differently
  from run to run).
  """
  normalizer = normalizers.Sequence(
      [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
  pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(
          r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
          r"""[^\s\p{L}\p{N}]+"""), behavior="removed", invert=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False)])
  words = collections.Counter()
  for line in corpus():
    for piece, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line)):
      words[tuple(piece[:-1]) + (piece[-1] + "</w>",)] += 1
  merges = []
  for _ in range(NUM_MERGES):
    pairs = collections.Counter()
    for word, n in words.items():
      for pair in zip(word, word[1:]):
        pairs[pair] += n
    best = min(pairs, key=lambda p: (-pairs[p], p))
    merges.append(best)
    words = collections.Counter({_merge(w, best): n for w, n in words.items()})
  symbols = list(bytes_to_unicode().values())
  tokens = symbols + [s + "</w>" for s in symbols] + [a + b for a, b in merges]
  tokens += ["<|startoftext|>", "<|endoftext|>"]
  assert len(set(tokens)) == len(tokens)
  return {t: i for i, t in enumerate(tokens)}, merges


def randomize(model, gen):
  """Random weights at a scale that keeps activations O(1); norms and biases random too,
  so that a mis-mapped tensor changes the output."""
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name or "layrnorm" in name:
        base = 1.0 if name.endswith("weight") else 0.0
        p.copy_(base + 0.2 * torch.randn(p.shape, generator=gen))
      elif name.endswith("bias"):
        p.copy_(0.1 * torch.randn(p.shape, generator=gen))
      elif "embedding" in name and p.ndim <= 2:
        p.copy_(torch.randn(p.shape, generator=gen))
      elif p.ndim >= 2:  # Linear [out, in] and the patch conv [out, in, k, k]
        p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(np.prod(p.shape[1:])))


def make_images(rng):
  """uint8 HWC images: no resize (32x32), downscale (64x48 portrait, 40x40), upscale (24x30)."""
  images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)]
  canvas = PIL.Image.new("RGB", (48, 64), (10, 10, 30))
  draw = PIL.ImageDraw.Draw(canvas)
  draw.ellipse((4, 8, 24, 28), fill=(255, 0, 0))
  draw.rectangle((26, 36, 44, 58), fill=(0, 0, 255))
  draw.polygon([(10, 60), (20, 40), (30, 60)], fill=(255, 255, 0))
  images.append(np.asarray(canvas))
  yy, xx = np.mgrid[0:40, 0:40]
  smooth = np.stack([xx * 6, yy * 6, (xx + yy) * 3], -1) + rng.integers(0, 20, (40, 40, 3))
  images.append(np.clip(smooth, 0, 255).astype(np.uint8))
  images.append(rng.integers(0, 256, (24, 30, 3), dtype=np.uint8))
  return images


def torchvision_backend_pixels(images, size, mean, std):
  """CLIPImageProcessor's torchvision backend on a CPU, step by step with torch ops (used when
  torchvision does not load): tvF.resize of the uint8 tensor is torch's native uint8 bicubic
  with antialias (PIL's filter; skipped at the same size), then the center crop and the
  rescale folded into the normalization, in float32."""
  out = []
  for im in images:
    x = torch.from_numpy(im).permute(2, 0, 1).contiguous()
    h, w = x.shape[1:]
    new = (int(size * h / w), size) if w <= h else (size, int(size * w / h))
    if new != (h, w):
      x = torch.nn.functional.interpolate(x[None], size=new, mode="bicubic", align_corners=False,
                                          antialias=True)[0]
    top, left = int((new[0] - size) / 2.0), int((new[1] - size) / 2.0)
    x = x[:, top:top + size, left:left + size].float()
    m = torch.tensor(mean) * (1.0 / (1 / 255))
    s = torch.tensor(std) * (1.0 / (1 / 255))
    out.append((x - m[:, None, None]) / s[:, None, None])
  return torch.stack(out)


def main():
  torch.manual_seed(0)
  gen = torch.Generator().manual_seed(1234)
  rng = np.random.default_rng(0)
  shutil.rmtree(FOLDER, ignore_errors=True)
  os.makedirs(FOLDER)

  vocab, merges = train_vocab()
  with open(os.path.join(FOLDER, "vocab.json"), "w", encoding="utf-8") as f:
    json.dump(vocab, f, ensure_ascii=False)
  with open(os.path.join(FOLDER, "merges.txt"), "w", encoding="utf-8") as f:
    f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
  tokenizer = transformers.CLIPTokenizer.from_pretrained(FOLDER, model_max_length=MAX_LENGTH)
  bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
  assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (bos, eos, eos)
  tokenizer.save_pretrained(FOLDER)

  text = dict(vocab_size=len(vocab) + 2, hidden_size=64, intermediate_size=128,
              num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=MAX_LENGTH,
              hidden_act="quick_gelu", bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
  vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                image_size=32, patch_size=8, hidden_act="gelu", layer_norm_eps=1e-6)
  config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)
  model = transformers.CLIPModel(config).eval()
  randomize(model, gen)
  model.save_pretrained(FOLDER)  # config.json + model.safetensors

  # HF's PIL backend (what CLIPImageProcessor falls back to without torchvision): jzoo's reference.
  processor = transformers.CLIPImageProcessorPil(size={"shortest_edge": 32},
                                                 crop_size={"height": 32, "width": 32})
  processor.save_pretrained(FOLDER)  # written as "CLIPImageProcessor"

  images = make_images(rng)
  batch = tokenizer(CAPTIONS, padding="max_length", max_length=MAX_LENGTH, truncation=True,
                    return_tensors="pt")
  extra = tokenizer(EXTRA, padding="max_length", max_length=64, truncation=True,
                    return_tensors="pt")
  # A pad token other than <|endoftext|> (as LAION's CLIP folders have): "!" is then a special
  # token, split out of the text before BPE.
  extra_pad = transformers.CLIPTokenizer.from_pretrained(FOLDER, pad_token="!")(
      PAD_BANG, padding="max_length", max_length=MAX_LENGTH, return_tensors="pt")
  assert int(batch["attention_mask"][-1].sum()) == MAX_LENGTH, "the last caption must be truncated"

  # Raw ids with tokens above <|endoftext|> (the 2 extra rows): the pooling rules differ.
  raw = torch.tensor([[bos, 5, 300, eos + 2, eos, eos, eos, eos],
                      [bos, eos + 1, 7, 8, 9, eos, eos, eos],
                      [bos, 11, 12, 13, 14, 15, 16, eos]])

  pixels = processor(images=images, return_tensors="pt")["pixel_values"]
  if TORCHVISION:
    pixels_tv = transformers.CLIPImageProcessor.from_pretrained(FOLDER)(
        images=[torch.from_numpy(im).permute(2, 0, 1) for im in images],
        return_tensors="pt")["pixel_values"]
  else:
    pixels_tv = torchvision_backend_pixels(images, 32, processor.image_mean, processor.image_std)

  with torch.no_grad():
    text_embeds = model.get_text_features(input_ids=batch["input_ids"],
                                          attention_mask=batch["attention_mask"]).pooler_output
    raw_embeds = model.get_text_features(input_ids=raw).pooler_output
    model.text_model.eos_token_id = 2  # the pre-#24773 configs: pool at the highest id
    raw_embeds_legacy = model.get_text_features(input_ids=raw).pooler_output
    model.text_model.eos_token_id = eos
    image_embeds = model.get_image_features(pixel_values=pixels).pooler_output
    image_embeds_tv = model.get_image_features(pixel_values=pixels_tv).pooler_output

  def cos100(a, b):
    """100 * cosine similarity of every image (rows) with every caption (columns)."""
    a = a / a.norm(p=2, dim=-1, keepdim=True)
    b = b / b.norm(p=2, dim=-1, keepdim=True)
    return 100 * a @ b.T

  np.savez_compressed(
      os.path.join(GOLDEN, "clip_tiny_golden.npz"),
      captions=np.array(CAPTIONS), input_ids=batch["input_ids"].numpy().astype(np.int32),
      attention_mask=batch["attention_mask"].numpy().astype(np.int32),
      text_embeds=text_embeds.numpy(),
      extra_strings=np.array(EXTRA), extra_ids=extra["input_ids"].numpy().astype(np.int32),
      extra_mask=extra["attention_mask"].numpy().astype(np.int32),
      pad_bang_strings=np.array(PAD_BANG),
      pad_bang_ids=extra_pad["input_ids"].numpy().astype(np.int32),
      raw_ids=raw.numpy().astype(np.int32), raw_embeds=raw_embeds.numpy(),
      raw_embeds_legacy=raw_embeds_legacy.numpy(),
      **{f"image_{i}": im for i, im in enumerate(images)},
      pixel_values=pixels.numpy(), pixel_values_tv=pixels_tv.numpy(),
      image_embeds=image_embeds.numpy(), image_embeds_tv=image_embeds_tv.numpy(),
      cos100=cos100(image_embeds, text_embeds).numpy(),
      cos100_tv=cos100(image_embeds_tv, text_embeds).numpy())

  size = sum(os.path.getsize(os.path.join(FOLDER, f)) for f in os.listdir(FOLDER))
  print("files", sorted(os.listdir(FOLDER)), "bytes", size)
  print("vocab", len(vocab), "torchvision backend" if TORCHVISION else "torchvision emulated",
        "pixels tv-pil max diff", float((pixels - pixels_tv).abs().max()))
  print("cos100", cos100(image_embeds, text_embeds).numpy().round(1))
  print("torch", torch.__version__, "transformers", transformers.__version__)


if __name__ == "__main__":
  main()

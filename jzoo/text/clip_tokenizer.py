"""CLIP's byte-level BPE tokenizer (OpenAI's simple_tokenizer, transformers' CLIPTokenizer).

Reads `vocab.json` + `merges.txt` (or, without them, `tokenizer.json`) of a
Hugging Face CLIP folder and reproduces transformers 5.24's CLIPTokenizer
(the `tokenizers`-backed one; like it, no ftfy and no HTML unescaping, which
OpenAI's original code applies first):

1. special tokens (<|startoftext|>, <|endoftext|>, and the unk/pad tokens of
   tokenizer_config.json, e.g. LAION's "!") are split out of the raw text;
2. each other span is normalized: NFC, runs of whitespace to one space, then
   lowercased character by character (so no final-sigma rule: "ΟΔΟΣ" -> "οδοσ",
   where Python's str.lower gives "οδος");
3. pre-tokenized as CLIP's pattern splits it, whitespace dropped:
   `<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+`
   (a special-token string still in the text is cut again into "<|",
   "endoftext", "|>", as the byte-level step does). jzoo does not depend on the
   `regex` package, so letters and numbers are classified with `unicodedata`
   (general category L* / N*) rather than with Python's `re` (whose `[^\\W\\d_]`
   would take the numerals "²", "½", "Ⅻ" for letters). Checked over every code
   point against tokenizers' Oniguruma regex: identical except for the ~9400
   code points that Python 3.11's Unicode 14 leaves unassigned but later
   Unicode versions made letters or numbers (those count as punctuation here);
4. each piece's UTF-8 bytes are mapped to printable characters
   (`bytes_to_unicode`), the last one gets the `</w>` end-of-word suffix, and
   BPE merges apply by rank;
5. <|startoftext|> ... <|endoftext|> wrap the ids; batches are truncated (the
   end token kept) and right-padded with the pad token.
"""

import json
import os
import re
import unicodedata

import numpy as np

from jzoo.errors import CheckpointError, PromptError

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
SUFFIX = "</w>"
_LITERALS = (BOS, EOS, "'s", "'t", "'re", "'ve", "'m", "'ll", "'d")  # the pattern's literals
# A special-token string left in the text (e.g. "<|ENDOFTEXT|>" once lowercased) is one match of
# CLIP's pattern, which the byte-level step's GPT-2 pattern cuts again where the class changes.
_CUT = {BOS: ("<|", "startoftext", "|>"), EOS: ("<|", "endoftext", "|>")}
# `\s` of the Oniguruma regexes in tokenizers: Unicode White_Space (Zs, Zl, Zp, tab..CR, NEL).
# Python's `\s` / str.isspace also take \x1c-\x1f, which CLIP treats as punctuation.
_SPACE = frozenset("\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
                   + "".join(map(chr, range(0x2000, 0x200b))))
_SPACE_RUNS = re.compile("[" + "".join(map(re.escape, sorted(_SPACE))) + "]+")


def bytes_to_unicode():
  """OpenAI's map of the 256 bytes to printable characters, so BPE never sees control bytes."""
  bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1)]
  cs, n = bs[:], 0
  for b in range(256):
    if b not in bs:  # the other bytes move to 256, 257, ...
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


_BYTE_ENCODER = bytes_to_unicode()


def normalize(text):
  """NFC, whitespace runs to one space, per-character lowercase (as tokenizers' normalizers)."""
  text = _SPACE_RUNS.sub(" ", unicodedata.normalize("NFC", text))
  return "".join(c.lower() for c in text)


def _kind(c):
  """'L' letter, 'N' number, ' ' whitespace, 'P' anything else."""
  if c in _SPACE:
    return " "
  k = unicodedata.category(c)[0]
  return k if k in "LN" else "P"


def pre_tokenize(text):
  """Splits normalized text into the pieces CLIP's pattern matches; whitespace is dropped."""
  pieces, i, n = [], 0, len(text)
  while i < n:
    literal = next((t for t in _LITERALS if text.startswith(t, i)), None)
    if literal:
      pieces.extend(_CUT.get(literal, (literal,)))
      i += len(literal)
      continue
    kind, j = _kind(text[i]), i + 1
    if kind in "LP":  # [\p{L}]+ and [^\s\p{L}\p{N}]+ are runs; [\p{N}] is one character
      while j < n and _kind(text[j]) == kind:
        j += 1
    if kind != " ":
      pieces.append(text[i:j])
    i = j
  return pieces


def _read_json(path):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{path}: cannot read JSON ({e})") from e


def _token_string(value):
  """tokenizer_config.json holds special tokens as strings or AddedToken dicts."""
  return value.get("content") if isinstance(value, dict) else value


class CLIPTokenizer:
  """Texts -> (ids, mask), as transformers' CLIPTokenizer with padding="max_length" and
  truncation=True."""

  def __init__(self, vocab, merges, pad_token=EOS, unk_token=EOS, max_length=77):
    self.vocab = dict(vocab)
    self.ranks = {tuple(m): i for i, m in enumerate(merges)}
    self.max_length = int(max_length)
    for name, token in (("bos", BOS), ("eos", EOS), ("pad", pad_token), ("unk", unk_token)):
      if token not in self.vocab:
        raise CheckpointError(f"CLIP vocabulary has no {name} token {token!r}")
    self.bos_id, self.eos_id = self.vocab[BOS], self.vocab[EOS]
    self.pad_id, self.unk_id = self.vocab[pad_token], self.vocab[unk_token]
    # Special tokens are cut out of the raw text first, as Hugging Face's added tokens are.
    specials = sorted({BOS, EOS, pad_token, unk_token}, key=len, reverse=True)
    self._specials = re.compile("(" + "|".join(map(re.escape, specials)) + ")")
    self._cache = {}

  @classmethod
  def load(cls, folder, max_length=None):
    """From a Hugging Face CLIP folder: vocab.json + merges.txt, else tokenizer.json."""
    folder = os.fspath(folder)
    vocab_path, merges_path = (os.path.join(folder, n) for n in ("vocab.json", "merges.txt"))
    if os.path.isfile(vocab_path) and os.path.isfile(merges_path):
      vocab = _read_json(vocab_path)
      with open(merges_path, encoding="utf-8") as f:
        # As tokenizers' BPE.read_file: skip "#version" lines; one "a b" pair a line.
        merges = [tuple(line.split()) for line in f.read().splitlines()
                  if line.strip() and not line.startswith("#version")]
    elif os.path.isfile(os.path.join(folder, "tokenizer.json")):
      model = _read_json(os.path.join(folder, "tokenizer.json")).get("model", {})
      if model.get("type") != "BPE":
        raise CheckpointError(f"{folder}/tokenizer.json: not a BPE tokenizer")
      vocab = model["vocab"]
      merges = [tuple(m.split(" ") if isinstance(m, str) else m) for m in model["merges"]]
    else:
      raise CheckpointError(f"{folder}: no CLIP tokenizer here (vocab.json + merges.txt or "
                            "tokenizer.json)")
    if any(len(m) != 2 for m in merges):
      raise CheckpointError(f"{folder}: a BPE merge is not a pair of tokens")
    config = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):  # the latter wins
      path = os.path.join(folder, name)
      if os.path.isfile(path):
        config.update({k: v for k, v in _read_json(path).items() if v is not None})
    if max_length is None:
      max_length = config.get("model_max_length", 77)
      max_length = max_length if isinstance(max_length, int) and max_length < 1e6 else 77
    return cls(vocab, merges, pad_token=_token_string(config.get("pad_token", EOS)),
               unk_token=_token_string(config.get("unk_token", EOS)), max_length=max_length)

  @property
  def vocab_size(self):
    return len(self.vocab)

  def _bpe(self, piece):
    """OpenAI's BPE: merge the best-ranked adjacent pair everywhere, until none is ranked."""
    if piece in self._cache:
      return self._cache[piece]
    word = tuple(_BYTE_ENCODER[b] for b in piece.encode("utf-8"))
    word = word[:-1] + (word[-1] + SUFFIX,)
    while len(word) > 1:
      pair = min(zip(word, word[1:]), key=lambda p: self.ranks.get(p, float("inf")))
      if pair not in self.ranks:
        break
      merged, i = [], 0
      while i < len(word):
        if word[i:i + 2] == pair:
          merged.append(pair[0] + pair[1])
          i += 2
        else:
          merged.append(word[i])
          i += 1
      word = tuple(merged)
    ids = self._cache[piece] = tuple(self.vocab.get(s, self.unk_id) for s in word)
    return ids

  def encode(self, text):
    """Ids of `text` without <|startoftext|> / <|endoftext|>, and untruncated."""
    ids = []
    for i, span in enumerate(self._specials.split(text)):
      if i % 2:  # the split's captured separators: special tokens
        ids.append(self.vocab[span])
      else:
        for piece in pre_tokenize(normalize(span)):
          ids.extend(self._bpe(piece))
    return ids

  def __call__(self, texts, max_length=None):
    """(ids, mask), int32 [len(texts), max_length]: bos, text (truncated), eos, then pad."""
    length = self.max_length if max_length is None else int(max_length)
    if isinstance(texts, str):
      texts = [texts]
    ids = np.full((len(texts), length), self.pad_id, np.int32)
    mask = np.zeros((len(texts), length), np.int32)
    for row, text in enumerate(texts):
      seq = [self.bos_id] + self.encode(text)[:length - 2] + [self.eos_id]
      ids[row, :len(seq)] = seq
      mask[row, :len(seq)] = 1
    return ids, mask

  def encode_batch(self, texts, length):
    """(ids, mask) as `__call__`, but a PromptError for a text that does not fit in `length`
    tokens with bos and eos (the zoo's pipelines refuse to truncate a prompt silently)."""
    for text in texts:
      n = len(self.encode(text)) + 2
      if n > length:
        short = text if len(text) <= 40 else text[:37] + "..."
        raise PromptError(f"prompt {short!r} is {n} tokens (with bos and eos); this model takes "
                          f"at most {length}: shorten it")
    return self(list(texts), length)

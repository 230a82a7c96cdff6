"""SentencePiece tokenizer with T5's id convention: pad=0, eos=1, unk=2, no bos.

`Tokenizer.load("shapes")` opens the small model shipped in `jzoo/assets`
(trained on the shapes captions by `scripts/train_tokenizer.py`, with byte
fallback so any prompt tokenizes); any other value is a path to a
`spiece.model`, e.g. a real T5 one.
"""

import importlib.resources
import os

import numpy as np
import sentencepiece as spm

from jzoo.errors import DataError, PromptError

PACKAGED = {"shapes": "shapes_spm.model"}


def _read_model(name_or_path):
  if name_or_path in PACKAGED:
    resource = importlib.resources.files("jzoo") / "assets" / PACKAGED[name_or_path]
    try:
      return resource.read_bytes()
    except OSError:
      raise DataError(f"packaged tokenizer {name_or_path!r} is missing ({resource}); "
                      "reinstall jzoo or run scripts/train_tokenizer.py") from None
  path = os.fspath(name_or_path)
  if not os.path.isfile(path):
    raise DataError(f"tokenizer model not found: {path} (give a sentencepiece .model file "
                    f"or one of {sorted(PACKAGED)})")
  with open(path, "rb") as f:
    return f.read()


class Tokenizer:
  """Text <-> ids. Sequences end with eos and are padded with pad (0)."""

  def __init__(self, processor, name="custom"):
    self._sp = processor
    self.name = name
    if self._sp.pad_id() < 0:
      raise DataError(f"tokenizer {name} has no pad id; T5-style models need pad=0")

  @classmethod
  def load(cls, name_or_path="shapes"):
    proto = _read_model(name_or_path)
    processor = spm.SentencePieceProcessor()
    try:
      processor.LoadFromSerializedProto(proto)
    except Exception:  # sentencepiece raises RuntimeError/OSError depending on version
      raise DataError(f"not a sentencepiece model: {name_or_path}") from None
    return cls(processor, name=str(name_or_path))

  @property
  def vocab_size(self):
    return self._sp.get_piece_size()

  @property
  def pad_id(self):
    return self._sp.pad_id()

  @property
  def eos_id(self):
    return self._sp.eos_id()

  @property
  def unk_id(self):
    return self._sp.unk_id()

  def encode_ids(self, text):
    """Token ids of `text`, ending with eos."""
    return list(self._sp.EncodeAsIds(text)) + [self.eos_id]

  def encode_batch(self, texts, length):
    """(ids, mask), both int32 [len(texts), length]; mask is 1 on real tokens (incl. eos)."""
    ids = np.full((len(texts), length), self.pad_id, np.int32)
    mask = np.zeros((len(texts), length), np.int32)
    for i, text in enumerate(texts):
      seq = self.encode_ids(text)
      if len(seq) > length:
        short = text if len(text) <= 40 else text[:37] + "..."
        raise PromptError(f"prompt {short!r} is {len(seq)} tokens (with eos); this model takes "
                          f"at most {length}: shorten it")
      ids[i, :len(seq)] = seq
      mask[i, :len(seq)] = 1
    return ids, mask

  def decode(self, ids):
    """Text of `ids`; stops at the first eos and ignores padding."""
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id)]
    return self._sp.DecodeIds([i for i in ids if i != self.pad_id])

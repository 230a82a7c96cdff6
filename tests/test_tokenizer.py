"""The packaged sentencepiece tokenizer: T5 ids, round trips, padding, errors."""

import importlib.resources
import shutil

import numpy as np
import pytest

from jzoo.data import shapes
from jzoo.errors import DataError, PromptError, UserError
from jzoo.text.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok():
  return Tokenizer.load("shapes")


def test_t5_id_convention(tok):
  assert (tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2)
  sp = tok._sp
  assert sp.bos_id() == -1
  assert [sp.id_to_piece(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"]
  assert 300 < tok.vocab_size <= 2048


def test_every_spec_word_is_one_piece(tok):
  phrases = (list(shapes.POSITIONS.values()) + list(shapes.RELATIONS) + list(shapes.COLORS)
             + list(shapes.SHAPES) + list(shapes.SIZES) + list(shapes.DIRECTIONS) + ["a an moving and"])
  words = sorted({w for p in phrases for w in p.split()})
  for word in words:
    ids = tok.encode_ids(word)
    assert len(ids) == 2 and ids[-1] == 1, word
    assert tok._sp.id_to_piece(ids[0]) == "\u2581" + word


@pytest.mark.parametrize("text", [
    "a small red circle in the top left corner",
    "a magenta triangle moving right and a yellow square moving down",
    "An Orange zebra, à Paris! 🚀 12345 ~{}",
    "日本語のテキスト",
])
def test_round_trip_without_unk(tok, text):
  ids = tok.encode_ids(text)
  assert ids[-1] == tok.eos_id and ids.count(tok.eos_id) == 1
  assert tok.unk_id not in ids and tok.pad_id not in ids  # byte fallback covers everything
  assert all(0 <= i < tok.vocab_size for i in ids)
  assert tok.decode(ids) == text


def test_caption_lengths_fit_default_text_length(tok):
  captions = [shapes.image_scene("train", i)["caption"] for i in range(200)]
  captions += [shapes.video_scene("train", i)["caption"] for i in range(200)]
  assert max(len(tok.encode_ids(c)) for c in captions) <= 12  # one token per word + eos


def test_encode_batch_pads_and_masks(tok):
  texts = ["a red square at the top", "a blue circle on the left", "up"]
  ids, mask = tok.encode_batch(texts, 10)
  assert ids.dtype == np.int32 and mask.dtype == np.int32 and ids.shape == mask.shape == (3, 10)
  for row, m, text in zip(ids, mask, texts):
    expected = tok.encode_ids(text)
    n = len(expected)
    assert list(row[:n]) == expected and (row[n:] == 0).all()
    assert (m[:n] == 1).all() and (m[n:] == 0).all()
    assert tok.decode(row) == text
  # Exactly `length` tokens (with eos) still fits.
  n = len(tok.encode_ids(texts[0]))
  ids, mask = tok.encode_batch(texts[:1], n)
  assert mask.all()


def test_too_long_prompt_is_a_prompt_error(tok):
  text = "a small red circle in the top left corner"
  with pytest.raises(PromptError) as err:
    tok.encode_batch([text], len(tok.encode_ids(text)) - 1)
  assert isinstance(err.value, UserError) and "\n" not in str(err.value) and "9" in str(err.value)


def test_load_by_path_and_missing_path(tok, tmp_path):
  path = tmp_path / "spiece.model"
  shutil.copyfile(importlib.resources.files("jzoo") / "assets" / "shapes_spm.model", path)
  other = Tokenizer.load(str(path))
  text = "a cyan circle above a red square"
  assert other.encode_ids(text) == tok.encode_ids(text)
  missing = tmp_path / "nope" / "spiece.model"
  with pytest.raises(DataError, match=str(missing)):
    Tokenizer.load(str(missing))
  garbage = tmp_path / "garbage.model"
  garbage.write_bytes(b"not a model")
  with pytest.raises(DataError, match="garbage.model"):
    Tokenizer.load(str(garbage))

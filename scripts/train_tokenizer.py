"""Trains the packaged sentencepiece model `jzoo/assets/shapes_spm.model`.

  python scripts/train_tokenizer.py [--out jzoo/assets/shapes_spm] [--vocab_size 640]

Corpus: captions of the `shapes` and `moving_shapes` train streams (every word
of the spec ends up as a single piece), plus every printable ASCII character
and a short list of generic words so that other prompts split into sensible
pieces; `byte_fallback` maps any remaining character to its UTF-8 bytes, so
no prompt ever produces `unk`. Ids follow T5: pad=0, eos=1, unk=2, no bos.
The result is deterministic (one thread, fixed corpus).
"""

import argparse
import io
import os
import string
import sys

import sentencepiece as spm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from jzoo.data import shapes  # noqa: E402  pylint: disable=g-import-not-at-top

GENERIC = """
a an the of in on at to from with and or but not no is are was be this that it its
one two three four five six seven eight nine ten many some few several each every all
small large big tiny huge little tall short long wide narrow thin thick round flat
red green blue yellow magenta cyan white black gray grey orange purple pink brown gold silver
square circle triangle rectangle star heart hexagon pentagon diamond oval line dot ball box cube sphere
top bottom left right center centre middle corner edge side front back above below under over
next near far beside between behind inside outside around across along through
moving move moves moved fast slow jumping running walking flying falling rising turning rotating
image photo picture painting drawing video frame scene background foreground sky sea water
cat dog bird horse fish tree flower house car city street mountain river sun moon cloud rain snow
man woman person people child face hand eye light dark bright color colour shape object
""".split()


def captions(num_images, num_videos):
  for i in range(num_images):
    yield shapes.image_scene("train", i)["caption"]
  for i in range(num_videos):
    yield shapes.video_scene("train", i)["caption"]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "jzoo", "assets",
                                                    "shapes_spm"), help="output prefix (.model, .vocab)")
  parser.add_argument("--vocab_size", type=int, default=640)
  parser.add_argument("--num_images", type=int, default=20_000)
  parser.add_argument("--num_videos", type=int, default=10_000)
  args = parser.parse_args(argv)

  lines = list(captions(args.num_images, args.num_videos))
  lines += GENERIC * 50
  lines.append(" ".join(string.ascii_letters + string.digits + string.punctuation))
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_writer=model,
      model_type="bpe", vocab_size=args.vocab_size,
      character_coverage=1.0, byte_fallback=True, split_digits=True,
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
      normalization_rule_name="identity", remove_extra_whitespaces=True,
      num_threads=1, shuffle_input_sentence=False, input_sentence_size=0,
      minloglevel=2)
  out = os.path.normpath(args.out)
  with open(out + ".model", "wb") as f:
    f.write(model.getvalue())
  sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
  with open(out + ".vocab", "w", encoding="utf-8") as f:
    for i in range(sp.get_piece_size()):
      f.write(f"{sp.id_to_piece(i)}\t{sp.get_score(i)}\n")
  longest = max(lines[:args.num_images + args.num_videos], key=lambda s: len(sp.encode(s)))
  print(f"wrote {out}.model: {sp.get_piece_size()} pieces, {len(model.getvalue())} bytes; "
        f"longest caption {len(sp.encode(longest)) + 1} tokens with eos: {longest!r}")


if __name__ == "__main__":
  main()

"""The bundled models follow their captions: the first 16 `test` captions of each, scored by
the evaluator, against floors well below the accuracies their cards report on 500 (so that
other CPUs' numerics cannot flip the result, while a broken load, sampler or decoder would
score near 0, as random weights do)."""

import pytest

import jzoo
from jzoo import evaluate, registry

# name -> (floor on 16 test captions, the card's accuracy on 500)
FLOORS = {
    "imagen-tiny-shapes": (0.70, 0.904),  # 0.94 on these 16
    "phenaki-tiny-shapes": (0.50, 0.870),  # 0.8125 on these 16 (eval-test.json)
    "nuwa-tiny-shapes": (0.45, 0.798),  # 0.69
    "dalle2-tiny-shapes": (0.35, 0.531),
    "cogview2-tiny-shapes": (0.6, 0.812),  # 0.75 on these 16 (eval-test.json: 64 captions)
}


def test_every_bundled_model_has_a_floor():
  bundled = {name for name, entry in registry.MODELS.items() if entry.bundled}
  assert bundled == set(FLOORS)


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_bundled_model_follows_its_captions(name):
  # unCLIP's embedding checks (test_dalle2 tests them) would double dalle2's time here, and the
  # editing check (tests/test_editing_eval.py) cogview2's.
  report = evaluate.evaluate(jzoo.load(name), "test", num=16, seed=0, unclip=False,
                              editing=False)
  floor, _ = FLOORS[name]
  assert report["accuracy"] >= floor, (name, report["accuracy"], report["forms"])

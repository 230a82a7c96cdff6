"""The editing check of jzoo.evaluate (jzoo/eval/editing.py) against the shapes spec: every task
is well posed (a perfect editor is read back correct and keeps the outside), and a model's edits
are measured as what they are."""

import numpy as np
import pytest

from jzoo import evaluate, pipeline
from jzoo.data import shapes
from jzoo.eval import alignment, editing

SIZE = 64


@pytest.mark.parametrize("split, num", [("test", 64), ("compositional", 16)])
def test_every_task_is_well_posed(split, num):
  forms = set()
  for i in range(num):
    scene = shapes.image_scene(split, i, SIZE)
    task = editing.edit_task(scene, split, i, SIZE)
    source = shapes.render_image(scene["objects"], SIZE)
    target = shapes.render_image(task["objects"], SIZE)
    region = task["region"]
    assert region.any() and not region.all()
    # the perfect edit: the outside is the source's, and the evaluator reads the new caption
    np.testing.assert_array_equal(target[~region], source[~region])
    assert alignment.score_image(target, task["caption"])["correct"], (i, task["caption"])
    assert not alignment.score_image(source, task["caption"])["correct"], (i, task["caption"])
    old, new = scene["objects"][task["replaced"]], task["objects"][task["replaced"]]
    assert old["color"] != new["color"] and old["shape"] != new["shape"]
    assert (new["color"], new["shape"]) in shapes._pairs(split)
    for j, kept in enumerate(scene["objects"]):
      if j != task["replaced"]:
        assert not (region & editing._box(kept, SIZE, 0.0)).any()  # never redrawn
        assert task["objects"][j] == kept
    forms.add(task["form"])
  assert forms == {"one", "two"}


def test_summary_counts_per_form():
  s = editing.summarize([True, False, True], [True, True, False], ["one", "two", "two"])
  assert s["num"] == 3 and s["correct"] == pytest.approx(2 / 3)
  assert s["outside_unchanged"] == pytest.approx(2 / 3)
  assert s["one"] == dict(num=1, correct=1.0) and s["two"] == dict(num=2, correct=0.5)


def test_evaluate_reports_editing_for_a_region_editor(tmp_path):
  pipe = pipeline.load("cogview2-micro", random_weights=True)
  report = evaluate.evaluate(pipe, num=4, batch_size=4, out_dir=str(tmp_path))
  e = report["editing"]
  assert e["num"] == 4 and e["outside_unchanged"] == 1.0 and 0.0 <= e["correct"] <= 1.0
  assert (tmp_path / "grid-edit.png").exists() and "editing" in evaluate.headline(report)
  assert "editing" in (tmp_path / "report.md").read_text()

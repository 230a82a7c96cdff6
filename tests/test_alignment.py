"""The alignment evaluator: reads real renders right, rejects wrong captions and corrupted renders."""

import numpy as np
import pytest
from scipy import ndimage

from jzoo.data import shapes
from jzoo.eval import alignment


def _accuracy(examples, key):
  return np.mean([alignment.score(e[key], e["caption"])["correct"] for e in examples])


# --------------------------------------------------------------------------
# Real examples.
# --------------------------------------------------------------------------
@pytest.mark.parametrize("split,num,size", [("test", 300, 64), ("compositional", 100, 64),
                                            ("test", 100, 32)])
def test_real_images_are_read_right(split, num, size):
  acc = _accuracy([shapes.image_example(split, i, size) for i in range(num)], "image")
  assert acc >= 0.98, acc


@pytest.mark.parametrize("split,num", [("test", 120), ("compositional", 40)])
def test_real_videos_are_read_right(split, num):
  acc = _accuracy([shapes.video_example(split, i) for i in range(num)], "video")
  assert acc >= 0.98, acc


def test_detections_match_the_scene():
  for i in range(40):
    e = shapes.image_example("test", i)
    found = alignment.detect_objects(e["image"])
    assert len(found) == len(e["objects"])
    for obj in e["objects"]:
      det = min(found, key=lambda d: np.hypot(*np.subtract(d["center"], obj["center"])))
      assert np.abs(np.subtract(det["center"], obj["center"])).max() < 0.5
      assert abs(det["side"] / obj["side"] - 1) < 0.05
      assert (det["color"], det["shape"], det["size"]) == (obj["color"], obj["shape"], obj["size"])
      if obj["cell"] is not None:
        assert det["cell"] == obj["cell"]


def test_video_tracks_read_colour_shape_and_direction():
  for i in range(20):
    e = shapes.video_example("test", i)
    found = alignment.track_objects(e["video"])
    want = sorted((o["color"], o["shape"], o["direction"]) for o in e["objects"])
    assert sorted((o["color"], o["shape"], o["direction"]) for o in found) == want


def _perturb(image, rng, blur=0.7, noise=10.0, tint=0.3, dim=0.85):
  """What a generator's sample looks like: soft edges, noise, a tinted background, dimmer colours."""
  x = ndimage.gaussian_filter(image.astype(np.float32), (blur, blur, 0)) * dim
  x = x * (1 - tint) + tint * rng.uniform(0, 255, size=3) + rng.normal(0, noise, x.shape)
  return np.clip(np.round(x), 0, 255).astype(np.uint8)


def test_robust_to_imperfect_samples():
  rng = np.random.default_rng(0)
  examples = [shapes.image_example("test", i) for i in range(100)]
  acc = np.mean([alignment.score_image(_perturb(e["image"], rng), e["caption"])["correct"]
                 for e in examples])
  assert acc >= 0.97, acc
  videos = [shapes.video_example("test", i) for i in range(20)]
  acc = np.mean([alignment.score_video(np.stack([_perturb(f, rng, blur=0.4) for f in e["video"]]),
                                       e["caption"])["correct"] for e in videos])
  assert acc >= 0.95, acc


def test_specks_are_not_objects_and_off_palette_colours_are_not_colours():
  e = next(e for e in (shapes.image_example("test", i) for i in range(50)) if e["form"] == "one")
  image = e["image"].copy()
  row, col = e["objects"][0]["cell"]
  y, x = (5 if row == 2 else 58), (5 if col == 2 else 58)  # a far corner
  image[y:y + 2, x:x + 2] = (255, 255, 0)  # a 2x2 speck
  assert alignment.score_image(image, e["caption"])["correct"]
  orange = shapes.render_image([dict(e["objects"][0], color=(255, 128, 0))], 64)
  assert alignment.detect_objects(orange) == []
  assert not alignment.score_image(orange, e["caption"])["correct"]


# --------------------------------------------------------------------------
# Wrong captions and corrupted renders.
# --------------------------------------------------------------------------
def _other(values, *avoid):
  return next(v for v in values if v not in avoid)


def _one_caption(obj, **change):
  o = dict(obj, **change)
  return f"{shapes.with_article(o['size'], o['color'], o['shape'])} {shapes.POSITIONS[tuple(o['cell'])]}"


def _two_caption(a, relation, b):
  return f"{shapes.with_article(a['color'], a['shape'])} {relation} {shapes.with_article(b['color'], b['shape'])}"


OPPOSITE = {"to the left of": "to the right of", "to the right of": "to the left of",
            "above": "below", "below": "above", "left": "right", "right": "left", "up": "down",
            "down": "up"}


def _examples(form, num=30):
  out = [e for e in (shapes.image_example("test", i) for i in range(4 * num)) if e["form"] == form]
  return out[:num]


def _rejected(image, caption, attribute):
  r = alignment.score_image(image, caption)
  assert not r["correct"], caption
  assert r["attributes"][attribute] is False, (caption, r["attributes"])


def test_one_object_captions_with_a_wrong_attribute_are_rejected():
  for e in _examples("one"):
    obj, img = e["objects"][0], e["image"]
    assert _one_caption(obj) == e["caption"]
    _rejected(img, _one_caption(obj, color=_other(shapes.COLORS, obj["color"])), "color")
    _rejected(img, _one_caption(obj, shape=_other(shapes.SHAPES, obj["shape"])), "shape")
    _rejected(img, _one_caption(obj, size=_other(shapes.SIZES, obj["size"])), "size")
    _rejected(img, _one_caption(obj, cell=(2 - obj["cell"][0], 2 - obj["cell"][1]) if obj["cell"] != (1, 1)
                                else (0, 1)), "position")


def test_two_object_captions_with_swapped_colours_shapes_or_relations_are_rejected():
  for e in _examples("two"):
    a, b = e["objects"]
    img, rel = e["image"], e["relation"]
    assert _two_caption(a, rel, b) == e["caption"]
    _rejected(img, _two_caption(a, OPPOSITE[rel], b), "relation")
    _rejected(img, _two_caption(b, rel, a), "relation")  # the same objects, the other way round
    if a["color"] != b["color"]:
      assert not alignment.score_image(img, _two_caption(dict(a, color=b["color"]), rel,
                                                         dict(b, color=a["color"])))["correct"]
    if a["shape"] != b["shape"]:
      assert not alignment.score_image(img, _two_caption(dict(a, shape=b["shape"]), rel,
                                                         dict(b, shape=a["shape"])))["correct"]
    new_color = _other(shapes.COLORS, a["color"], b["color"])
    _rejected(img, _two_caption(dict(a, color=new_color), rel, b), "color")


def _margin(relation, a, b, size=64):
  """How far (in S) the centres are inside the spec's relation rule (negative: outside it)."""
  dx, dy = (b["center"][0] - a["center"][0]) / size, (b["center"][1] - a["center"][1]) / size
  along, across = {"to the left of": (dx, dy), "to the right of": (-dx, dy),
                   "above": (dy, dx), "below": (-dy, dx)}[relation]
  return min(along - shapes.RELATION_MIN_OFFSET, shapes.RELATION_MAX_CROSS - abs(across))


def test_relation_follows_the_spec_rule_for_every_relation():
  """Perpendicular relations may hold too (the rule allows diagonals): compare with the spec's rule,
  which the scorer loosens by at most 0.03·S (the stated tolerance)."""
  accepted = rejected = 0
  for e in _examples("two", 60):
    a, b = e["objects"]
    for rel in shapes.RELATIONS:
      margin = _margin(rel, a, b)
      if -0.04 < margin < 0:
        continue  # inside the tolerance band: either answer is allowed
      r = alignment.score_image(e["image"], _two_caption(a, rel, b))
      assert r["attributes"]["relation"] == (margin >= 0), (e["caption"], rel, margin)
      accepted += margin >= 0
      rejected += margin < 0
  assert accepted >= 60 and rejected >= 150, (accepted, rejected)


def test_corrupted_renders_are_rejected():
  for e in _examples("one", 15):
    obj = e["objects"][0]
    wrong_color = shapes.render_image([dict(obj, color=_other(shapes.COLORS, obj["color"]))], 64)
    _rejected(wrong_color, e["caption"], "color")
    wrong_shape = shapes.render_image([dict(obj, shape=_other(shapes.SHAPES, obj["shape"]))], 64)
    _rejected(wrong_shape, e["caption"], "shape")
    wrong_size = shapes.render_image(
        [dict(obj, side=obj["side"] * (1.5 if obj["size"] == "small" else 0.66))], 64)
    _rejected(wrong_size, e["caption"], "size")
    # An extra object in the corner farthest from the named one.
    row, col = obj["cell"]
    corner = (0.12 * 64 if col >= 1 else 0.88 * 64, 0.12 * 64 if row >= 1 else 0.88 * 64)
    for extra in (dict(color=_other(shapes.COLORS, obj["color"]), shape="square"),
                  dict(color=obj["color"], shape=obj["shape"])):  # a duplicate counts too
      image = shapes.render_image([obj, dict(extra, center=corner, side=0.2 * 64)], 64)
      _rejected(image, e["caption"], "count")
  for e in _examples("two", 15):
    a, b = e["objects"]
    _rejected(shapes.render_image([a], 64), e["caption"], "count")  # a missing object
    # A one-object caption of a two-object scene: an extra object.
    cell = tuple(int(v // (64 / 3)) for v in a["center"][::-1])
    _rejected(e["image"], _one_caption(dict(a, cell=cell)), "count")


def _dim(image, level):
  """The render at `level` of its brightness: every pixel scaled toward the black background."""
  return np.round(image.astype(np.float32) * level).astype(np.uint8)


def test_dim_objects_are_detected_with_their_attributes():
  # Below half brightness no pixel is half covered in absolute terms: the evaluator must measure
  # coverage against the object's own interior first (what a reader sees: a dark red circle).
  examples = [shapes.image_example("test", i) for i in range(8)]
  for e in examples:
    for level in (0.45, 0.25):
      image = _dim(e["image"], level)
      found = alignment.detect_objects(image)
      assert len(found) == len(e["objects"]), (e["caption"], level)
      for obj in e["objects"]:
        det = min(found, key=lambda d: np.hypot(*np.subtract(d["center"], obj["center"])))
        assert (det["color"], det["shape"], det["size"]) == (obj["color"], obj["shape"], obj["size"])
        assert np.abs(np.subtract(det["center"], obj["center"])).max() < 0.5
        assert abs(det["side"] / obj["side"] - 1) < 0.05, (det["side"], obj["side"])
        if obj["cell"] is not None:
          assert det["cell"] == obj["cell"]
      assert alignment.score_image(image, e["caption"])["correct"], (e["caption"], level)
  # Dim is not wrong: a dim render of the wrong colour or shape, or a missing object, still fails.
  for e in _examples("one", 6):
    obj = e["objects"][0]
    for change, attribute in ((dict(color=_other(shapes.COLORS, obj["color"])), "color"),
                              (dict(shape=_other(shapes.SHAPES, obj["shape"])), "shape")):
      _rejected(_dim(shapes.render_image([dict(obj, **change)], 64), 0.3), e["caption"], attribute)
  for e in _examples("two", 6):
    _rejected(_dim(shapes.render_image(e["objects"][:1], 64), 0.3), e["caption"], "count")
  # Below the background threshold (10%) nothing is an object, dim or not.
  assert alignment.detect_objects(_dim(examples[0]["image"], 0.08)) == []
  # A video of dim frames reads as the bright one.
  v = shapes.video_example("test", 0)
  assert alignment.score_video(_dim(v["video"], 0.3), v["caption"])["correct"]


def _video_caption(objects):
  return " and ".join(f"{shapes.with_article(o['color'], o['shape'])} moving {o['direction']}"
                      for o in objects)


def test_wrong_video_captions_and_corrupted_videos_are_rejected():
  videos = [shapes.video_example("test", i) for i in range(24)]
  perpendicular = {"left": "up", "right": "down", "up": "right", "down": "left"}
  for e in videos:
    objs, video = e["objects"], e["video"]
    assert _video_caption(objs) == e["caption"]

    def rejected(caption, attribute, video=video):
      r = alignment.score_video(video, caption)
      assert not r["correct"] and r["attributes"][attribute] is False, (caption, r["attributes"])

    a = objs[0]
    for direction in (OPPOSITE[a["direction"]], perpendicular[a["direction"]]):
      rejected(_video_caption([dict(a, direction=direction)] + objs[1:]), "direction")
    colors = [o["color"] for o in objs]
    rejected(_video_caption([dict(a, color=_other(shapes.COLORS, *colors))] + objs[1:]), "color")
    shape = _other(shapes.SHAPES, *[o["shape"] for o in objs if o["color"] == a["color"]])
    rejected(_video_caption([dict(a, shape=shape)] + objs[1:]), "shape")
    rejected(e["caption"], "direction", video[::-1])  # played backwards
    rejected(e["caption"], "direction", np.repeat(video[:1], len(video), axis=0))  # standing still
    if len(objs) == 2:
      rejected(_video_caption(objs[:1]), "count")  # the second object is extra
      rejected(e["caption"], "count", shapes.render_video(objs[:1], 32, 16))  # ... or missing


# --------------------------------------------------------------------------
# Captions.
# --------------------------------------------------------------------------
def test_parse_caption_inverts_the_grammar():
  for split in ("test", "compositional"):
    for i in range(100):
      scene = shapes.image_scene(split, i)
      p = alignment.parse_caption(scene["caption"])
      assert (p["kind"], p["form"], p["relation"]) == ("image", scene["form"], scene["relation"])
      keys = ("color", "shape", "size", "cell") if scene["form"] == "one" else ("color", "shape")
      assert p["objects"] == [{k: o[k] for k in keys} for o in scene["objects"]]
      scene = shapes.video_scene(split, i)
      p = alignment.parse_caption(scene["caption"])
      assert (p["kind"], p["form"], p["relation"]) == ("video", scene["form"], None)
      assert p["objects"] == [{k: o[k] for k in ("color", "shape", "direction")} for o in scene["objects"]]


@pytest.mark.parametrize("caption", [
    "", "a", "A small red circle in the center", "a small red circle in the center.",
    "an small red circle in the center", "a small orange circle in the center",
    "a medium red circle in the center", "a small red circle in the middle", "a small red circle",
    "a red circle in the center", "a small red circle to the left of a blue square",
    "a red circle left of a blue square", "a red circle to the left of a blue",
    "a red circle moving sideways", "a red circle moving left and", "a red circle moving left and a blue square",
    "a red circle moving left and a blue square moving up and a green circle moving down",
    "a small red circle in the center and a blue square",
])
def test_parse_caption_rejects_captions_outside_the_grammar(caption):
  with pytest.raises(ValueError):
    alignment.parse_caption(caption)


def test_scoring_checks_the_kind_of_sample():
  e = shapes.image_example("test", 0)
  with pytest.raises(ValueError, match="video"):
    alignment.score_image(e["image"], "a red circle moving left")
  with pytest.raises(ValueError, match="image"):
    alignment.score_video(np.stack([e["image"]] * 4), e["caption"])

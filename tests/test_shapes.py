"""The shapes renderer against SHAPES.md, read back from the pixels by an independent reader.

The reader below knows only the spec: it finds the objects as connected
non-black regions, reads colour from the palette, shape from how much of its
extent an object fills (square 1, circle pi/4, triangle 1/2), size from its
width and position from its centre, and writes the caption a reader of the
spec would write. The renderer's metadata is checked against the pixels, and
the spec's geometric rules (gaps, relations, motion) against both.
"""

import re
import time

import numpy as np
import pytest
from scipy import ndimage

from jzoo.data import shapes

# --- the spec, transcribed independently of shapes.py -----------------------
PALETTE = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
    "magenta": (255, 0, 255), "cyan": (0, 255, 255), "white": (255, 255, 255),
}
PHRASES = {
    (0, 0): "in the top left corner", (0, 1): "at the top", (0, 2): "in the top right corner",
    (1, 0): "on the left", (1, 1): "in the center", (1, 2): "on the right",
    (2, 0): "in the bottom left corner", (2, 1): "at the bottom", (2, 2): "in the bottom right corner",
}
HELD_OUT = {("magenta", "triangle"), ("cyan", "circle"), ("yellow", "square")}
ONE_RE = re.compile(r"^(a|an) (small|large) (\w+) (square|circle|triangle) (.+)$")
TWO_RE = re.compile(r"^(a|an) (\w+) (square|circle|triangle) (to the left of|to the right of|above|below) "
                    r"(a|an) (\w+) (square|circle|triangle)$")
MOVE = r"(a|an) (\w+) (square|circle|triangle) moving (left|right|up|down)"
VIDEO_RE = re.compile(rf"^{MOVE}(?: and {MOVE})?$")


def expected_article(word):
  return "an" if word[0] in "aeiou" else "a"


# --- the independent pixel reader ---------------------------------------------
def read_objects(image):
  """[S,S,3] uint8 -> list of dicts (color, shape, width, cx, cy, area, box) read from pixels."""
  labels, n = ndimage.label(image.max(-1) > 0)
  objects = []
  for k in range(1, n + 1):
    mask = labels == k
    pixels = image[mask].astype(np.int64)
    brightest = tuple(pixels[np.argmax(pixels.sum(-1))])
    color = next((name for name, rgb in PALETTE.items() if rgb == brightest), None)
    assert color is not None, f"no pixel of an object is a palette colour: {brightest}"
    rgb = np.array(PALETTE[color])
    coverage = np.where(mask, image.max(-1) / 255.0, 0.0)
    # Anti-aliasing only scales the palette colour: no blur, gradients or other hues.
    assert np.all(np.abs(pixels - np.round(coverage[mask][:, None] * rgb)) <= 1)
    area = coverage.sum()
    ys, xs = np.mgrid[:image.shape[0], :image.shape[1]] + 0.5
    cx, cy = (coverage * xs).sum() / area, (coverage * ys).sum() / area
    # An upward triangle's mass piles up at its base: its vertical profile is skewed
    # (skewness -0.57); squares and circles are symmetric (0). Squares fill their extent
    # (longest row x longest column), circles pi/4 of it.
    var_y = (coverage * (ys - cy) ** 2).sum() / area
    skew_y = (coverage * (ys - cy) ** 3).sum() / area / var_y ** 1.5
    fill = area / (coverage.sum(1).max() * coverage.sum(0).max())
    shape = "triangle" if skew_y < -0.3 else "square" if fill > 0.9 else "circle"
    side = np.sqrt(area / {"square": 1.0, "circle": np.pi / 4, "triangle": np.sqrt(3) / 4}[shape])
    if shape == "triangle":
      cy -= side * np.sqrt(3) / 2 / 6  # centroid is h/6 below the centre of the bounding box
    rr, cc = np.nonzero(mask)
    objects.append(dict(color=color, shape=shape, width=side, cx=cx, cy=cy,
                        area=area, fill=fill, skew=skew_y,
                        box=(cc.min(), rr.min(), cc.max() + 1, rr.max() + 1)))
  return objects


def caption_from_pixels(image):
  """The caption a reader of the spec writes for a one-object image."""
  (obj,) = read_objects(image)
  s = image.shape[0]
  size = "small" if obj["width"] < 0.25 * s else "large"
  cell = (int(obj["cy"] // (s / 3)), int(obj["cx"] // (s / 3)))
  return f"{expected_article(size)} {size} {obj['color']} {obj['shape']} {PHRASES[cell]}"


def relation_ok(relation, a, b, s, tol=0.0):
  dx, dy = b[0] - a[0], b[1] - a[1]
  along, across = {"to the left of": (dx, dy), "to the right of": (-dx, dy),
                   "above": (dy, dx), "below": (-dy, dx)}[relation]
  return along >= 0.15 * s - tol and abs(across) < 0.2 * s + tol


def declared_box(obj, center=None):
  cx, cy = obj["center"] if center is None else center
  w = obj["side"]
  h = w * np.sqrt(3) / 2 if obj["shape"] == "triangle" else w
  return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def box_gap(b1, b2):
  return max(b2[0] - b1[2], b1[0] - b2[2], b2[1] - b1[3], b1[1] - b2[3])


# --- constants ------------------------------------------------------------------
def test_constants_match_spec():
  assert shapes.COLORS == PALETTE
  assert set(shapes.SHAPES) == {"square", "circle", "triangle"}
  assert shapes.SIZES == {"small": 0.20, "large": 0.30}
  assert shapes.POSITIONS == PHRASES
  assert set(shapes.RELATIONS) == {"to the left of", "to the right of", "above", "below"}
  assert set(shapes.DIRECTIONS) == {"left", "right", "up", "down"}
  assert set(shapes.HELD_OUT_PAIRS) == HELD_OUT
  assert shapes.SPLIT_SIZES == {"train": 100_000, "test": 2_000, "compositional": 2_000}
  assert shapes.VIDEO_SPLIT_SIZES == {"train": 50_000, "test": 2_000, "compositional": 2_000}


def test_article():
  words = ("small", "large", "orange", "red", "indigo")
  assert [shapes.article(w) for w in words] == ["a", "a", "an", "a", "an"]
  assert shapes.with_article("orange", "circle") == "an orange circle"


# --- rendering ----------------------------------------------------------------------
def _dense_reference(shape, cx, cy, side, size, n=32):
  """Coverage on an n x n subgrid per pixel, written from the spec's definitions."""
  t = (np.arange(size * n) + 0.5) / n
  x, y = np.meshgrid(t, t)
  if shape == "square":
    inside = (np.abs(x - cx) <= side / 2) & (np.abs(y - cy) <= side / 2)
  elif shape == "circle":
    inside = np.hypot(x - cx, y - cy) <= side / 2
  else:  # apex (cx, top), base corners (cx ± side/2, bottom)
    h = side * np.sqrt(3) / 2
    top, bottom = cy - h / 2, cy + h / 2
    inside = (y >= top) & (y <= bottom) & (np.abs(x - cx) <= (y - top) / h * side / 2)
  return inside.reshape(size, n, size, n).mean((1, 3))


@pytest.mark.parametrize("shape", ["square", "circle", "triangle"])
def test_render_matches_dense_reference(shape):
  objs = [dict(color="magenta", shape=shape, center=(13.3, 17.8), side=11.7)]
  image = shapes.render_image(objs, 32)
  cov = _dense_reference(shape, 13.3, 17.8, 11.7, 32)
  expected = cov[..., None] * np.array(PALETTE["magenta"])
  # 4x4 supersampling quantizes an edge pixel's coverage to 1/4 per axis: per pixel up to
  # ~1/8 + 1/8 off at a corner; area and centre within half a subsample.
  assert np.abs(image - expected).max() <= 255 * 0.2
  got = image[..., 0] / 255.0
  assert abs(got.sum() - cov.sum()) < 0.04 * cov.sum()
  ys, xs = np.mgrid[:32, :32]
  for grid in (xs, ys):
    assert abs((got * grid).sum() / got.sum() - (cov * grid).sum() / cov.sum()) < 0.13
  assert image[cov == 0].max() == 0 and (image[cov == 1] == PALETTE["magenta"]).all()


def test_pixel_aligned_square_is_exact():
  image = shapes.render_image([dict(color="green", shape="square", center=(8.0, 6.0), side=4.0)], 16)
  expected = np.zeros((16, 16, 3), np.uint8)
  expected[4:8, 6:10] = PALETTE["green"]
  np.testing.assert_array_equal(image, expected)


def test_render_paints_in_order():
  objs = [dict(color="red", shape="square", center=(8, 8), side=8),
          dict(color="blue", shape="square", center=(8, 8), side=4)]
  image = shapes.render_image(objs, 16)
  assert tuple(image[8, 8]) == PALETTE["blue"] and tuple(image[5, 5]) == PALETTE["red"]


# --- images against the spec ----------------------------------------------------------
@pytest.mark.parametrize("split,count", [("train", 150), ("test", 50), ("compositional", 50)])
def test_images_read_back(split, count):
  s = 64
  for i in range(count):
    ex = shapes.image_example(split, i, s)
    image, caption, objects = ex["image"], ex["caption"], ex["objects"]
    assert image.shape == (s, s, 3) and image.dtype == np.uint8
    read = read_objects(image)
    assert len(read) == len(objects), (i, caption)  # no missing or extra objects
    for obj in objects:  # metadata agrees with pixels; exact palette colour at the centre
      cx, cy = obj["center"]
      assert tuple(image[int(cy), int(cx)]) == PALETTE[obj["color"]], (i, caption)
      x0, y0, x1, y1 = declared_box(obj)
      assert 0 <= x0 and 0 <= y0 and x1 <= s and y1 <= s, "inside the canvas"
      match = [r for r in read if r["color"] == obj["color"] and r["shape"] == obj["shape"]]
      assert len(match) == 1, (i, caption)
      r = match[0]
      assert abs(r["cx"] - cx) < 0.3 and abs(r["cy"] - cy) < 0.3 and abs(r["width"] - obj["side"]) < 0.4
      jitter = r["width"] / (shapes.SIZES[obj["size"]] * s) - 1
      assert abs(jitter) <= 0.05 + 0.4 / r["width"], (i, caption)
    # Background: exactly black outside the (pixel-rounded) boxes of the objects.
    outside = np.ones((s, s), bool)
    for obj in objects:
      x0, y0, x1, y1 = declared_box(obj)
      outside[int(np.floor(y0)):int(np.ceil(y1)), int(np.floor(x0)):int(np.ceil(x1))] = False
    assert image[outside].max() == 0

    if ex["form"] == "one":
      m = ONE_RE.match(caption)
      assert m, caption
      assert m.group(1) == expected_article(m.group(2))
      assert caption == caption_from_pixels(image), i
      (obj,) = objects
      r, c = obj["cell"]
      assert PHRASES[(r, c)] == m.group(5)
      assert abs(obj["center"][0] - (c + 0.5) * s / 3) <= 0.04 * s + 1e-9
      assert abs(obj["center"][1] - (r + 0.5) * s / 3) <= 0.04 * s + 1e-9
    else:
      m = TWO_RE.match(caption)
      assert m, caption
      art1, c1, s1, relation, art2, c2, s2 = m.groups()
      assert art1 == expected_article(c1) and art2 == expected_article(c2)
      assert (c1, s1) != (c2, s2) and relation == ex["relation"]
      assert all(o["size"] == "small" for o in objects)
      ra = next(o for o in read if (o["color"], o["shape"]) == (c1, s1))
      rb = next(o for o in read if (o["color"], o["shape"]) == (c2, s2))
      assert max(ra["width"], rb["width"]) < 0.25 * s, "both small"
      assert relation_ok(relation, (ra["cx"], ra["cy"]), (rb["cx"], rb["cy"]), s, tol=0.3), (i, caption)
      a, b = objects
      assert (a["color"], a["shape"], b["color"], b["shape"]) == (c1, s1, c2, s2)
      assert relation_ok(relation, a["center"], b["center"], s)
      assert box_gap(declared_box(a), declared_box(b)) >= 0.05 * s - 1e-9
      # The pixels' own boxes are apart too (each at most 1 px wider than the true box).
      assert box_gap(ra["box"], rb["box"]) >= 0.05 * s - 2


@pytest.mark.parametrize("size", [16, 32, 100])
def test_other_resolutions(size):
  for i in range(40):
    ex = shapes.image_example("train", i, size)
    assert ex["image"].shape == (size, size, 3)
    for obj in ex["objects"]:
      x0, y0, x1, y1 = declared_box(obj)
      assert 0 <= x0 and 0 <= y0 and x1 <= size and y1 <= size
      if obj["shape"] != "triangle":  # a 16 px triangle is too thin for a full pixel at its centre
        assert tuple(ex["image"][int(obj["center"][1]), int(obj["center"][0])]) == PALETTE[obj["color"]]
    if ex["form"] == "two":
      a, b = ex["objects"]
      assert box_gap(declared_box(a), declared_box(b)) >= 0.05 * size - 1e-9


def test_determinism_and_disjoint_splits():
  for split in shapes.SPLITS:
    a, b = shapes.image_example(split, 7), shapes.image_example(split, 7)
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["caption"] == b["caption"]
    va, vb = shapes.video_example(split, 7), shapes.video_example(split, 7)
    np.testing.assert_array_equal(va["video"], vb["video"])
  # The same index in different splits is a different example.
  train = [shapes.image_scene("train", i)["caption"] for i in range(50)]
  test = [shapes.image_scene("test", i)["caption"] for i in range(50)]
  assert sum(a == b for a, b in zip(train, test)) < 10
  assert not np.array_equal(shapes.image_example("train", 3)["image"],
                            shapes.image_example("test", 3)["image"])
  # Any train index works; finite splits stop at their size.
  assert shapes.image_example("train", 10**9, 16)["image"].shape == (16, 16, 3)
  with pytest.raises(IndexError):
    shapes.image_example("test", 2000)
  with pytest.raises(IndexError):
    shapes.video_example("compositional", 2000)
  with pytest.raises(ValueError):
    shapes.image_example("valid", 0)


def test_golden_captions():
  # Example i is the same on every machine and in every version of jzoo: a changed
  # caption here means every seed-dependent result would silently change.
  assert [shapes.image_scene("train", i)["caption"] for i in range(3)] == GOLDEN_IMAGE
  assert [shapes.video_scene("test", i)["caption"] for i in range(2)] == GOLDEN_VIDEO


GOLDEN_IMAGE = ["a blue square above a magenta square", "a large magenta square on the right",
                "a small red square at the bottom"]
GOLDEN_VIDEO = ["a green circle moving down", "a red triangle moving down and a white square moving right"]


def _pairs_in(caption):
  return set(re.findall(r"\b(red|green|blue|yellow|magenta|cyan|white) (square|circle|triangle)\b", caption))


def test_held_out_pairs_and_mix():
  train = [shapes.image_scene("train", i) for i in range(2000)]
  test = [shapes.image_scene("test", i) for i in range(2000)]
  vtrain = [shapes.video_scene("train", i, 32, 2) for i in range(2000)]
  vtest = [shapes.video_scene("test", i, 32, 2) for i in range(1000)]
  seen = set()
  for ex in train + test + vtrain + vtest:
    pairs = _pairs_in(ex["caption"])
    assert pairs and not pairs & HELD_OUT, ex["caption"]
    seen |= pairs
  assert len(seen) == 18  # every other (colour, shape) pair is used
  for ex in ([shapes.image_scene("compositional", i) for i in range(2000)]
             + [shapes.video_scene("compositional", i, 32, 2) for i in range(2000)]):
    pairs = _pairs_in(ex["caption"])
    assert pairs and pairs <= HELD_OUT, ex["caption"]
  # Mixes: 50/50 images, 60/40 videos (binomial sd ~0.011 over 2000).
  assert abs(np.mean([ex["form"] == "one" for ex in train]) - 0.5) < 0.04
  assert abs(np.mean([ex["form"] == "one" for ex in vtrain]) - 0.6) < 0.04
  ones = [ex for ex in train if ex["form"] == "one"]
  assert {ex["objects"][0]["cell"] for ex in ones} == set(PHRASES)
  assert {ex["objects"][0]["size"] for ex in ones} == {"small", "large"}
  assert {ex["relation"] for ex in train if ex["form"] == "two"} == set(shapes.RELATIONS)
  assert {o["direction"] for ex in vtrain for o in ex["objects"]} == set(shapes.DIRECTIONS)


def test_relation_swapped_twin_names_the_same_objects_in_a_layout_the_image_breaks():
  """A hard negative (jzoo.data.shapes.relation_swapped) of a two-object caption keeps both
  objects, in order, and names the opposite relation, which the scene's objects never satisfy;
  one-object captions have none."""
  opposite = {"to the left of": "to the right of", "to the right of": "to the left of",
              "above": "below", "below": "above"}
  for i in range(300):
    ex = shapes.image_scene("test", i)
    twin = shapes.relation_swapped(ex["caption"])
    if ex["form"] == "one":
      assert twin is None, ex["caption"]
      continue
    m, t = TWO_RE.match(ex["caption"]), TWO_RE.match(twin)
    assert t, twin
    assert t.groups()[:3] + t.groups()[4:] == m.groups()[:3] + m.groups()[4:]
    assert t.group(4) == opposite[m.group(4)]
    a, b = (o["center"] for o in ex["objects"])
    assert relation_ok(m.group(4), a, b, 64) and not relation_ok(t.group(4), a, b, 64)


# --- videos ------------------------------------------------------------------------------
@pytest.mark.parametrize("split,count,size,frames", [("train", 60, 32, 16), ("compositional", 20, 32, 16),
                                                     ("test", 20, 48, 5)])
def test_videos_read_back(split, count, size, frames):
  step = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
  for i in range(count):
    ex = shapes.video_example(split, i, size, frames)
    video, caption = ex["video"], ex["caption"]
    assert video.shape == (frames, size, size, 3) and video.dtype == np.uint8
    m = VIDEO_RE.match(caption)
    assert m, caption
    named = [m.groups()[k:k + 4] for k in (0, 4) if m.group(k + 1)]
    assert len(named) == len(ex["objects"]) == (1 if ex["form"] == "one" else 2)
    for art, color, shape, _ in named:
      assert art == expected_article(color)
    if len(named) == 2:
      assert named[0][1:3] != named[1][1:3]
    tracks = {tuple(n[1:3]): [] for n in named}
    for t in range(frames):
      read = read_objects(video[t])
      assert len(read) == len(named), (i, t, caption)  # never merge, nothing extra
      for r in read:
        tracks[(r["color"], r["shape"])].append((r["cx"], r["cy"], r["width"], r["area"]))
      if len(named) == 2:
        a, b = ex["objects"]
        gap = box_gap(declared_box(a, a["centers"][t]), declared_box(b, b["centers"][t]))
        assert gap >= 0.05 * size - 1e-9
    for (_, color, shape, direction), obj in zip(named, ex["objects"]):
      track = np.array(tracks[(color, shape)])
      assert len(track) == frames
      assert abs(track[0, 2] - 0.25 * size) < 0.6, "object side 0.25·S"
      assert np.ptp(track[:, 3]) < 0.08 * track[:, 3].mean(), "whole object in every frame"
      moved = track[-1, :2] - track[0, :2]
      np.testing.assert_allclose(moved, 0.5 * size * np.array(step[direction]), atol=0.35)
      linear = track[0, :2] + np.linspace(0, 1, frames)[:, None] * moved  # constant speed, straight
      np.testing.assert_allclose(track[:, :2], linear, atol=0.35)
      centers = np.asarray(obj["centers"])
      np.testing.assert_allclose(centers[-1] - centers[0], 0.5 * size * np.array(step[direction]), atol=1e-9)
      for c in centers:
        x0, y0, x1, y1 = declared_box(obj, c)
        assert 0 <= x0 and 0 <= y0 and x1 <= size and y1 <= size


def test_rendering_speed():
  shapes.image_example("train", 0)
  t = time.perf_counter()
  for i in range(200):
    shapes.image_example("train", i)
  image_ms = (time.perf_counter() - t) / 200 * 1e3
  t = time.perf_counter()
  for i in range(20):
    shapes.video_example("train", i)
  video_ms = (time.perf_counter() - t) / 20 * 1e3
  # Budgets from the brief (~1 ms, a few ms), with slack for a busy 2-core CI machine.
  assert image_ms < 3 and video_ms < 15, (image_ms, video_ms)


# --- as a source for the input pipeline -----------------------------------------------------------
def test_procedural_sources():
  from jzoo.data import sources
  from jzoo.errors import DataError
  test = sources.get_source("shapes", "test", resolution=32)
  assert len(test) == 2000 and set(test[0]) == {"image", "caption"}
  np.testing.assert_array_equal(test[11]["image"], shapes.image_example("test", 11, 32)["image"])
  assert len(sources.get_source("shapes", "train", resolution=32)) == 100_000
  assert len(sources.get_source("shapes", "train", resolution=32, train_size=500)) == 500
  video = sources.get_source("moving_shapes", "compositional", resolution=16)
  ex = video[3]
  assert ex["video"].shape == (16, 16, 16, 3)  # default 16 frames
  assert ex["caption"] == shapes.video_example("compositional", 3, 16, 16)["caption"]
  short = sources.get_source("moving_shapes", "train", resolution=16, frames=4)
  assert short[0]["video"].shape == (4, 16, 16, 3)
  with pytest.raises(IndexError):
    test[2000]
  with pytest.raises(DataError, match="moving_shapes"):
    sources.get_source("shapes", "train", resolution=32, frames=8)
  with pytest.raises(DataError, match="split"):
    sources.get_source("shapes", "validation", resolution=32)

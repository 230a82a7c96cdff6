"""Prompt-alignment evaluator for the `shapes` and `moving_shapes` datasets (SHAPES.md v1).

It reads a picture the way the spec says a reader would, with no learned
parts:

1. Each pixel is given the nearest palette colour by its chroma (the pixel
   divided by its brightest channel), or background when it is dark or when
   its chroma is far from every palette colour (orange is neither red nor
   yellow). Its coverage is its brightness along that colour, so an
   anti-aliased edge pixel weighs what it covers.
2. A generated object may be dimmer than the palette colour yet solid, so
   coverage is first measured against the interior of the object: each
   8-connected region of one colour is divided by its level (its brightest
   3x3 block). Pixels covered at least half of that make binary masks, one
   per colour; holes are filled and 8-connected components are objects.
   Components smaller than `MIN_AREA * S**2` are specks, not objects.
3. Geometry comes from the coverage-weighted component (its 1-pixel ring of
   same-colour pixels included): fill ratio of the bounding box (square 1,
   circle pi/4, triangle 1/2) and the vertical skewness (an upward triangle
   holds its mass low: -0.57; square and circle 0) give the shape; the side
   follows from area and shape, the size from the side (small 0.20·S, large
   0.30·S); the centre is the centroid (for a triangle moved up by h/6 to the
   centre of its box) and the grid cell is read from the 3x3 grid.
4. Videos: per-frame detections are linked into tracks by colour, nearest
   centre and shape; a track seen in at least half the frames is an object,
   its shape the majority over frames, its motion the least-squares
   displacement from the first to the last frame.

Tolerances (fractions of S), stated because generated samples are not exact:
relations use the spec's 0.15·S along / 0.2·S across rule loosened by
`RELATION_TOLERANCE` (0.03·S) on both sides; a motion holds when the
displacement along the named direction is at least `MIN_TRAVEL` (0.25·S,
half the spec's 0.5·S) and the sideways drift is at most `MAX_DRIFT` (half)
of it. Real renders pass with a wide margin (see tests/test_alignment.py).
"""

import itertools
import math
import re

import numpy as np
from scipy import ndimage

from jzoo.data import shapes

# Palette as binary chroma vectors, in `shapes.COLORS` order.
COLOR_NAMES = tuple(shapes.COLORS)
PALETTE = np.array([shapes.COLORS[c] for c in COLOR_NAMES], np.float32) / 255.0

MAX_BACKGROUND = 0.30  # a median colour brighter than this is not a background to subtract
MIN_BRIGHTNESS = 0.10  # below: background (a pixel less than 10% covered)
MAX_CHROMA_DISTANCE = 0.40  # L-inf distance of a pixel's chroma to its palette colour
MIN_AREA = 0.005  # specks: components covering less than this fraction of the canvas
RELATION_TOLERANCE = 0.03  # fraction of S added to the spec's relation thresholds
MIN_TRAVEL = 0.25  # fraction of S a moving object must travel along its direction
MAX_DRIFT = 0.5  # sideways drift allowed, as a fraction of the travel along the direction
MIN_TRACK_FRACTION = 0.5  # a track is an object when seen in at least this fraction of frames

# Shape prototypes in (fill ratio, vertical skewness) and the scale of each feature.
_PROTOTYPES = {"square": (1.0, 0.0), "circle": (math.pi / 4, 0.0),
               "triangle": (0.5, -2 * math.sqrt(2) / 5)}
_FEATURE_SCALE = (0.2, 0.15)
_AREA_FACTOR = {"square": 1.0, "circle": math.pi / 4, "triangle": math.sqrt(3) / 4}
_SQRT3_2 = math.sqrt(3) / 2
_EIGHT = np.ones((3, 3), bool)

IMAGE_ATTRIBUTES = ("color", "shape", "size", "position", "relation", "count")
VIDEO_ATTRIBUTES = ("color", "shape", "direction", "count")


# --------------------------------------------------------------------------
# Captions.
# --------------------------------------------------------------------------
def _alt(words):
  return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_COLOR = f"({_alt(shapes.COLORS)})"
_SHAPE = f"({_alt(shapes.SHAPES)})"
_OBJECT = rf"(a|an) {_COLOR} {_SHAPE}"
_PHRASE_TO_CELL = {phrase: cell for cell, phrase in shapes.POSITIONS.items()}
_ONE_RE = re.compile(rf"(a|an) ({_alt(shapes.SIZES)}) {_COLOR} {_SHAPE} ({_alt(_PHRASE_TO_CELL)})")
_TWO_RE = re.compile(rf"{_OBJECT} ({_alt(shapes.RELATIONS)}) {_OBJECT}")
_MOVING = rf"{_OBJECT} moving ({_alt(shapes.DIRECTIONS)})"
_VIDEO_RE = re.compile(rf"{_MOVING}(?: and {_MOVING})?")


def _check_article(art, word, caption):
  if art != shapes.article(word):
    raise ValueError(f"caption {caption!r}: expected {shapes.article(word)!r} before {word!r}")


def parse_caption(caption):
  """Parses a caption of the spec's grammar back into its scene.

  Returns dict(kind="image"|"video", form="one"|"two", objects=[...],
  relation=str|None). Image objects have color, shape and, for one-object
  captions, size and cell (row, col); video objects have color, shape and
  direction. Runs of whitespace are tolerated; anything else outside the
  grammar (upper case, a final period, a wrong article, unknown words)
  raises ValueError.
  """
  if not isinstance(caption, str):
    raise ValueError(f"caption must be a string, got {type(caption).__name__}")
  text = " ".join(caption.split())
  m = _ONE_RE.fullmatch(text)
  if m:
    art, size, color, shape, phrase = m.groups()
    _check_article(art, size, caption)
    obj = dict(color=color, shape=shape, size=size, cell=_PHRASE_TO_CELL[phrase])
    return dict(kind="image", form="one", objects=[obj], relation=None)
  m = _TWO_RE.fullmatch(text)
  if m:
    art_a, color_a, shape_a, relation, art_b, color_b, shape_b = m.groups()
    _check_article(art_a, color_a, caption)
    _check_article(art_b, color_b, caption)
    objects = [dict(color=color_a, shape=shape_a), dict(color=color_b, shape=shape_b)]
    return dict(kind="image", form="two", objects=objects, relation=relation)
  m = _VIDEO_RE.fullmatch(text)
  if m:
    groups = m.groups()
    objects = []
    for art, color, shape, direction in (groups[:4], groups[4:]):
      if art is None:
        continue
      _check_article(art, color, caption)
      objects.append(dict(color=color, shape=shape, direction=direction))
    return dict(kind="video", form="one" if len(objects) == 1 else "two", objects=objects,
                relation=None)
  raise ValueError(f"caption {caption!r} is outside the shapes grammar (SHAPES.md): expected e.g. "
                   "'a small red circle in the center', 'a red circle above a blue square' or "
                   "'a red circle moving left'")


# --------------------------------------------------------------------------
# Detection.
# --------------------------------------------------------------------------
def classify_pixels(image):
  """Per-pixel palette index [H,W] (-1: background or no palette colour) and coverage [H,W] in [0,1]."""
  p = np.asarray(image, np.float32)[..., :3] / 255.0
  # Generated samples may sit on a dim, tinted background: take the median colour (the canvas is
  # mostly background) off, unless it is too bright to be meant as black. A real render's is 0.
  background = np.median(p.reshape(-1, 3), axis=0)
  if background.max() <= MAX_BACKGROUND:
    p = np.clip((p - background) / (1.0 - background), 0.0, 1.0)
  bright = p.max(axis=-1)
  chroma = p / np.maximum(bright, 1e-6)[..., None]
  dist = np.abs(chroma[..., None, :] - PALETTE).max(axis=-1)  # [H, W, 7]
  index = dist.argmin(axis=-1)
  pal = PALETTE[index]
  coverage = np.clip((p * pal).sum(-1) / (pal * pal).sum(-1), 0.0, 1.0)
  valid = (bright >= MIN_BRIGHTNESS) & (dist.min(axis=-1) <= MAX_CHROMA_DISTANCE)
  return np.where(valid, index, -1), np.where(valid, coverage, 0.0)


def classify_shape(fill, skew):
  """Nearest shape prototype in (fill ratio, vertical skewness)."""
  def dist(proto):
    return sum(((f - q) / s) ** 2 for f, q, s in zip((fill, skew), proto, _FEATURE_SCALE))
  return min(_PROTOTYPES, key=lambda name: dist(_PROTOTYPES[name]))


def _describe(weights, y0, x0, color, size):
  """A detection from the coverage weights of one component (a crop whose corner is (y0, x0))."""
  area = float(weights.sum())
  rows, cols = weights.sum(axis=1), weights.sum(axis=0)
  fill = area / max(float(rows.max()) * float(cols.max()), 1e-6)
  ys = np.arange(weights.shape[0]) + 0.5
  xs = np.arange(weights.shape[1]) + 0.5
  my, mx = float(rows @ ys) / area, float(cols @ xs) / area
  var_y = float(rows @ (ys - my) ** 2) / area
  skew = float(rows @ (ys - my) ** 3) / area / max(var_y, 1e-6) ** 1.5
  shape = classify_shape(fill, skew)
  side = math.sqrt(area / _AREA_FACTOR[shape])
  cy = y0 + my - (side * _SQRT3_2 / 6 if shape == "triangle" else 0.0)  # centroid -> box centre
  cx = x0 + mx
  cell = tuple(int(np.clip(v // (size / 3), 0, 2)) for v in (cy, cx))
  return dict(color=color, shape=shape, size="small" if side < 0.25 * size else "large",
              side=side, center=(cx, cy), cell=cell, area=area, fill=fill, skew=skew)


def relative_coverage(coverage, same):
  """`coverage` [H,W] where `same` (one colour's pixels), divided by the level of its 8-connected
  region and clipped to 1; 0 elsewhere. The level is the region's brightest 3x3 block (the
  largest 3x3 minimum, robust to a noisy pixel), or its brightest pixel when no 3x3 block fits.
  A real render's objects have level 1 (a small triangle at S = 32 a little less)."""
  cover = np.where(same, coverage, 0.0)
  regions, n = ndimage.label(same, structure=_EIGHT)
  if n == 0:
    return cover
  ids = np.arange(1, n + 1)
  block = ndimage.maximum(ndimage.minimum_filter(cover, size=3, mode="constant"), regions, ids)
  level = np.where(np.asarray(block) > 0, block, ndimage.maximum(cover, regions, ids))
  level = np.concatenate([[1.0], level]).astype(cover.dtype)[regions]  # per pixel; background 1
  return np.minimum(cover / np.maximum(level, 1e-6), 1.0)


def detect_objects(image):
  """Objects in a uint8 [S,S,3] image: list of dicts, largest first.

  Each has color, shape, size ("small"/"large"), side (pixels), center (x, y)
  in pixels (x right, y down, as in shapes.py), cell (row, col) of the 3x3
  grid, area (covered pixels), fill and skew (the shape features).
  """
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] < 3:
    raise ValueError(f"expected an image [H,W,3], got shape {image.shape}")
  size = image.shape[0]
  index, coverage = classify_pixels(image)
  detections = []
  for k in np.unique(index[index >= 0]):
    same = index == k
    # Coverage relative to the region's level, before the half-coverage test: an object dimmer
    # than half the palette colour would otherwise have no solid pixel and be missed.
    relative = relative_coverage(coverage, same)
    solid = relative >= 0.5
    mask = ndimage.binary_fill_holes(solid)
    labels, _ = ndimage.label(mask, structure=_EIGHT)
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
      # Crop with a 1-pixel margin for the anti-aliased ring around the solid pixels.
      y0, x0 = max(sl[0].start - 1, 0), max(sl[1].start - 1, 0)
      crop = (slice(y0, sl[0].stop + 1), slice(x0, sl[1].stop + 1))
      comp = labels[crop] == i
      ring = ndimage.binary_dilation(comp, _EIGHT) & same[crop] & (labels[crop] == 0)
      hole = comp & ~solid[crop]  # filled holes count as fully covered
      weights = np.where(comp, np.where(hole, 1.0, relative[crop]), 0.0)
      weights = weights + np.where(ring, relative[crop], 0.0)
      # Full coverage is the solid component's own interior (its region may hold a brighter object).
      inner = ndimage.binary_erosion(comp, _EIGHT)
      level = weights[inner].mean() if inner.any() else weights.max()
      weights = np.minimum(weights / max(level, 1e-6), 1.0)
      if weights.sum() < MIN_AREA * size * size:
        continue
      detections.append(_describe(weights, y0, x0, COLOR_NAMES[k], size))
  detections.sort(key=lambda d: -d["area"])
  return detections


def track_objects(video, detections=None):
  """Objects of a uint8 [T,S,S,3] video: list of dicts (color, shape, direction, displacement,
  start, end, frames), from per-frame detections linked by colour, nearest centre and shape.

  `detections` ([T] lists from `detect_objects`) saves detecting again when the caller has them.
  """
  video = np.asarray(video)
  if video.ndim != 4:
    raise ValueError(f"expected a video [T,H,W,3], got shape {video.shape}")
  num_frames, size = video.shape[0], video.shape[1]
  if detections is None:
    detections = [detect_objects(frame) for frame in video]
  # Largest move per frame that links two detections: well over the spec's 0.5·S/(T-1) step, so
  # that missed frames and uneven generated motion still link.
  max_jump = max(0.3, 1.5 * shapes.TRAVEL / max(num_frames - 1, 1)) * size
  tracks = []  # dicts: color, points [(t, det)]
  for t, dets in enumerate(detections):
    free = list(tracks)  # tracks not yet extended in this frame
    for det in dets:
      best, best_cost = None, None
      for tr in free:
        last_t, last = tr["points"][-1]
        if tr["color"] != det["color"]:
          continue
        jump = math.dist(last["center"], det["center"])
        if jump > max_jump * (t - last_t):
          continue
        cost = jump + (0.0 if last["shape"] == det["shape"] else 0.25 * size)
        if best_cost is None or cost < best_cost:
          best, best_cost = tr, cost
      if best is None:
        tracks.append(dict(color=det["color"], points=[(t, det)]))
      else:
        best["points"].append((t, det))
        free.remove(best)
  objects = []
  for tr in tracks:
    if len(tr["points"]) < MIN_TRACK_FRACTION * num_frames:
      continue
    ts = np.array([t for t, _ in tr["points"]], np.float64)
    centers = np.array([d["center"] for _, d in tr["points"]], np.float64)
    shape_votes = [d["shape"] for _, d in tr["points"]]
    shape = max(shapes.SHAPES, key=shape_votes.count)
    if len(ts) > 1:
      slope = np.polyfit(ts, centers, 1)[0]  # [2]: pixels per frame
    else:
      slope = np.zeros(2)
    displacement = slope * (num_frames - 1)
    objects.append(dict(color=tr["color"], shape=shape, direction=motion_direction(displacement, size),
                        displacement=tuple(float(v) for v in displacement),
                        start=tuple(centers[0]), end=tuple(centers[-1]), frames=len(ts)))
  objects.sort(key=lambda o: -o["frames"])
  return objects


def motion_direction(displacement, size):
  """The direction a displacement (dx, dy) reads as, or None when it is too short or too slanted."""
  dx, dy = displacement
  for name, (ux, uy) in shapes.DIRECTION_VECTORS.items():
    along = dx * ux + dy * uy
    across = abs(dx * uy - dy * ux)
    if along >= MIN_TRAVEL * size and across <= MAX_DRIFT * along:
      return name
  return None


def relation_holds(relation, center_a, center_b, size, tolerance=None):
  """The spec's relation rule (0.15·S along, under 0.2·S across), each loosened by `tolerance`·S
  (default `RELATION_TOLERANCE`)."""
  tolerance = RELATION_TOLERANCE if tolerance is None else tolerance
  dx = center_b[0] - center_a[0]
  dy = center_b[1] - center_a[1]
  along, across = {"to the left of": (dx, dy), "to the right of": (-dx, dy),
                   "above": (dy, dx), "below": (-dy, dx)}[relation]
  return bool(along >= (shapes.RELATION_MIN_OFFSET - tolerance) * size
              and abs(across) < (shapes.RELATION_MAX_CROSS + tolerance) * size)


# --------------------------------------------------------------------------
# Scoring.
# --------------------------------------------------------------------------
def _match(wanted, found, secondary):
  """Assigns a distinct found object to each wanted one (None if too few), maximising agreement:
  colour first, then shape, then `secondary(want, got)` (size, cell, direction)."""
  found = found[:8]  # largest few: keeps the search small on noisy samples
  n = min(len(wanted), len(found))
  best, best_score = [None] * len(wanted), -1
  for chosen in itertools.permutations(range(len(found)), n):
    for slots in itertools.combinations(range(len(wanted)), n):
      score = 0
      for w, f in zip(slots, chosen):
        want, got = wanted[w], found[f]
        score += 100 * (want["color"] == got["color"]) + 10 * (want["shape"] == got["shape"])
        score += secondary(want, got)
      if score > best_score:
        assignment = [None] * len(wanted)
        for w, f in zip(slots, chosen):
          assignment[w] = found[f]
        best, best_score = assignment, score
  return best


def _all(flags):
  return bool(all(flags))


def score_image(image, caption):
  """Reads `image` (uint8 [S,S,3]) against `caption`.

  Returns dict(correct, attributes={color, shape, size, position, relation,
  count}, detections, parsed). Attributes that the caption does not name are
  None. Each named object is matched to the detection that agrees with it
  most (colour first, then shape); `color`/`shape` say whether every named
  object's match has the named colour/shape; `size`/`position` (one-object
  captions) its size and grid cell; `relation` (two-object captions) whether
  the relation holds between the matches; `count` whether there are exactly
  as many objects as named. `correct` is all of them.
  """
  parsed = parse_caption(caption)
  if parsed["kind"] != "image":
    raise ValueError(f"caption {caption!r} describes a video, not an image")
  image = np.asarray(image)
  size = image.shape[0]
  found = detect_objects(image)
  wanted = parsed["objects"]

  def secondary(want, got):
    return ("size" in want and want["size"] == got["size"]) + ("cell" in want and want["cell"] == got["cell"])

  matched = _match(wanted, found, secondary)
  present = all(m is not None for m in matched)
  attrs = dict.fromkeys(IMAGE_ATTRIBUTES)
  attrs["color"] = present and _all(w["color"] == m["color"] for w, m in zip(wanted, matched))
  attrs["shape"] = present and _all(w["shape"] == m["shape"] for w, m in zip(wanted, matched))
  if parsed["form"] == "one":
    attrs["size"] = present and matched[0]["size"] == wanted[0]["size"]
    attrs["position"] = present and matched[0]["cell"] == tuple(wanted[0]["cell"])
  else:
    attrs["relation"] = present and relation_holds(parsed["relation"], matched[0]["center"],
                                                   matched[1]["center"], size)
  attrs["count"] = len(found) == len(wanted)
  correct = all(v for v in attrs.values() if v is not None)
  return dict(correct=bool(correct), attributes=attrs, detections=found, parsed=parsed)


def score_video(video, caption):
  """Reads `video` (uint8 [T,S,S,3]) against `caption`.

  Returns dict(correct, attributes={color, shape, direction, count}, objects,
  parsed), with the attributes defined as in `score_image`; `direction` says
  whether every named object's match moves in the named direction.
  """
  parsed = parse_caption(caption)
  if parsed["kind"] != "video":
    raise ValueError(f"caption {caption!r} describes an image, not a video")
  found = track_objects(video)
  wanted = parsed["objects"]
  matched = _match(wanted, found, lambda want, got: int(want["direction"] == got["direction"]))
  present = all(m is not None for m in matched)
  attrs = {
      "color": present and _all(w["color"] == m["color"] for w, m in zip(wanted, matched)),
      "shape": present and _all(w["shape"] == m["shape"] for w, m in zip(wanted, matched)),
      "direction": present and _all(w["direction"] == m["direction"] for w, m in zip(wanted, matched)),
      "count": len(found) == len(wanted),
  }
  return dict(correct=bool(all(attrs.values())), attributes=attrs, objects=found, parsed=parsed)


def score(sample, caption):
  """`score_image` or `score_video` by the sample's rank."""
  return (score_video if np.ndim(sample) == 4 else score_image)(sample, caption)

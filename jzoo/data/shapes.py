"""The `shapes` and `moving_shapes` datasets of SHAPES.md (spec v1), rendered on the fly.

Example `i` of a split is a pure function of (dataset, split, i): its random
generator is seeded with that triple, so any index of any split renders the
same on every machine, splits never share a seed, and the trainer can read
the `train` stream at any position without storing it.

Geometry is in continuous pixel coordinates: x grows to the right, y grows
downwards, pixel (row i, col j) covers [j, j+1) x [i, i+1). Objects are drawn
with 4x4 supersampling (anti-aliasing by coverage), in their palette colour on
a pure black background.
"""

import math

import numpy as np

COLORS = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
    "white": (255, 255, 255),
}
SHAPES = ("square", "circle", "triangle")
SIZES = {"small": 0.20, "large": 0.30}  # object side as a fraction of the canvas side S
SIZE_JITTER = 0.05  # relative
POSITIONS = {
    (0, 0): "in the top left corner",
    (0, 1): "at the top",
    (0, 2): "in the top right corner",
    (1, 0): "on the left",
    (1, 1): "in the center",
    (1, 2): "on the right",
    (2, 0): "in the bottom left corner",
    (2, 1): "at the bottom",
    (2, 2): "in the bottom right corner",
}
POSITION_JITTER = 0.04  # fraction of S
RELATIONS = ("to the left of", "to the right of", "above", "below")
OPPOSITE_RELATIONS = {"to the left of": "to the right of", "to the right of": "to the left of",
                      "above": "below", "below": "above"}
RELATION_MIN_OFFSET = 0.15  # along the relation's axis, fraction of S
RELATION_MAX_CROSS = 0.20  # across it, fraction of S (strictly less)
MIN_GAP = 0.05  # between bounding boxes, fraction of S
DIRECTIONS = ("left", "right", "up", "down")
DIRECTION_VECTORS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
VIDEO_SIDE = 0.25  # object side in videos, fraction of S
TRAVEL = 0.5  # distance travelled from first to last frame, fraction of S
HELD_OUT_PAIRS = (("magenta", "triangle"), ("cyan", "circle"), ("yellow", "square"))
SPLITS = ("train", "test", "compositional")
SPLIT_SIZES = {"train": 100_000, "test": 2_000, "compositional": 2_000}  # images (`shapes`)
VIDEO_SPLIT_SIZES = {"train": 50_000, "test": 2_000, "compositional": 2_000}  # `moving_shapes`
TWO_OBJECT_FRACTION = {"shapes": 0.5, "moving_shapes": 0.4}
SUPERSAMPLE = 4

_DATASET_IDS = {"shapes": 1, "moving_shapes": 2}
_SPLIT_IDS = {"train": 1, "test": 2, "compositional": 3}
_SQRT3_2 = math.sqrt(3.0) / 2.0

TRAIN_PAIRS = tuple((c, s) for c in COLORS for s in SHAPES if (c, s) not in HELD_OUT_PAIRS)


def split_size(dataset, split):
  """Number of examples of a split (the default for the unlimited `train` stream)."""
  return (SPLIT_SIZES if dataset == "shapes" else VIDEO_SPLIT_SIZES)[split]


def article(word):
  """'a' or 'an' for the word that follows."""
  return "an" if word[:1].lower() in "aeiou" else "a"


def with_article(*words):
  return " ".join((article(words[0]),) + words)


def box_size(shape, side):
  """(width, height) of a shape's bounding box."""
  return (side, side * _SQRT3_2) if shape == "triangle" else (side, side)


def box_gap(c1, wh1, c2, wh2):
  """Separation of two axis-aligned boxes (max over axes of the gap; negative if they overlap)."""
  c1, c2, wh1, wh2 = (np.asarray(a, np.float64) for a in (c1, c2, wh1, wh2))
  gaps = np.abs(c1 - c2) - (wh1 + wh2) / 2
  return np.max(gaps, axis=-1)


def _rng(dataset, split, index):
  if split not in _SPLIT_IDS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  index = int(index)
  limit = None if split == "train" else split_size(dataset, split)
  if index < 0 or (limit is not None and index >= limit):
    raise IndexError(f"{dataset}/{split} index {index} out of range"
                     + (f" [0, {limit})" if limit else " (must be >= 0)"))
  return np.random.default_rng([_DATASET_IDS[dataset], _SPLIT_IDS[split], index])


def _pairs(split):
  return HELD_OUT_PAIRS if split == "compositional" else TRAIN_PAIRS


def _choose_pairs(rng, split, n):
  pairs = _pairs(split)
  return [pairs[i] for i in rng.choice(len(pairs), size=n, replace=False)]


# --------------------------------------------------------------------------
# Rendering.
# --------------------------------------------------------------------------
def _coverage(shape, cx, cy, side, x0, x1, y0, y1, ss):
  """Fraction of each pixel of rows [y0,y1) x cols [x0,x1) covered by the shape."""
  xs = x0 + (np.arange((x1 - x0) * ss) + 0.5) / ss
  ys = y0 + (np.arange((y1 - y0) * ss) + 0.5) / ss
  dx = np.abs(xs - cx)[None, :]
  dy = (ys - cy)[:, None]
  half = side / 2
  if shape == "square":
    inside = (dx <= half) & (np.abs(dy) <= half)
  elif shape == "circle":
    inside = dx * dx + dy * dy <= half * half
  elif shape == "triangle":
    height = side * _SQRT3_2
    from_apex = dy + height / 2  # 0 at the apex, `height` at the base
    inside = (from_apex >= 0) & (from_apex <= height) & (dx <= half * from_apex / height)
  else:
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
  return inside.reshape(y1 - y0, ss, x1 - x0, ss).mean(axis=(1, 3))


def render_image(objects, size, supersample=SUPERSAMPLE):
  """Draws objects (dicts with color, shape, center=(x, y), side) on a black uint8 [S,S,3] canvas.

  Overlapping objects (only in hand-made scenes; the datasets never overlap)
  are painted in order, later ones on top.
  """
  canvas = np.zeros((size, size, 3), np.float32)
  for obj in objects:
    cx, cy = (float(v) for v in obj["center"])
    side = float(obj["side"])
    w, h = box_size(obj["shape"], side)
    x0, x1 = max(0, math.floor(cx - w / 2)), min(size, math.ceil(cx + w / 2))
    y0, y1 = max(0, math.floor(cy - h / 2)), min(size, math.ceil(cy + h / 2))
    if x1 <= x0 or y1 <= y0:
      continue
    cov = _coverage(obj["shape"], cx, cy, side, x0, x1, y0, y1, supersample)[..., None]
    color = np.asarray(COLORS[obj["color"]] if isinstance(obj["color"], str) else obj["color"],
                       np.float32)
    region = canvas[y0:y1, x0:x1]
    canvas[y0:y1, x0:x1] = region * (1 - cov) + color * cov
  return np.round(canvas).astype(np.uint8)


def render_video(objects, size, frames):
  """Draws moving objects (dicts with color, shape, side, centers [T,2]) as uint8 [T,S,S,3]."""
  video = np.empty((frames, size, size, 3), np.uint8)
  for t in range(frames):
    video[t] = render_image(
        [dict(obj, center=np.asarray(obj["centers"])[t]) for obj in objects], size)
  return video


# --------------------------------------------------------------------------
# Images.
# --------------------------------------------------------------------------
def _center_range(shape, side, size):
  """Allowed (lo, hi) of the centre's x and y so that the box stays inside the canvas."""
  w, h = box_size(shape, side)
  return (w / 2, size - w / 2), (h / 2, size - h / 2)


def _one_object_scene(rng, split, size):
  (color, shape), = _choose_pairs(rng, split, 1)
  size_name = ("small", "large")[rng.integers(2)]
  side = SIZES[size_name] * size * (1 + SIZE_JITTER * rng.uniform(-1, 1))
  row, col = (int(v) for v in rng.integers(3, size=2))
  jitter = POSITION_JITTER * size * rng.uniform(-1, 1, size=2)
  (xlo, xhi), (ylo, yhi) = _center_range(shape, side, size)
  cx = float(np.clip((col + 0.5) * size / 3 + jitter[0], xlo, xhi))
  cy = float(np.clip((row + 0.5) * size / 3 + jitter[1], ylo, yhi))
  obj = dict(color=color, shape=shape, size=size_name, cell=(row, col), center=(cx, cy), side=side)
  caption = f"{with_article(size_name, color, shape)} {POSITIONS[(row, col)]}"
  return caption, [obj], None


def relation_holds(relation, center_a, center_b, size):
  """Whether "A {relation} B" holds for centres (x, y) by the spec's 0.15·S / 0.2·S rule."""
  dx = center_b[0] - center_a[0]  # > 0: A is left of B
  dy = center_b[1] - center_a[1]  # > 0: A is above B
  along, across = {"to the left of": (dx, dy), "to the right of": (-dx, dy),
                   "above": (dy, dx), "below": (-dy, dx)}[relation]
  return (np.asarray(along) >= RELATION_MIN_OFFSET * size) & (np.abs(across) < RELATION_MAX_CROSS * size)


def _two_object_scene(rng, split, size, candidates=64):
  (ca, sa), (cb, sb) = _choose_pairs(rng, split, 2)
  relation = RELATIONS[rng.integers(len(RELATIONS))]
  sides = SIZES["small"] * size * (1 + SIZE_JITTER * rng.uniform(-1, 1, size=2))
  boxes = [np.array(box_size(sa, sides[0])), np.array(box_size(sb, sides[1]))]
  while True:  # rejection sampling, `candidates` placements at a time (accepts ~10%)
    centers = []
    for wh in boxes:
      u = rng.uniform(size=(candidates, 2))
      centers.append(wh / 2 + u * (size - wh))
    a, b = centers
    ok = relation_holds(relation, a.T, b.T, size) & (box_gap(a, boxes[0], b, boxes[1]) >= MIN_GAP * size)
    if ok.any():
      k = int(np.argmax(ok))
      break
  objects = [dict(color=c, shape=s, size="small", cell=None, center=(float(p[k, 0]), float(p[k, 1])),
                  side=float(side))
             for (c, s, p, side) in ((ca, sa, a, sides[0]), (cb, sb, b, sides[1]))]
  caption = f"{with_article(ca, sa)} {relation} {with_article(cb, sb)}"
  return caption, objects, relation


def relation_swapped(caption):
  """`caption` with its relation replaced by the opposite one ("a red circle above a blue
  square" -> "... below ..."): the same objects in the mirrored layout, a hard negative for a
  contrastive text model. None when the caption names no relation."""
  for relation in RELATIONS:
    phrase = f" {relation} "
    if phrase in caption:
      return caption.replace(phrase, f" {OPPOSITE_RELATIONS[relation]} ", 1)
  return None


def image_scene(split, index, size=64):
  """The scene of example `index` (caption, objects, relation, form) without pixels."""
  rng = _rng("shapes", split, index)
  two = rng.random() < TWO_OBJECT_FRACTION["shapes"]
  caption, objects, relation = (_two_object_scene if two else _one_object_scene)(rng, split, size)
  return dict(caption=caption, form="two" if two else "one", objects=objects, relation=relation)


def image_example(split, index, size=64):
  """Example `index` of `shapes/{split}`: image uint8 [S,S,3], caption, form, objects, relation."""
  scene = image_scene(split, index, size)
  return dict(image=render_image(scene["objects"], size), **scene)


# --------------------------------------------------------------------------
# Videos.
# --------------------------------------------------------------------------
def _path(rng, shape, side, direction, size, frames, n):
  """n candidate straight paths [n, T, 2] that stay inside the canvas."""
  wh = np.array(box_size(shape, side))
  travel = np.array(DIRECTION_VECTORS[direction]) * TRAVEL * size
  lo = wh / 2 - np.minimum(travel, 0)
  hi = size - wh / 2 - np.maximum(travel, 0)
  start = lo + rng.uniform(size=(n, 2)) * (hi - lo)
  t = np.linspace(0.0, 1.0, frames)[None, :, None]
  return start[:, None, :] + t * travel


def video_scene(split, index, size=32, frames=16, candidates=32):
  """The scene of example `index` of `moving_shapes` (caption, objects with centers [T,2])."""
  if frames < 2:
    raise ValueError(f"moving_shapes needs at least 2 frames, got {frames}")
  rng = _rng("moving_shapes", split, index)
  two = rng.random() < TWO_OBJECT_FRACTION["moving_shapes"]
  pairs = _choose_pairs(rng, split, 2 if two else 1)
  directions = [DIRECTIONS[i] for i in rng.integers(len(DIRECTIONS), size=len(pairs))]
  side = VIDEO_SIDE * size
  if two:
    (_, sa), (_, sb) = pairs
    wa, wb = np.array(box_size(sa, side)), np.array(box_size(sb, side))
    while True:  # rejection: the boxes stay MIN_GAP apart in every frame
      pa = _path(rng, sa, side, directions[0], size, frames, candidates)
      pb = _path(rng, sb, side, directions[1], size, frames, candidates)
      gaps = box_gap(pa, wa, pb, wb).min(axis=1)
      ok = gaps >= MIN_GAP * size
      if ok.any():
        k = int(np.argmax(ok))
        paths = [pa[k], pb[k]]
        break
  else:
    paths = [_path(rng, pairs[0][1], side, directions[0], size, frames, 1)[0]]
  objects = [dict(color=c, shape=s, direction=d, side=side, centers=p)
             for (c, s), d, p in zip(pairs, directions, paths)]
  caption = " and ".join(f"{with_article(c, s)} moving {d}" for (c, s), d in zip(pairs, directions))
  return dict(caption=caption, form="two" if two else "one", objects=objects)


def video_example(split, index, size=32, frames=16):
  """Example `index` of `moving_shapes/{split}`: video uint8 [T,S,S,3], caption, form, objects."""
  scene = video_scene(split, index, size, frames)
  return dict(video=render_video(scene["objects"], size, frames), **scene)

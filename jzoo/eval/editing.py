"""The check of text-guided region editing (CogView2's infilling) on `shapes`: one object of a
real image replaced by another inside a region around it, the result read back by the
evaluator against the edited caption.

The task for example i of a split (`edit_task`):
  * the replaced object: the only one of a one-object image, object i % 2 of a two-object one;
  * the new object: the first (from i) of the split's (colour, shape) pairs that differs from
    the replaced one in colour and in shape and is not the other object's pair, at the same
    size, centred where the replaced one was (moved just enough to stay inside the canvas);
  * the new caption: the scene's caption with that pair in place of the replaced one (size,
    grid cell and relation kept), so it still describes the whole image;
  * the region: the replaced and the new object's boxes, each as the centred square of its
    side (whatever the shape), grown by MARGIN * S on every side, clamped to the canvas,
    less the kept object's box grown by one pixel: the kept object is never redrawn.
The task is well posed: the new scene's render (`objects`) equals the source outside the
region, and the evaluator reads the new caption from it (tests/test_editing_eval.py).

An edit is correct when the evaluator reads the new caption from the edited image; it keeps
the outside when every pixel outside the region equals the source's.
"""

import numpy as np

from jzoo.data import shapes

MARGIN = 0.05  # fraction of S around the objects' boxes: room to draw the new object in


def _rect(center, w, h, size, grow):
  """bool [S, S]: the pixels whose centres lie in the w x h rectangle centred at `center`
  (x, y), grown by `grow` pixels on every side."""
  (cx, cy) = center
  ys, xs = np.arange(size)[:, None] + 0.5, np.arange(size)[None, :] + 0.5
  return (np.abs(xs - cx) <= w / 2 + grow) & (np.abs(ys - cy) <= h / 2 + grow)


def _square(center, side, size, grow):
  return _rect(center, side, side, size, grow)


def _box(obj, size, grow):
  """bool [S, S]: an object's own bounding box, grown by `grow` pixels."""
  return _rect(obj["center"], *shapes.box_size(obj["shape"], obj["side"]), size, grow)


def edit_task(scene, split, index, size):
  """The editing task of example `index` of `split` (its `scene`, from shapes.image_scene at
  `size`): dict(region bool [S, S], caption, objects (the edited scene), form, replaced)."""
  objects = scene["objects"]
  k = 0 if scene["form"] == "one" else index % 2
  old = objects[k]
  others = [o for j, o in enumerate(objects) if j != k]
  taken = {(o["color"], o["shape"]) for o in others}
  pairs = shapes._pairs(split)
  candidates = [p for p in pairs if p[0] != old["color"] and p[1] != old["shape"] and p not in taken]
  color, shape = candidates[index % len(candidates)]
  (xlo, xhi), (ylo, yhi) = shapes._center_range(shape, old["side"], size)
  center = (float(np.clip(old["center"][0], xlo, xhi)), float(np.clip(old["center"][1], ylo, yhi)))
  new = dict(old, color=color, shape=shape, center=center)
  edited = list(objects)
  edited[k] = new
  if scene["form"] == "one":
    caption = f"{shapes.with_article(new['size'], color, shape)} {shapes.POSITIONS[new['cell']]}"
  else:
    a, b = edited
    caption = (f"{shapes.with_article(a['color'], a['shape'])} {scene['relation']} "
               f"{shapes.with_article(b['color'], b['shape'])}")
  grow = MARGIN * size
  region = _square(old["center"], old["side"], size, grow) | _square(center, old["side"], size, grow)
  for o in others:
    region &= ~_box(o, size, 1.0)
  return dict(region=region, caption=caption, objects=edited, form=scene["form"], replaced=k)


def summarize(correct, kept, forms):
  """The editing report: fractions correct (overall and per caption form) and outside kept."""
  correct, kept = np.asarray(correct, bool), np.asarray(kept, bool)
  out = dict(num=int(len(correct)), correct=float(np.mean(correct)),
             outside_unchanged=float(np.mean(kept)))
  for form in ("one", "two"):
    sel = np.asarray([f == form for f in forms])
    if sel.any():
      out[form] = dict(num=int(sel.sum()), correct=float(np.mean(correct[sel])))
  return out

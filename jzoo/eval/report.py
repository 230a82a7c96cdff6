"""Evaluation reports: accuracy tables (report.json, report.md) and a captioned sample grid (grid.png)."""

import json
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from jzoo.eval import alignment

GRID_MAX_SAMPLES = 64  # grid.png shows the first samples only: it is for eyes, the numbers are in json
_PASS, _FAIL = (40, 200, 80), (230, 50, 50)


def summarize(results, forms):
  """Accuracy overall, per attribute and per caption form.

  results: dicts from `alignment.score_image` / `score_video`; forms: "one" or
  "two" per result. An attribute's accuracy is over the samples whose caption
  names it; attributes no caption names are left out.
  """
  def block(rs):
    names = [k for k in rs[0]["attributes"]  # every result lists all keys, in the canonical order
             if any(r["attributes"].get(k) is not None for r in rs)]
    attrs = {}
    for name in names:
      flags = [r["attributes"][name] for r in rs if r["attributes"].get(name) is not None]
      attrs[name] = float(np.mean(flags))
    correct = sum(bool(r["correct"]) for r in rs)
    return dict(num=len(rs), correct=correct, accuracy=correct / len(rs) if rs else None,
                attributes=attrs)

  summary = block(results)
  summary["forms"] = {}
  for form in ("one", "two"):
    rs = [r for r, f in zip(results, forms) if f == form]
    if rs:
      summary["forms"][form] = block(rs)
  return summary


def markdown(report):
  """report.md: headline table, per-form table, then one line per sample."""
  video = report.get("task") == "text-to-video"
  names = alignment.VIDEO_ATTRIBUTES if video else alignment.IMAGE_ATTRIBUTES
  names = [n for n in names if n in report["attributes"]]
  title = report.get("model") or "model"
  lines = [f"# Alignment evaluation: {title} on {report['dataset']}/{report['split']}", ""]
  lines += [f"{report['num']} samples, seed {report['seed']}, steps {report['steps']}, "
            f"guidance {report['guidance']}, output {'x'.join(map(str, report['output_shape']))}.", ""]
  lines += ["| metric | value |", "|---|---|"]
  lines.append(f"| accuracy | {_fmt(report['accuracy'])} ({report['correct']}/{report['num']}) |")
  lines += [f"| {n} | {_fmt(report['attributes'][n])} |" for n in names]
  lines.append(f"| Fréchet distance ({'frames' if video else 'images'}, evaluator features) "
               f"| {_fmt(report['frechet_distance'])} |")
  if video:
    lines.append(f"| Fréchet video distance (evaluator features) | {_fmt(report['frechet_video_distance'])} |")
  if report.get("editing"):
    e = report["editing"]
    lines.append(f"| editing: one object replaced, read back ({e['num']} images) | {_fmt(e['correct'])} |")
    lines.append(f"| editing: pixels outside the region unchanged | {_fmt(e['outside_unchanged'])} |")
  lines += ["", "## Per caption form", "",
            "| form | samples | accuracy | " + " | ".join(names) + " |",
            "|---|---|---|" + "---|" * len(names)]
  for form, block in report["forms"].items():
    cells = [_fmt(block["attributes"].get(n)) for n in names]
    lines.append(f"| {form}-object | {block['num']} | {_fmt(block['accuracy'])} | " + " | ".join(cells) + " |")
  lines += ["", "## Samples", "", "| # | caption | result | wrong |", "|---|---|---|---|"]
  for s in report["samples"]:
    wrong = ", ".join(k for k, v in s["attributes"].items() if v is False)
    lines.append(f"| {s['index']} | {s['caption']} | {'pass' if s['correct'] else 'FAIL'} | {wrong} |")
  if report["frechet_distance"] is None:
    lines += ["", "Fréchet distances need at least 2 samples."]
  return "\n".join(lines) + "\n"


def _fmt(x):
  return "n/a" if x is None else f"{x:.3f}"


def _wrap(draw, text, font, width):
  lines, line = [], ""
  for word in text.split():
    trial = f"{line} {word}".strip()
    if line and draw.textlength(trial, font=font) > width:
      lines.append(line)
      line = word
    else:
      line = trial
  return lines + [line] if line else lines


def grid_image(samples, captions, results, cols=None, view=128):
  """uint8 grid of samples, each over its caption with a PASS/FAIL mark and the wrong attributes.

  Images are enlarged (nearest neighbour) to about `view` pixels; a video
  shows its first, middle and last frames side by side.
  """
  samples = [np.asarray(s) for s in samples[:GRID_MAX_SAMPLES]]
  n = len(samples)
  if n == 0:
    raise ValueError("no samples to draw")
  font = ImageFont.load_default()
  frames = []
  for s in samples:
    if s.ndim == 4:
      t = s.shape[0]
      s = np.concatenate([np.pad(s[i], ((0, 0), (0, 1), (0, 0)), constant_values=64)
                          for i in sorted({0, t // 2, t - 1})], axis=1)[:, :-1]
    frames.append(s)
  h, w = frames[0].shape[:2]
  zoom = max(1, round(view / h))
  pad, text_h = 4, 44
  tile_w, tile_h = w * zoom + 2 * pad, h * zoom + 2 * pad + text_h
  tile_w = max(tile_w, 140)
  cols = cols or min(n, 8 if tile_w < 300 else 4)
  rows = -(-n // cols)
  canvas = Image.new("RGB", (cols * tile_w, rows * tile_h), (24, 24, 24))
  draw = ImageDraw.Draw(canvas)
  for i, (frame, caption, result) in enumerate(zip(frames, captions, results)):
    x0, y0 = (i % cols) * tile_w, (i // cols) * tile_h
    mark = _PASS if result["correct"] else _FAIL
    draw.rectangle([x0 + 1, y0 + 1, x0 + tile_w - 2, y0 + h * zoom + 2 * pad - 2], outline=mark, width=2)
    big = Image.fromarray(np.repeat(np.repeat(frame, zoom, 0), zoom, 1))
    canvas.paste(big, (x0 + (tile_w - big.width) // 2, y0 + pad))
    wrong = [k for k, v in result["attributes"].items() if v is False]
    status = "PASS" if result["correct"] else "FAIL: " + ", ".join(wrong)
    ty = y0 + h * zoom + 2 * pad
    draw.text((x0 + pad, ty), status, fill=mark, font=font)
    for j, line in enumerate(_wrap(draw, caption, font, tile_w - 2 * pad)[:3]):
      draw.text((x0 + pad, ty + 11 * (j + 1)), line, fill=(230, 230, 230), font=font)
  return np.asarray(canvas)


def write(out_dir, report, samples, results):
  """Writes report.json, report.md and grid.png under out_dir; returns their paths."""
  from jzoo.io import write_image
  os.makedirs(out_dir, exist_ok=True)
  paths = {k: os.path.join(out_dir, f) for k, f in
           (("json", "report.json"), ("markdown", "report.md"), ("grid", "grid.png"))}
  with open(paths["json"], "w") as f:
    json.dump(report, f, indent=2)
    f.write("\n")
  with open(paths["markdown"], "w") as f:
    f.write(markdown(report))
  captions = [s["caption"] for s in report["samples"]]
  write_image(paths["grid"], grid_image(samples, captions, results))
  return paths

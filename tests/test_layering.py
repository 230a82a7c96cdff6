"""Imports run one way: kernels -> layers (nn, text, data, ...) -> stages/models -> pipelines ->
CLIs. Read from the source (function-level imports included), so a cycle or an upward import
fails here, before it becomes an import-order bug."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDERS = {"jzoo": "jzoo", "jzoo.kernels": "kernels", "jzoo.configs": "configs"}

# Rank of each top-level module or package; a module imports only ranks <= its own.
RANKS = {
    "jzoo.kernels": 0,
    "jzoo.errors": 1, "jzoo.stage": 1, "jzoo.io": 1, "jzoo.parallel": 1, "jzoo.configs": 1, "jzoo.config": 1,
    "jzoo.nn": 2, "jzoo.sampling": 2, "jzoo.text": 2, "jzoo.data": 2, "jzoo.diffusion": 2, "jzoo.eval": 2,
    "jzoo.vq": 3, "jzoo.models": 3,
    "jzoo.registry": 4, "jzoo.loading": 4, "jzoo.training": 4, "jzoo.pipeline": 4,
    "jzoo.cli": 5, "jzoo.sample": 5, "jzoo.train": 5, "jzoo.evaluate": 5, "jzoo.bench": 5,
    "jzoo.plan": 5, "jzoo.export": 5, "jzoo.cache_text": 5, "jzoo.cache_codes": 5,
}
CLIS = {name for name, rank in RANKS.items() if rank == 5}


def _modules():
  mods = {}
  for package, folder in FOLDERS.items():
    base = os.path.join(ROOT, folder)
    for dirpath, _, files in os.walk(base):
      for f in files:
        if f.endswith(".py"):
          rel = os.path.relpath(os.path.join(dirpath, f), base)[:-3].replace(os.sep, ".")
          name = package if rel == "__init__" else f"{package}.{rel.removesuffix('.__init__')}"
          mods[name] = os.path.join(dirpath, f)
  return mods


def _imports(name, path, mods):
  tree = ast.parse(open(path).read())
  package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      module = node.module or ""
      if node.level:
        parts = package.split(".")
        module = ".".join(parts[:len(parts) - node.level + 1] + ([module] if module else []))
      targets = [module] + [f"{module}.{a.name}" for a in node.names]
    else:
      continue
    for target in targets:
      while target not in mods and "." in target:
        target = target.rpartition(".")[0]
      if target in mods and target != name and target.startswith("jzoo"):
        found.add(target)
  return found


def _top(name):
  if name.startswith("jzoo.kernels"):
    return "jzoo.kernels"
  return ".".join(name.split(".")[:2])


@pytest.fixture(scope="module")
def graph():
  mods = _modules()
  return {name: _imports(name, path, mods) for name, path in mods.items()}


def test_every_module_has_a_rank(graph):
  unranked = sorted({_top(m) for m in graph} - set(RANKS) - {"jzoo"})
  assert not unranked, f"give these a rank in RANKS: {unranked}"


def test_imports_run_one_way(graph):
  upward = []
  for name, targets in graph.items():
    if name == "jzoo":  # the package's lazy `jzoo.load` entry point
      continue
    for target in targets:
      if target != "jzoo" and RANKS[_top(target)] > RANKS[_top(name)]:
        upward.append(f"{name} -> {target}")
  assert not upward, upward


def test_kernels_import_nothing_else_from_jzoo(graph):
  outside = [f"{n} -> {t}" for n, ts in graph.items() if n.startswith("jzoo.kernels")
             for t in ts if not t.startswith("jzoo.kernels")]
  assert not outside, outside


def test_no_cycles_between_packages(graph):
  edges = {}
  for name, targets in graph.items():
    for target in targets:
      if _top(name) != _top(target) and "jzoo" not in (name, target):
        edges.setdefault(_top(name), set()).add(_top(target))

  def reaches(start, goal, seen):
    for nxt in edges.get(start, ()):
      if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
        return True
    return False

  cycles = sorted(p for p in edges if reaches(p, p, {p}))
  assert not cycles, cycles


def test_the_rule_can_fail():
  # An upward import written into a module is caught by the same reading.
  import tempfile
  mods = {"jzoo.nn.x": "", "jzoo.sample": ""}
  with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
    f.write("def f():\n  from jzoo import sample\n")
  try:
    assert _imports("jzoo.nn.x", f.name, mods) == {"jzoo.sample"}
  finally:
    os.unlink(f.name)


def test_kernel_package_gives_the_function():
  from jzoo.kernels import nearby_attention
  from jzoo.kernels.nearby_attention import reference
  assert callable(nearby_attention) and callable(reference.nearby_attention)

"""The wheel carries jzoo, jzoo.kernels (from kernels/), jzoo.configs (from configs/) and the assets."""

import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _packages_on_disk():
  """Every folder with an __init__.py, as the dotted name it has inside the wheel."""
  mapping = {"jzoo": "jzoo", "kernels": "jzoo.kernels", "configs": "jzoo.configs"}
  found = set()
  for top, dotted in mapping.items():
    for folder, dirs, files in os.walk(os.path.join(ROOT, top)):
      dirs[:] = [d for d in dirs if d != "__pycache__"]
      if "__init__.py" in files:
        rel = os.path.relpath(folder, os.path.join(ROOT, top))
        found.add(dotted if rel == "." else dotted + "." + rel.replace(os.sep, "."))
  return found


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory):
  out = tmp_path_factory.mktemp("wheel")
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "-q", "-w", str(out), ROOT], check=True, capture_output=True)
  (wheel,) = [f for f in os.listdir(out) if f.endswith(".whl")]
  with zipfile.ZipFile(out / wheel) as z:
    return set(z.namelist())


def test_every_package_is_in_the_wheel(wheel_files):
  for package in _packages_on_disk():
    init = package.replace(".", "/") + "/__init__.py"
    assert init in wheel_files, f"{package} is missing from the wheel: add it to pyproject's packages"


def test_kernels_and_configs_are_mapped_into_jzoo(wheel_files):
  assert "jzoo/configs/imagen.py" in wheel_files
  assert "jzoo/configs/_common.py" in wheel_files
  assert any(f.startswith("jzoo/kernels/nearby_attention/") for f in wheel_files)
  assert not any(f.startswith(("kernels/", "configs/", "tests/")) for f in wheel_files)


def test_assets_are_in_the_wheel(wheel_files):
  assert "jzoo/assets/shapes_spm.model" in wheel_files
  for root, _, files in os.walk(os.path.join(ROOT, "jzoo", "assets")):
    for f in files:
      rel = os.path.relpath(os.path.join(root, f), ROOT).replace(os.sep, "/")
      assert rel in wheel_files, rel


def test_packaged_config_imports_as_jzoo_configs():
  import jzoo.configs.imagen
  import jzoo.kernels
  assert jzoo.configs.imagen.get_config("micro").model == "imagen"

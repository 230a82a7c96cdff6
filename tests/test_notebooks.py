"""Every notebook in notebooks/ executes top to bottom (with few steps: JZOO_NOTEBOOK_FAST=1)."""

import os

import nbformat
import pytest
from conftest import FAST_COMPILE
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(f for f in os.listdir(os.path.join(ROOT, "notebooks")) if f.endswith(".ipynb"))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path, monkeypatch):
  monkeypatch.setenv("JZOO_NOTEBOOK_FAST", "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("XLA_FLAGS", FAST_COMPILE)  # one device, as in Colab
  nb = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  assert not errors

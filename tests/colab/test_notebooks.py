"""Each Colab notebook is in sync with its plain-text source and runs at smoke-test size."""

import pathlib
import runpy

import jupytext
import matplotlib
import nbformat
import pytest

COLAB = pathlib.Path(__file__).resolve().parents[2] / "colab"
SOURCES = sorted(COLAB.glob("*.py"))


def test_there_are_notebooks():
  assert SOURCES


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_notebook_matches_its_source(source):
  notebook = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
  paired = jupytext.read(source)
  cells = lambda nb: [(c.cell_type, c.source.strip()) for c in nb.cells]
  assert cells(notebook) == cells(paired), (
      f"{source.name} and its .ipynb differ: run `jupytext --sync {source.name}`")


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_notebook_runs_tiny(source, monkeypatch):
  matplotlib.use("Agg")
  monkeypatch.setenv("MOMENTUM_JAX_TINY", "1")
  monkeypatch.setattr("matplotlib.pyplot.show", lambda *a, **k: None)
  runpy.run_path(str(source), run_name="__main__")

"""The Colab notebooks: each ``.ipynb`` is paired with its ``py:percent`` source, is committed
without outputs, opens with an "Open in Colab" badge for its own file and an install cell, and
runs top to bottom through a Jupyter kernel at its tiny size.

The size is the notebook's one parameter: a cell tagged ``parameters`` sets ``TINY = False``, and
the test runs a copy with a cell ``TINY = True`` inserted after it, the papermill convention for
injecting parameters.
"""

import pathlib
import shutil
import subprocess
import sys
import tomllib
import types

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[2]
COLAB = ROOT / "colab"
NOTEBOOKS = sorted(COLAB.glob("*.ipynb"))
REPOSITORY = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
CELL_TIMEOUT_S = 120
# The kernel draws figures with the inline backend: PNG outputs, no display needed.
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"

by_name = pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)


def _read(path: pathlib.Path) -> nbformat.NotebookNode:
  return nbformat.read(path, as_version=4)


def _tags(cell: nbformat.NotebookNode) -> list[str]:
  return list(cell.metadata.get("tags", []))


def _install_cell(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
  return next(cell for cell in notebook.cells if cell.cell_type == "code")


def _parameter_index(notebook: nbformat.NotebookNode) -> int:
  (index,) = [i for i, cell in enumerate(notebook.cells) if "parameters" in _tags(cell)]
  return index


def test_there_are_notebooks_and_every_one_has_its_source():
  assert NOTEBOOKS
  assert sorted(COLAB.glob("*.py")) == [path.with_suffix(".py") for path in NOTEBOOKS]


@by_name
def test_notebook_matches_its_source(path):
  notebook = _read(path)
  paired = jupytext.read(path.with_suffix(".py"))
  cells = lambda nb: [(c.cell_type, c.source.strip(), _tags(c)) for c in nb.cells]
  assert notebook.metadata.jupytext.formats == "ipynb,py:percent"
  assert cells(notebook) == cells(paired), (
      f"{path.name} and its .py differ: run `jupytext --sync colab/{path.stem}.py`")


@by_name
def test_notebook_is_committed_without_outputs(path):
  code = [cell for cell in _read(path).cells if cell.cell_type == "code"]
  assert all(not cell.outputs and cell.execution_count is None for cell in code), (
      f"clear the outputs of {path.name} before committing it")


@by_name
def test_notebook_opens_with_a_colab_badge_for_itself(path):
  first = _read(path).cells[0]
  github = REPOSITORY.removeprefix("https://github.com/")
  url = f"https://colab.research.google.com/github/{github}/blob/main/colab/{path.name}"
  assert first.cell_type == "markdown"
  assert f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})" \
      in first.source


@by_name
def test_install_cell_installs_from_the_repository_on_colab_only(path, monkeypatch, capsys):
  source = _install_cell(_read(path)).source
  commands = []
  monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: commands.append(command))
  exec(source, {})
  assert commands == [] and "Not on Colab" in capsys.readouterr().out

  # A notebook that reads text installs the text extra too.
  text = any("load_text_dataset" in cell.source for cell in _read(path).cells)
  monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
  for gpu, requirement in ((True, f"momentum_jax[gpu{',text' * text}] @ git+{REPOSITORY}"),
                           (False, f"momentum_jax{'[text]' * text} @ git+{REPOSITORY}")):
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}" if gpu else None)
    commands.clear()
    exec(source, {})
    (command,) = commands
    assert command[:4] == [sys.executable, "-m", "pip", "install"] and requirement in command


@by_name
def test_size_is_one_parameter_cell(path):
  notebook = _read(path)
  index = _parameter_index(notebook)
  assert index < len(notebook.cells) - 1 and notebook.cells[index].source.startswith("TINY = False")
  assigns_tiny = [cell for cell in notebook.cells if cell.cell_type == "code"
                  and any(line.startswith("TINY =") for line in cell.source.splitlines())]
  assert assigns_tiny == [notebook.cells[index]]


def _tiny(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
  """The notebook with ``TINY = True`` injected after its parameter cell."""
  injected = nbformat.v4.new_code_cell("TINY = True", metadata={"tags": ["injected-parameters"]})
  notebook.cells.insert(_parameter_index(notebook) + 1, injected)
  return notebook


@pytest.mark.slow
@by_name
def test_notebook_runs_tiny_in_a_kernel(path, tmp_path, monkeypatch):
  monkeypatch.setenv("MPLBACKEND", INLINE_BACKEND)  # the kernel inherits this environment
  notebook = _tiny(_read(path))
  NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  outputs = [output for cell in notebook.cells if cell.cell_type == "code"
             for output in cell.outputs]
  assert any("image/png" in output.get("data", {}) for output in outputs), (
      f"{path.name} showed no plot")

"""The API reference in ``docs/``: it builds with warnings as errors, documents every name of every
``momentum_jax.<module>.__all__`` (and every public function and class of the attention and core
modules) and renders every notebook of ``colab/``, and its pages cover every public module (a new
subpackage without a page fails here).
"""

from __future__ import annotations

import importlib
import inspect
import pathlib
import pkgutil
import re
import subprocess
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
BUILD_TIMEOUT_S = 600


def _public_modules() -> list[str]:
  """``momentum_jax.<name>`` for every subpackage the distribution installs and top-level module."""
  packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
  names = {name for name in packages if name.count(".") == 1}
  names |= {f"momentum_jax.{path.stem}" for path in (ROOT / "momentum_jax").glob("*.py")
            if not path.stem.startswith("_")}
  return sorted(names)


def _directive_arguments(directive: str) -> set[str]:
  """The argument of every ``.. <directive>::`` in the reStructuredText pages of ``docs/``."""
  pattern = re.compile(rf"^\.\. {re.escape(directive)}:: (\S+)", re.MULTILINE)
  return {name for page in DOCS.rglob("*.rst") if "_build" not in page.parts
          for name in pattern.findall(page.read_text())}


def _documented_members() -> list[str]:
  """``module.name`` for every public function and class defined in each submodule of a package
  whose page documents them (``.. module-docstrings:: package`` with ``:members:``)."""
  pattern = re.compile(r"^\.\. module-docstrings:: (\S+)\n(?:   :\w+:.*\n)*?   :members:",
                       re.MULTILINE)
  packages = {name for page in DOCS.rglob("*.rst") if "_build" not in page.parts
              for name in pattern.findall(page.read_text())}
  names = []
  for package in sorted(packages):
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
      if info.name.startswith("_"):
        continue
      module = importlib.import_module(f"{package}.{info.name}")
      names += [f"{module.__name__}.{name}" for name, obj in vars(module).items()
                if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
                and obj.__module__ == module.__name__]
  return names


def _public_names() -> list[str]:
  """``module.name`` for every name in the ``__all__`` of every public module that has one, and
  every member a ``module-docstrings`` directive documents."""
  names = []
  for module_name in _public_modules():
    module = importlib.import_module(module_name)
    names += [f"{module_name}.{name}" for name in getattr(module, "__all__", ())]
  return names + _documented_members()


def test_every_public_module_has_a_page():
  documented = _directive_arguments("automodule")
  missing = [name for name in _public_modules() if name not in documented]
  assert not missing, f"no page of docs/ has an automodule directive for {missing}"


def test_every_all_is_documented_by_the_public_api_directive():
  with_all = {name for name in _public_modules()
              if hasattr(importlib.import_module(name), "__all__")}
  missing = sorted(with_all - _directive_arguments("public-api"))
  assert not missing, f"no page of docs/ documents the __all__ of {missing} (public-api directive)"


@pytest.mark.slow
def test_docs_build_without_warnings_and_document_every_public_name(tmp_path):
  html = tmp_path / "html"
  command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
             "-d", str(tmp_path / "doctrees"), str(DOCS), str(html)]
  result = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
                          cwd=ROOT)
  assert result.returncode == 0, f"docs build failed:\n{result.stdout}\n{result.stderr}"

  anchors = {anchor for page in html.rglob("*.html")
             for anchor in re.findall(r'\bid="([^"]+)"', page.read_text(encoding="utf-8"))}
  names = _public_names()
  assert len(names) > 200
  missing = [name for name in names if name not in anchors]
  assert not missing, f"public names without an entry in the API reference: {missing}"

  notebooks = sorted((ROOT / "colab").glob("*.ipynb"))
  assert notebooks
  for notebook in notebooks:
    assert (html / "notebooks" / f"{notebook.stem}.html").is_file(), notebook.name

  # Math renders without a network: every page with math loads the MathJax copy served with the
  # docs, and nothing loads it from elsewhere.
  with_math = [page for page in html.rglob("*.html")
               if r"\(" in page.read_text(encoding="utf-8")]
  assert len(with_math) >= 3
  for page in with_math:
    scripts = re.findall(r'<script[^>]*src="([^"]*mathjax[^"]*)"', page.read_text(encoding="utf-8"))
    assert scripts and all("://" not in src for src in scripts), (page, scripts)
    assert all((page.parent / src).resolve().is_file() for src in scripts), (page, scripts)
  assert list((html / "_static" / "mathjax" / "output" / "chtml" / "fonts").rglob("*.woff"))

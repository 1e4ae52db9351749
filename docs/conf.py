"""Sphinx configuration of the momentum_jax API reference.

Build (from the repository root):

    python -m sphinx -W --keep-going -b html docs docs/_build/html

The reference pages document every name in each subpackage's ``__all__`` at its public path
(``docs/_ext/public_api.py``); the notebooks of ``colab/`` are copied into ``docs/notebooks/``
on every build and rendered as pages without being executed. MathJax is copied into the build
(``_static/mathjax``, from the ``sphinx-mathjax-offline`` package), so the math renders offline.
"""

import json
import pathlib
import sys

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS / "_ext"))

project = "momentum_jax"
author = "momentum_jax authors"
copyright = "momentum_jax authors"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",
    "sphinx.ext.viewcode",
    "myst_nb",
    "public_api",
]

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# Entries are titled by their bare names (the page says which package they belong to); their
# anchors keep the full public path, e.g. ``#momentum_jax.nn.Transformer``.
add_module_names = False
toc_object_entries_show_parents = "hide"

# autodoc: signatures as written, type hints in the signature, members in source order.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True

# napoleon: the code's docstrings are Google style. Attributes as an instance-variable field list,
# so a class that lists its fields under "Attributes:" does not describe them a second time.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
napoleon_use_rtype = False

# Notebooks are rendered as committed (without outputs): never executed by the docs build.
nb_execution_mode = "off"

html_theme = "sphinx_book_theme"
html_title = "momentum_jax"
html_theme_options = {"show_toc_level": 2}


def _copy_notebooks() -> None:
  """Mirror ``colab/*.ipynb`` into ``docs/notebooks/``: new notebooks appear on the next build.

  A notebook committed without outputs has no ``language_info``, from which the cells' syntax
  highlighting is chosen; the copy says Python (the language of the project's notebooks).
  """
  target = DOCS / "notebooks"
  target.mkdir(exist_ok=True)
  sources = {path.name: path for path in sorted((ROOT / "colab").glob("*.ipynb"))}
  for stale in target.glob("*.ipynb"):
    if stale.name not in sources:
      stale.unlink()
  for name, source in sources.items():
    notebook = json.loads(source.read_text(encoding="utf-8"))
    notebook["metadata"].setdefault("language_info", {"name": "python"})
    text = json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"
    copy = target / name
    if not copy.exists() or copy.read_text(encoding="utf-8") != text:
      copy.write_text(text, encoding="utf-8")


_copy_notebooks()

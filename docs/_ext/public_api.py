"""The ``public-api`` directive: every name of a package's ``__all__``, documented at its public path.

``.. public-api:: momentum_jax.attention`` groups the names by the module the package imports them
from (read from the ``from ... import`` statements of its ``__init__.py``). Each group is a section
that opens with that module's docstring, where the math lives, followed by one autodoc entry per
name under the package (``momentum_jax.attention.momentum_attention``), so an object re-exported by
the package is described exactly once. A module-level constant (an entry showing its value) is
described by the ``#:`` comment above its assignment in the module that defines it. A public name
without a docstring or ``#:`` comment is reported as a warning, which fails a ``-W`` build.

``.. module-docstrings:: momentum_jax.core`` is one section per submodule of a package (found on
disk, so a new one appears by itself) holding that submodule's docstring only, or with the
``:members:`` option its docstring and every public function and class it defines.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.inspect import object_description
from sphinx.util.nodes import nested_parse_with_titles

logger = logging.getLogger(__name__)


def import_sources(package: str) -> dict[str, str]:
  """Maps each name the package's ``__init__`` imports with ``from X import name`` to ``X``."""
  source = inspect.getsource(importlib.import_module(package))
  sources = {}
  for node in ast.parse(source).body:
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      for alias in node.names:
        sources[alias.asname or alias.name] = node.module
  return sources


def group_public_names(package: str) -> dict[str, list[str]]:
  """``__all__`` of ``package`` grouped by defining module, in the order the imports list them.

  A name the package defines itself is grouped under the package.
  """
  sources = import_sources(package)
  groups: dict[str, list[str]] = {source: [] for source in [package, *sources.values()]}
  for name in importlib.import_module(package).__all__:
    groups[sources.get(name, package)].append(name)
  return {source: names for source, names in groups.items() if names}


def _constant_doc(module: str, name: str) -> list[str]:
  """The ``#:`` comment (or string literal) documenting ``name`` where ``module`` assigns it."""
  docs = ModuleAnalyzer.for_module(module).find_attr_docs()
  return list(docs.get(("", name), []))


class PublicApi(SphinxDirective):
  """Documents every name of a package's ``__all__``, one section per defining module."""

  required_arguments = 1

  def run(self) -> list[nodes.Node]:
    package = self.arguments[0]
    lines: list[str] = []
    for source, names in group_public_names(package).items():
      if source != package:
        title = source.rsplit(".", 1)[-1]
        lines += [title, "-" * len(title), "", f".. automodule:: {source}", "   :no-index:", "",
                  f".. currentmodule:: {package}", ""]
      for name in names:
        lines += self._entry(package, source, name)
    content = StringList(lines, source=f"<public-api {package}>")
    node = nodes.section()
    self.env.note_dependency(inspect.getsourcefile(importlib.import_module(package)))
    nested_parse_with_titles(self.state, content, node)
    return node.children

  def _entry(self, package: str, source: str, name: str) -> list[str]:
    """The autodoc directive of ``package.name``, warning when it carries no description."""
    obj = getattr(importlib.import_module(package), name)
    target = f"{package}.{name}"
    if inspect.isclass(obj) or inspect.isfunction(obj):
      if not inspect.getdoc(obj):
        logger.warning("public name %s has no docstring", target, location=self.get_location())
      if not inspect.isclass(obj):
        return [f".. autofunction:: {target}", ""]
      kind = "autoexception" if issubclass(obj, BaseException) else "autoclass"
      return [f".. {kind}:: {target}", "   :members:", "   :special-members: __call__", ""]
    doc = _constant_doc(source, name)
    if not doc:
      logger.warning("public name %s has no #: comment in %s", target, source,
                     location=self.get_location())
    return [f".. py:data:: {name}", f"   :module: {package}",
            f"   :value: {object_description(obj)}", "",
            *(f"   {line}" for line in doc), ""]


class ModuleDocstrings(SphinxDirective):
  """One section per public submodule of a package, holding the submodule's docstring.

  Options: ``:exclude:``, submodule names, separated by spaces, that the page documents otherwise;
  ``:members:``, document each submodule's public functions and classes too, under their module
  (``momentum_jax.attention.linear.linear_attention``).
  """

  required_arguments = 1
  option_spec = {"exclude": lambda text: text.split(), "members": directives.flag}

  def run(self) -> list[nodes.Node]:
    package = importlib.import_module(self.arguments[0])
    exclude = set(self.options.get("exclude", ()))
    option = "   :members:" if "members" in self.options else "   :no-index:"
    lines: list[str] = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda info: info.name):
      if info.name.startswith("_") or info.name in exclude:
        continue
      lines += [info.name, "-" * len(info.name), "",
                f".. automodule:: {package.__name__}.{info.name}", option, ""]
    node = nodes.section()
    nested_parse_with_titles(self.state, StringList(lines, source=f"<module-docstrings "
                                                    f"{package.__name__}>"), node)
    return node.children


def setup(app: Sphinx) -> dict[str, object]:
  app.add_directive("public-api", PublicApi)
  app.add_directive("module-docstrings", ModuleDocstrings)
  return {"parallel_read_safe": True, "parallel_write_safe": True}

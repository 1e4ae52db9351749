"""The package's imports flow one way: core ← kernels ← attention ← nn ← train ← experiments.

Every ``import`` and ``from ... import`` of every module is read from its source (function-level
imports included: a deferred import that dodges a cycle is still a cycle) and resolved to the
module it names. Three rules hold:

- a subpackage imports only subpackages of a strictly lower layer (``LAYERS``), so optim, data and
  core, which share layer 0, import none of each other, and neither do nn and analysis;
- the module graph, edges inside a subpackage included, has no cycle;
- no module imports a private name (one leading underscore) of another module of the package,
  neither ``from x import _y`` nor a private module ``x._y``: a helper that several modules need
  is public where it lives.
"""

from __future__ import annotations

import ast
import pathlib
import tomllib
from collections.abc import Iterable

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "momentum_jax"

# Layer of each subpackage: a module may import a subpackage of a strictly lower layer only.
LAYERS = {
    "core": 0,
    "data": 0,
    "optim": 0,
    "kernels": 1,
    "attention": 2,
    "analysis": 3,
    "nn": 3,
    "train": 4,
    "experiments": 5,
    "generate": 5,  # the sampling command (momentum_jax/generate.py)
}

Graph = dict[str, set[str]]


def package_dirs() -> dict[str, pathlib.Path]:
  """Installed package name → source folder, from pyproject's setuptools ``package-dir``."""
  config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
  return {name: ROOT / folder for name, folder in config["package-dir"].items()}


def module_files() -> dict[str, pathlib.Path]:
  """Every module of the installed package, by dotted name (``__init__`` as its package)."""
  roots = package_dirs()
  modules = {}
  for package, folder in roots.items():
    for path in folder.rglob("*.py"):
      inner = path.relative_to(folder).with_suffix("").parts
      if inner[-1] == "__init__":
        inner = inner[:-1]
      name = ".".join((package, *inner))
      # A nested package-dir (kernels/) owns its files; the outer root does not see them.
      owner = max((p for p in roots if name == p or name.startswith(p + ".")), key=len)
      if owner == package:
        modules[name] = path
  return modules


def resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
  """The absolute module a ``from ... import`` statement of ``module`` imports from."""
  base = node.module or ""
  if not node.level:
    return base
  parts = module.split(".")
  anchor = parts if is_package else parts[:-1]
  anchor = anchor[:len(anchor) - node.level + 1]
  return ".".join(anchor + ([base] if base else []))


def imported_names(path: pathlib.Path, module: str) -> set[str]:
  """Dotted names this module imports anywhere in its body, relative imports resolved:
  ``import a.b`` gives ``a.b`` and ``from a import b`` gives ``a.b``, module or attribute."""
  is_package = path.name == "__init__.py"
  names = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = resolve(node, module, is_package)
      names.update(f"{base}.{alias.name}" for alias in node.names)
  return names


def is_private(name: str) -> bool:
  """A name with one leading underscore; dunder names (``__version__``) are not private."""
  return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def module_aliases(tree: ast.Module, module: str, is_package: bool,
                   files: Iterable[str]) -> dict[str, str]:
  """Local name → module of the package it is bound to by an import (``import a.b as m``,
  ``from a import b`` with ``a.b`` a module); ``import a.b`` binds ``a``."""
  aliases = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if alias.asname:
          aliases[alias.asname] = alias.name
        else:
          aliases[alias.name.split(".")[0]] = alias.name.split(".")[0]
    elif isinstance(node, ast.ImportFrom):
      base = resolve(node, module, is_package)
      for alias in node.names:
        if f"{base}.{alias.name}" in files:
          aliases[alias.asname or alias.name] = f"{base}.{alias.name}"
  return aliases


def dotted(node: ast.expr) -> list[str] | None:
  """``a.b.c`` of a chain of attributes on a name, as ``["a", "b", "c"]``; None otherwise."""
  if isinstance(node, ast.Name):
    return [node.id]
  if isinstance(node, ast.Attribute):
    head = dotted(node.value)
    return None if head is None else head + [node.attr]
  return None


def private_imports(files: dict[str, pathlib.Path]) -> list[str]:
  """Each import of a private name or private module of the package, and each private attribute
  read from an imported module of the package (``kv_shift._check_pair``), as a readable line."""
  found = set()
  for module, path in files.items():
    for name in imported_names(path, module):
      parts = name.split(".")
      if parts[0] == PACKAGE and any(is_private(part) for part in parts[1:]):
        found.add(f"{module} imports {name}")
    tree = ast.parse(path.read_text(), str(path))
    aliases = module_aliases(tree, module, path.name == "__init__.py", files)
    for node in ast.walk(tree):
      parts = dotted(node) if isinstance(node, ast.Attribute) else None
      if not parts or parts[0] not in aliases or not is_private(parts[-1]):
        continue
      owner = ".".join([aliases[parts[0]], *parts[1:-1]])
      if owner in files and owner != module:
        found.add(f"{module} imports {owner}.{parts[-1]}")
  return sorted(found)


def import_graph() -> Graph:
  """Module → the package's modules it imports (``from pkg import submodule`` names the
  submodule; ``from pkg import name`` names the package's ``__init__``). The parent packages that
  Python initialises on the way are not edges: every module would import its own package."""
  files = module_files()
  graph = {}
  for module, path in files.items():
    targets = set()
    for name in imported_names(path, module):
      if name in files:
        targets.add(name)
      elif name.rpartition(".")[0] in files and name.startswith(PACKAGE + "."):
        targets.add(name.rpartition(".")[0])
    targets.discard(module)
    graph[module] = targets
  return graph


def subpackage(module: str) -> str | None:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else None


def upward_imports(graph: Graph) -> list[str]:
  """Each import of a subpackage that is not in a strictly lower layer, as a readable line."""
  found = []
  for module, targets in sorted(graph.items()):
    source = subpackage(module)
    for target in sorted(targets):
      dest = subpackage(target)
      if source is None or dest is None or dest == source:
        continue
      if LAYERS[dest] >= LAYERS[source]:
        found.append(f"{module} (layer {LAYERS[source]}) imports {target} (layer {LAYERS[dest]})")
  return found


def find_cycle(graph: Graph) -> list[str] | None:
  """One import cycle as ``[a, b, ..., a]``, or None (depth-first search)."""
  state: dict[str, int] = {}  # 1 = on the current path, 2 = done
  path: list[str] = []

  def visit(node: str) -> list[str] | None:
    state[node] = 1
    path.append(node)
    for target in sorted(graph.get(node, ())):
      if state.get(target) == 1:
        return path[path.index(target):] + [target]
      if target not in state:
        cycle = visit(target)
        if cycle:
          return cycle
    path.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


@pytest.fixture(scope="module")
def graph() -> Graph:
  return import_graph()


def test_every_subpackage_has_a_layer(graph):
  assert {subpackage(m) for m in graph} - {None} == set(LAYERS)


def test_no_upward_import(graph):
  assert upward_imports(graph) == []


def test_no_import_cycle(graph):
  assert find_cycle(graph) is None


def test_no_module_imports_a_private_name_of_another():
  assert private_imports(module_files()) == []


def test_private_attributes_of_imported_modules_are_caught(tmp_path):
  """``module._name`` of an imported module of the package counts as importing ``_name``."""
  source, empty = tmp_path / "mod.py", tmp_path / "empty.py"
  source.write_text(
      "import momentum_jax.nn.dense as dense\n"
      "from momentum_jax.attention import kv_shift\n"
      "import momentum_jax.optim.spam\n"
      "kv_shift._check_pair('alpha', None, 2)\n"
      "dense._ACTIVE_COLLECTOR.get()\n"
      "momentum_jax.optim.spam._private\n"
      "kv_shift.kv_shift_attention, self._cache\n")
  empty.write_text("")
  files = {"momentum_jax.attention.mod": source, "momentum_jax.attention.kv_shift": empty,
           "momentum_jax.nn.dense": empty, "momentum_jax.optim.spam": empty}
  assert private_imports(files) == [
      "momentum_jax.attention.mod imports momentum_jax.attention.kv_shift._check_pair",
      "momentum_jax.attention.mod imports momentum_jax.nn.dense._ACTIVE_COLLECTOR",
      "momentum_jax.attention.mod imports momentum_jax.optim.spam._private",
  ]


def test_private_imports_are_caught(tmp_path):
  """Private names and private modules are found, relative imports resolved; public names, dunder
  names and other libraries' private modules are not reported."""
  source = tmp_path / "mod.py"
  source.write_text(
      "from momentum_jax.attention.lightning import _slopes, lightning_attention\n"
      "from .linear import _causal_sums\n"
      "import momentum_jax.optim._checks\n"
      "from momentum_jax import __version__\n"
      "from jax._src import core\n"
      "def f():\n  from momentum_jax.nn.dense import _ACTIVE_COLLECTOR\n")
  assert private_imports({"momentum_jax.attention.flow": source}) == [
      "momentum_jax.attention.flow imports momentum_jax.attention.lightning._slopes",
      "momentum_jax.attention.flow imports momentum_jax.attention.linear._causal_sums",
      "momentum_jax.attention.flow imports momentum_jax.nn.dense._ACTIVE_COLLECTOR",
      "momentum_jax.attention.flow imports momentum_jax.optim._checks",
  ]


def test_checks_catch_an_injected_upward_import_and_cycle(graph):
  """The rules can fail: a kernel importing attention is reported, and so is a cycle."""
  injected = {m: set(t) for m, t in graph.items()}
  injected["momentum_jax.kernels.lightning"].add("momentum_jax.attention.lightning")
  assert upward_imports(injected) == [
      "momentum_jax.kernels.lightning (layer 1) imports momentum_jax.attention.lightning "
      "(layer 2)"]
  cycle = find_cycle(injected)
  assert cycle[0] == cycle[-1]
  assert {"momentum_jax.attention.lightning", "momentum_jax.kernels.lightning"} <= set(cycle)


def test_graph_sees_function_level_imports(tmp_path):
  source = tmp_path / "mod.py"
  source.write_text(
      "def f():\n  from momentum_jax.kernels import backend\n  import momentum_jax.nn\n")
  assert imported_names(source, "momentum_jax.attention.mod") == {
      "momentum_jax.kernels.backend", "momentum_jax.nn"}

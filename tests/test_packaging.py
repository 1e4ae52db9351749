"""The distribution installs exactly one top-level import name and lists every subpackage."""

import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _setuptools_table():
  return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_single_top_level_name():
  table = _setuptools_table()
  assert {name.split(".")[0] for name in table["packages"]} == {"momentum_jax"}
  assert table["package-dir"]["momentum_jax.kernels"] == "kernels"
  assert table["package-dir"]["momentum_jax.experiments"] == "experiments"


def test_every_package_folder_is_listed():
  table = _setuptools_table()
  found = set()
  for top, name in (("momentum_jax", "momentum_jax"), ("kernels", "momentum_jax.kernels"),
                    ("experiments", "momentum_jax.experiments")):
    for init in (ROOT / top).rglob("__init__.py"):
      rel = init.parent.relative_to(ROOT / top)
      found.add(".".join([name, *rel.parts]))
  assert found == set(table["packages"])


def test_readme_test_command_is_what_ci_runs():
  readme = (ROOT / "README.md").read_text()
  ci = (ROOT / ".ci" / "run").read_text()
  command = 'pip install -e ".[dev]" && python -m pytest -q -n 2'
  assert command in readme and command in ci

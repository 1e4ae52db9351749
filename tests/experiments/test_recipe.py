"""The shared experiment recipe: its table, its results file and figures, and the rule that
figures are drawn without switching matplotlib's backend."""

import json
import pathlib
import re

import pytest

from momentum_jax.experiments.cli import start_experiment
from momentum_jax.experiments.recipe import QUICK_NOTE, finish, new_figure, print_table, series
from momentum_jax.experiments.single_layer_induction.config import get_config

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("folder", ["momentum_jax", "experiments", "kernels"])
def test_no_backend_switch_and_no_late_imports(folder):
  offenders = [f"{path.relative_to(ROOT)}: {match.group(0)}"
               for path in sorted((ROOT / folder).rglob("*.py"))
               for match in re.finditer(r"matplotlib\.use\(|noqa: E402|import matplotlib\.pyplot",
                                        path.read_text())]
  assert not offenders


def test_print_table_aligns_headers_with_formatted_cells(capsys):
  rows = {"softmax": {"loss": 1.23456, "acc": 0.5}, "momentum_long": {"loss": 0.5, "acc": 1.0}}
  print_table("model", 14, [("loss\nheld-out", "8.3f", "loss"),
                            ("acc", "7.1%", lambda r: r["acc"])], rows)
  assert capsys.readouterr().out.splitlines() == [
      "model             loss    acc", "              held-out", "softmax          1.235  50.0%",
      "momentum_long    0.500 100.0%"]


def test_series_keeps_the_records_that_hold_the_key():
  history = [{"step": 1, "loss": 3.0}, {"step": 2, "eval": 1.0}, {"step": 3, "loss": 2.0}]
  assert series(history, "loss") == ([1, 3], [3.0, 2.0])


def test_finish_writes_the_summary_with_the_run_record_and_the_figures(tmp_path, capsys):
  run = start_experiment(["--quick", "--output-dir", str(tmp_path), "--config.train.steps=3"],
                         "doc", "single_layer_induction", get_config)
  fig, ax = new_figure(figsize=(3, 2))
  ax.plot([0, 1], [1, 0])
  summary = finish(run, {"results": {"a": 1}}, {"curve.png": fig})
  saved = json.loads((tmp_path / "quick" / "results.json").read_text())
  assert saved == summary
  assert saved["results"] == {"a": 1} and saved["quick"] is True
  assert saved["overrides"] == {"train.steps": 3} and saved["config_hash"] == run.config_hash
  assert (tmp_path / "quick" / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  out = capsys.readouterr().out
  assert "results.json, curve.png" in out
  assert out.rstrip().endswith(QUICK_NOTE)  # a --quick run says that targets are the full run's
  full = start_experiment(["--output-dir", str(tmp_path / "full")], "doc",
                          "single_layer_induction", get_config)
  finish(full, {"results": {}}, {})
  assert QUICK_NOTE not in capsys.readouterr().out

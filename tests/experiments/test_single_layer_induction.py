"""The main job runs end to end in its --quick configuration and writes its outputs."""

import json

import pytest

from momentum_jax.experiments.single_layer_induction.__main__ import main
from momentum_jax.experiments.single_layer_induction.config import get_config

# The --quick run's table (final held-out accuracy and loss) as recorded on the CPU: the run is
# deterministic, so a change to the experiment's code that changes its numbers shows here.
QUICK_TABLE = {"softmax_1L": (0.017045455053448677, 4.385934352874756),
               "momentum_1L_g0.5": (0.005681818351149559, 4.434435844421387),
               "softmax_2L": (0.022727273404598236, 4.137948513031006)}


@pytest.mark.slow
def test_quick_run_writes_table_json_and_plot(tmp_path, capsys):
  summary = main(["--quick", "--output-dir", str(tmp_path), "--no-progress"])
  names = [name for name, _ in get_config(quick=True).models]
  assert list(summary["results"]) == names
  saved = json.loads((tmp_path / "quick" / "results.json").read_text())
  assert set(saved["results"]) == set(names)
  for result in saved["results"].values():
    assert 0.0 <= result["eval_accuracy"] <= 1.0
    assert result["curve_steps"][-1] == get_config(quick=True).train.steps
  assert set(saved["targets"]) == {"momentum_1L (best)", "softmax_1L", "softmax_2L"}
  for name, (accuracy, loss) in QUICK_TABLE.items():
    assert saved["results"][name]["eval_accuracy"] == pytest.approx(accuracy, rel=1e-5)
    assert saved["results"][name]["eval_loss"] == pytest.approx(loss, rel=1e-5)
  assert (tmp_path / "quick" / "accuracy.png").stat().st_size > 1000
  out = capsys.readouterr().out
  for name in names:
    assert name in out


def test_default_config_has_identical_budgets():
  config = get_config()
  names = [name for name, _ in config.models]
  assert names[0] == "softmax_1L" and names[-1] == "softmax_2L"
  assert sum(name.startswith("momentum_1L") for name in names) >= 3
  for _, model in config.models:
    assert model.vocab_size == config.task.vocab_size
    assert model.context_len == config.task.seq_len
    assert model.d_model == 128 and model.mlp_dim == 0

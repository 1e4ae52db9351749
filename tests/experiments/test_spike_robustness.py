"""The spike-robustness experiment runs end to end in its --quick configuration."""

import json

import pytest

from momentum_jax.experiments.spike_robustness.__main__ import main
from momentum_jax.experiments.spike_robustness.config import get_config

RUNS = ["adamw_no_spikes", "adamw", "adamw_clip", "spam", "stable_spam"]
# The --quick run's table (final eval loss, eval accuracy, largest loss after the spikes) as
# recorded on the CPU: the run is deterministic, so a change that changes its numbers shows here.
QUICK_TABLE = {"adamw_no_spikes": (3.398416519165039, 0.0357142873108387, 3.4679677486419678),
               "adamw": (3.798644781112671, 0.0357142873108387, 3.7910380363464355),
               "adamw_clip": (3.395242929458618, 0.0535714291036129, 3.466188669204712),
               "spam": (3.4360198974609375, 0.02678571455180645, 3.547320604324341),
               "stable_spam": (3.3919811248779297, 0.0446428582072258, 3.4665415287017822)}


@pytest.mark.slow
def test_quick_run_writes_table_json_and_plot(tmp_path, capsys):
  summary = main(["--quick", "--output-dir", str(tmp_path), "--no-progress"])
  assert list(summary["results"]) == RUNS
  saved = json.loads((tmp_path / "quick" / "results.json").read_text())
  steps = get_config(quick=True).runs[0][1].steps
  for result in saved["results"].values():
    assert 0.0 <= result["eval_accuracy"] <= 1.0
    assert result["curves"]["steps"] == list(range(1, steps + 1))  # the loss of every step
    assert result["max_loss_after_spikes"] > 0.0
  assert saved["spikes"] and "best under spikes" in saved["verdict"]
  for name, row in QUICK_TABLE.items():
    r = saved["results"][name]
    assert (r["eval_loss"], r["eval_accuracy"], r["max_loss_after_spikes"]) == pytest.approx(
        row, rel=1e-5)
  assert (tmp_path / "quick" / "loss_curves.png").stat().st_size > 1000
  out = capsys.readouterr().out
  assert all(name in out for name in RUNS) and "best under spikes" in out


def test_default_runs_share_budget_data_and_spikes():
  config = get_config()
  runs = dict(config.runs)
  assert list(runs) == RUNS
  assert len(config.spikes) == 3 and all(100 <= s <= 600 for s in config.spikes)
  assert runs["adamw_no_spikes"].gradient_spikes == ()
  assert {runs[n].gradient_spikes for n in RUNS[1:]} == {config.spikes}
  for field in ("steps", "batch_size", "learning_rate", "weight_decay", "seed", "spike_factor"):
    assert len({getattr(cfg, field) for cfg in runs.values()}) == 1, field
  assert runs["adamw_clip"].grad_clip_norm == 1.0
  assert [runs[n].optimizer for n in RUNS] == ["adamw"] * 3 + ["spam", "stable_spam"]
  assert config.model.num_layers == 2 and config.model.d_model == 128 and config.model.mlp_dim

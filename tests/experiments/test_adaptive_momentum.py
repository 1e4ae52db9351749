"""The adaptive-momentum experiment runs end to end in its --quick configuration."""

import json

import pytest

from momentum_jax.experiments.adaptive_momentum.__main__ import main
from momentum_jax.experiments.adaptive_momentum.config import get_config


@pytest.mark.slow
def test_quick_run_writes_tables_json_plot_and_logged_beta(tmp_path, capsys):
  summary = main(["--quick", "--output-dir", str(tmp_path), "--no-progress"])
  config = get_config(quick=True)
  saved = json.loads((tmp_path / "quick" / "results.json").read_text())
  assert list(saved["quadratic"]) == ["am_sgd"] + [f"beta_{b:g}" for b in config.quadratic.betas]
  for r in saved["quadratic"].values():
    assert len(r["curve_best"]) == config.quadratic.steps
    assert all(0.0 <= b <= 0.99 for b in r["beta_best"])
  nets = saved["transformer"]
  assert list(nets) == [name for name, _ in config.runs]
  am = nets["am_adamw"]
  assert len(am["beta"]) == config.runs[0][1].steps // config.runs[0][1].log_every
  assert all(0.0 <= b <= 0.9 for b in am["beta"])
  assert all(not r["beta"] for name, r in nets.items() if name != "am_adamw")
  assert len(summary["verdicts"]) == 3
  assert (tmp_path / "quick" / "adaptive_momentum.png").stat().st_size > 1000
  out = capsys.readouterr().out
  assert "am_sgd" in out and "am_adamw" in out and "AM-AdamW is" in out


def test_default_config_compares_the_brief_s_momenta():
  config = get_config()
  assert config.quadratic.betas == (0.0, 0.5, 0.9, 0.99)
  runs = dict(config.runs)
  assert runs["am_adamw"].optimizer == "am_adamw"
  assert sorted(cfg.b1 for name, cfg in runs.items() if name != "am_adamw") == [0, 0.5, 0.9, 0.99]
  for field in ("steps", "batch_size", "learning_rate", "weight_decay", "seed"):
    assert len({getattr(cfg, field) for cfg in runs.values()}) == 1, field

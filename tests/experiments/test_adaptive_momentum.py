"""The adaptive-momentum experiment runs end to end in its --quick configuration."""

import json

import pytest

from momentum_jax.experiments.adaptive_momentum.__main__ import main
from momentum_jax.experiments.adaptive_momentum.config import get_config

# The --quick run's tables as recorded on the CPU (the run is deterministic, so a change that
# changes its numbers shows here): (a) f/f0 at the common and the best η, the best η;
# (b) final eval loss, eval accuracy and mean β.
QUICK_QUADRATIC = {"am_sgd": (1.6485793139509042e-06, 1.3820846017935286e-16, 10.0),
                   "beta_0": (5.322709967003902e-06, 5.322709967003902e-06, 1.9),
                   "beta_0.9": (5.270900874165818e-05, 5.270900874165818e-05, 1.9)}
QUICK_TRANSFORMER = {"am_adamw": (3.425720453262329, 0.0803571417927742, 0.8627298399806023),
                     "adamw_b1_0": (3.431152820587158, 0.0357142873108387, None),
                     "adamw_b1_0.9": (3.4259560108184814, 0.0625, None)}


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
  for name, (common, best, best_lr) in QUICK_QUADRATIC.items():
    r = saved["quadratic"][name]
    assert (r["common"]["final_ratio"], r["best"]["final_ratio"], r["best_lr"]) == pytest.approx(
        (common, best, best_lr), rel=1e-4)
  for name, (loss, accuracy, mean_beta) in QUICK_TRANSFORMER.items():
    r = nets[name]
    assert (r["eval_loss"], r["eval_accuracy"]) == pytest.approx((loss, accuracy), rel=1e-5)
    assert r["mean_beta"] == (None if mean_beta is None else pytest.approx(mean_beta, rel=1e-5))
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

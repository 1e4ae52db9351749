"""The attention zoo runs end to end in its --quick configuration, with a row per causal variant."""

import json
import math

import pytest

from momentum_jax.attention import available_attention
from momentum_jax.experiments.attention_zoo.__main__ import METRICS, main
from momentum_jax.experiments.attention_zoo.config import get_config
from momentum_jax.experiments.attention_zoo.variant import non_causal_reason

# The --quick run's final loss per variant on (mqar, induction) as recorded on the CPU: the run
# is deterministic, so a change that changes its numbers shows here.
QUICK_FINAL_LOSS = {
    "affine": (3.261343, 3.831585),
    "deconstructed_fixed_qk": (3.105807, 3.554357),
    "deconstructed_mlp": (3.043789, 3.227949),
    "deconstructed_self_gated": (2.750080, 3.480914),
    "deconstructed_taylor": (2.963600, 3.624569),
    "ema_value": (2.926384, 3.478130),
    "ema_value_learned": (2.907488, 3.361078),
    "flash_bias": (2.930648, 3.536853),
    "flex": (2.931421, 3.536764),
    "flow": (3.160880, 3.809252),
    "grat": (2.931421, 3.536764),
    "kv_shift": (2.925262, 3.533438),
    "lightning": (2.908309, 3.165121),
    "linear": (2.934309, 3.676583),
    "momentum": (2.882952, 3.370844),
    "momentum_learned": (2.883164, 3.369938),
    "radial": (2.931421, 3.536764),
    "sigmoid": (3.007409, 3.693619),
    "sla": (2.931421, 3.536764),
    "softmax": (2.931421, 3.536764),
}


@pytest.mark.slow
def test_quick_run_has_a_finite_row_for_every_causal_variant(tmp_path, capsys):
  summary = main(["--quick", "--output-dir", str(tmp_path), "--no-progress"])
  saved = json.loads((tmp_path / "quick" / "results.json").read_text())
  assert saved["results"] == json.loads(json.dumps(summary["results"]))
  assert saved["failed"] == {}
  task_names = [name for name, _ in get_config(quick=True).tasks]
  assert list(saved["results"]) == task_names
  for name in available_attention():
    if name in saved["skipped"]:
      assert saved["skipped"][name].startswith("non-causal only"), name
      continue
    for task_name in task_names:
      row = saved["results"][task_name][name]
      assert all(math.isfinite(row[key]) for key in METRICS), (task_name, name, row)
      assert 0.0 <= row["final_accuracy"] <= 1.0 and row["final_loss"] > 0.0
      assert row["tokens_per_s"] > 0 and row["peak_memory_bytes"] > 0
      assert len(row["loss_curve"]) == get_config(quick=True).train.steps
  assert "softmax" in saved["results"]["mqar"]
  for name, losses in QUICK_FINAL_LOSS.items():
    assert tuple(saved["results"][task][name]["final_loss"] for task in task_names) == (
        pytest.approx(losses, rel=1e-5)), name
  table = (tmp_path / "quick" / "results.md").read_text()
  assert all(name in table for name in available_attention())
  assert (tmp_path / "quick" / "zoo.png").stat().st_size > 1000
  assert "softmax" in capsys.readouterr().out


def test_non_causal_variants_are_recognised():
  config = get_config(quick=True)
  _, task = config.tasks[0]
  assert non_causal_reason("softmax", config, task) is None
  if "agent" in available_attention():
    assert "causal" in non_causal_reason("agent", config, task)


def test_default_config_shares_one_budget_and_shape_across_tasks():
  config = get_config()
  (_, mqar), (_, induction) = config.tasks
  assert mqar.seq_len == induction.seq_len and mqar.vocab_size == induction.vocab_size
  assert (config.num_layers, config.d_model, config.num_heads) == (2, 64, 4)
  assert config.model(mqar, "momentum") == config.model(induction, "momentum")
  assert config.final_steps < config.train.steps

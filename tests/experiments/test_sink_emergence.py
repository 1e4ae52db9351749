"""Sink emergence: the model configs, and the --quick run end to end."""

import json

import numpy as np
import pytest

from momentum_jax.experiments.sink_emergence.__main__ import main
from momentum_jax.experiments.sink_emergence.config import get_config

# The --quick run's held-out loss at steps 10 and 20 and its Sink_1 (%) as recorded on the CPU:
# the run is deterministic, so a change that changes its numbers shows here.
QUICK_TABLE = {"softmax": ([5.179931640625, 5.082424640655518], [0.0, 0.0]),
               "sigmoid": ([5.2096028327941895, 5.118200302124023], [0.0, 0.0]),
               "sigmoid_normalized": ([5.178224086761475, 5.079665660858154], [0.0, 0.0])}


def test_default_models_differ_only_in_attention():
  config = get_config()
  models = dict(config.models)
  assert [m.attention for m in models.values()] == ["softmax", "sigmoid", "sigmoid"]
  assert dict(models["sigmoid_normalized"].attention_params) == {"normalize": True}
  fields = {k: v for k, v in models["softmax"].to_dict().items()
            if k not in ("attention", "attention_params")}
  for model in models.values():
    assert {k: v for k, v in model.to_dict().items() if k in fields} == fields
  assert config.task.seq_len == 64 and config.epsilon == 0.3


@pytest.mark.slow
def test_quick_run_writes_curves_json_and_plots(tmp_path, capsys):
  summary = main(["--quick", "--output-dir", str(tmp_path), "--no-progress"])
  config = get_config(quick=True)
  saved = json.loads((tmp_path / "quick" / "results.json").read_text())
  assert list(saved["results"]) == [name for name, _ in config.models] == list(summary["results"])
  for name, result in saved["results"].items():
    assert result["steps"] == [10, 20]
    assert all(0.0 <= s <= 100.0 for s in result["sink_1"])
    assert np.shape(result["alpha_1_final"]) == (2, 4)
    assert (tmp_path / "quick" / f"sink_heatmap_{name}.png").stat().st_size > 1000
  assert (tmp_path / "quick" / "sink_curve.png").stat().st_size > 1000
  for name, (loss, sink_1) in QUICK_TABLE.items():
    assert saved["results"][name]["eval_loss"] == pytest.approx(loss, rel=1e-5)
    assert saved["results"][name]["sink_1"] == sink_1
  assert "sigmoid_normalized" in capsys.readouterr().out

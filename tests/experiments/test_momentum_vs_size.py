"""momentum_vs_size: the pair gaps on hand values, the sizes of its configs, its --quick run
(with the in-context evaluation of every model)."""

import json
import math

import jax
import pytest
from flax import nnx

from momentum_jax.experiments.momentum_vs_size.__main__ import gaps, main
from momentum_jax.experiments.momentum_vs_size.config import MOMENTUM, PRESETS, get_config
from momentum_jax.experiments.text_models import ICL_ROWS
from momentum_jax.nn import Transformer


def _parameters(model_config) -> int:
  shapes = nnx.eval_shape(lambda: Transformer(model_config, rngs=nnx.Rngs(0)))
  return sum(x.size for x in jax.tree.leaves(nnx.state(shapes, nnx.Param)))


def test_gaps_are_momentum_minus_baseline():
  models = {MOMENTUM: {"eval_loss": 1.5, "parameters": 100},
            "softmax_1x": {"eval_loss": 1.6, "parameters": 100},
            "softmax_2.8x": {"eval_loss": 1.4, "parameters": 280}}
  out = gaps(models)
  assert set(out) == {"softmax_1x", "softmax_2.8x"}
  assert out["softmax_1x"]["loss_gap"] == pytest.approx(-0.1)
  assert out["softmax_1x"]["relative_gap"] == pytest.approx(-0.1 / 1.6)
  assert out["softmax_2.8x"]["relative_gap"] == pytest.approx(0.1 / 1.4)
  assert out["softmax_2.8x"]["parameter_ratio"] == pytest.approx(2.8)


@pytest.mark.parametrize("config", [get_config(), PRESETS["gpu_350m"]()],
                         ids=["cpu", "gpu_350m"])
def test_baselines_are_about_1x_2x_and_2_8x_the_momentum_model(config):
  models = dict(config.models)
  momentum = models.pop(MOMENTUM)
  assert momentum.attention == "momentum" and dict(momentum.attention_params)["gamma"] > 0
  ratios = {name: _parameters(m) / _parameters(momentum) for name, m in models.items()}
  assert ratios["softmax_1x"] == 1.0
  assert 1.8 <= ratios["softmax_2x"] <= 2.2 and 2.6 <= ratios["softmax_2.8x"] <= 3.0
  assert {m.attention for m in models.values()} == {"softmax"}
  assert len({m.context_len for _, m in config.models}) == 1


def test_gpu_preset_is_125m_momentum_against_350m_softmax():
  models = dict(PRESETS["gpu_350m"]().models)
  assert 120e6 < _parameters(models[MOMENTUM]) < 130e6
  assert 340e6 < _parameters(models["softmax_2.8x"]) < 360e6

# The --quick run's held-out loss as recorded on the CPU: the run is deterministic, so a change
# that changes its numbers shows here.
QUICK_LOSS = {"momentum_S": 4.044027090072632, "softmax_1x": 3.9862476587295532,
              "softmax_2x": 3.8687437772750854, "softmax_2.8x": 3.6232357025146484}


@pytest.mark.slow
def test_quick_run_reports_every_gap(tmp_path, capsys):
  summary = main(["--quick", "--output-dir", str(tmp_path), "--no-progress"])
  saved = json.loads((tmp_path / "quick" / "results.json").read_text())
  names = [name for name, _ in get_config(quick=True).models]
  assert list(saved["models"]) == names
  assert set(saved["gaps"]) == set(names) - {MOMENTUM}
  for name, gap in saved["gaps"].items():
    assert gap["loss_gap"] == pytest.approx(
        saved["models"][MOMENTUM]["eval_loss"] - saved["models"][name]["eval_loss"])
  assert summary["gaps"] == saved["gaps"]
  assert {name: r["eval_loss"] for name, r in saved["models"].items()} == pytest.approx(
      QUICK_LOSS, rel=1e-5)
  for name, r in saved["models"].items():  # the in-context evaluation beside the loss
    assert (r["icl_late"], r["icl_early"], r["icl_documents"]) == (31, 3, ICL_ROWS - 1), name
    assert math.isfinite(r["icl_score"]), name
    assert r["repeat_loss_drop"] == pytest.approx(
        r["repeat_first_loss"] - r["repeat_second_loss"]), name
  assert (tmp_path / "quick" / "momentum_vs_size.png").stat().st_size > 1000
  out = capsys.readouterr().out
  assert "vs softmax_2.8x" in out
  assert "copy 1, copy 2: loss (nats/token) on the first and second copy" in out

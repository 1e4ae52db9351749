"""Spectral forensics runs end to end in its --quick configuration and writes its outputs."""

import json

import numpy as np
import pytest

from momentum_jax.experiments.spectral_forensics.__main__ import main
from momentum_jax.experiments.spectral_forensics.config import MODELS, get_config
from momentum_jax.experiments.single_layer_induction.config import get_config as induction_config

OUTPUTS = ("spectral_forensics.json", "patterns.png", "bode.png", "band_energies.png",
           "rope_pair_bands.png")
# The --quick run's held-out accuracy and induction-stripe score per head as recorded on the CPU:
# the run is deterministic, so a change that changes its numbers shows here.
QUICK_TABLE = {
    "softmax_1L": (0.017045455053448677, [0.02249169908463955, 0.03357358276844025,
                                          0.02916976809501648, 0.03145275264978409]),
    "momentum_1L_g0.5": (0.005681818351149559, [0.014544542878866196, 0.042639147490262985,
                                                0.034638337790966034, 0.03164112567901611])}


@pytest.mark.slow
def test_quick_run_writes_json_and_plots(tmp_path, capsys):
  summary = main(["--quick", "--output-dir", str(tmp_path), "--no-progress"])
  for name in OUTPUTS:
    assert (tmp_path / "quick" / name).stat().st_size > 1000
  saved = json.loads((tmp_path / "quick" / "spectral_forensics.json").read_text())
  assert list(saved["results"]) == list(MODELS) == list(summary["results"])
  softmax, momentum = (saved["results"][name] for name in MODELS)
  # The fitted filters recover the shear the attention applied: [1+γ, −γ, 0, 0] and identity.
  np.testing.assert_allclose(momentum["fir_taps_q"], [[1.5, -0.5, 0.0, 0.0]] * 4, atol=1e-3)
  np.testing.assert_allclose(momentum["fir_taps_k"], [[1.5, -0.5, 0.0, 0.0]] * 4, atol=1e-3)
  np.testing.assert_allclose(softmax["fir_taps_q"], [[1.0, 0.0, 0.0, 0.0]] * 4, atol=1e-3)
  # The shear moves q/k energy into the high band; softmax q/k are left as they are.
  assert np.mean(momentum["high_band_fraction_per_head"]["q_hat"]) > np.mean(
      momentum["high_band_fraction_per_head"]["q"])
  assert softmax["high_band_fraction_per_head"]["q_hat"] == softmax[
      "high_band_fraction_per_head"]["q"]
  # The measured spectral gain follows the analytic |H|² at the top of the band.
  assert abs(momentum["measured_gain_db"][-1] - saved["analytic_gain_db"][-1]) < 2.0
  for result in saved["results"].values():
    assert 0.0 <= result["eval_accuracy"] <= 1.0
    assert all(0.0 <= s <= 1.0 for s in result["stripe_score_per_head"])
  for name, (accuracy, stripe) in QUICK_TABLE.items():
    assert saved["results"][name]["eval_accuracy"] == pytest.approx(accuracy, rel=1e-5)
    np.testing.assert_allclose(saved["results"][name]["stripe_score_per_head"], stripe, rtol=1e-5)
  assert "momentum_1L_g0.5" in capsys.readouterr().out


def test_models_are_those_of_single_layer_induction():
  """Same names and configs, so a single_layer_induction output folder is loaded, not retrained."""
  for quick in (False, True):
    config, base = get_config(quick=quick), dict(induction_config(quick=quick).models)
    assert [name for name, _ in config.models] == list(MODELS)
    for name, model in config.models:
      assert model == base[name]
    assert config.train == induction_config(quick=quick).train
    assert 2 * config.repeat_len <= config.task.seq_len

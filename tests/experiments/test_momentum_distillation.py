"""The momentum-distillation experiment: its noisy pairs, summary, verdict and --quick run."""

import dataclasses
import json

import numpy as np
import pytest

from momentum_jax.experiments.momentum_distillation.__main__ import main, summarise, verdict
from momentum_jax.experiments.momentum_distillation.config import (
    PairTask, SweepConfig, get_config)
from momentum_jax.experiments.momentum_distillation.training import (
    make_pairs, retrieval_accuracy)

# The --quick run's last-chunk training loss per unit as recorded on the CPU: the run is
# deterministic, so a change that changes its numbers shows here.
QUICK_FINAL_LOSS = {"noise0_itc_seed0": 4.435428619384766, "noise0_itc_seed1": 4.48406457901001,
                    "noise0_mod_0.4_seed0": 3.619065523147583,
                    "noise0_mod_0.4_seed1": 3.4919166564941406,
                    "noise0.4_itc_seed0": 4.403295516967773,
                    "noise0.4_itc_seed1": 4.216130256652832,
                    "noise0.4_mod_0.4_seed0": 3.5907483100891113,
                    "noise0.4_mod_0.4_seed1": 3.3414132595062256}
TASK = PairTask(vocab_size=16, seq_len=5, corruption=0.0, train_pairs=40, eval_pairs=10)


def test_pairs_views_and_mismatched_rows():
  clean, held_out, none = make_pairs(TASK, 0.0, seed=3)
  noisy, held_out_again, mismatched = make_pairs(TASK, 0.25, seed=3)
  assert not none.any() and mismatched.sum() == 10
  # Without corruption, view b is a fixed permutation of view a's tokens, reversed.
  permutation = {}
  for a_row, b_row in zip(clean.a_NxT, clean.b_NxT):
    for x, y in zip(a_row, b_row[::-1]):
      assert permutation.setdefault(x, y) == y
  assert len(set(permutation.values())) == len(permutation)
  np.testing.assert_array_equal(noisy.a_NxT, clean.a_NxT)
  np.testing.assert_array_equal(noisy.b_NxT[~mismatched], clean.b_NxT[~mismatched])
  # Every mismatched row carries another row's view b, never its own.
  assert all(not np.array_equal(b, own) for b, own in
             zip(noisy.b_NxT[mismatched], clean.b_NxT[mismatched]))
  assert {tuple(b) for b in noisy.b_NxT[mismatched]} == {
      tuple(b) for b in clean.b_NxT[mismatched]}
  np.testing.assert_array_equal(held_out.b_NxT, held_out_again.b_NxT)
  corrupted, _, _ = make_pairs(dataclasses.replace(TASK, corruption=0.5), 0.0, seed=3)
  assert 0.3 < np.mean(corrupted.b_NxT != clean.b_NxT) < 0.6


def test_retrieval_accuracy_by_hand():
  a = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
  b = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
  got = retrieval_accuracy(a, b)
  # a→b: row 0 → 0 (hit), row 1 → 2, row 2 → 1. b→a: column 0 → 0 (hit), 1 → 2, 2 → 1.
  assert got == {"a_to_b": pytest.approx(1 / 3), "b_to_a": pytest.approx(1 / 3),
                 "mean": pytest.approx(1 / 3)}


def _units(config, retrieval):
  return {name: {"retrieval": {"mean": retrieval(noise, alpha, seed)},
                 "train_fit": {"mismatched": float("nan") if noise == 0 else 0.1}}
          for name, noise, alpha, seed in config.units()}


@pytest.mark.parametrize("gain, outcome", [
    (lambda seed: 0.05, "supported"),
    (lambda seed: -0.02, "refuted"),
    (lambda seed: 0.05 if seed else -0.01, "mixed"),
])
def test_summary_pairs_seeds_and_the_verdict_follows_the_gain(gain, outcome):
  config = dataclasses.replace(get_config(), sweep=SweepConfig(seeds=3))
  units = _units(config, lambda noise, alpha, seed: 0.9 - noise + 0.01 * seed
                 + (gain(seed) if alpha else 0.0))
  rows = summarise(config, units)
  assert list(rows) == ["0% mismatched", "20% mismatched", "40% mismatched"]
  row = rows["40% mismatched"]
  assert row["itc"]["mean"] == pytest.approx(0.51) and row["itc"]["std"] == pytest.approx(0.01)
  assert row["mod_0.4_gain"]["values"] == pytest.approx([gain(s) for s in range(3)])
  assert verdict(config, rows).startswith(outcome)


def test_config_validation_names_the_field():
  with pytest.raises(ValueError, match="noise_levels"):
    SweepConfig(noise_levels=(0.0, 1.0))
  with pytest.raises(ValueError, match="chunk_steps"):
    SweepConfig(steps=10, chunk_steps=3)
  with pytest.raises(ValueError, match="batch_size"):
    SweepConfig(batch_size=64, queue_size=32)
  with pytest.raises(ValueError, match="corruption"):
    PairTask(corruption=1.5)
  config = get_config()
  assert len(config.units()) == 3 * 2 * 3 and config.sweep.alphas == (0.0, 0.4)


@pytest.mark.slow
def test_quick_run_writes_table_json_and_plot(tmp_path, capsys):
  summary = main(["--quick", "--output-dir", str(tmp_path), "--no-progress"])
  saved = json.loads((tmp_path / "quick" / "results.json").read_text())
  config = get_config(quick=True)
  assert list(saved["units"]) == [name for name, *_ in config.units()] == list(QUICK_FINAL_LOSS)
  for name, loss in QUICK_FINAL_LOSS.items():
    assert saved["units"][name]["loss_curve"][-1] == pytest.approx(loss, rel=1e-5)
  for unit in saved["units"].values():
    assert 0.0 <= unit["retrieval"]["mean"] <= 1.0
    assert len(unit["loss_curve"]) == config.sweep.steps // config.sweep.chunk_steps
    assert all(np.isfinite(unit["loss_curve"]))
  assert list(saved["rows"]) == ["0% mismatched", "40% mismatched"]
  assert saved["verdict"] == summary["verdict"]
  assert (tmp_path / "quick" / "retrieval.png").stat().st_size > 1000
  out = capsys.readouterr().out
  assert "40% mismatched" in out and "momentum distillation helps" in out
  # A rerun reads every unit back instead of training it again.
  again = main(["--quick", "--output-dir", str(tmp_path), "--no-progress"])
  assert again["units"] == saved["units"]
  assert "finished earlier" in capsys.readouterr().out

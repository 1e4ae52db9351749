"""The γ*–depth law experiment: its estimators on known curves, its vmapped ensemble, its run."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from momentum_jax.data import AssociativeRecallTask
from momentum_jax.experiments.gamma_depth_law import analysis
from momentum_jax.experiments.gamma_depth_law.__main__ import main
from momentum_jax.experiments.gamma_depth_law.config import (
    PAPER_A, PAPER_B, Budget, SweepConfig, TaskBudgets, get_config)
from momentum_jax.experiments.gamma_depth_law.ensemble import Members, train_ensemble
from momentum_jax.nn import TransformerConfig

GRID = (0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0)


def _parabola_in_log_gamma(vertex: float) -> np.ndarray:
  logs = np.log(np.maximum(GRID, 1e-30))
  return np.where(np.asarray(GRID) > 0, (logs - np.log(vertex)) ** 2, 50.0)


@pytest.mark.parametrize("vertex", [0.3, 0.7, 1.9])
def test_best_gamma_is_the_vertex_of_a_parabola_in_log_gamma(vertex):
  assert analysis.best_gamma(GRID, _parabola_in_log_gamma(vertex)) == pytest.approx(vertex)


def test_best_gamma_at_zero_and_at_the_grid_edges():
  assert analysis.best_gamma(GRID, np.array([0.0, 1, 2, 3, 4, 5, 6])) == 0.0
  # Best at the smallest positive γ: its left neighbour is γ = 0, no parabola in log γ.
  assert analysis.best_gamma(GRID, np.array([1.0, 0, 2, 3, 4, 5, 6])) == 0.125
  assert analysis.best_gamma(GRID, np.array([6.0, 5, 4, 3, 2, 1, 0])) == 4.0


def test_gamma_star_interval_from_seed_resamples():
  loss_SxG = np.stack([_parabola_in_log_gamma(v) for v in (0.4, 0.5, 0.6)])
  resamples = analysis.seed_resamples(3, 200, np.random.default_rng(0))
  interval, draws = analysis.gamma_star(GRID, loss_SxG, resamples)
  assert draws.shape == (200,)
  assert 0.4 <= interval.low <= interval.value <= interval.high <= 0.6
  assert interval.low == pytest.approx(0.4, rel=0.05)
  assert interval.high == pytest.approx(0.6, rel=0.05)


def test_power_law_fit_recovers_a_and_b_and_skips_zero_depths():
  depths = (1, 2, 3, 4, 6)
  exact = np.array([2.0 * n ** -0.5 for n in depths])
  draws = np.stack([exact * f for f in (0.9, 1.0, 1.1)], axis=1)
  fit = analysis.fit_power_law(depths, exact, draws)
  assert fit.a.value == pytest.approx(2.0) and fit.b.value == pytest.approx(-0.5)
  assert fit.a.low == pytest.approx(1.8, rel=0.01) and fit.a.high == pytest.approx(2.2, rel=0.01)
  assert fit.b.low == pytest.approx(-0.5) == fit.b.high
  with_zero = exact.copy()
  with_zero[1] = 0.0
  assert analysis.fit_power_law(depths, with_zero, draws).depths_used == (1, 3, 4, 6)
  lone = analysis.fit_power_law(depths, np.array([1.0, 0, 0, 0, 0]), draws * 0)
  assert np.isnan(lone.a.value) and lone.resamples_fitted == 0.0


def test_verdict_words():
  paper = {n: PAPER_A * n ** PAPER_B for n in (1, 2, 4)}
  holds = {n: analysis.Interval(g, 0.8 * g, 1.2 * g) for n, g in paper.items()}
  fit = analysis.PowerLawFit(analysis.Interval(PAPER_A, 3.0, 5.0),
                             analysis.Interval(PAPER_B, -1.0, -0.5), (1, 2, 4), 1.0)
  assert analysis.verdict(holds, fit, PAPER_A, PAPER_B)[0] == "reproduced"
  zero = {n: analysis.Interval(0.0, 0.0, 0.0) for n in paper}
  word, reason = analysis.verdict(zero, fit, PAPER_A, PAPER_B)
  assert word == "refuted" and "[1, 2, 4]" in reason
  mixed = {1: holds[1], 2: zero[2], 4: holds[4]}
  assert analysis.verdict(mixed, fit, PAPER_A, PAPER_B)[0] == "undetermined"


def _accuracy_falling_through(edge: float, at_zero: float = 1.0) -> np.ndarray:
  """Accuracy over GRID that falls by 0.1 per unit of log γ and is 0.9 at γ = ``edge``."""
  positive = np.maximum(GRID, 1e-30)
  return np.where(np.asarray(GRID) > 0, 0.9 - 0.1 * np.log(positive / edge), at_zero)


@pytest.mark.parametrize("edge", [0.2, 0.7, 1.4])
def test_upper_edge_recovers_a_planted_edge(edge):
  assert analysis.upper_edge(GRID, _accuracy_falling_through(edge)) == pytest.approx(edge)
  # Another threshold is another crossing of the same line in log γ.
  assert analysis.upper_edge(GRID, _accuracy_falling_through(edge), threshold=0.8) == (
      pytest.approx(edge * np.e))


def test_upper_edge_is_the_largest_working_gamma_and_its_grid_cases():
  # Works at 0.125 and 0.5, not at 0.25 and above 0.5: the edge is past 0.5, not past 0.125.
  window = np.array([0.1, 0.95, 0.5, 0.95, 0.85, 0.1, 0.1])
  assert 0.5 < analysis.upper_edge(GRID, window) < 1.0
  assert analysis.upper_edge(GRID, np.full(7, 0.95)) == 4.0  # the grid's top: a lower bound
  assert analysis.upper_edge(GRID, np.array([0.95, 0.5, 0, 0, 0, 0, 0])) == 0.0  # softmax only
  assert np.isnan(analysis.upper_edge(GRID, np.full(7, 0.5)))  # nothing reaches 90 %


def _seed_curves(edge: float, spread: float) -> np.ndarray:
  return np.stack([_accuracy_falling_through(edge * np.exp(spread * z))
                   for z in (-1.0, -0.5, 0.0, 0.5, 1.0)])


def test_upper_edge_interval_holds_the_planted_edge_and_shrinks_with_less_noise():
  resamples = analysis.seed_resamples(5, 400, np.random.default_rng(0))
  widths = []
  for spread in (0.4, 0.1):
    interval, draws = analysis.upper_edge_interval(GRID, _seed_curves(0.7, spread), resamples)
    assert draws.shape == (400,) and np.isfinite(draws).all()
    assert interval.value == pytest.approx(0.7)
    assert interval.low < 0.7 < interval.high
    widths.append(interval.high - interval.low)
  assert widths[1] < 0.5 * widths[0]


def test_upper_edge_without_a_working_gamma_is_nan_and_left_out_of_fit_and_verdict():
  resamples = analysis.seed_resamples(2, 50, np.random.default_rng(0))
  failing = np.full((2, len(GRID)), 0.3)
  interval, draws = analysis.upper_edge_interval(GRID, failing, resamples)
  assert np.isnan(interval.value) and np.isnan(draws).all()
  assert interval.low == interval.high == 0.0  # resamples without an edge count as 0
  # Depth 2 has no edge: the fit and the verdict use depths 1, 4 and 6 only.
  depths = (1, 2, 4, 6)
  paper = np.array([PAPER_A * n ** PAPER_B for n in depths])
  paper[1] = np.nan
  tilt = np.asarray(depths, np.float64) ** 0.1
  draws = np.stack([1.1 * paper * tilt, 0.9 * paper / tilt], axis=1)
  fit = analysis.fit_power_law(depths, paper, draws)
  assert fit.depths_used == (1, 4, 6) and fit.b.value == pytest.approx(PAPER_B)
  edges = {n: analysis.Interval(g, 0.9 * g, 1.1 * g) for n, g in zip(depths, paper)}
  edges[2] = analysis.Interval(float("nan"), 0.0, 0.0)
  word, reason = analysis.upper_edge_verdict(edges, fit, PAPER_A, PAPER_B)
  assert word == "reproduced" and "depths [2], left out" in reason
  none = {n: analysis.Interval(float("nan"), 0.0, 0.0) for n in depths}
  word, reason = analysis.upper_edge_verdict(none, fit, PAPER_A, PAPER_B)
  assert word == "undetermined" and "at any depth" in reason


@pytest.mark.parametrize("threshold, error", [
    (0.0, ValueError), (1.5, ValueError), (float("nan"), ValueError), ("0.9", TypeError),
    (True, TypeError)])
def test_upper_edge_names_a_bad_threshold(threshold, error):
  with pytest.raises(error, match="threshold"):
    analysis.upper_edge(GRID, _accuracy_falling_through(0.7), threshold=threshold)
  with pytest.raises(error, match="threshold"):
    analysis.summarise(get_config(quick=True), {}, threshold=threshold)


def test_upper_edge_names_mismatched_accuracies():
  with pytest.raises(ValueError, match="accuracy_G"):
    analysis.upper_edge(GRID, np.ones(3))
  with pytest.raises(ValueError, match="accuracy_SxG"):
    analysis.upper_edge_interval(GRID, np.ones(7), np.zeros((2, 2), int))


def test_summarise_carries_both_estimators_side_by_side():
  config = get_config(quick=True)  # MQAR at depths 1 and 2, γ grid (0, 0.5, 2), 2 seeds
  planted = {1: 1.5, 2: 0.8}
  units = {}
  for name, _, _, depth in config.units():
    accuracy_G = np.array([0.2, *(0.9 - 0.1 * np.log(g / planted[depth]) for g in (0.5, 2.0))])
    loss_G = np.array([3.0, 0.1, 0.2])
    shear = [{"init": init, "gamma": np.full((2, depth, 2), init).tolist(), "loss": [0.1, 0.1],
              "accuracy": [0.9, 0.9]} for init in config.sweep.learned_inits]
    units[name] = {"grid_loss": [loss_G.tolist()] * 2, "grid_accuracy": [accuracy_G.tolist()] * 2,
                   "learned": shear, "learned_normalized": shear}
  task = analysis.summarise(config, units)["mqar"]
  for depth, edge in planted.items():
    row = task["depths"][depth]
    assert row["gamma_star"]["value"] == 0.5  # the old keys as before
    assert row["upper_edge"] == pytest.approx({"value": edge, "low": edge, "high": edge})
    assert row["upper_edge_at_grid_top"] is False
    assert [start["gamma_mean"] for start in row["learned"]] == pytest.approx(
        config.sweep.learned_inits)  # one entry per start, in order
  assert task["verdict"] in {"reproduced", "refuted", "undetermined"}
  edge = task["upper_edge"]
  assert edge["threshold"] == 0.9 and edge["fit"]["depths_used"] == (1, 2)
  assert edge["fit"]["b"]["value"] == pytest.approx(np.log(0.8 / 1.5) / np.log(2))
  assert edge["verdict"] == "refuted" and "N=1: 1.50" in edge["reason"]


def _tiny(task, depth=2):
  return TransformerConfig(vocab_size=task.vocab_size, context_len=task.seq_len,
                           num_layers=depth, d_model=16, num_heads=2, mlp_dim=0,
                           attention="momentum_learned")


@pytest.mark.slow
def test_ensemble_keeps_fixed_gamma_exactly_and_trains_learned_gamma():
  task = AssociativeRecallTask(vocab_size=16, num_pairs=3, num_queries=2)
  members = Members(seed=np.array([0, 0, 0, 1]), gamma=np.array([0.0, 0.7, 0.7, 0.7]),
                    learned=np.array([False, False, True, False]))
  eval_batch = task.sample(jax.random.key(99), 16)
  result = train_ensemble(_tiny(task), task, members, steps=6, chunk_steps=3, batch_size=4,
                          learning_rate=1e-2, eval_batch=eval_batch)
  assert result.gamma.shape == (4, 2, 2) and result.gamma_curve.shape == (2, 4, 2)
  assert np.all(result.gamma[0] == 0.0)  # γ = 0 exactly, not a softplus floor
  np.testing.assert_allclose(result.gamma[[1, 3]], 0.7, rtol=1e-6)
  assert np.abs(result.gamma[2] - 0.7).max() > 1e-4  # the learned γ moved
  # Another seed: other initial weights and batches, so another result.
  assert result.eval_loss[1] != result.eval_loss[3]
  assert result.train_loss.shape == (2, 4) and np.isfinite(result.train_loss).all()


@pytest.mark.slow
def test_ensemble_member_equals_training_it_alone():
  task = AssociativeRecallTask(vocab_size=16, num_pairs=3, num_queries=2)
  eval_batch = task.sample(jax.random.key(99), 16)
  budget = dict(steps=4, chunk_steps=2, batch_size=4, learning_rate=1e-2, eval_batch=eval_batch)
  together = train_ensemble(
      _tiny(task), task, Members(np.array([0, 1, 1]), np.array([0.0, 0.3, 1.5]),
                                 np.array([False, False, True])), **budget)
  alone = train_ensemble(_tiny(task), task, Members(np.array([1]), np.array([1.5]),
                                                    np.array([True])), **budget)
  np.testing.assert_allclose(together.eval_loss[2], alone.eval_loss[0], rtol=1e-5)
  np.testing.assert_allclose(together.gamma[2], alone.gamma[0], rtol=1e-5)


def test_ensemble_needs_the_learned_momentum_variant():
  task = AssociativeRecallTask(vocab_size=16, num_pairs=3, num_queries=2)
  config = TransformerConfig(vocab_size=16, context_len=task.seq_len, d_model=16, num_heads=2,
                             attention="momentum", attention_params={"gamma": 0.5})
  with pytest.raises(ValueError, match="config.attention must be 'momentum_learned'"):
    train_ensemble(config, task, Members(np.array([0]), np.array([0.5]), np.array([False])),
                   steps=2, chunk_steps=1, batch_size=2, learning_rate=1e-2,
                   eval_batch=task.sample(jax.random.key(0), 2))


def test_default_config_is_the_issue_design():
  config = get_config()
  sweep = config.sweep
  assert sweep.depths == (1, 2, 3, 4, 6)
  assert sweep.gammas[0] == 0.0 and max(sweep.gammas) >= PAPER_A
  ratios = np.asarray(sweep.gammas[2:]) / np.asarray(sweep.gammas[1:-1])
  np.testing.assert_allclose(ratios, ratios[0])  # a log grid
  assert sweep.seeds >= 3
  assert {name for name, _ in config.tasks} == {"mqar", "induction"}


@pytest.mark.parametrize("bad, match", [
    (dict(depths=(0, 2)), "depths"), (dict(gammas=(0.0, 2.0, 1.0)), "gammas"),
    (dict(seeds=1), "seeds"),
    (dict(learned_inits=()), "learned_inits"), (dict(learned_inits=(0.5, 0.0)), "learned_inits")])
def test_sweep_config_names_a_bad_field(bad, match):
  with pytest.raises(ValueError, match=match):
    SweepConfig(**bad)


@pytest.mark.parametrize("bad, match", [
    (dict(d_model=100, num_heads=3), "d_model must be a multiple of num_heads"),
    (dict(steps=0), "steps"), (dict(learning_rate=0.0), "learning_rate")])
def test_budget_names_a_bad_field(bad, match):
  with pytest.raises(ValueError, match=match):
    Budget(**bad)


def test_each_task_has_its_own_budget_whose_steps_fit_the_chunks():
  config = get_config()
  assert config.budget("mqar") != config.budget("induction")
  with pytest.raises(ValueError, match=r"budgets.mqar.steps must be a multiple of "
                     r"sweep.chunk_steps, got steps=150, chunk_steps=100"):
    dataclasses.replace(config, budgets=TaskBudgets(mqar=Budget(steps=150)))
  with pytest.raises(ValueError, match="task 'copy' has no budget"):
    dataclasses.replace(config, tasks=config.tasks + (("copy", config.tasks[0][1]),))


def test_run_tasks_chooses_the_units_and_names_an_unknown_task():
  config = get_config()
  only = dataclasses.replace(config, run_tasks=("induction",))
  assert [name for name, *_ in only.units()] == [f"induction_N{n}" for n in (1, 2, 3, 4, 6)]
  assert [name for name, _ in config.chosen_tasks()] == ["mqar", "induction"]
  with pytest.raises(ValueError, match=r"run_tasks names unknown tasks \['copy'\]"):
    dataclasses.replace(config, run_tasks=("copy",))


def test_a_units_identity_leaves_out_the_other_depths_and_the_bootstrap():
  config = get_config()
  fewer = dataclasses.replace(config, sweep=dataclasses.replace(
      config.sweep, depths=(2,), bootstrap=100))
  assert fewer.unit_identity("mqar", 2) == config.unit_identity("mqar", 2)
  assert config.unit_identity("mqar", 2) != config.unit_identity("mqar", 3)
  assert config.unit_identity("mqar", 2) != config.unit_identity("induction", 2)
  longer = dataclasses.replace(config, budgets=TaskBudgets(
      mqar=dataclasses.replace(config.budget("mqar"), steps=9000)))
  assert longer.unit_identity("mqar", 2) != config.unit_identity("mqar", 2)
  assert longer.unit_identity("induction", 2) == config.unit_identity("induction", 2)

# The --quick run's table for MQAR as recorded on the CPU (the run is deterministic, so a change
# that changes its numbers shows here): per depth, the seed-mean held-out loss over the γ grid,
# γ* and the mean learned γ from 0.5 on the plain and on the gain-normalised shear.
QUICK_MQAR = {
    "1": ([4.680748462677002, 4.645368576049805, 4.65389347076416], 0.5, 0.5051329284906387,
          0.5005644410848618),
    "2": ([4.531596899032593, 4.633102893829346, 4.63685154914856], 0.0, 0.5021781027317047,
          0.5017925389111042)}


@pytest.mark.slow
def test_quick_run_writes_tables_json_plot_and_resumes(tmp_path, capsys):
  argv = ["--quick", "--output-dir", str(tmp_path), "--no-progress"]
  summary = main(argv)
  saved = json.loads((tmp_path / "quick" / "results.json").read_text())
  assert set(saved["tasks"]) == {name for name, _ in get_config(quick=True).tasks}
  for task in saved["tasks"].values():
    assert task["verdict"] in {"reproduced", "refuted", "undetermined"}
    for row in task["depths"].values():
      assert row["gamma_star"]["low"] <= row["gamma_star"]["value"] <= row["gamma_star"]["high"]
      for shear in ("learned", "learned_normalized"):
        assert [start["init"] for start in row[shear]] == pytest.approx([0.5, PAPER_A / 2])
        assert all(start["gamma_mean"] > 0 for start in row[shear])
      assert np.isnan(row["upper_edge"]["value"])  # no γ reaches 90 % in the smoke run
    assert task["upper_edge"]["verdict"] == "undetermined"
  assert (tmp_path / "quick" / "gamma_star.png").stat().st_size > 1000
  for depth, (grid_loss, gamma_star, learned, normalized) in QUICK_MQAR.items():
    row = saved["tasks"]["mqar"]["depths"][depth]
    assert row["grid_loss_mean"] == pytest.approx(grid_loss, rel=1e-5)
    assert row["gamma_star"]["value"] == pytest.approx(gamma_star, abs=1e-6)
    assert row["learned"][0]["gamma_mean"] == pytest.approx(learned, rel=1e-5)
    assert row["learned_normalized"][0]["gamma_mean"] == pytest.approx(normalized, rel=1e-5)
  out = capsys.readouterr().out
  assert "verdict:" in out and "fit γ* = a·N^b" in out and "edge verdict:" in out
  again = main(argv)  # every unit finished: read back, not retrained
  assert "finished earlier" in capsys.readouterr().out
  assert json.loads(json.dumps(again["tasks"])) == json.loads(json.dumps(summary["tasks"]))
  # A run of part of the sweep (one depth, other bootstrap) reads its unit back as well.
  part = main(argv + ["--config.sweep.depths=(2,)", "--config.sweep.bootstrap=20"])
  assert "mqar_N2: finished earlier" in capsys.readouterr().out
  assert part["tasks"]["mqar"]["depths"][2]["grid_loss_mean"] == pytest.approx(
      summary["tasks"]["mqar"]["depths"][2]["grid_loss_mean"])

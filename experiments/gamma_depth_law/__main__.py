"""Measures γ*(N) for momentum attention over depths and fits γ* = a · N^b (see ``config.py``).

    python -m momentum_jax.experiments.gamma_depth_law [--quick] [--output-dir DIR]
        [--fresh] [--no-progress] [--config.PATH=VALUE ...]
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Sequence

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from momentum_jax.experiments.cli import ExperimentRun, start_experiment  # noqa: E402
from momentum_jax.experiments.gamma_depth_law import analysis  # noqa: E402
from momentum_jax.experiments.gamma_depth_law.config import (  # noqa: E402
    PAPER_A, PAPER_B, ExperimentConfig, SweepConfig, get_config)
from momentum_jax.experiments.gamma_depth_law.ensemble import (  # noqa: E402
    Members, train_ensemble)
from momentum_jax.nn import TransformerConfig  # noqa: E402

# The held-out sequences' key, apart from the training seeds' keys key(0), key(1), ...
EVAL_SEED = 987_654_321
# The learned-γ members of a unit: on the plain shear and on the gain-normalised one.
SHEARS = ("learned", "learned_normalized")


def _unit_name(task_name: str, depth: int) -> str:
  return f"{task_name}_N{depth}"


def _units(config: ExperimentConfig) -> list[tuple[str, object, int]]:
  return [(name, task, depth) for name, task in config.tasks for depth in config.sweep.depths]


def _model(task, sweep: SweepConfig, depth: int, normalize_gain: bool) -> TransformerConfig:
  return TransformerConfig(
      vocab_size=task.vocab_size, context_len=task.seq_len, num_layers=depth,
      d_model=sweep.d_model, num_heads=sweep.num_heads, mlp_dim=0,
      attention="momentum_learned", attention_params={"normalize_gain": normalize_gain},
      attention_init={"gamma": sweep.learned_init})


def _train_unit(task, depth: int, sweep: SweepConfig) -> dict:
  """The γ grid and the learned-γ members of one (task, depth), for every seed."""
  eval_batch = task.sample(jax.random.key(EVAL_SEED), sweep.eval_sequences)
  seeds = np.arange(sweep.seeds)
  grid = len(sweep.gammas)
  budget = dict(steps=sweep.steps, chunk_steps=sweep.chunk_steps, batch_size=sweep.batch_size,
                learning_rate=sweep.learning_rate, eval_batch=eval_batch)
  # Ensemble 1: per seed, the grid (fixed γ) and one learned-γ member, on the plain shear.
  members = Members(seed=np.repeat(seeds, grid + 1),
                    gamma=np.tile(list(sweep.gammas) + [sweep.learned_init], sweep.seeds),
                    learned=np.tile([False] * grid + [True], sweep.seeds))
  plain = train_ensemble(_model(task, sweep, depth, False), task, members, **budget)
  by_seed = lambda x: x.reshape((sweep.seeds, grid + 1) + x.shape[1:])
  loss, accuracy, gamma = by_seed(plain.eval_loss), by_seed(plain.eval_accuracy), by_seed(
      plain.gamma)
  curve = plain.gamma_curve.reshape((-1, sweep.seeds, grid + 1, depth))[:, :, grid]
  unit = {"grid_loss": loss[:, :grid].tolist(), "grid_accuracy": accuracy[:, :grid].tolist(),
          "learned": {"loss": loss[:, grid].tolist(), "accuracy": accuracy[:, grid].tolist(),
                      "gamma": gamma[:, grid].tolist(), "gamma_curve": curve.tolist()}}
  # Ensemble 2: per seed, one learned-γ member on the gain-normalised shear.
  members = Members(seed=seeds, gamma=np.full(sweep.seeds, sweep.learned_init),
                    learned=np.ones(sweep.seeds, bool))
  normalized = train_ensemble(_model(task, sweep, depth, True), task, members, **budget)
  unit["learned_normalized"] = {
      "loss": normalized.eval_loss.tolist(), "accuracy": normalized.eval_accuracy.tolist(),
      "gamma": normalized.gamma.tolist(), "gamma_curve": normalized.gamma_curve.tolist()}
  return unit


def _run_units(run: ExperimentRun) -> dict[str, dict]:
  """Every unit's results, from its saved file when it finished under this config."""
  results = {}
  for task_name, task, depth in _units(run.config):
    name = _unit_name(task_name, depth)
    path = run.out_dir / name / "unit.json"
    if path.exists():
      saved = json.loads(path.read_text())
      if saved["config_hash"] != run.config_hash:
        raise SystemExit(f"{path} was computed under config {saved['config_hash']}, this run's "
                         f"is {run.config_hash}: pass --fresh to recompute it, or another "
                         "--output-dir")
      print(f"{name}: finished earlier ({saved['seconds']:.0f} s), read from {path}")
      results[name] = saved
      continue
    start = time.perf_counter()
    unit = _train_unit(task, depth, run.config.sweep)
    unit.update(seconds=time.perf_counter() - start, config_hash=run.config_hash)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(unit))
    results[name] = unit
    if run.progress:
      print(f"{name}: {unit['seconds']:.0f} s")
  return results


def _summarise(config: ExperimentConfig, units: dict[str, dict]) -> dict[str, dict]:
  """Per task: γ*(N) with intervals, the fit, the verdict and the learned γ per depth."""
  sweep = config.sweep
  rng = np.random.default_rng(0)
  resamples = analysis.seed_resamples(sweep.seeds, sweep.bootstrap, rng)
  tasks = {}
  for task_name, _ in config.tasks:
    by_depth, draws, rows = {}, [], {}
    for depth in sweep.depths:
      unit = units[_unit_name(task_name, depth)]
      loss_SxG = np.asarray(unit["grid_loss"])
      interval, draws_R = analysis.gamma_star(sweep.gammas, loss_SxG, resamples)
      by_depth[depth] = interval
      draws.append(draws_R)
      best = int(np.argmin(loss_SxG.mean(0)))
      rows[depth] = {
          "gamma_star": interval._asdict(), "paper_gamma_star": PAPER_A * depth ** PAPER_B,
          "grid_loss_mean": loss_SxG.mean(0).tolist(),
          "grid_accuracy_mean": np.asarray(unit["grid_accuracy"]).mean(0).tolist(),
          "best_grid_gamma": sweep.gammas[best],
          **{shear: {"gamma_mean": float(np.mean(unit[shear]["gamma"])),
                     "gamma_per_layer": np.mean(unit[shear]["gamma"], axis=(0, 2)).tolist(),
                     "loss_mean": float(np.mean(unit[shear]["loss"])),
                     "accuracy_mean": float(np.mean(unit[shear]["accuracy"]))}
             for shear in SHEARS}}
    star_N = np.asarray([by_depth[d].value for d in sweep.depths])
    fit = analysis.fit_power_law(sweep.depths, star_N, np.stack(draws))
    word, reason = analysis.verdict(by_depth, fit, PAPER_A, PAPER_B)
    tasks[task_name] = {"depths": rows, "fit": {"a": fit.a._asdict(), "b": fit.b._asdict(),
                                                "depths_used": fit.depths_used,
                                                "resamples_fitted": fit.resamples_fitted},
                        "verdict": word, "reason": reason}
  return tasks


def _print(config: ExperimentConfig, tasks: dict[str, dict]) -> None:
  gammas = config.sweep.gammas
  for task_name, summary in tasks.items():
    for key, what, form in (("grid_loss_mean", "loss", ".3f"),
                            ("grid_accuracy_mean", "accuracy", ".1%")):
      print(f"\n== {task_name}: held-out {what} by depth (rows) and γ (columns), mean of "
            f"{config.sweep.seeds} seeds")
      print(f"{'N':>3} " + "".join(f"{g:>8.3g}" for g in gammas))
      for depth, row in summary["depths"].items():
        print(f"{depth:>3} " + "".join(f"{x:>8{form}}" for x in row[key]))
    print(f"\n{'N':>3}{'γ* [95% interval]':>24}{'paper':>8}{'acc@γ*grid':>12}"
          f"{'learned γ':>11}{'loss':>8}{'learned γ (norm.)':>19}{'loss':>8}")
    for depth, row in summary["depths"].items():
      star = row["gamma_star"]
      best = gammas.index(row["best_grid_gamma"])
      print(f"{depth:>3}{star['value']:>9.2f} [{star['low']:.2f}, {star['high']:.2f}]".ljust(27)
            + f"{row['paper_gamma_star']:>8.2f}{row['grid_accuracy_mean'][best]:>12.1%}"
            f"{row['learned']['gamma_mean']:>11.2f}{row['learned']['loss_mean']:>8.3f}"
            f"{row['learned_normalized']['gamma_mean']:>19.2f}"
            f"{row['learned_normalized']['loss_mean']:>8.3f}")
    a, b = summary["fit"]["a"], summary["fit"]["b"]
    print(f"fit γ* = a·N^b on depths {summary['fit']['depths_used']}: "
          f"a = {a['value']:.2f} [{a['low']:.2f}, {a['high']:.2f}] (paper {PAPER_A}), "
          f"b = {b['value']:.2f} [{b['low']:.2f}, {b['high']:.2f}] (paper {PAPER_B})")
    print(f"verdict: {summary['verdict']}: {summary['reason']}")


def _plot(config: ExperimentConfig, tasks: dict[str, dict], path: pathlib.Path) -> None:
  sweep = config.sweep
  positive = [g for g in sweep.gammas if g > 0]
  floor = positive[0] / 2
  fig, axes = plt.subplots(1, 1 + len(tasks), figsize=(5 * (1 + len(tasks)), 4.2))
  law, curves = axes[0], axes[1:]
  depths = np.asarray(sweep.depths, np.float64)
  line_n = np.linspace(depths.min(), depths.max(), 50)
  law.plot(line_n, PAPER_A * line_n ** PAPER_B, "k--", label="paper 4.17·N^−0.74")
  for (task_name, summary), color in zip(tasks.items(), ("C0", "C1", "C2", "C3")):
    stars = [summary["depths"][d]["gamma_star"] for d in sweep.depths]
    values = np.asarray([max(s["value"], floor) for s in stars])
    lows = np.asarray([max(s["low"], floor) for s in stars])
    highs = np.asarray([max(s["high"], floor) for s in stars])
    law.errorbar(depths, values, yerr=[values - lows, highs - values], fmt="o", color=color,
                 capsize=3, label=f"{task_name} γ* (γ*=0 drawn at {floor:.2g})")
    for shear, marker in (("learned", "^"), ("learned_normalized", "x")):
      learned = [summary["depths"][d][shear]["gamma_mean"] for d in sweep.depths]
      law.plot(depths, learned, marker, color=color, mfc="none",
               label=f"{task_name} {shear.replace('_', ' ')} γ")
    a, b = summary["fit"]["a"]["value"], summary["fit"]["b"]["value"]
    if np.isfinite(a):
      law.plot(line_n, a * line_n ** b, "-", color=color, alpha=0.6,
               label=f"{task_name} fit {a:.2f}·N^{b:.2f}")
  law.set(xscale="log", yscale="log", xlabel="layers N", ylabel="γ*", title="γ*–depth law")
  law.set_xticks(depths, [str(d) for d in sweep.depths])
  law.minorticks_off()
  law.legend(fontsize=7)
  law.grid(alpha=0.3, which="both")
  for ax, (task_name, summary) in zip(curves, tasks.items()):
    for depth in sweep.depths:
      ax.plot([max(g, floor) for g in sweep.gammas],
              summary["depths"][depth]["grid_loss_mean"], "o-", markersize=3, label=f"N={depth}")
    ax.set(xscale="log", xlabel=f"γ (γ=0 drawn at {floor:.2g})", ylabel="held-out loss",
           title=f"{task_name}: loss over the γ grid")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict:
  run = start_experiment(argv, __doc__, "gamma_depth_law", get_config,
                         workdirs=lambda config: (_unit_name(name, depth)
                                                  for name, _, depth in _units(config)))
  start = time.perf_counter()
  units = _run_units(run)
  tasks = _summarise(run.config, units)
  summary = {"tasks": tasks, "units": units, "seconds": time.perf_counter() - start,
             "training_seconds": sum(unit["seconds"] for unit in units.values()),
             "quick": run.quick, **run.record()}
  (run.out_dir / "results.json").write_text(json.dumps(summary, indent=2))
  _plot(run.config, tasks, run.out_dir / "gamma_star.png")
  _print(run.config, tasks)
  print(f"\ntraining {summary['training_seconds']:.0f} s (all units), this call "
        f"{summary['seconds']:.0f} s; wrote {run.out_dir / 'results.json'} and "
        f"{run.out_dir / 'gamma_star.png'}")
  return summary


if __name__ == "__main__":
  main()

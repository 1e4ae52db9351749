"""Measures γ*(N) for momentum attention over depths and fits γ* = a · N^b (see ``config.py``).

    python -m momentum_jax.experiments.gamma_depth_law [--quick] [--fresh] [...]
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from momentum_jax.experiments.cli import start_experiment
from momentum_jax.experiments.gamma_depth_law.analysis import SHEARS, summarise
from momentum_jax.experiments.gamma_depth_law.config import (
    PAPER_A, PAPER_B, ExperimentConfig, get_config)
from momentum_jax.experiments.gamma_depth_law.ensemble import train_unit
from momentum_jax.experiments.recipe import cached_unit, finish, new_figure


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


def _plot(config: ExperimentConfig, tasks: dict[str, dict]):
  sweep = config.sweep
  positive = [g for g in sweep.gammas if g > 0]
  floor = positive[0] / 2
  fig, axes = new_figure(1, 1 + len(tasks), figsize=(5 * (1 + len(tasks)), 4.2))
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
    for shear, marker in zip(SHEARS, "^x"):
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
  return fig


def main(argv: Sequence[str] | None = None) -> dict:
  run = start_experiment(argv, __doc__, "gamma_depth_law", get_config,
                         workdirs=lambda config: (name for name, *_ in config.units()))
  start = time.perf_counter()
  units = {name: cached_unit(run, name, lambda: train_unit(task, depth, run.config.sweep))
           for name, _, task, depth in run.config.units()}
  tasks = summarise(run.config, units)
  _print(run.config, tasks)
  training_seconds = sum(unit["seconds"] for unit in units.values())
  seconds = time.perf_counter() - start
  print(f"\ntraining {training_seconds:.0f} s (all units), this call {seconds:.0f} s")
  return finish(run, {"tasks": tasks, "units": units, "seconds": seconds,
                      "training_seconds": training_seconds},
                {"gamma_star.png": _plot(run.config, tasks)})


if __name__ == "__main__":
  main()

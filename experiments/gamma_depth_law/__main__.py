"""Measures γ*(N) for momentum attention over depths, as the loss-optimal γ and as the upper edge
of the working window (the largest γ reaching 90 % held-out accuracy), and fits each with
a · N^b (see ``config.py`` and ``analysis.py``).

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
    edge = summary["upper_edge"]
    edge_header = f"edge@{edge['threshold']:.0%} [interval]"
    print(f"\n{'N':>3}{'γ* [95% interval]':>24}{'paper':>8}{'acc@γ*grid':>12}{edge_header:>24}"
          f"{'softmax acc':>13}")
    for depth, row in summary["depths"].items():
      star = row["gamma_star"]
      best = gammas.index(row["best_grid_gamma"])
      print(f"{depth:>3}{star['value']:>9.2f} [{star['low']:.2f}, {star['high']:.2f}]".ljust(27)
            + f"{row['paper_gamma_star']:>8.2f}{row['grid_accuracy_mean'][best]:>12.1%}"
            + f"{_edge_text(row):>24}{row['grid_accuracy_mean'][0]:>13.1%}")
    _print_learned(summary)
    _print_fit("γ*", summary)
    print(f"(edge: the largest γ reaching {edge['threshold']:.0%} held-out accuracy, "
          "interpolated in log γ; ≥ at the top of the grid, — where no γ reaches it)")
    _print_fit("edge", edge)


def _print_learned(summary: dict) -> None:
  """Per depth, each learned γ's seed mean (held-out loss) by shear and start."""
  first = next(iter(summary["depths"].values()))
  columns = [(shear, start) for shear in SHEARS for start in range(len(first[shear]))]
  print("\nlearned γ (held-out loss), mean of the seeds, by shear and starting γ:")
  print(f"{'N':>3}" + "".join(
      f"{shear.replace('learned_normalized', 'norm.').replace('learned', 'plain')}"
      f" from {first[shear][start]['init']:.2f}".rjust(20) for shear, start in columns))
  for depth, row in summary["depths"].items():
    print(f"{depth:>3}" + "".join(
        f"{row[shear][start]['gamma_mean']:.2f} ({row[shear][start]['loss_mean']:.3f})".rjust(20)
        for shear, start in columns))


def _edge_text(row: dict) -> str:
  """The upper edge with its interval: "≥" where the grid's top γ still reaches the threshold,
  "—" where no γ does."""
  edge = row["upper_edge"]
  value = "—" if np.isnan(edge["value"]) else (
      ("≥" if row["upper_edge_at_grid_top"] else "") + f"{edge['value']:.2f}")
  return f"{value} [{edge['low']:.2f}, {edge['high']:.2f}]"


def _print_fit(what: str, estimator: dict) -> None:
  a, b = estimator["fit"]["a"], estimator["fit"]["b"]
  print(f"fit {what} = a·N^b on depths {estimator['fit']['depths_used']}: "
        f"a = {a['value']:.2f} [{a['low']:.2f}, {a['high']:.2f}] (paper {PAPER_A}), "
        f"b = {b['value']:.2f} [{b['low']:.2f}, {b['high']:.2f}] (paper {PAPER_B})")
  print(f"{what} verdict: {estimator['verdict']}: {estimator['reason']}")


def _law_panel(law, config: ExperimentConfig, tasks: dict[str, dict], estimator: str,
               floor: float) -> None:
  """The estimates of ``estimator`` ("gamma_star" or "upper_edge") per depth with their
  intervals and fits against the paper's law; 0 drawn at ``floor``, NaN edges left out."""
  sweep = config.sweep
  depths = np.asarray(sweep.depths, np.float64)
  line_n = np.linspace(depths.min(), depths.max(), 50)
  law.plot(line_n, PAPER_A * line_n ** PAPER_B, "k--", label="paper 4.17·N^−0.74")
  what = "γ*" if estimator == "gamma_star" else "edge"
  for (task_name, summary), color in zip(tasks.items(), ("C0", "C1", "C2", "C3")):
    found = [(d, summary["depths"][d][estimator]) for d in sweep.depths
             if np.isfinite(summary["depths"][d][estimator]["value"])]
    values = np.asarray([max(s["value"], floor) for _, s in found])
    lows = np.asarray([max(s["low"], floor) for _, s in found])
    highs = np.asarray([max(s["high"], floor) for _, s in found])
    law.errorbar([d for d, _ in found], values, yerr=[values - lows, highs - values], fmt="o",
                 color=color, capsize=3, label=f"{task_name} {what} (0 drawn at {floor:.2g})")
    fit = summary["fit"] if estimator == "gamma_star" else summary["upper_edge"]["fit"]
    a, b = fit["a"]["value"], fit["b"]["value"]
    if np.isfinite(a):
      law.plot(line_n, a * line_n ** b, "-", color=color, alpha=0.6,
               label=f"{task_name} fit {a:.2f}·N^{b:.2f}")
    if estimator == "gamma_star":
      for shear, markers in zip(SHEARS, ("^v<>", "x+12")):
        for start, learned_row in enumerate(summary["depths"][sweep.depths[0]][shear]):
          learned = [summary["depths"][d][shear][start]["gamma_mean"] for d in sweep.depths]
          init, marker = learned_row["init"], markers[start % len(markers)]
          law.plot(depths, learned, marker, color=color, mfc="none",
                   label=f"{task_name} {shear.replace('_', ' ')} γ from {init:.2f}")
  law.set(xscale="log", yscale="log", xlabel="layers N")
  law.set_xticks(depths, [str(d) for d in sweep.depths])
  law.minorticks_off()
  law.legend(fontsize=7)
  law.grid(alpha=0.3, which="both")


def _plot(config: ExperimentConfig, tasks: dict[str, dict]):
  """Top row: the loss-optimal γ* against the law, then each task's loss over the γ grid;
  bottom row: the upper edge of the working window against the law, then each task's
  accuracy over the grid with the threshold."""
  sweep = config.sweep
  positive = [g for g in sweep.gammas if g > 0]
  floor = positive[0] / 2
  fig, axes = new_figure(2, 1 + len(tasks), figsize=(5 * (1 + len(tasks)), 8.4), squeeze=False)
  threshold = next(iter(tasks.values()))["upper_edge"]["threshold"]
  _law_panel(axes[0, 0], config, tasks, "gamma_star", floor)
  axes[0, 0].set(ylabel="γ*", title="loss-optimal γ*–depth law")
  _law_panel(axes[1, 0], config, tasks, "upper_edge", floor)
  axes[1, 0].set(ylabel=f"largest γ reaching {threshold:.0%}",
                 title=f"upper edge of the working window (accuracy ≥ {threshold:.0%})")
  for column, (task_name, summary) in enumerate(tasks.items(), start=1):
    for ax, key, what in ((axes[0, column], "grid_loss_mean", "loss"),
                          (axes[1, column], "grid_accuracy_mean", "accuracy")):
      for depth in sweep.depths:
        ax.plot([max(g, floor) for g in sweep.gammas], summary["depths"][depth][key], "o-",
                markersize=3, label=f"N={depth}")
      ax.set(xscale="log", xlabel=f"γ (γ=0 drawn at {floor:.2g})", ylabel=f"held-out {what}",
             title=f"{task_name}: {what} over the γ grid")
      ax.grid(alpha=0.3)
    axes[1, column].axhline(threshold, color="k", linestyle=":", label=f"{threshold:.0%}")
    for ax in axes[:, column]:
      ax.legend(fontsize=7)
  return fig


def main(argv: Sequence[str] | None = None) -> dict:
  run = start_experiment(argv, __doc__, "gamma_depth_law", get_config,
                         workdirs=lambda config: (name for name, *_ in config.units()))
  start = time.perf_counter()
  config = run.config
  units = {name: cached_unit(
      run, name, lambda: train_unit(task, depth, config.sweep, config.budget(task_name)),
      identity=config.unit_identity(task_name, depth))
           for name, task_name, task, depth in config.units()}
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

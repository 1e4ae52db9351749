"""Trains contrastive retrieval on pairs with a share of mismatched ones, with and without ALBEF's
momentum distillation, over seeds; writes a table, JSON and a plot (see ``config.py``).

    python -m momentum_jax.experiments.momentum_distillation [--quick] [--fresh] [...]
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from momentum_jax.experiments.cli import start_experiment
from momentum_jax.experiments.momentum_distillation.config import (
    ExperimentConfig, get_config, method_name)
from momentum_jax.experiments.momentum_distillation.training import train_run
from momentum_jax.experiments.recipe import cached_unit, finish, new_figure, print_table

BASELINE_ALPHA = 0.0


def _mean_std(values: Sequence[float]) -> dict:
  """``{"mean", "std", "values"}``; the std is over seeds (ddof 1; 0 for one seed)."""
  x = np.asarray(values, np.float64)
  return {"mean": float(x.mean()), "std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
          "values": x.tolist()}


def summarise(config: ExperimentConfig, units: dict[str, dict]) -> dict[str, dict]:
  """``{noise label: row}``: per method the held-out top-1 retrieval (mean of both directions)
  and the fit of the mismatched training pairs, mean ± std over seeds, and per distilled method
  its paired gain over α = 0 (same seed: same data, same initial weights)."""
  by_key = {(noise, alpha, seed): units[name] for name, noise, alpha, seed in config.units()}
  seeds = range(config.sweep.seeds)
  rows = {}
  for noise in config.sweep.noise_levels:
    row = {"noise": noise}
    for alpha in config.sweep.alphas:
      method = method_name(alpha)
      row[method] = _mean_std([by_key[noise, alpha, s]["retrieval"]["mean"] for s in seeds])
      row[f"{method}_fit_mismatched"] = _mean_std(
          [by_key[noise, alpha, s]["train_fit"]["mismatched"] for s in seeds])
      if alpha != BASELINE_ALPHA:
        row[f"{method}_gain"] = _mean_std(
            [by_key[noise, alpha, s]["retrieval"]["mean"]
             - by_key[noise, BASELINE_ALPHA, s]["retrieval"]["mean"] for s in seeds])
    rows[f"{noise:.0%} mismatched"] = row
  return rows


def verdict(config: ExperimentConfig, rows: dict[str, dict]) -> str:
  """Whether momentum distillation raised held-out retrieval under noise: supported when, at every
  noise level above 0, the gain over α = 0 is positive in every seed; refuted when its mean is
  not positive at any of them; mixed otherwise."""
  distilled = [method_name(a) for a in config.sweep.alphas if a != BASELINE_ALPHA]
  noisy = [row for row in rows.values() if row["noise"] > 0]
  parts, outcomes = [], []
  for method in distilled:
    gains = [row[f"{method}_gain"] for row in noisy]
    every_seed = all(min(g["values"]) > 0 for g in gains)
    none = all(g["mean"] <= 0 for g in gains)
    outcomes.append("supported" if every_seed else "refuted" if none else "mixed")
    parts.append(f"{method}: gain over itc " + ", ".join(
        f"{row['noise']:.0%}: {g['mean']:+.1%} ± {g['std']:.1%}" for row, g in zip(noisy, gains)))
  outcome = outcomes[0] if len(set(outcomes)) == 1 else "mixed"
  return f"{outcome} ({'; '.join(parts)})" if noisy else "no noisy level in the sweep"


def _columns(config: ExperimentConfig) -> list:
  columns = []
  for alpha in config.sweep.alphas:
    method = method_name(alpha)
    columns.append((f"{method} R@1", "18s", lambda r, m=method: _pm(r[m])))
    if alpha != BASELINE_ALPHA:
      columns.append((f"{method} gain", "18s", lambda r, m=method: _pm(r[f"{m}_gain"], "+")))
  for alpha in config.sweep.alphas:
    method = method_name(alpha)
    columns.append((f"{method} fit\nmismatched", "18s",
                    lambda r, m=method: _pm(r[f"{m}_fit_mismatched"])))
  return columns


def _pm(stat: dict, sign: str = "") -> str:
  if np.isnan(stat["mean"]):
    return "-"
  return f"{stat['mean']:{sign}.1%} ± {stat['std']:.1%}"


def _plot(config: ExperimentConfig, rows: dict[str, dict], units: dict[str, dict]):
  fig, (ax_acc, ax_loss) = new_figure(1, 2, figsize=(11, 4.2))
  noise = [row["noise"] for row in rows.values()]
  for alpha in config.sweep.alphas:
    method = method_name(alpha)
    ax_acc.errorbar(noise, [row[method]["mean"] for row in rows.values()],
                    yerr=[row[method]["std"] for row in rows.values()], marker="o", capsize=3,
                    label=f"{method} (α = {alpha:g})")
  ax_acc.set(xlabel="share of mismatched training pairs",
             ylabel="held-out top-1 retrieval (mean ± std over seeds)", ylim=(0, 1.02))
  chunk = config.sweep.chunk_steps
  for name, unit_noise, alpha, seed in config.units():
    if seed == 0:
      curve = units[name]["loss_curve"]
      ax_loss.plot(chunk * np.arange(1, len(curve) + 1), curve, marker=".",
                   ls="-" if alpha == BASELINE_ALPHA else "--",
                   label=f"{unit_noise:.0%}, {method_name(alpha)}")
  ax_loss.set(xlabel="training step", ylabel="training loss (chunk mean), seed 0")
  for ax in (ax_acc, ax_loss):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle("Momentum distillation (ALBEF) on noisy pairs")
  return fig


def main(argv: Sequence[str] | None = None) -> dict:
  run = start_experiment(argv, __doc__, "momentum_distillation", get_config,
                         workdirs=lambda config: (name for name, *_ in config.units()))
  config = run.config
  if BASELINE_ALPHA not in config.sweep.alphas:
    raise SystemExit(f"sweep.alphas must hold the baseline α = {BASELINE_ALPHA}, got "
                     f"{config.sweep.alphas}")
  start = time.perf_counter()
  units = {name: cached_unit(run, name, lambda n=noise, a=alpha, s=seed: train_run(
      config.task, config.sweep, n, a, s)) for name, noise, alpha, seed in config.units()}
  rows = summarise(config, units)
  outcome = verdict(config, rows)
  print(f"\nheld-out top-1 retrieval (mean of a→b and b→a over {config.task.eval_pairs} clean "
        f"pairs), mean ± std over {config.sweep.seeds} seeds")
  print_table("training pairs", 18, _columns(config), rows)
  print(f"\nmomentum distillation helps learning from noisy pairs: {outcome}")
  seconds = time.perf_counter() - start
  training_seconds = sum(unit["seconds"] for unit in units.values())
  print(f"training {training_seconds:.0f} s (all runs), this call {seconds:.0f} s")
  return finish(run, {"task": config.task.__dict__, "rows": rows, "verdict": outcome,
                      "units": units, "seconds": seconds, "training_seconds": training_seconds},
                {"retrieval.png": _plot(config, rows, units)})


if __name__ == "__main__":
  main()

"""Trains the models of ``config.py`` on the induction task; writes a table, JSON and a plot.

    python -m momentum_jax.experiments.single_layer_induction [--quick] [--fresh] [...]
"""

from __future__ import annotations

from collections.abc import Sequence

from momentum_jax.experiments.cli import start_experiment
from momentum_jax.experiments.recipe import (
    Trained, each_model, finish, new_figure, print_table, series, train_models)
from momentum_jax.experiments.single_layer_induction.config import get_config

TARGETS = {"momentum_1L (best)": (">=", 0.80), "softmax_1L": ("<=", 0.20),
           "softmax_2L": (">=", 0.95)}
COLUMNS = [("final acc", "10.1%", "eval_accuracy"), ("peak acc", "10.1%", "peak_eval_accuracy"),
           ("loss", "8.3f", "eval_loss"), ("time s", "8.1f", "seconds")]


def _row(trained: Trained) -> dict:
  steps, accs = series(trained.result.history, "eval_accuracy")
  return {"eval_accuracy": float(trained.result.final_eval["accuracy"]),
          "eval_loss": float(trained.result.final_eval["loss"]),
          "peak_eval_accuracy": max(accs) if accs else float("nan"), "seconds": trained.seconds,
          "curve_steps": steps, "curve_accuracy": accs, "model": trained.model.to_dict()}


def _check(results: dict[str, dict]) -> dict[str, dict]:
  momentum = [r["eval_accuracy"] for name, r in results.items() if name.startswith("momentum_1L")]
  reached = {"momentum_1L (best)": max(momentum) if momentum else float("nan"),
             "softmax_1L": results["softmax_1L"]["eval_accuracy"],
             "softmax_2L": results["softmax_2L"]["eval_accuracy"]}
  out = {}
  for name, (op, target) in TARGETS.items():
    value = reached[name]
    met = value >= target if op == ">=" else value <= target
    out[name] = {"accuracy": value, "target": f"{op} {target:.0%}", "met": bool(met)}
  return out


def _plot(results: dict[str, dict]):
  fig, ax = new_figure(figsize=(7, 4.5))
  for name, r in results.items():
    ax.plot(r["curve_steps"], r["curve_accuracy"], marker="o", markersize=3, label=name)
  ax.set(xlabel="training step", ylabel="held-out induction accuracy", ylim=(0, 1.02),
         title="Single-layer induction: momentum vs softmax attention")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return fig


def main(argv: Sequence[str] | None = None) -> dict:
  run = start_experiment(argv, __doc__, "single_layer_induction", get_config)
  config = run.config
  results = train_models(run, each_model(config.models, config.train), config.task, _row)
  checks = _check(results)
  print()
  print_table("model", 22, COLUMNS, results)
  print("\ntargets (of the full run):" if run.quick else "\ntargets:")
  for name, c in checks.items():
    print(f"  {name:<20} {c['accuracy']:.1%} (target {c['target']}): "
          f"{'met' if c['met'] else 'NOT met'}")
  return finish(run, {"task": config.task.__dict__, "train": config.train.to_dict(),
                      "results": results, "targets": checks}, {"accuracy.png": _plot(results)})


if __name__ == "__main__":
  main()

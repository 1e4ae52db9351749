"""Trains the models of ``config.py`` on the induction task; writes a table, JSON and a plot.

    python -m momentum_jax.experiments.single_layer_induction [--quick] [--output-dir DIR]
        [--fresh] [--no-progress] [--config.PATH=VALUE ...]
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from momentum_jax.experiments.cli import start_experiment  # noqa: E402
from momentum_jax.experiments.single_layer_induction.config import get_config  # noqa: E402
from momentum_jax.train import train  # noqa: E402

TARGETS = {"momentum_1L (best)": (">=", 0.80), "softmax_1L": ("<=", 0.20),
           "softmax_2L": (">=", 0.95)}


def _eval_curve(history: list[dict]) -> tuple[list[int], list[float]]:
  evals = [record for record in history if "eval_accuracy" in record]
  return [r["step"] for r in evals], [r["eval_accuracy"] for r in evals]


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


def _plot(results: dict[str, dict], path: pathlib.Path) -> None:
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name, r in results.items():
    ax.plot(r["curve_steps"], r["curve_accuracy"], marker="o", markersize=3, label=name)
  ax.set_xlabel("training step")
  ax.set_ylabel("held-out induction accuracy")
  ax.set_ylim(0, 1.02)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title("Single-layer induction: momentum vs softmax attention")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict:
  run = start_experiment(argv, __doc__, "single_layer_induction", get_config,
                         workdirs=lambda config: (name for name, _ in config.models))
  config, out_dir = run.config, run.out_dir
  results: dict[str, dict] = {}
  for name, model_config in config.models:
    start = time.perf_counter()
    result = train(model_config, config.train, config.task, out_dir / name,
                   progress=run.progress, experiment=run.experiment)
    steps, accs = _eval_curve(result.history)
    results[name] = {
        "eval_accuracy": float(result.final_eval["accuracy"]),
        "eval_loss": float(result.final_eval["loss"]),
        "peak_eval_accuracy": max(accs) if accs else float("nan"),
        "seconds": time.perf_counter() - start,
        "curve_steps": steps, "curve_accuracy": accs,
        "model": model_config.to_dict(),
    }

  checks = _check(results)
  summary = {"task": config.task.__dict__, "train": config.train.to_dict(), "results": results,
             "targets": checks, "quick": run.quick, **run.record()}
  (out_dir / "results.json").write_text(json.dumps(summary, indent=2))
  _plot(results, out_dir / "accuracy.png")

  print(f"\n{'model':<22}{'final acc':>10}{'peak acc':>10}{'loss':>8}{'time s':>8}")
  for name, r in results.items():
    print(f"{name:<22}{r['eval_accuracy']:>10.1%}{r['peak_eval_accuracy']:>10.1%}"
          f"{r['eval_loss']:>8.3f}{r['seconds']:>8.1f}")
  print("\ntargets:")
  for name, c in checks.items():
    print(f"  {name:<20} {c['accuracy']:.1%} (target {c['target']}): "
          f"{'met' if c['met'] else 'NOT met'}")
  print(f"\nwrote {out_dir / 'results.json'} and {out_dir / 'accuracy.png'}")
  return summary


if __name__ == "__main__":
  main()

"""Trains the runs of ``config.py`` through the same gradient spikes; writes a table, JSON and a
plot.

    python -m momentum_jax.experiments.spike_robustness [--quick] [--output-dir DIR]
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
from momentum_jax.experiments.spike_robustness.config import (  # noqa: E402
    SPIKE_FACTOR,
    WINDOW,
    get_config,
)
from momentum_jax.train import train  # noqa: E402

CEILING = "adamw_no_spikes"


def _curves(history: list[dict]) -> dict[str, list]:
  train_records = [r for r in history if "train_loss" in r]
  eval_records = [r for r in history if "eval_loss" in r]
  return {"steps": [r["step"] for r in train_records],
          "train_loss": [r["train_loss"] for r in train_records],
          "eval_steps": [r["step"] for r in eval_records],
          "eval_accuracy": [r["eval_accuracy"] for r in eval_records]}


def _max_loss_after(curves: dict[str, list], spikes: Sequence[int]) -> float:
  """The largest train loss logged in the ``WINDOW`` steps after any spike (nan: no spikes).

  The loss logged at step k is measured before the k-th update, so a spike at step s first shows
  at step s + 1.
  """
  losses = [loss for step, loss in zip(curves["steps"], curves["train_loss"])
            if any(s < step <= s + WINDOW for s in spikes)]
  return max(losses) if losses else float("nan")


def _plot(results: dict[str, dict], spikes: Sequence[int], path: pathlib.Path) -> None:
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5))
  for name, r in results.items():
    c = r["curves"]
    ax_loss.plot(c["steps"], c["train_loss"], lw=0.8, alpha=0.85, label=name)
    ax_acc.plot(c["eval_steps"], c["eval_accuracy"], marker="o", markersize=3, label=name)
  for ax in (ax_loss, ax_acc):
    for i, s in enumerate(spikes):
      ax.axvline(s, color="red", ls="--", lw=0.8, label="gradient ×1000" if i == 0 else None)
    ax.set_xlabel("training step")
    ax.grid(alpha=0.3)
  ax_loss.set_yscale("log")
  ax_loss.set_ylabel("train loss (every step)")
  ax_acc.set_ylabel("held-out induction accuracy")
  ax_acc.set_ylim(0, 1.02)
  ax_loss.legend(fontsize=8)
  fig.suptitle("Gradient spikes: AdamW, AdamW + clipping, SPAM, Stable-SPAM")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _verdict(results: dict[str, dict]) -> str:
  spiked = {n: r for n, r in results.items() if n != CEILING}
  best = min(spiked, key=lambda n: spiked[n]["eval_loss"])
  order = ", ".join(f"{n} {r['eval_loss']:.3f}"
                    for n, r in sorted(spiked.items(), key=lambda kv: kv[1]["eval_loss"]))
  ceiling = results[CEILING]["eval_loss"] if CEILING in results else float("nan")
  return (f"best under spikes (final eval loss): {best}; ranking: {order}; "
          f"no-spike ceiling {ceiling:.3f}")


def main(argv: Sequence[str] | None = None) -> dict:
  run = start_experiment(argv, __doc__, "spike_robustness", get_config,
                         workdirs=lambda config: (name for name, _ in config.runs))
  config, out_dir = run.config, run.out_dir
  total = time.perf_counter()
  results: dict[str, dict] = {}
  for name, train_config in config.runs:
    start = time.perf_counter()
    result = train(config.model, train_config, config.task, out_dir / name,
                   progress=run.progress, experiment=run.experiment)
    curves = _curves(result.history)
    results[name] = {
        "eval_loss": float(result.final_eval["loss"]),
        "eval_accuracy": float(result.final_eval["accuracy"]),
        "max_loss_after_spikes": _max_loss_after(curves, config.spikes),
        "seconds": time.perf_counter() - start,
        "train": train_config.to_dict(),
        "curves": curves,
    }
  verdict = _verdict(results)
  summary = {"task": config.task.__dict__, "model": config.model.to_dict(),
             "spikes": list(config.spikes), "window": WINDOW, "results": results,
             "verdict": verdict, "seconds": time.perf_counter() - total, "quick": run.quick,
             **run.record()}
  (out_dir / "results.json").write_text(json.dumps(summary, indent=2))
  _plot(results, config.spikes, out_dir / "loss_curves.png")

  print(f"\ngradient ×{SPIKE_FACTOR:g} at steps {list(config.spikes)}")
  print(f"{'run':<18}{'eval loss':>10}{'eval acc':>10}{'max loss':>10}{'time s':>8}")
  print(f"{'':<18}{'':>10}{'':>10}{f'+{WINDOW} st.':>10}")
  for name, r in results.items():
    print(f"{name:<18}{r['eval_loss']:>10.3f}{r['eval_accuracy']:>10.1%}"
          f"{r['max_loss_after_spikes']:>10.3f}{r['seconds']:>8.1f}")
  print(f"\n{verdict}")
  print(f"total {summary['seconds']:.0f} s; wrote {out_dir / 'results.json'} and "
        f"{out_dir / 'loss_curves.png'}")
  return summary


if __name__ == "__main__":
  main()

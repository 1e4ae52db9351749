"""Trains the runs of ``config.py`` through the same gradient spikes; writes a table, JSON and a
plot.

    python -m momentum_jax.experiments.spike_robustness [--quick] [--fresh] [...]
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from momentum_jax.experiments.cli import start_experiment
from momentum_jax.experiments.recipe import (
    Trained, each_run, finish, new_figure, print_table, series, train_models)
from momentum_jax.experiments.spike_robustness.config import SPIKE_FACTOR, WINDOW, get_config

CEILING = "adamw_no_spikes"
COLUMNS = [("eval loss", "10.3f", "eval_loss"), ("eval acc", "10.1%", "eval_accuracy"),
           (f"max loss\n+{WINDOW} st.", "10.3f", "max_loss_after_spikes"),
           ("time s", "8.1f", "seconds")]


def _row(trained: Trained, spikes: Sequence[int]) -> dict:
  steps, train_loss = series(trained.result.history, "train_loss")
  eval_steps, eval_accuracy = series(trained.result.history, "eval_accuracy")
  curves = {"steps": steps, "train_loss": train_loss, "eval_steps": eval_steps,
            "eval_accuracy": eval_accuracy}
  return {"eval_loss": float(trained.result.final_eval["loss"]),
          "eval_accuracy": float(trained.result.final_eval["accuracy"]),
          "max_loss_after_spikes": _max_loss_after(curves, spikes), "seconds": trained.seconds,
          "train": trained.train.to_dict(), "curves": curves}


def _max_loss_after(curves: dict[str, list], spikes: Sequence[int]) -> float:
  """The largest train loss logged in the ``WINDOW`` steps after any spike (nan: no spikes).

  The loss logged at step k is measured before the k-th update, so a spike at step s first shows
  at step s + 1.
  """
  losses = [loss for step, loss in zip(curves["steps"], curves["train_loss"])
            if any(s < step <= s + WINDOW for s in spikes)]
  return max(losses) if losses else float("nan")


def _plot(results: dict[str, dict], spikes: Sequence[int]):
  fig, (ax_loss, ax_acc) = new_figure(1, 2, figsize=(12, 4.5))
  for name, r in results.items():
    c = r["curves"]
    ax_loss.plot(c["steps"], c["train_loss"], lw=0.8, alpha=0.85, label=name)
    ax_acc.plot(c["eval_steps"], c["eval_accuracy"], marker="o", markersize=3, label=name)
  for ax in (ax_loss, ax_acc):
    for i, s in enumerate(spikes):
      ax.axvline(s, color="red", ls="--", lw=0.8, label="gradient ×1000" if i == 0 else None)
    ax.set_xlabel("training step")
    ax.grid(alpha=0.3)
  ax_loss.set(yscale="log", ylabel="train loss (every step)")
  ax_acc.set(ylabel="held-out induction accuracy", ylim=(0, 1.02))
  ax_loss.legend(fontsize=8)
  fig.suptitle("Gradient spikes: AdamW, AdamW + clipping, SPAM, Stable-SPAM")
  return fig


def _verdict(results: dict[str, dict]) -> str:
  spiked = {n: r for n, r in results.items() if n != CEILING}
  best = min(spiked, key=lambda n: spiked[n]["eval_loss"])
  order = ", ".join(f"{n} {r['eval_loss']:.3f}"
                    for n, r in sorted(spiked.items(), key=lambda kv: kv[1]["eval_loss"]))
  ceiling = results[CEILING]["eval_loss"] if CEILING in results else float("nan")
  return (f"best under spikes (final eval loss): {best}; ranking: {order}; "
          f"no-spike ceiling {ceiling:.3f}")


def main(argv: Sequence[str] | None = None) -> dict:
  run = start_experiment(argv, __doc__, "spike_robustness", get_config)
  config = run.config
  total = time.perf_counter()
  results = train_models(run, each_run(config.model, config.runs), config.task,
                         lambda trained: _row(trained, config.spikes))
  verdict = _verdict(results)
  print(f"\ngradient ×{SPIKE_FACTOR:g} at steps {list(config.spikes)}")
  print_table("run", 18, COLUMNS, results)
  print(f"\n{verdict}")
  print(f"total {time.perf_counter() - total:.0f} s")
  return finish(run, {"task": config.task.__dict__, "model": config.model.to_dict(),
                      "spikes": list(config.spikes), "window": WINDOW, "results": results,
                      "verdict": verdict, "seconds": time.perf_counter() - total},
                {"loss_curves.png": _plot(results, config.spikes)})


if __name__ == "__main__":
  main()

"""(a) AM-SGD vs fixed EMA momentum on an ill-conditioned quadratic; (b) AM-AdamW vs AdamW with
fixed b1 on a small transformer. Writes tables, JSON and one figure.

    python -m momentum_jax.experiments.adaptive_momentum [--quick] [--fresh] [...]
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np

from momentum_jax.experiments.adaptive_momentum.config import (
    TARGET_ACCURACY, TARGET_LOSS_RATIO, get_config)
from momentum_jax.experiments.adaptive_momentum.quadratic import AM, rank_key, run_quadratic
from momentum_jax.experiments.cli import start_experiment
from momentum_jax.experiments.recipe import (
    Trained, each_run, finish, new_figure, print_table, series, train_models)


def _row(trained: Trained) -> dict:
  history = trained.result.history
  loss_steps, train_loss = series(history, "train_loss")
  beta_steps, beta = series(history, "beta")
  eval_steps, eval_acc = series(history, "eval_accuracy")
  return {
      "eval_loss": float(trained.result.final_eval["loss"]),
      "eval_accuracy": float(trained.result.final_eval["accuracy"]),
      "first_step_at_target": next((s for s, v in zip(eval_steps, eval_acc)
                                    if v >= TARGET_ACCURACY), None),
      "mean_beta": float(np.mean(beta)) if beta else None,
      "b1": None if beta else trained.train.b1,
      "seconds": trained.seconds, "train": trained.train.to_dict(),
      "loss_steps": loss_steps, "train_loss": train_loss, "beta_steps": beta_steps, "beta": beta,
      "eval_steps": eval_steps, "eval_accuracy_curve": eval_acc,
  }


def _fmt_steps(steps: int | None) -> str:
  return "-" if steps is None else str(steps)


def _plot(quad: dict, nets: dict, common_lr: float):
  fig, axes = new_figure(2, 2, figsize=(12, 8.5))
  (ax_q, ax_qb), (ax_n, ax_nb) = axes
  for name, r in quad.items():
    ax_q.plot(np.arange(1, len(r["curve_best"]) + 1), r["curve_best"],
              label=f"{name} (η={r['best_lr']:g}/L)", lw=1.2 if name == AM else 0.9)
  ax_q.set(yscale="log", ylim=(1e-14, 10), xlabel="step", ylabel="f(x_t) / f(x_0)",
           title="(a) ill-conditioned quadratic, best η per method")
  ax_q.legend(fontsize=8)
  am = quad[AM]
  steps = np.arange(1, len(am["beta_best"]) + 1)
  ax_qb.plot(steps, am["beta_best"], lw=0.8, label=f"AM-SGD β_t at η={am['best_lr']:g}/L")
  ax_qb.plot(steps, am["beta_common"], lw=0.8, alpha=0.7,
             label=f"AM-SGD β_t at η={common_lr:g}/L")
  ax_qb.set(xlabel="step", ylabel="β_t", ylim=(-0.02, 1.0),
            title="(a) adaptive β_t on the quadratic")
  ax_qb.legend(fontsize=8)
  for name, r in nets.items():
    ax_n.plot(r["loss_steps"], r["train_loss"], lw=1.0, label=name)
    if name == "am_adamw":
      ax_nb.plot(r["beta_steps"], r["beta"], lw=1.0, color="k", label="AM-AdamW β_t")
    else:
      ax_nb.axhline(r["b1"], ls="--", lw=0.8, color=ax_n.lines[-1].get_color(),
                    label=f"{name} (fixed)")
  ax_n.set(xlabel="training step", ylabel="train loss", title="(b) induction transformer")
  ax_n.legend(fontsize=8)
  ax_nb.set(xlabel="training step", ylabel="β_t (from metrics.jsonl)", ylim=(-0.02, 1.0),
            title="(b) AM-AdamW β_t vs the fixed b1")
  ax_nb.legend(fontsize=8)
  for ax in axes.flat:
    ax.grid(alpha=0.3)
  return fig


def _verdicts(quad: dict, nets: dict) -> list[str]:
  fixed = {n: r for n, r in quad.items() if n != AM}
  best_common = min(fixed, key=lambda n: rank_key(fixed[n]["common"]))
  best_tuned = min(fixed, key=lambda n: rank_key(fixed[n]["best"]))
  am = quad[AM]
  common_wins = rank_key(am["common"]) <= rank_key(fixed[best_common]["common"])
  tuned_wins = rank_key(am["best"]) <= rank_key(fixed[best_tuned]["best"])
  lines = [
      f"(a) same η: AM-SGD {'matches or beats' if common_wins else 'loses to'} the best fixed "
      f"β ({best_common}): final f/f0 {am['common']['final_ratio']:.2e} vs "
      f"{fixed[best_common]['common']['final_ratio']:.2e}",
      f"(a) tuned η: AM-SGD {'matches or beats' if tuned_wins else 'loses to'} the best fixed "
      f"β ({best_tuned} at η={fixed[best_tuned]['best_lr']:g}/L): steps to "
      f"{TARGET_LOSS_RATIO:g} {_fmt_steps(am['best']['steps_to_target'])} vs "
      f"{_fmt_steps(fixed[best_tuned]['best']['steps_to_target'])}",
  ]
  ranking = sorted(nets, key=lambda n: nets[n]["eval_loss"])
  lines.append(f"(b) final eval loss ranking: "
               + ", ".join(f"{n} {nets[n]['eval_loss']:.3f}" for n in ranking)
               + f"; AM-AdamW is {ranking.index('am_adamw') + 1} of {len(ranking)}")
  return lines


def main(argv: Sequence[str] | None = None) -> dict:
  run = start_experiment(argv, __doc__, "adaptive_momentum", get_config)
  config, q = run.config, run.config.quadratic
  total = time.perf_counter()
  quad = run_quadratic(q)
  quad_seconds = time.perf_counter() - total
  nets = train_models(run, each_run(config.model, config.runs), config.task, _row)
  verdicts = _verdicts(quad, nets)
  print(f"\n(a) quadratic: dim {q.dim}, condition 1e{q.log10_condition:g}, {q.steps} steps; "
        f"f/f0 and steps to {TARGET_LOSS_RATIO:g}")
  print_table("method", 12, [
      (f"f/f0 η={q.common_lr:g}/L", "16.2e", lambda r: r["common"]["final_ratio"]),
      ("steps", "7", lambda r: _fmt_steps(r["common"]["steps_to_target"])),
      ("best η·L", "10g", "best_lr"), ("f/f0 best", "12.2e", lambda r: r["best"]["final_ratio"]),
      ("steps", "7", lambda r: _fmt_steps(r["best"]["steps_to_target"]))], quad)
  print(f"\n(b) transformer: {config.runs[0][1].steps} steps")
  print_table("run", 14, [
      ("eval loss", "10.3f", "eval_loss"), ("eval acc", "10.1%", "eval_accuracy"),
      (f"acc>={TARGET_ACCURACY:.0%} at", "14", lambda r: _fmt_steps(r["first_step_at_target"])),
      ("mean β", "8", lambda r: "-" if r["mean_beta"] is None else f"{r['mean_beta']:.3f}"),
      ("time s", "8.1f", "seconds")], nets)
  print("\n" + "\n".join(verdicts))
  seconds = time.perf_counter() - total
  print(f"total {seconds:.0f} s (quadratic {quad_seconds:.0f} s)")
  return finish(run, {"quadratic_config": dataclasses.asdict(q), "quadratic": quad,
                      "quadratic_seconds": quad_seconds, "task": config.task.__dict__,
                      "model": config.model.to_dict(), "transformer": nets,
                      "verdicts": verdicts, "seconds": seconds},
                {"adaptive_momentum.png": _plot(quad, nets, q.common_lr)})


if __name__ == "__main__":
  main()

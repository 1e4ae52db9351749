"""(a) AM-SGD vs fixed EMA momentum on an ill-conditioned quadratic; (b) AM-AdamW vs AdamW with
fixed b1 on a small transformer. Writes tables, JSON and one figure.

    python -m momentum_jax.experiments.adaptive_momentum [--quick] [--output-dir DIR]
        [--fresh] [--no-progress] [--config.PATH=VALUE ...]
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from momentum_jax.experiments.cli import start_experiment  # noqa: E402
from momentum_jax.experiments.adaptive_momentum.config import (  # noqa: E402
    TARGET_ACCURACY,
    TARGET_LOSS_RATIO,
    QuadraticConfig,
    get_config,
)
from momentum_jax.optim import (  # noqa: E402
    adaptive_memory_beta,
    am_sgd,
    scale_by_adaptive_memory_momentum,
)
from momentum_jax.train import train  # noqa: E402

AM = "am_sgd"


def _quadratic(cfg: QuadraticConfig) -> tuple[jax.Array, jax.Array]:
  """A = Q diag(logspace(0, -log10_condition)) Qᵀ (L = 1) and a random x₀, both seeded."""
  rng = np.random.default_rng(cfg.seed)
  q, _ = np.linalg.qr(rng.normal(size=(cfg.dim, cfg.dim)))
  a = (q * np.logspace(0.0, -cfg.log10_condition, cfg.dim)) @ q.T
  return jnp.asarray(a, jnp.float32), jnp.asarray(rng.normal(size=cfg.dim), jnp.float32)


def _optimizer(beta: float | None, lr: jax.Array) -> optax.GradientTransformation:
  """AM-SGD (``beta=None``, its defaults) or EMA momentum with fixed ``beta`` (d₀ = g₀)."""
  if beta is None:
    return am_sgd(lr)
  return optax.chain(scale_by_adaptive_memory_momentum(lam=0.0, fixed_beta=beta),
                     optax.scale_by_learning_rate(lr))


@functools.partial(jax.jit, static_argnames=("beta", "steps"))
def _curves(a, x0, lrs, *, beta, steps):
  """f(x_t)/f(x₀) and β_t for t = 1..steps, one row per learning rate."""
  loss = lambda x: 0.5 * x @ a @ x

  def run(lr):
    tx = _optimizer(beta, lr)

    def body(carry, _):
      x, state = carry
      updates, state = tx.update(a @ x, state, x)
      x = optax.apply_updates(x, updates)
      return (x, state), (loss(x) / loss(x0), adaptive_memory_beta(state))

    _, out = jax.lax.scan(body, (x0, tx.init(x0)), None, length=steps)
    return out

  return jax.vmap(run)(lrs)


def _steps_to(ratios: np.ndarray, target: float) -> int | None:
  hits = np.flatnonzero(ratios <= target)
  return int(hits[0]) + 1 if hits.size else None


def _summary(ratios: np.ndarray) -> dict:
  final = float(ratios[-1])
  return {"final_ratio": final if math.isfinite(final) else float("inf"),
          "steps_to_target": _steps_to(ratios, TARGET_LOSS_RATIO)}


def _rank_key(s: dict) -> tuple[float, float]:
  """Fewest steps to the target first, then the lowest final loss."""
  steps = s["steps_to_target"]
  return (float("inf") if steps is None else steps, s["final_ratio"])


def run_quadratic(cfg: QuadraticConfig) -> dict[str, dict]:
  """Every method over the learning-rate grid; each one's summary at the common and best rate."""
  a, x0 = _quadratic(cfg)
  lrs = sorted({cfg.common_lr, *cfg.lr_grid})
  out = {}
  for name, beta in [(AM, None), *((f"beta_{b:g}", b) for b in cfg.betas)]:
    ratios, betas = jax.device_get(_curves(a, x0, jnp.asarray(lrs, jnp.float32), beta=beta,
                                           steps=cfg.steps))
    per_lr = [_summary(r) for r in ratios]
    best = min(range(len(lrs)), key=lambda i: _rank_key(per_lr[i]))
    common = lrs.index(cfg.common_lr)
    out[name] = {
        "common": per_lr[common], "best_lr": lrs[best], "best": per_lr[best],
        "per_lr": dict(zip(map(str, lrs), per_lr)),
        "curve_best": ratios[best].tolist(), "beta_best": betas[best].tolist(),
        "curve_common": ratios[common].tolist(), "beta_common": betas[common].tolist(),
    }
  return out


def _history_series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
  records = [r for r in history if key in r]
  return [r["step"] for r in records], [r[key] for r in records]


def _first_at(steps: list[int], values: list[float], target: float) -> int | None:
  return next((s for s, v in zip(steps, values) if v >= target), None)


def _fmt_steps(steps: int | None) -> str:
  return "-" if steps is None else str(steps)


def _plot(quad: dict, nets: dict, common_lr: float, path: pathlib.Path) -> None:
  fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
  (ax_q, ax_qb), (ax_n, ax_nb) = axes
  for name, r in quad.items():
    ax_q.plot(np.arange(1, len(r["curve_best"]) + 1), r["curve_best"],
              label=f"{name} (η={r['best_lr']:g}/L)", lw=1.2 if name == AM else 0.9)
  ax_q.set_yscale("log")
  ax_q.set_ylim(1e-14, 10)
  ax_q.set_xlabel("step")
  ax_q.set_ylabel("f(x_t) / f(x_0)")
  ax_q.set_title("(a) ill-conditioned quadratic, best η per method")
  ax_q.legend(fontsize=8)
  am = quad[AM]
  steps = np.arange(1, len(am["beta_best"]) + 1)
  ax_qb.plot(steps, am["beta_best"], lw=0.8, label=f"AM-SGD β_t at η={am['best_lr']:g}/L")
  ax_qb.plot(steps, am["beta_common"], lw=0.8, alpha=0.7,
             label=f"AM-SGD β_t at η={common_lr:g}/L")
  ax_qb.set_xlabel("step")
  ax_qb.set_ylabel("β_t")
  ax_qb.set_ylim(-0.02, 1.0)
  ax_qb.set_title("(a) adaptive β_t on the quadratic")
  ax_qb.legend(fontsize=8)
  for name, r in nets.items():
    ax_n.plot(r["loss_steps"], r["train_loss"], lw=1.0, label=name)
    if name == "am_adamw":
      ax_nb.plot(r["beta_steps"], r["beta"], lw=1.0, color="k", label="AM-AdamW β_t")
    else:
      ax_nb.axhline(r["b1"], ls="--", lw=0.8, color=ax_n.lines[-1].get_color(),
                    label=f"{name} (fixed)")
  ax_n.set_xlabel("training step")
  ax_n.set_ylabel("train loss")
  ax_n.set_title("(b) induction transformer")
  ax_n.legend(fontsize=8)
  ax_nb.set_xlabel("training step")
  ax_nb.set_ylabel("β_t (from metrics.jsonl)")
  ax_nb.set_ylim(-0.02, 1.0)
  ax_nb.set_title("(b) AM-AdamW β_t vs the fixed b1")
  ax_nb.legend(fontsize=8)
  for ax in axes.flat:
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _verdicts(quad: dict, nets: dict) -> list[str]:
  fixed = {n: r for n, r in quad.items() if n != AM}
  best_common = min(fixed, key=lambda n: _rank_key(fixed[n]["common"]))
  best_tuned = min(fixed, key=lambda n: _rank_key(fixed[n]["best"]))
  am = quad[AM]
  common_wins = _rank_key(am["common"]) <= _rank_key(fixed[best_common]["common"])
  tuned_wins = _rank_key(am["best"]) <= _rank_key(fixed[best_tuned]["best"])
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
  run = start_experiment(argv, __doc__, "adaptive_momentum", get_config,
                         workdirs=lambda config: (name for name, _ in config.runs))
  config, out_dir = run.config, run.out_dir
  total = time.perf_counter()
  quad = run_quadratic(config.quadratic)
  quad_seconds = time.perf_counter() - total

  nets: dict[str, dict] = {}
  for name, train_config in config.runs:
    start = time.perf_counter()
    result = train(config.model, train_config, config.task, out_dir / name,
                   progress=run.progress, experiment=run.experiment)
    history = result.history
    loss_steps, train_loss = _history_series(history, "train_loss")
    beta_steps, beta = _history_series(history, "beta")
    eval_steps, eval_acc = _history_series(history, "eval_accuracy")
    nets[name] = {
        "eval_loss": float(result.final_eval["loss"]),
        "eval_accuracy": float(result.final_eval["accuracy"]),
        "first_step_at_target": _first_at(eval_steps, eval_acc, TARGET_ACCURACY),
        "mean_beta": float(np.mean(beta)) if beta else None,
        "b1": None if beta else train_config.b1,
        "seconds": time.perf_counter() - start,
        "train": train_config.to_dict(),
        "loss_steps": loss_steps, "train_loss": train_loss,
        "beta_steps": beta_steps, "beta": beta,
        "eval_steps": eval_steps, "eval_accuracy_curve": eval_acc,
    }
  verdicts = _verdicts(quad, nets)
  summary = {"quadratic_config": dataclasses.asdict(config.quadratic), "quadratic": quad,
             "quadratic_seconds": quad_seconds, "task": config.task.__dict__,
             "model": config.model.to_dict(), "transformer": nets, "verdicts": verdicts,
             "seconds": time.perf_counter() - total, "quick": run.quick,
             **run.record()}
  (out_dir / "results.json").write_text(json.dumps(summary, indent=2))
  _plot(quad, nets, config.quadratic.common_lr, out_dir / "adaptive_momentum.png")

  q = config.quadratic
  print(f"\n(a) quadratic: dim {q.dim}, condition 1e{q.log10_condition:g}, {q.steps} steps; "
        f"f/f0 and steps to {TARGET_LOSS_RATIO:g}")
  print(f"{'method':<12}{f'f/f0 η={q.common_lr:g}/L':>16}{'steps':>7}"
        f"{'best η·L':>10}{'f/f0 best':>12}{'steps':>7}")
  for name, r in quad.items():
    print(f"{name:<12}{r['common']['final_ratio']:>16.2e}"
          f"{_fmt_steps(r['common']['steps_to_target']):>7}{r['best_lr']:>10g}"
          f"{r['best']['final_ratio']:>12.2e}{_fmt_steps(r['best']['steps_to_target']):>7}")
  print(f"\n(b) transformer: {config.runs[0][1].steps} steps")
  print(f"{'run':<14}{'eval loss':>10}{'eval acc':>10}"
        f"{f'acc>={TARGET_ACCURACY:.0%} at':>14}{'mean β':>8}{'time s':>8}")
  for name, r in nets.items():
    mean_beta = "-" if r["mean_beta"] is None else f"{r['mean_beta']:.3f}"
    print(f"{name:<14}{r['eval_loss']:>10.3f}{r['eval_accuracy']:>10.1%}"
          f"{_fmt_steps(r['first_step_at_target']):>14}{mean_beta:>8}{r['seconds']:>8.1f}")
  print()
  for line in verdicts:
    print(line)
  print(f"total {summary['seconds']:.0f} s (quadratic {quad_seconds:.0f} s); wrote "
        f"{out_dir / 'results.json'} and {out_dir / 'adaptive_momentum.png'}")
  return summary


if __name__ == "__main__":
  main()

"""Trains every registered causal attention variant on each task of ``config.py`` with one budget;
writes results.json, results.md and zoo.png.

    python -m momentum_jax.experiments.attention_zoo [--quick] [--output-dir DIR]
        [--fresh] [--no-progress] [--config.PATH=VALUE ...]
"""

from __future__ import annotations

import json
import math
import pathlib
import statistics
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from momentum_jax.attention import AttentionDims, available_attention, get_attention  # noqa: E402
from momentum_jax.data import Task  # noqa: E402
from momentum_jax.experiments.attention_zoo.config import (  # noqa: E402
    ATTENTION_PARAMS, ExperimentConfig, get_config,
)
from momentum_jax.experiments.cli import start_experiment  # noqa: E402
from momentum_jax.nn import Transformer, TransformerConfig  # noqa: E402
from momentum_jax.train import make_optimizer, masked_sums  # noqa: E402

METRICS = ("final_loss", "final_accuracy", "tokens_per_s", "peak_memory_bytes")


def non_causal_reason(attention: str, config: ExperimentConfig, task: Task) -> str | None:
  """Why ``attention`` cannot serve a decoder, or None: the ``ValueError`` it raises for
  ``causal=True`` when it accepts ``causal=False``. Checked by abstract evaluation (no compute)
  at the model's sizes."""
  variant = get_attention(attention)
  head_dim = config.d_model // config.num_heads
  dims = AttentionDims(config.num_heads, config.num_heads, head_dim, task.seq_len)
  learned = {name: init(dims, jax.random.key(0)) for name, init in variant.learned.items()}
  x = jax.ShapeDtypeStruct((1, task.seq_len, config.num_heads, head_dim), jnp.float32)
  params = dict(ATTENTION_PARAMS.get(attention, {}))

  def attend(causal: bool) -> None:
    jax.eval_shape(lambda q, k, v: variant.fn(q, k, v, causal=causal, **params, **learned),
                   x, x, x)

  try:
    attend(True)
  except ValueError as causal_error:
    attend(False)  # a variant that rejects both is broken, not non-causal: let it raise
    return str(causal_error)
  return None


def _train_step(model: TransformerConfig, config: ExperimentConfig):
  """``(params, rest, opt_state, step)`` for ``model``: the initial ``nnx.Param`` state, the
  other module state (running statistics a forward pass may update), the optimizer state, and
  the pure step ``(params, rest, opt_state, batch) -> (params, rest, opt_state, metrics)``."""
  graphdef, params, rest = nnx.split(
      Transformer(model, rngs=nnx.Rngs(jax.random.key(config.train.seed))), nnx.Param, ...)
  tx = make_optimizer(config.train)

  def step(params, rest, opt_state, batch):
    def loss_fn(params):
      module = nnx.merge(graphdef, params, rest, copy=True)  # fresh variables, mutable here
      sums = masked_sums(module(batch.tokens), batch)
      _, _, new_rest = nnx.split(module, nnx.Param, ...)
      return sums["loss_sum"] / jnp.maximum(sums["count"], 1.0), (sums, new_rest)

    (loss, (sums, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    accuracy = sums["correct_sum"] / jnp.maximum(sums["count"], 1.0)
    metrics = {"loss": loss, "accuracy": accuracy}
    return optax.apply_updates(params, updates), rest, opt_state, metrics

  return params, rest, tx.init(params), step


def _compile(model: TransformerConfig, step, args: tuple, fast: bool,
             executables: dict[TransformerConfig, tuple]) -> tuple:
  """``(executable, its memory analysis, compile seconds)`` of ``step`` on ``args``, compiled
  ahead of time for the first task and reused from ``executables`` for tasks of equal shapes
  (``model`` holds the vocabulary and length)."""
  if model not in executables:
    start = time.perf_counter()
    lowered = jax.jit(step, donate_argnums=(0, 1, 2)).lower(*args)
    compiled = lowered.compile(
        compiler_options={"xla_backend_optimization_level": 0} if fast else None)
    executables[model] = (compiled, compiled.memory_analysis(), time.perf_counter() - start)
  return executables[model]


def run_variant(model: TransformerConfig, task: Task, config: ExperimentConfig, progress: bool,
                executables: dict[TransformerConfig, tuple]) -> dict[str, Any]:
  """Trains ``model`` on ``task`` for the budget of ``config``; returns its row of the table."""
  cfg = config.train
  params, rest, opt_state, step = _train_step(model, config)
  data_key = jax.random.key(cfg.seed)
  batch = lambda i: task.sample(jax.random.fold_in(data_key, i), cfg.batch_size)
  compiled, memory, compile_s = _compile(model, step, (params, rest, opt_state, batch(0)),
                                         config.fast_compile, executables)
  peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes
          + memory.temp_size_in_bytes - memory.alias_size_in_bytes)

  losses, accuracies, seconds = [], [], []
  for i in tqdm(range(cfg.steps), disable=not progress, desc=f"{model.attention}", leave=False):
    data = jax.block_until_ready(batch(i))
    tick = time.perf_counter()
    params, rest, opt_state, metrics = jax.block_until_ready(
        compiled(params, rest, opt_state, data))
    seconds.append(time.perf_counter() - tick)
    losses.append(float(metrics["loss"]))
    accuracies.append(float(metrics["accuracy"]))

  step_s = statistics.median(seconds[config.warmup_steps:])
  return {
      "final_loss": float(np.mean(losses[-config.final_steps:])),
      "final_accuracy": float(np.mean(accuracies[-config.final_steps:])),
      "tokens_per_s": cfg.batch_size * task.seq_len / step_s,
      "step_ms": step_s * 1e3,
      "peak_memory_bytes": int(peak),
      "memory_analysis": {name: int(getattr(memory, name)) for name in (
          "argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
          "alias_size_in_bytes")},
      "compile_s": compile_s,
      "loss_curve": losses,
      "attention_params": dict(model.attention_params),
  }


def _markdown(summary: dict[str, Any]) -> str:
  lines = []
  for task_name, rows in summary["results"].items():
    lines += [f"### {task_name}", "",
              "| variant | final loss | final accuracy | tokens/s | step ms | peak memory MiB |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
      lines.append(f"| {name} | {r['final_loss']:.3f} | {r['final_accuracy']:.1%} | "
                   f"{r['tokens_per_s']:,.0f} | {r['step_ms']:.1f} | "
                   f"{r['peak_memory_bytes'] / 2**20:.2f} |")
    lines.append("")
  for title, entries in (("skipped", summary["skipped"]), ("failed", summary["failed"])):
    if entries:
      lines += [f"### {title}", ""] + [f"- {name}: {why}" for name, why in entries.items()] + [""]
  return "\n".join(lines)


def _plot(summary: dict[str, Any], path: pathlib.Path) -> None:
  results = summary["results"]
  names = sorted({name for rows in results.values() for name in rows})
  panels = (("final_accuracy", "final accuracy", 1.0), ("tokens_per_s", "tokens / s", 1.0),
            ("peak_memory_bytes", "peak memory (MiB)", 2.0**-20))
  fig, axes = plt.subplots(len(panels), 1, figsize=(max(7.0, 0.6 * len(names) + 2), 9),
                           sharex=True)
  width = 0.8 / max(len(results), 1)
  x = np.arange(len(names))
  for ax, (key, label, factor) in zip(axes, panels):
    for i, (task_name, rows) in enumerate(results.items()):
      values = [rows[n][key] * factor if n in rows else math.nan for n in names]
      ax.bar(x + (i - (len(results) - 1) / 2) * width, values, width, label=task_name)
    ax.set_ylabel(label)
    ax.grid(axis="y", alpha=0.3)
  axes[0].set_ylim(0, 1.02)
  axes[0].legend(fontsize=8)
  axes[-1].set_xticks(x, names, rotation=45, ha="right")
  axes[0].set_title(f"Attention zoo: {summary['train']['steps']} steps, "
                    f"batch {summary['train']['batch_size']}, identical budgets")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  run = start_experiment(argv, __doc__, "attention_zoo", get_config, workdirs=lambda config: ())
  config, out_dir = run.config, run.out_dir
  start = time.perf_counter()
  results: dict[str, dict[str, Any]] = {name: {} for name, _ in config.tasks}
  skipped: dict[str, str] = {}
  failed: dict[str, str] = {}
  for attention in available_attention():
    executables: dict[TransformerConfig, tuple] = {}
    for task_name, task in config.tasks:
      try:
        reason = non_causal_reason(attention, config, task)
        if reason is not None:
          skipped[attention] = f"non-causal only: {reason}"
          break
        results[task_name][attention] = run_variant(config.model(task, attention), task, config,
                                                    run.progress, executables)
      except Exception as error:  # noqa: BLE001  one broken variant must not end the sweep
        failed[f"{attention} ({task_name})"] = f"{type(error).__name__}: {error}"
        print(f"{attention} on {task_name} FAILED: {type(error).__name__}: {error}")
        continue
      r = results[task_name][attention]
      print(f"{task_name:<10}{attention:<26} loss {r['final_loss']:.3f}  "
            f"acc {r['final_accuracy']:6.1%}  {r['tokens_per_s']:>9,.0f} tok/s  "
            f"{r['peak_memory_bytes'] / 2**20:6.2f} MiB  (compile {r['compile_s']:.1f} s)")

  summary = {
      "quick": run.quick,
      **run.record(),
      "tasks": {name: {"type": type(task).__name__, **task.__dict__, "seq_len": task.seq_len}
                for name, task in config.tasks},
      "train": config.train.to_dict(),
      "model": {"num_layers": config.num_layers, "d_model": config.d_model,
                "num_heads": config.num_heads, "mlp_dim": config.mlp_dim},
      "final_steps": config.final_steps,
      "peak_memory": "argument + output + temp - alias bytes of the compiled train step",
      "backend": jax.default_backend(),
      "results": results, "skipped": skipped, "failed": failed,
      "seconds": time.perf_counter() - start,
  }
  (out_dir / "results.json").write_text(json.dumps(summary, indent=2))
  table = _markdown(summary)
  (out_dir / "results.md").write_text(table)
  _plot(summary, out_dir / "zoo.png")
  print("\n" + table)
  print(f"wrote {out_dir / 'results.json'}, {out_dir / 'results.md'} and {out_dir / 'zoo.png'} "
        f"in {summary['seconds']:.0f} s")
  return summary


if __name__ == "__main__":
  main()

"""Trains every registered causal attention variant on each task of ``config.py`` with one budget;
writes results.json, results.md and zoo.png.

    python -m momentum_jax.experiments.attention_zoo [--quick] [--fresh] [...]
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from momentum_jax.attention import available_attention
from momentum_jax.experiments.attention_zoo.config import get_config
from momentum_jax.experiments.attention_zoo.variant import non_causal_reason, run_variant
from momentum_jax.experiments.cli import start_experiment
from momentum_jax.experiments.recipe import finish, new_figure
from momentum_jax.nn import TransformerConfig
from momentum_jax.train.distributed import is_main_process

METRICS = ("final_loss", "final_accuracy", "tokens_per_s", "peak_memory_bytes")


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


def _plot(summary: dict[str, Any]):
  results = summary["results"]
  names = sorted({name for rows in results.values() for name in rows})
  panels = (("final_accuracy", "final accuracy", 1.0), ("tokens_per_s", "tokens / s", 1.0),
            ("peak_memory_bytes", "peak memory (MiB)", 2.0**-20))
  fig, axes = new_figure(len(panels), 1, figsize=(max(7.0, 0.6 * len(names) + 2), 9),
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
  return fig


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  run = start_experiment(argv, __doc__, "attention_zoo", get_config, workdirs=lambda config: ())
  config = run.config
  start = time.perf_counter()
  results: dict[str, dict[str, Any]] = {name: {} for name, _ in config.tasks}
  skipped, failed = {}, {}  # {variant: why}
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
  table = _markdown(summary)
  if is_main_process():  # of a run of several processes (momentum_jax.train.launch)
    (run.out_dir / "results.md").write_text(table)
  print("\n" + table)
  print(f"{summary['seconds']:.0f} s; wrote {run.out_dir / 'results.md'}")
  return finish(run, summary, {"zoo.png": _plot(summary)})


if __name__ == "__main__":
  main()

"""Byte-level language models on the King James Bible: softmax vs momentum attention (a γ grid)
vs KV-shift and sigmoid attention, identical budgets. Writes a table, JSON and one figure.

    python -m momentum_jax.experiments.text_lm [--quick] [--preset gpu_125m] [--fresh] [...]
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from momentum_jax.experiments.cli import start_experiment
from momentum_jax.experiments.recipe import finish, hardware, new_figure, print_table
from momentum_jax.experiments.text_lm.config import PRESETS, get_config
from momentum_jax.experiments.text_models import (
    IN_CONTEXT_COLUMNS, data_record, in_context_legend, train_text_models)

BASELINE = "softmax"
COLUMNS = [("params", "9", "parameters"), ("loss", "8.3f", "eval_loss"),
           ("bpb", "8.3f", "eval_bits_per_byte"), ("Δbpb", "+8.3f", "bits_per_byte_vs_softmax"),
           *IN_CONTEXT_COLUMNS,
           ("tok/s", "9", lambda r: "-" if r["tokens_per_second"] is None
            else f"{r['tokens_per_second']:.0f}"), ("time s", "8.1f", "seconds")]


def _plot(models: dict):
  fig, (ax_train, ax_eval) = new_figure(1, 2, figsize=(12, 4.5))
  for name, r in models.items():
    ax_train.plot(r["loss_steps"], np.asarray(r["train_loss"]) / math.log(2), lw=1.0, label=name)
    ax_eval.plot(r["eval_steps"], r["eval_bits_per_byte_curve"], marker="o", lw=1.0, label=name)
  ax_train.set(title="training loss", ylabel="bits per token")
  ax_eval.set_title("held-out bits per byte")
  for ax in (ax_train, ax_eval):
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  return fig


def main(argv: Sequence[str] | None = None) -> dict:
  run = start_experiment(argv, __doc__, "text_lm", get_config, presets=PRESETS)
  config = run.config
  total = time.perf_counter()
  text = train_text_models(run)
  models, baseline = text.models, text.models[BASELINE]["eval_bits_per_byte"]
  for r in models.values():
    r["bits_per_byte_vs_softmax"] = r["eval_bits_per_byte"] - baseline
  best = min(models, key=lambda n: models[n]["eval_bits_per_byte"])
  held_out = ("the whole validation split" if config.train.eval_batches is None
              else f"{config.train.eval_batches} validation batches")
  print(f"\n{config.data.source}, {config.data.tokenizer} tokens, {text.dataset.seq_len} per "
        f"row; {config.train.steps} steps × {text.tokens_per_step} tokens; held-out loss on "
        f"{held_out}")
  print_table("model", 16, COLUMNS, models)
  print(in_context_legend(models[BASELINE]))
  seconds = time.perf_counter() - total
  print(f"\nlowest held-out bits per byte: {best}; total {seconds:.0f} s")
  return finish(run, {"data": data_record(config, text), "train": config.train.to_dict(),
                      "tokens_per_step": text.tokens_per_step, "models": models, "best": best,
                      "hardware": hardware(), "seconds": seconds},
                {"text_lm.png": _plot(models)})


if __name__ == "__main__":
  main()

"""Trains a small momentum-attention language model and softmax baselines of about 1×, 2× and
2.8× its parameters on one token budget, and reports the held-out loss gap of each pair.

    python -m momentum_jax.experiments.momentum_vs_size [--quick] [--preset gpu_350m] [...]
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from momentum_jax.experiments.cli import start_experiment
from momentum_jax.experiments.momentum_vs_size.config import (
    MOMENTUM, PAPER_GAP, PRESETS, get_config)
from momentum_jax.experiments.recipe import finish, hardware, new_figure, print_table
from momentum_jax.experiments.text_models import (
    IN_CONTEXT_COLUMNS, data_record, in_context_legend, train_text_models)

COLUMNS = [("params", "10", "parameters"), ("loss", "8.3f", "eval_loss"),
           ("bpb", "8.3f", "eval_bits_per_byte"), *IN_CONTEXT_COLUMNS,
           ("time s", "8.1f", "seconds")]


def gaps(models: dict[str, dict]) -> dict[str, dict]:
  """Per baseline: ``{"parameter_ratio", "loss_gap", "relative_gap"}``, the gap being momentum's
  held-out loss minus the baseline's (relative: over the baseline's), negative when momentum is
  better."""
  momentum = models[MOMENTUM]
  out = {}
  for name, baseline in models.items():
    if name == MOMENTUM:
      continue
    gap = momentum["eval_loss"] - baseline["eval_loss"]
    out[name] = {"parameter_ratio": baseline["parameters"] / momentum["parameters"],
                 "loss_gap": gap, "relative_gap": gap / baseline["eval_loss"]}
  return out


def _plot(models: dict[str, dict]):
  fig, ax = new_figure(figsize=(6.5, 4.5))
  baselines = {n: r for n, r in models.items() if n != MOMENTUM}
  ax.plot([r["parameters"] for r in baselines.values()],
          [r["eval_loss"] for r in baselines.values()], "o-", label="softmax")
  for name, r in baselines.items():
    ax.annotate(name, (r["parameters"], r["eval_loss"]), fontsize=8, xytext=(4, 4),
                textcoords="offset points")
  momentum = models[MOMENTUM]
  ax.plot([momentum["parameters"]], [momentum["eval_loss"]], "*", markersize=12,
          label=MOMENTUM)
  ax.set(xscale="log", xlabel="parameters", ylabel="held-out loss (nats per token)",
         title="Momentum attention vs larger softmax models, one token budget")
  ax.grid(alpha=0.3, which="both")
  ax.legend()
  return fig


def main(argv: Sequence[str] | None = None) -> dict:
  run = start_experiment(argv, __doc__, "momentum_vs_size", get_config, presets=PRESETS)
  config = run.config
  total = time.perf_counter()
  text = train_text_models(run)
  pairs = gaps(text.models)
  print(f"\n{config.data.source}, {config.data.tokenizer} tokens; {config.train.steps} steps × "
        f"{text.tokens_per_step} tokens for every model; held-out loss on "
        f"{config.train.eval_batches} validation batches")
  print_table("model", 14, COLUMNS, text.models)
  print(in_context_legend(text.models[MOMENTUM]))
  print(f"\n{MOMENTUM} against each softmax baseline (gap = momentum − baseline; the paper: "
        f"within {PAPER_GAP:.1%} of a 2.8× baseline)")
  for name, gap in pairs.items():
    print(f"  vs {name:<13} ({gap['parameter_ratio']:.2f}× parameters): "
          f"{gap['loss_gap']:+.4f} nats, {gap['relative_gap']:+.2%}")
  seconds = time.perf_counter() - total
  print(f"\ntotal {seconds:.0f} s")
  return finish(run, {"data": data_record(config, text), "train": config.train.to_dict(),
                      "tokens_per_step": text.tokens_per_step, "models": text.models,
                      "gaps": pairs, "hardware": hardware(), "seconds": seconds},
                {"momentum_vs_size.png": _plot(text.models)})


if __name__ == "__main__":
  main()

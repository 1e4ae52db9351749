"""Trains a small momentum-attention language model and softmax baselines of about 1×, 2× and
2.8× its parameters on one token budget, and reports the held-out loss gap of each pair.

    python -m momentum_jax.experiments.momentum_vs_size [--quick] [--preset gpu_350m]
        [--output-dir DIR] [--fresh] [--no-progress] [--config.PATH=VALUE ...]
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
from momentum_jax.experiments.momentum_vs_size.config import (  # noqa: E402
    MOMENTUM, PAPER_GAP, PRESETS, get_config)
from momentum_jax.experiments.text_lm.__main__ import (  # noqa: E402
    data_record, hardware, train_text_models)


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


def _plot(models: dict[str, dict], path: pathlib.Path) -> None:
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
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
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict:
  run = start_experiment(argv, __doc__, "momentum_vs_size", get_config,
                         workdirs=lambda config: (name for name, _ in config.models),
                         presets=PRESETS)
  config, out_dir = run.config, run.out_dir
  total = time.perf_counter()
  text = train_text_models(run)
  pairs = gaps(text.models)
  summary = {"data": data_record(config, text), "train": config.train.to_dict(),
             "tokens_per_step": text.tokens_per_step, "models": text.models, "gaps": pairs,
             "hardware": hardware(), "seconds": time.perf_counter() - total,
             "quick": run.quick, **run.record()}
  (out_dir / "results.json").write_text(json.dumps(summary, indent=2))
  _plot(text.models, out_dir / "momentum_vs_size.png")

  print(f"\n{config.data.source}, {config.data.tokenizer} tokens; {config.train.steps} steps × "
        f"{text.tokens_per_step} tokens for every model; held-out loss on "
        f"{config.train.eval_batches} validation batches")
  print(f"{'model':<14}{'params':>10}{'loss':>8}{'bpb':>8}{'time s':>8}")
  for name, r in text.models.items():
    print(f"{name:<14}{r['parameters']:>10}{r['eval_loss']:>8.3f}"
          f"{r['eval_bits_per_byte']:>8.3f}{r['seconds']:>8.1f}")
  print(f"\n{MOMENTUM} against each softmax baseline (gap = momentum − baseline; the paper: "
        f"within {PAPER_GAP:.1%} of a 2.8× baseline)")
  for name, gap in pairs.items():
    print(f"  vs {name:<13} ({gap['parameter_ratio']:.2f}× parameters): "
          f"{gap['loss_gap']:+.4f} nats, {gap['relative_gap']:+.2%}")
  print(f"\ntotal {summary['seconds']:.0f} s; wrote {out_dir / 'results.json'} and "
        f"{out_dir / 'momentum_vs_size.png'}")
  return summary


if __name__ == "__main__":
  main()

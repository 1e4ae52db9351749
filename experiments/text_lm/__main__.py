"""Byte-level language models on the King James Bible: softmax vs momentum attention (a γ grid)
vs KV-shift and sigmoid attention, identical budgets. Writes a table, JSON and one figure.

    python -m momentum_jax.experiments.text_lm [--quick] [--preset gpu_125m] [--output-dir DIR]
        [--fresh] [--no-progress] [--config.PATH=VALUE ...]
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import platform
import time
from collections.abc import Sequence
from typing import NamedTuple

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from momentum_jax.data import TextDataset, load_text_dataset  # noqa: E402
from momentum_jax.experiments.cli import ExperimentRun, start_experiment  # noqa: E402
from momentum_jax.experiments.text_lm.config import (  # noqa: E402
    PRESETS, ExperimentConfig, get_config)
from momentum_jax.train import train  # noqa: E402

BASELINE = "softmax"


class TextModels(NamedTuple):
  """The trained models of a text run: per model name, its held-out loss, bits per byte,
  parameters, speed and curves."""

  dataset: TextDataset
  models: dict[str, dict]
  tokens_per_step: int
  data_seconds: float


def _series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
  records = [r for r in history if key in r]
  return [r["step"] for r in records], [r[key] for r in records]


def hardware() -> dict:
  """The device, device count, host and jax version a run's figures come from."""
  device = jax.devices()[0]
  return {"platform": device.platform, "device_kind": device.device_kind,
          "device_count": jax.device_count(), "host": platform.machine(),
          "jax": jax.__version__}


def _plot(models: dict, path: pathlib.Path) -> None:
  fig, (ax_train, ax_eval) = plt.subplots(1, 2, figsize=(12, 4.5))
  for name, r in models.items():
    ax_train.plot(r["loss_steps"], np.asarray(r["train_loss"]) / math.log(2), lw=1.0, label=name)
    ax_eval.plot(r["eval_steps"], r["eval_bits_per_byte"], marker="o", lw=1.0, label=name)
  ax_train.set_title("training loss")
  ax_train.set_ylabel("bits per token")
  ax_eval.set_title("held-out bits per byte")
  for ax in (ax_train, ax_eval):
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def train_text_models(run: ExperimentRun) -> TextModels:
  """Loads the run's text (saving its tokeniser in the run folder, for evaluation and sampling)
  and trains each of ``run.config.models`` on ``run.config.train``, resuming from checkpoints."""
  config, out_dir = run.config, run.out_dir
  start = time.perf_counter()
  dataset = load_text_dataset(config.data, tokenizer_dir=out_dir)
  data_seconds = time.perf_counter() - start
  models: dict[str, dict] = {}
  for name, model_config in config.models:
    start = time.perf_counter()
    result = train(model_config, config.train, dataset, out_dir / name, progress=run.progress,
                   experiment=run.experiment)
    loss_steps, train_loss = _series(result.history, "train_loss")
    eval_steps, eval_bpb = _series(result.history, "eval_bits_per_byte")
    _, tokens_per_second = _series(result.history, "tokens_per_second")
    models[name] = {
        "eval_loss": result.final_eval["loss"],
        "eval_bits_per_byte": result.final_eval["bits_per_byte"],
        "eval_perplexity": result.final_eval["perplexity"],
        "tokens_per_second": float(np.median(tokens_per_second)) if tokens_per_second else None,
        "parameters": int(sum(x.size for x in jax.tree.leaves(result.params))),
        "seconds": time.perf_counter() - start,
        "attention": model_config.attention,
        "attention_params": dict(model_config.attention_params),
        "loss_steps": loss_steps, "train_loss": train_loss,
        "eval_steps": eval_steps, "eval_bits_per_byte_curve": eval_bpb,
    }
  tokens_per_step = config.train.batch_size * config.train.accumulate_steps * dataset.seq_len
  return TextModels(dataset, models, tokens_per_step, data_seconds)


def data_record(config: ExperimentConfig, text: TextModels) -> dict:
  """The ``"data"`` entry of a results file: the text's config, rows, bytes per token, time."""
  return {"config": dataclasses.asdict(config.data),
          "train_rows": text.dataset.num_rows("train"),
          "validation_rows": text.dataset.num_rows("validation"),
          "bytes_per_token": text.dataset.bytes_per_token("validation"),
          "seconds": text.data_seconds}


def main(argv: Sequence[str] | None = None) -> dict:
  run = start_experiment(argv, __doc__, "text_lm", get_config,
                         workdirs=lambda config: (name for name, _ in config.models),
                         presets=PRESETS)
  config, out_dir = run.config, run.out_dir
  total = time.perf_counter()
  text = train_text_models(run)
  models, tokens_per_step = text.models, text.tokens_per_step
  baseline = models[BASELINE]["eval_bits_per_byte"]
  for r in models.values():
    r["bits_per_byte_vs_softmax"] = r["eval_bits_per_byte"] - baseline
  best = min(models, key=lambda n: models[n]["eval_bits_per_byte"])
  summary = {
      "data": data_record(config, text),
      "train": config.train.to_dict(), "tokens_per_step": tokens_per_step,
      "models": models, "best": best, "hardware": hardware(),
      "seconds": time.perf_counter() - total, "quick": run.quick, **run.record(),
  }
  (out_dir / "results.json").write_text(json.dumps(summary, indent=2))
  _plot({n: r | {"eval_bits_per_byte": r["eval_bits_per_byte_curve"]}
         for n, r in models.items()}, out_dir / "text_lm.png")

  steps = config.train.steps
  print(f"\n{config.data.source}, {config.data.tokenizer} tokens, {text.dataset.seq_len} per "
        f"row; {steps} steps × {tokens_per_step} tokens; held-out loss on "
        f"{config.train.eval_batches} validation batches")
  print(f"{'model':<16}{'params':>9}{'loss':>8}{'bpb':>8}{'Δbpb':>8}{'tok/s':>9}{'time s':>8}")
  for name, r in models.items():
    rate = "-" if r["tokens_per_second"] is None else f"{r['tokens_per_second']:.0f}"
    print(f"{name:<16}{r['parameters']:>9}{r['eval_loss']:>8.3f}{r['eval_bits_per_byte']:>8.3f}"
          f"{r['bits_per_byte_vs_softmax']:>+8.3f}{rate:>9}{r['seconds']:>8.1f}")
  print(f"\nlowest held-out bits per byte: {best}; total {summary['seconds']:.0f} s; wrote "
        f"{out_dir / 'results.json'} and {out_dir / 'text_lm.png'}")
  return summary


if __name__ == "__main__":
  main()

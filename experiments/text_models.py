"""Language models trained on one text, shared by the ``text_lm`` and ``momentum_vs_size``
experiments, whose configs are ``text_lm``'s ``ExperimentConfig``."""

from __future__ import annotations

import dataclasses
import time
from typing import NamedTuple

import jax
import numpy as np

from momentum_jax.data import TextDataset, load_text_dataset
from momentum_jax.experiments.cli import ExperimentRun
from momentum_jax.experiments.recipe import Trained, each_model, series, train_models
from momentum_jax.experiments.text_lm.config import ExperimentConfig


# In the run folder: the corpus tokenised once (``momentum_jax.data`` token files), reused by every
# model and every rerun of the same source and tokeniser.
TOKEN_FOLDER = "tokens"


class TextModels(NamedTuple):
  """The trained models of a text run: per model name, its held-out loss, bits per byte,
  parameters, speed and curves."""

  dataset: TextDataset
  models: dict[str, dict]
  tokens_per_step: int
  data_seconds: float


def _row(trained: Trained) -> dict:
  result, model = trained.result, trained.model
  loss_steps, train_loss = series(result.history, "train_loss")
  eval_steps, eval_bpb = series(result.history, "eval_bits_per_byte")
  _, tokens_per_second = series(result.history, "tokens_per_second")
  return {
      "eval_loss": result.final_eval["loss"],
      "eval_bits_per_byte": result.final_eval["bits_per_byte"],
      "eval_perplexity": result.final_eval["perplexity"],
      "tokens_per_second": float(np.median(tokens_per_second)) if tokens_per_second else None,
      "parameters": int(sum(x.size for x in jax.tree.leaves(result.params))),
      "seconds": trained.seconds,
      "attention": model.attention,
      "attention_params": dict(model.attention_params),
      "loss_steps": loss_steps, "train_loss": train_loss,
      "eval_steps": eval_steps, "eval_bits_per_byte_curve": eval_bpb,
  }


def train_text_models(run: ExperimentRun) -> TextModels:
  """Loads the run's text (saving its tokeniser in the run folder, for evaluation and sampling,
  and its token files in ``<run folder>/tokens``, reused by later runs) and trains each of ``run.config.models`` on ``run.config.train``, resuming from checkpoints."""
  config = run.config
  start = time.perf_counter()
  dataset = load_text_dataset(config.data, tokenizer_dir=run.out_dir,
                              token_dir=run.out_dir / TOKEN_FOLDER)
  data_seconds = time.perf_counter() - start
  models = train_models(run, each_model(config.models, config.train), dataset, _row)
  tokens_per_step = config.train.batch_size * config.train.accumulate_steps * dataset.seq_len
  return TextModels(dataset, models, tokens_per_step, data_seconds)


def data_record(config: ExperimentConfig, text: TextModels) -> dict:
  """The ``"data"`` entry of a results file: the text's config, rows, bytes per token, time."""
  return {"config": dataclasses.asdict(config.data),
          "train_rows": text.dataset.num_rows("train"),
          "validation_rows": text.dataset.num_rows("validation"),
          "bytes_per_token": text.dataset.bytes_per_token("validation"),
          "seconds": text.data_seconds}

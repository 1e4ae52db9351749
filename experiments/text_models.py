"""Language models trained on one text, shared by the ``text_lm`` and ``momentum_vs_size``
experiments, whose configs are ``text_lm``'s ``ExperimentConfig``.

Beside its held-out loss, each trained model gets the in-context evaluation of Olsson et al.
("In-context Learning and Induction Heads", arXiv 2209.11895; ``momentum_jax.analysis``'s
``in_context``), on a fixed, small number of sequences (rows of ``seq_len`` T, the context):

  - the repeated-segment losses: ``REPEAT_SEQUENCES`` random segments of L = ⌈T / 2⌉ tokens,
    each followed by its copy (after one random token when T is even, so that the sequence fills
    the T + 1 tokens of a row), the tokens drawn uniformly from the ids that occur in the
    held-out rows below (a byte model never sees most of the 256 bytes, whose embeddings would
    measure the initialisation, not copying): the mean loss on each copy's tokens after its
    first, and the drop from the first copy to the second, the induction signal;
  - the ICL score: the loss at position ``late`` = T − 1 of a document minus the loss at
    ``early`` = late // 10 of the same document (the paper's 500th and 50th tokens, the same
    ratio), averaged over the document pieces of the first ``ICL_ROWS`` held-out rows (the
    first rows the held-out loss is measured on) that reach ``late``; None when none does (a
    text of short documents, such as lm1b's sentences, at T = 1024).

Neither is part of the experiment configs: a rerun of a finished run folder computes them from
the saved models without retraining.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import NamedTuple

import jax
import numpy as np
from flax import nnx

from momentum_jax.analysis import in_context_score, repeated_segment_losses, token_losses
from momentum_jax.data import TextDataset, load_text_dataset, repeated_random_tokens
from momentum_jax.experiments.cli import ExperimentRun
from momentum_jax.experiments.recipe import Trained, each_model, series, train_models
from momentum_jax.experiments.text_lm.config import ExperimentConfig
from momentum_jax.nn import Transformer


# In the run folder: the corpus tokenised once (``momentum_jax.data`` token files), reused by every
# model and every rerun of the same source and tokeniser.
TOKEN_FOLDER = "tokens"
# The in-context evaluation (module docstring): held-out rows for the ICL score, repeated random
# segments, and the rows of one forward pass (its logits are [ICL_BATCH, T, vocabulary]).
ICL_ROWS = 256
REPEAT_SEQUENCES = 16
ICL_BATCH = 8
#: The in-context columns of both experiments' tables (``recipe.print_table``): the
#: repeated-segment losses on the first and second copy and the ICL score (- where undefined).
IN_CONTEXT_COLUMNS = [
    ("copy 1", "8.3f", "repeat_first_loss"), ("copy 2", "8.3f", "repeat_second_loss"),
    ("ICL ± s.e.", "14", lambda r: "-" if r["icl_score"] is None
     else f"{r['icl_score']:+.3f}" + ("" if r["icl_stderr"] is None
                                       else f"±{r['icl_stderr']:.3f}"))]


class TextModels(NamedTuple):
  """The trained models of a text run: per model name, its held-out loss, bits per byte,
  parameters, speed and curves."""

  dataset: TextDataset
  models: dict[str, dict]
  tokens_per_step: int
  data_seconds: float


def _losses_of(model: Transformer):
  """``losses(tokens, targets, positions, segment_ids)``: the model's per-position losses
  ``[B, T]`` (numpy) in evaluation mode, ``ICL_BATCH`` rows per compiled pass."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def batch_losses(state, tokens_BxT, targets_BxT, positions_BxT, segment_ids_BxT):
    evaluated = nnx.merge(graphdef, state, copy=True)
    evaluated.eval()
    logits_BxTxV = evaluated(tokens_BxT, positions_BxT=positions_BxT,
                             segment_ids_BxT=segment_ids_BxT)
    return token_losses(logits_BxTxV, targets_BxT)

  def losses(*rows_BxT: np.ndarray) -> np.ndarray:
    return np.concatenate([
        np.asarray(jax.device_get(batch_losses(state, *(x[i:i + ICL_BATCH] for x in rows_BxT))))
        for i in range(0, len(rows_BxT[0]), ICL_BATCH)])

  return losses


def in_context_record(model: Transformer, dataset: TextDataset, seed: int) -> dict:
  """The in-context evaluation of the module docstring: ``{"repeat_first_loss",
  "repeat_second_loss", "repeat_loss_drop", "repeat_len", "icl_score", "icl_late_loss",
  "icl_early_loss", "icl_stderr", "icl_documents", "icl_late", "icl_early"}`` (losses in nats
  per token; ``icl_stderr`` the score's standard error over the documents).
  ``seed`` orders the held-out rows (as the held-out loss's batches) and draws the segments."""
  seq_len = dataset.seq_len
  losses = _losses_of(model)
  held_out = next(dataset.iterator("validation", min(ICL_ROWS, dataset.num_rows("validation")),
                                   seed=seed, repeat=False))
  late = seq_len - 1
  early = late // 10
  icl = in_context_score(
      losses(held_out.tokens, held_out.targets, held_out.positions, held_out.segment_ids),
      late=late, early=early, positions_BxT=held_out.positions,
      loss_mask_BxT=held_out.loss_mask)
  ids = np.unique(held_out.tokens[held_out.loss_mask > 0])
  repeat_len = (seq_len + 1) // 2
  offset = seq_len + 1 - 2 * repeat_len
  prefix_key, segment_key = jax.random.split(jax.random.key(seed))
  draws = np.concatenate([
      np.asarray(jax.random.randint(prefix_key, (REPEAT_SEQUENCES, offset), 0, len(ids))),
      np.asarray(repeated_random_tokens(segment_key, REPEAT_SEQUENCES, repeat_len, len(ids)))],
      axis=1)
  sequences = ids[draws].astype(np.int32)  # [REPEAT_SEQUENCES, T + 1]
  positions = np.broadcast_to(np.arange(seq_len, dtype=np.int32), (REPEAT_SEQUENCES, seq_len))
  repeated = repeated_segment_losses(
      losses(sequences[:, :-1], sequences[:, 1:], positions, np.ones_like(positions)),
      repeat_len, offset=offset)
  first, second = float(np.mean(repeated.first)), float(np.mean(repeated.second))
  documents = int(icl.count)
  return {"repeat_first_loss": first, "repeat_second_loss": second,
          "repeat_loss_drop": first - second, "repeat_len": repeat_len,
          "icl_score": float(icl.score) if documents else None,
          "icl_late_loss": float(icl.late_loss) if documents else None,
          "icl_early_loss": float(icl.early_loss) if documents else None,
          "icl_stderr": float(icl.stderr) if documents > 1 else None,
          "icl_documents": documents, "icl_late": late, "icl_early": early}


def in_context_legend(row: dict) -> str:
  """What ``IN_CONTEXT_COLUMNS`` show, for the line under a table of rows like ``row``."""
  return (f"copy 1, copy 2: loss (nats/token) on the first and second copy of "
          f"{REPEAT_SEQUENCES} random segments of {row['repeat_len']} tokens\nICL: loss at "
          f"position {row['icl_late']} minus loss at position {row['icl_early']} of the same "
          f"document, over {row['icl_documents']} held-out documents (Olsson et al. 2022)")


def _row(dataset: TextDataset, trained: Trained) -> dict:
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
      **in_context_record(result.model, dataset, trained.train.seed),
  }


def train_text_models(run: ExperimentRun) -> TextModels:
  """Loads the run's text (saving its tokeniser in the run folder, for evaluation and sampling,
  and its token files in ``<run folder>/tokens``, reused by later runs), trains each of
  ``run.config.models`` on ``run.config.train``, resuming from checkpoints, and evaluates each
  in context (:func:`in_context_record`)."""
  config = run.config
  start = time.perf_counter()
  dataset = load_text_dataset(config.data, tokenizer_dir=run.out_dir,
                              token_dir=run.out_dir / TOKEN_FOLDER)
  data_seconds = time.perf_counter() - start
  models = train_models(run, each_model(config.models, config.train), dataset,
                        functools.partial(_row, dataset))
  tokens_per_step = config.train.batch_size * config.train.accumulate_steps * dataset.seq_len
  return TextModels(dataset, models, tokens_per_step, data_seconds)


def data_record(config: ExperimentConfig, text: TextModels) -> dict:
  """The ``"data"`` entry of a results file: the text's config, rows, bytes per token, time."""
  return {"config": dataclasses.asdict(config.data),
          "train_rows": text.dataset.num_rows("train"),
          "validation_rows": text.dataset.num_rows("validation"),
          "bytes_per_token": text.dataset.bytes_per_token("validation"),
          "seconds": text.data_seconds}

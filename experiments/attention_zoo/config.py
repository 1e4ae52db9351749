"""Attention zoo: every registered causal attention variant with the same budget.

Question: at small size and equal budgets, how do the registered attention variants compare on
the two in-context recall tasks of this library, in accuracy, throughput and memory?

Variants: every name in ``momentum_jax.attention.available_attention()`` at run time, so a newly
registered variant joins without editing this file. A variant that rejects ``causal=True`` (but
accepts ``causal=False``, like agent attention) cannot serve a decoder and is skipped with that
reason. Variant parameters a model does not learn come from ``ATTENTION_PARAMS`` (defaults for
unlisted variants); learned ones are created by the model from the registry.

Tasks (``TASKS``): MQAR associative recall (Zoology, arXiv 2312.04927; vocabulary 32, 6
key-value pairs, 6 queries, T = 23, loss at the 6 query keys) and variable-gap induction
(vocabulary 32, segment 6, gap 0..10, T = 23, loss at the 5 determined positions). Both tasks
have the same vocabulary and length, so one compiled train step per variant serves both.

Model: 2 layers, d_model 64, 4 heads (head dim 16), GELU MLP 256, RoPE, RMSNorm; Adam 3e-3,
batch 32, 600 steps, seed 0: the same initialisation and the same batches for every variant.

Measured per (task, variant):
  final loss / accuracy  mean of the masked loss and accuracy over the last ``final_steps``
                         steps; each batch is freshly sampled and scored before the update on it,
                         so these are held-out numbers.
  tokens/s               batch · T / median wall time of one train step (forward, backward and
                         Adam update, blocked until ready) over the steps after the first
                         ``warmup_steps``; compilation is done ahead of time and excluded.
  peak memory            of the compiled train step, ``jax.jit(step).lower(...).compile()
                         .memory_analysis()``: argument + output + temp − alias bytes (params and
                         optimizer state are donated, so their outputs alias the arguments).

Command:   python -m momentum_jax.experiments.attention_zoo
           (--quick for a <1 minute smoke run; --output-dir to choose where results go)
Hardware:  CPU (2 cores, shared), float32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from momentum_jax.data import AssociativeRecallTask, InductionTask, Task
from momentum_jax.nn import TransformerConfig
from momentum_jax.train import TrainConfig

# Fixed (not learned) parameters of the variants that need one; unlisted variants use defaults.
ATTENTION_PARAMS: Mapping[str, Mapping[str, Any]] = {
    "momentum": {"gamma": 0.5},
    "ema_value": {"eta": 0.5},
}

TASKS: tuple[tuple[str, Task], ...] = (
    ("mqar", AssociativeRecallTask(vocab_size=32, num_pairs=6, num_queries=6)),
    ("induction", InductionTask(vocab_size=32, segment_len=6, max_gap=10)),
)
QUICK_TASKS: tuple[tuple[str, Task], ...] = (
    ("mqar", AssociativeRecallTask(vocab_size=16, num_pairs=3, num_queries=3)),
    ("induction", InductionTask(vocab_size=16, segment_len=4, max_gap=2)),
)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """The sweep: tasks, one training budget, one model shape.

  Attributes:
    tasks: (name, task) pairs; every variant trains on each.
    train: optimizer, learning rate, batch size, steps and seed (its eval / checkpoint / log
      cadences are not used: every step's metrics are kept).
    num_layers, d_model, num_heads, mlp_dim: the transformer's shape.
    final_steps: final loss and accuracy average over this many last steps.
    warmup_steps: steps left out of the throughput median.
    fast_compile: compile with XLA's backend optimisation off (quick runs: shorter compiles,
      throughput not representative).
  """

  tasks: tuple[tuple[str, Task], ...]
  train: TrainConfig
  num_layers: int = 2
  d_model: int = 64
  num_heads: int = 4
  mlp_dim: int = 256
  final_steps: int = 50
  warmup_steps: int = 5
  fast_compile: bool = False

  def model(self, task: Task, attention: str) -> TransformerConfig:
    """The model for ``task`` with the variant ``attention`` and its ``ATTENTION_PARAMS``."""
    return TransformerConfig(
        vocab_size=task.vocab_size, context_len=task.seq_len, num_layers=self.num_layers,
        d_model=self.d_model, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
        attention=attention, attention_params=dict(ATTENTION_PARAMS.get(attention, {})))


def get_config(quick: bool = False) -> ExperimentConfig:
  """The default (full) configuration, or the tiny ``--quick`` smoke configuration."""
  if quick:
    train = TrainConfig(steps=8, batch_size=4, learning_rate=3e-3, optimizer="adam",
                        eval_every=0, checkpoint_every=0, seed=0)
    return ExperimentConfig(tasks=QUICK_TASKS, train=train, num_layers=1, d_model=32,
                            num_heads=4, mlp_dim=0, final_steps=4, warmup_steps=2,
                            fast_compile=True)
  train = TrainConfig(steps=600, batch_size=32, learning_rate=3e-3, optimizer="adam",
                      eval_every=0, checkpoint_every=0, seed=0)
  return ExperimentConfig(tasks=TASKS, train=train)

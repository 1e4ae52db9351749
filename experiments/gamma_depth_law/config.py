"""The γ*–depth law of momentum attention (Maitra, arXiv 2602.04902), measured.

Claim under test: from associative-recall experiments, the best shear of momentum attention
q̂ = q + γ(q_t − q_{t−1}), k̂ = k + γ(k_t − k_{t−1}) falls with the number of layers N as
γ*(N) = 4.17 · N^−0.74 (γ* ≈ 4.17, 2.50, 1.85, 1.50, 1.11 for N = 1, 2, 3, 4, 6).

Tasks: multi-query associative recall (MQAR, 8 key-value pairs then 8 queries, vocabulary 64,
T = 31; loss at the query keys) and variable-gap induction (a segment of 8 distinct tokens, a
gap of 0..16 tokens, the segment again, vocabulary 64, T = 33; loss on the second copy).

Models: attention-only transformers (d_model 64, 4 heads, RoPE, RMS-normalised residual) of
depth N ∈ {1, 2, 3, 4, 6} with the shear in every layer. For each depth and task one vmapped
computation trains, with identical budgets (Adam 3e-3, batch 16, 1000 steps) and, per seed,
the same initial weights and the same batches:
  - the γ grid 0 and 4.17 · 2^−k, k = 5..0 (0.13 … 4.17), γ fixed and the same in every layer;
  - learned γ, one per layer and kv head (softplus-parameterised, starting at 0.5);
  - learned γ with the gain-normalised shear (÷ √(1 + 2γ(1+γ)), spec §3),
each for 3 seeds. Held-out loss and accuracy on 1024 fixed sequences per task.

Analysis: γ*(N) is the grid γ of least mean held-out loss over the seeds, refined by a parabola
through it and its neighbours in log γ when both neighbours are positive; its interval is the
2.5–97.5 % range over 2000 bootstrap resamples of the seeds. The fit log γ* = log a + b log N
(least squares over the depths with γ* > 0) gets its interval from the same resamples.

Command:   python -m momentum_jax.experiments.gamma_depth_law
           (--quick: a <1 minute smoke run into runs/gamma_depth_law/quick; a rerun skips the
           (task, depth) units already finished, --fresh recomputes them;
           --config.sweep.seeds=5 and the like override this config)
Hardware:  CPU (2 cores), float32.
Runtime:   see RESULT.

RESULT: pending the first full run.
"""

from __future__ import annotations

import dataclasses

from momentum_jax.attention.momentum import LEARNED_GAMMA_INIT
from momentum_jax.data import AssociativeRecallTask, InductionTask

# The paper's law γ* = PAPER_A · N^PAPER_B.
PAPER_A = 4.17
PAPER_B = -0.74

GAMMAS = (0.0,) + tuple(PAPER_A * 2.0 ** -k for k in range(5, -1, -1))


@dataclasses.dataclass(frozen=True)
class SweepConfig:
  """The models, the shared budget and the statistics of the sweep.

  Attributes:
    depths: the numbers of layers N.
    gammas: the fixed-γ grid (0 included, γ ≥ 0, increasing).
    seeds: independent repetitions (initial weights and batches), ``>= 2`` for an interval.
    learned_init: the starting value of every learned γ.
    d_model: residual width.
    num_heads: attention heads (= kv heads; each learns its own γ).
    steps: Adam steps per model.
    batch_size: sequences per step.
    learning_rate: Adam's step size.
    chunk_steps: steps per jitted call (the learned γ is recorded after each).
    eval_sequences: held-out sequences per task, the same for every model.
    bootstrap: resamples of the seeds for the intervals.
  """

  depths: tuple[int, ...] = (1, 2, 3, 4, 6)
  gammas: tuple[float, ...] = GAMMAS
  seeds: int = 3
  learned_init: float = LEARNED_GAMMA_INIT
  d_model: int = 64
  num_heads: int = 4
  steps: int = 1000
  batch_size: int = 16
  learning_rate: float = 3e-3
  chunk_steps: int = 100
  eval_sequences: int = 1024
  bootstrap: int = 2000

  def __post_init__(self):
    if not self.depths or min(self.depths) < 1:
      raise ValueError(f"depths must be positive layer counts, got depths={self.depths}")
    if len(self.gammas) < 3 or min(self.gammas) < 0 or list(self.gammas) != sorted(
        set(self.gammas)):
      raise ValueError(f"gammas must be >= 3 distinct increasing values >= 0, got "
                       f"gammas={self.gammas}")
    if self.seeds < 2:
      raise ValueError(f"seeds must be >= 2 for a bootstrap interval, got seeds={self.seeds}")
    if self.steps % self.chunk_steps:
      raise ValueError(f"steps must be a multiple of chunk_steps, got steps={self.steps}, "
                       f"chunk_steps={self.chunk_steps}")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  tasks: tuple[tuple[str, AssociativeRecallTask | InductionTask], ...]
  sweep: SweepConfig


def get_config(quick: bool = False) -> ExperimentConfig:
  """The default (full) configuration, or the tiny ``--quick`` smoke configuration."""
  tasks = (("mqar", AssociativeRecallTask(vocab_size=64, num_pairs=8, num_queries=8)),
           ("induction", InductionTask(vocab_size=64, segment_len=8, max_gap=16)))
  if quick:
    sweep = SweepConfig(depths=(1, 2), gammas=(0.0, 0.5, 2.0), seeds=2, d_model=16,
                        num_heads=2, steps=8, batch_size=8, chunk_steps=8, eval_sequences=32,
                        bootstrap=50)
    tasks = tasks[:1]
  else:
    sweep = SweepConfig()
  return ExperimentConfig(tasks=tasks, sweep=sweep)

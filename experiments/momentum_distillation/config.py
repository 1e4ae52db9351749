"""Momentum distillation on noisy pairs: ALBEF (Li et al., NeurIPS 2021, arXiv 2107.07651).

RESULT: pending.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class PairTask:
  """Paired views of random token sequences.

  A sequence ``x`` of ``seq_len`` tokens drawn uniformly from ``vocab_size`` is view a; view b is
  the same sequence in another "language", ``π(x)`` reversed (``π`` a fixed random permutation of
  the vocabulary, one per seed), with each token replaced by a uniform random one with
  probability ``corruption``. A share ``noise`` of the training pairs is mismatched: their view b
  belongs to another training sequence. Held-out pairs are always matched.

  Attributes:
    vocab_size: tokens per view.
    seq_len: tokens per sequence.
    corruption: probability that a token of view b is replaced at random.
    train_pairs: the finite training set, visited again and again.
    eval_pairs: clean held-out pairs; retrieval ranks each view against all of them.
  """

  vocab_size: int = 64
  seq_len: int = 16
  corruption: float = 0.25
  train_pairs: int = 4096
  eval_pairs: int = 512

  def __post_init__(self):
    if self.vocab_size < 2 or self.seq_len < 1:
      raise ValueError(f"vocab_size must be >= 2 and seq_len >= 1, got "
                       f"vocab_size={self.vocab_size}, seq_len={self.seq_len}")
    if not 0.0 <= self.corruption <= 1.0:
      raise ValueError(f"corruption must be in [0, 1], got corruption={self.corruption}")
    if self.train_pairs < 2 or self.eval_pairs < 2:
      raise ValueError(f"train_pairs and eval_pairs must be >= 2, got "
                       f"train_pairs={self.train_pairs}, eval_pairs={self.eval_pairs}")


@dataclasses.dataclass(frozen=True)
class SweepConfig:
  """The runs and their shared budget.

  Attributes:
    noise_levels: shares of mismatched training pairs, each in [0, 1).
    alphas: distillation weights α compared; 0 is the plain contrastive loss (momentum encoder
      and queue, one-hot targets), ALBEF uses 0.4.
    seeds: repetitions (data, permutation π, initial weights, batches); every (noise, α) run of
      one seed sees the same data and starts from the same weights.
    d_model: token embedding width of each encoder.
    hidden: width of its MLP.
    embed_dim: width of the L2-normalised output embedding.
    steps: AdamW steps.
    batch_size: pairs per step.
    learning_rate: AdamW's step size (weight decay 0.01).
    temperature: τ of the similarities.
    momentum: EMA momentum of the momentum encoders.
    queue_size: past momentum embeddings per view in the queue.
    alpha_warmup_steps: α ramps linearly from 0 over these steps (ALBEF: the first epoch).
    chunk_steps: steps per jitted call.
  """

  noise_levels: tuple[float, ...] = (0.0, 0.2, 0.4)
  alphas: tuple[float, ...] = (0.0, 0.4)
  seeds: int = 3
  d_model: int = 64
  hidden: int = 128
  embed_dim: int = 32
  steps: int = 1500
  batch_size: int = 64
  learning_rate: float = 1e-3
  temperature: float = 0.07
  momentum: float = 0.995
  queue_size: int = 512
  alpha_warmup_steps: int = 100
  chunk_steps: int = 250

  def __post_init__(self):
    if not self.noise_levels or not all(0.0 <= r < 1.0 for r in self.noise_levels):
      raise ValueError(f"noise_levels must be shares in [0, 1), got "
                       f"noise_levels={self.noise_levels}")
    if not self.alphas or not all(0.0 <= a <= 1.0 for a in self.alphas):
      raise ValueError(f"alphas must be in [0, 1], got alphas={self.alphas}")
    if self.seeds < 1:
      raise ValueError(f"seeds must be >= 1, got seeds={self.seeds}")
    if self.steps % self.chunk_steps:
      raise ValueError(f"steps must be a multiple of chunk_steps, got steps={self.steps}, "
                       f"chunk_steps={self.chunk_steps}")
    if not 1 <= self.batch_size <= self.queue_size:
      raise ValueError(f"batch_size must be in [1, queue_size], got batch_size={self.batch_size},"
                       f" queue_size={self.queue_size}")


def method_name(alpha: float) -> str:
  """``"itc"`` for α = 0 (no distillation), else ``"mod_<α>"``."""
  return "itc" if alpha == 0.0 else f"mod_{alpha:g}"


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  task: PairTask
  sweep: SweepConfig

  def units(self) -> list[tuple[str, float, float, int]]:
    """``(unit name, noise, α, seed)`` of every run; its results are saved in ``<unit name>/``."""
    return [(f"noise{noise:g}_{method_name(alpha)}_seed{seed}", noise, alpha, seed)
            for noise in self.sweep.noise_levels for alpha in self.sweep.alphas
            for seed in range(self.sweep.seeds)]


def get_config(quick: bool = False) -> ExperimentConfig:
  """The default (full) configuration, or the tiny ``--quick`` smoke configuration."""
  if quick:
    return ExperimentConfig(
        task=PairTask(vocab_size=16, seq_len=6, train_pairs=64, eval_pairs=32),
        sweep=SweepConfig(noise_levels=(0.0, 0.4), seeds=2, d_model=16, hidden=16, embed_dim=8,
                          steps=20, batch_size=8, queue_size=16, alpha_warmup_steps=5,
                          chunk_steps=10))
  return ExperimentConfig(task=PairTask(), sweep=SweepConfig())

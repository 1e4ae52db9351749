"""Adaptive memory momentum (Topollai & Choromanska, arXiv 2510.04988, AISTATS 2026).

Claim: choosing the momentum coefficient β_t at every step from a two-plane model of the loss
(``momentum_jax.optim.am_sgd`` / ``am_adamw``, λ 0.1, β_max 0.9) does at least as well as the
best hand-tuned fixed momentum, without tuning it.

(a) Convex quadratic f(x) = ½ xᵀAx, A = Q diag(logspace(0, −3)) Qᵀ in 100 dimensions (L 1,
    condition number 1000, random rotation Q, seeded), 500 steps from a random x₀. AM-SGD vs
    EMA momentum d ← βd + (1−β)g, x ← x − ηd (the same direction rule with β fixed,
    d₀ = g₀) for β ∈ {0, 0.5, 0.9, 0.99}. Each method at a common η = 1.9/L and at its best η
    from the grid {0.5, 1, 1.9, 4, 10, 20, 40, 100}/L (fewest steps to f/f₀ ≤ 1e-6, then
    lowest final loss). Reported: f(x_T)/f(x₀) and the steps to f/f₀ ≤ 1e-6.
(b) The small transformer of ``spike_robustness`` (2-layer softmax, d_model 128, 4 heads, GELU
    MLP 512, RoPE) on variable-gap induction (vocabulary 32, segment 8, gap 0..8), batch 32,
    600 steps, learning rate 3e-3 constant, weight decay 0.01, one seed; AM-AdamW (b2 0.999)
    vs AdamW with b1 ∈ {0, 0.5, 0.9, 0.99}, all through ``train`` (``optimizer="am_adamw"``).
    β_t is read back from the JSONL log (``beta``, logged every 5 steps). Reported: final
    held-out loss and accuracy, first evaluation (every 50 steps) with accuracy ≥ 90 %, mean β_t.

Command:   python -m momentum_jax.experiments.adaptive_momentum
           (--quick for a <1 minute smoke run; --output-dir to choose where results go)
Hardware:  CPU (2 cores, shared), float32.
Runtime:   default 4.6 min measured (278 s: quadratic 5 s, transformer runs 44-67 s each, on a
           machine shared with other jobs, load average about 6 on 2 cores); --quick: 16 s wall on a
           quiet 2-core CPU.

RESULT (CPU, default config, one seed):
  (a) quadratic, f(x_T)/f(x₀) after 500 steps and steps to f/f₀ ≤ 1e-6 (- = not reached)
    method     at η = 1.9/L      best η·L   at best η    steps
    am_sgd     8.88e-05            20       4.9e-16      130
    β = 0      9.61e-05             1.9     9.6e-05        -
    β = 0.5    9.54e-05             4       7.1e-06        -
    β = 0.9    8.93e-05            20       7.0e-16      170
    β = 0.99   2.17e-01             0.5     5.8e-02        -
    At the same η all converging methods tie (the slow eigendirections set the pace and EMA
    momentum has the same steady-state step). With η tuned, AM-SGD reaches 1e-6 in 130 steps
    against 170 for the best fixed β (0.9, at the same η = 20/L), and it still converges at
    η = 40/L (218 steps), where fixed β = 0.9 diverges. β_t settles near 0.85 and then sits at
    β_max = 0.9.
  (b) transformer, final held-out loss / accuracy, first evaluation with accuracy ≥ 90 %
    am_adamw      0.002  100.0 %   350   (mean β_t 0.83; at β_max 0.9 for 95 % of the logged
    adamw b1 0    0.004   99.9 %   400    steps before step 400, dropping towards 0 in bursts
    adamw b1 0.5  0.007   99.9 %   350    once the loss is near 0)
    adamw b1 0.9  0.076   98.1 %   550
    adamw b1 0.99 2.535   24.1 %     -
    AM-AdamW wins narrowly on final loss, tied with b1 = 0.5 on speed, and clearly beats the
    default b1 = 0.9 although its β_t is mostly 0.9 too; the likely cause is the brief drops of
    β_t on steps where the gradient turns against the memory (not isolated by an ablation here).
    One seed: the margins between AM-AdamW, b1 = 0 and b1 = 0.5 are within what a second seed
    could reverse.
"""

from __future__ import annotations

import dataclasses

from momentum_jax.data import InductionTask
from momentum_jax.nn import TransformerConfig
from momentum_jax.train import TrainConfig

TARGET_ACCURACY = 0.9  # (b): "solved" threshold for the speed comparison
TARGET_LOSS_RATIO = 1e-6  # (a): f(x_t)/f(x_0) threshold for the speed comparison


@dataclasses.dataclass(frozen=True)
class QuadraticConfig:
  """Part (a): the quadratic, the fixed-β sweep and the learning-rate grid (multiples of 1/L)."""
  dim: int
  log10_condition: float
  steps: int
  betas: tuple[float, ...]
  common_lr: float
  lr_grid: tuple[float, ...]
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  quadratic: QuadraticConfig
  task: InductionTask
  model: TransformerConfig
  runs: tuple[tuple[str, TrainConfig], ...]


def get_config(quick: bool = False) -> ExperimentConfig:
  """The default (full) configuration, or the tiny ``--quick`` smoke configuration."""
  task = InductionTask(vocab_size=32, segment_len=8, max_gap=8)
  if quick:
    quadratic = QuadraticConfig(dim=20, log10_condition=2.0, steps=100, betas=(0.0, 0.9),
                                common_lr=1.9, lr_grid=(1.0, 1.9, 10.0))
    d_model, steps, batch_size, eval_every, eval_batches = 32, 40, 16, 20, 1
    b1s = (0.0, 0.9)
  else:
    quadratic = QuadraticConfig(dim=100, log10_condition=3.0, steps=500,
                                betas=(0.0, 0.5, 0.9, 0.99), common_lr=1.9,
                                lr_grid=(0.5, 1.0, 1.9, 4.0, 10.0, 20.0, 40.0, 100.0))
    d_model, steps, batch_size, eval_every, eval_batches = 128, 600, 32, 50, 8
    b1s = (0.0, 0.5, 0.9, 0.99)
  model = TransformerConfig(
      vocab_size=task.vocab_size, context_len=task.seq_len, num_layers=2, d_model=d_model,
      num_heads=4, mlp_dim=4 * d_model, attention="softmax")
  base = TrainConfig(steps=steps, batch_size=batch_size, learning_rate=3e-3, optimizer="adamw",
                     weight_decay=0.01, eval_every=eval_every, eval_batches=eval_batches,
                     checkpoint_every=0, log_every=5, seed=0)
  runs = (("am_adamw", dataclasses.replace(base, optimizer="am_adamw")),)
  runs += tuple((f"adamw_b1_{b1:g}", dataclasses.replace(base, b1=b1)) for b1 in b1s)
  return ExperimentConfig(quadratic=quadratic, task=task, model=model, runs=runs)

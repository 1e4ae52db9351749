"""Robustness to gradient spikes: SPAM (Huang et al., ICLR 2025, arXiv 2501.06842).

Claim: spike-aware clipping (clip entries with g² > θ·v to sign(g)·sqrt(θ·v)) and periodic
momentum reset make Adam-style training robust to rare huge gradients, which otherwise poison
Adam's second moment v and stall or derail training for hundreds of steps. Stable-SPAM
(arXiv 2502.17055) replaces θ by adaptive per-tensor clipping (AdaClip) and gradient-norm
normalisation (AdaGN). The obvious baseline, which the SPAM paper under-reports, is AdamW with
global-norm clipping: it also bounds a spiked step.

Setup: a 2-layer softmax transformer (d_model 128, 4 heads, GELU MLP 512, RoPE) on variable-gap
induction (vocabulary 32, segment 8, gap 0..8; accuracy on the 7 determined positions per
held-out sequence), batch 32, 800 steps, learning rate 3e-3 (constant), weight decay 0.01, one
seed. The gradient is multiplied by 1000 at 3 steps drawn at random (seeded) from [100, 600]
(``TrainConfig.gradient_spikes``, the SPAM paper's simulation of loss spikes); every optimizer
sees the same spikes, the same data and the same initialisation:
  adamw_no_spikes   AdamW without spikes: the ceiling.
  adamw             AdamW (b1 0.9, b2 0.999).
  adamw_clip        AdamW after clip_by_global_norm(1.0).
  spam              SPAM with the paper's defaults (θ 5000, reset every 500, warmup 150, no
                    clipping in the first 20 steps after the start and after each reset).
  stable_spam       Stable-SPAM with the reference defaults (γ 0.7/0.9/0.999, reset every 1000).
Reported: final held-out loss and accuracy, and the largest training loss in the 50 steps after
each spike (its maximum over the spikes); the train loss is logged at every step.

Command:   python -m momentum_jax.experiments.spike_robustness
           (--quick for a <1 minute smoke run; --output-dir to choose where results go)
Hardware:  CPU (2 cores, shared), float32.
Runtime:   default 6.6 min measured (396 s; 65-112 s per run, on a machine shared with other
           jobs, load average about 6 on 2 cores); --quick: 23 s wall on a quiet 2-core CPU.

RESULT (CPU, default config; gradient ×1000 at steps 356, 418, 524; one seed):
  run               eval loss  eval acc  max train loss in the 50 steps after a spike
  adamw_no_spikes       0.034     99.1 %    2.048   (no spikes: the ceiling)
  adamw                 3.419      7.8 %    6.611
  adamw_clip            0.221     94.5 %    1.995
  spam                  2.431     25.6 %    4.605
  stable_spam           0.064     98.8 %    1.814
  Stable-SPAM wins: it is barely touched by the spikes and ends within 0.03 of the ceiling.
  AdamW + clipping is not hurt by the spikes at all: the gradient norm is 1.4-3 at every step,
  so every step is clipped to norm 1 and a spiked gradient clips to the same step (up to
  rounding); its gap to the ceiling is the cost of clipping at 1.0 on this model, not of the
  spikes. SPAM with the paper's defaults does not protect here: θ = 5000 still lets each entry
  through at sqrt(5000) ≈ 70 times its running RMS, the loss rises from 2.3 to 4.6 over the
  first two spikes, and 800 steps (one reset, at 500) are not enough to recover. Plain AdamW
  does not recover within the run (its second moment is inflated ~1000× and decays with a
  half-life of ~700 steps). The mechanism itself works with a tighter threshold: a side run
  (not in the default set) of SPAM with optimizer_params={"threshold": 50.0} ends at eval loss
  0.014, accuracy 99.7 %, better than Stable-SPAM; θ is the knob, and the paper's 5000 is
  tuned for natural spikes, not ×1000 ones.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from momentum_jax.data import InductionTask
from momentum_jax.nn import TransformerConfig
from momentum_jax.train import TrainConfig

NUM_SPIKES = 3
SPIKE_FACTOR = 1000.0
WINDOW = 50  # steps after a spike over which its loss excursion is measured


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  task: InductionTask
  model: TransformerConfig
  spikes: tuple[int, ...]
  runs: tuple[tuple[str, TrainConfig], ...]


def spike_steps(seed: int, low: int, high: int, count: int) -> tuple[int, ...]:
  """``count`` distinct 1-indexed steps drawn uniformly from ``[low, high]``, sorted."""
  rng = np.random.default_rng(seed)
  return tuple(sorted(int(s) for s in rng.choice(np.arange(low, high + 1), count, replace=False)))


def get_config(quick: bool = False) -> ExperimentConfig:
  """The default (full) configuration, or the tiny ``--quick`` smoke configuration."""
  task = InductionTask(vocab_size=32, segment_len=8, max_gap=8)
  if quick:
    d_model, steps, batch_size, eval_every, eval_batches = 32, 60, 16, 30, 1
    spikes = spike_steps(0, 20, 40, 1)
    spam_params = {"reset_interval": 50, "warmup_steps": 10, "grad_accu_steps": 5}
  else:
    d_model, steps, batch_size, eval_every, eval_batches = 128, 800, 32, 50, 8
    spikes = spike_steps(0, 100, 600, NUM_SPIKES)
    spam_params = {}  # the paper's defaults
  model = TransformerConfig(
      vocab_size=task.vocab_size, context_len=task.seq_len, num_layers=2, d_model=d_model,
      num_heads=4, mlp_dim=4 * d_model, attention="softmax")
  base = TrainConfig(steps=steps, batch_size=batch_size, learning_rate=3e-3, optimizer="adamw",
                     weight_decay=0.01, eval_every=eval_every, eval_batches=eval_batches,
                     checkpoint_every=0, log_every=1, seed=0, gradient_spikes=spikes,
                     spike_factor=SPIKE_FACTOR)
  runs = (
      ("adamw_no_spikes", dataclasses.replace(base, gradient_spikes=())),
      ("adamw", base),
      ("adamw_clip", dataclasses.replace(base, grad_clip_norm=1.0)),
      ("spam", dataclasses.replace(base, optimizer="spam", optimizer_params=spam_params)),
      ("stable_spam", dataclasses.replace(base, optimizer="stable_spam")),
  )
  return ExperimentConfig(task=task, model=model, spikes=spikes, runs=runs)

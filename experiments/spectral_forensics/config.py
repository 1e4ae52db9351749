"""Spectral forensics of one-layer momentum attention (Maitra, arXiv 2602.04902).

Question: what does the symplectic shear q̂_t = (1+γ) q_t − γ q_{t−1} (same for k) do to the
learned queries and keys of a one-layer model that solves induction, seen as the filter
H(z) = 1 + γ(1 − z⁻¹)? Measured on the 1-layer softmax model and the 1-layer momentum model
(γ = 0.5, the best γ of ``single_layer_induction``) of the single-layer-induction experiment,
trained with the same configuration (vocabulary 64, segment 12, gap 0..24, d_model 128, 4 heads,
attention-only, Adam 3e-3, batch 64, 1500 steps, seed 0):

  - the attention pattern on repeated random tokens (24 tokens, twice) and the induction stripe
    score: mean over the second copy of A[t, t − 24 + 1] (the key after the earlier occurrence of
    the current token);
  - Bode plot of the analytic shear and of causal FIR filters (4 taps) fitted by least squares
    from the captured pre-shear q/k (after RoPE, ``hook_rot_q`` / ``hook_rot_k``) to the q̂/k̂
    the attention actually uses, plus the measured gain sqrt(P_after / P_before) per frequency
    bin of the time spectra;
  - band energies of q/k along time below / above ω_c = π/4 (our choice) per head and tensor,
    and the split per RoPE pair (pairs (i, i + H/2)) of the momentum model's pre-shear k, beside
    the static-content prediction |p|/|c| = 2|sin(θ_i/2)|.

Probe data: 64 induction sequences (held-out key) and 64 repeated-random-token sequences.

The models train through ``momentum_jax.train`` into ``<output-dir>/<model name>``; a run that
already holds checkpoints there for the same configuration is loaded instead of retrained, so
``--output-dir runs/single_layer_induction`` analyses the checkpoints of that experiment (its
``softmax_1L`` and ``momentum_1L_g0.5``). Outputs: ``spectral_forensics.json``,
``patterns.png``, ``bode.png``, ``band_energies.png``, ``rope_pair_bands.png``.

Command:   python -m momentum_jax.experiments.spectral_forensics
           (--quick: a tiny smoke run; --output-dir to choose where results go or which
           single_layer_induction run to load)
Hardware:  CPU (2 cores), float32.
Runtime:   10.1 min wall training both models from scratch (2.7 min of CPU time; the 2 cores
           were shared with other jobs, load average about 10); seconds when loading a
           single_layer_induction run. --quick: 15 s wall on a quiet 2-core CPU.

RESULT (default config, seed 0, trained from scratch; accuracies equal those of
single_layer_induction, so the run reproduces its models):
  model              held-out acc  stripe A[t,t−L+1]  high-band (ω > π/4) energy fraction
                                     (head mean)        q      k      q̂      k̂
  softmax_1L            10.0 %          0.051           0.138  0.183  (no shear)
  momentum_1L_g0.5      97.2 %          0.264           0.379  0.437  0.626  0.678
  - Induction head: every momentum head puts 0.26-0.27 of its attention on the induction stripe
    (uniform would be about 1/36); the softmax heads stay at 0.05 (no stripe in patterns.png).
  - Filter fit: 4-tap least-squares filters from pre- to post-shear q and k give
    [1.5, −0.5, 0, 0] in every head (relative residual < 1e-5), i.e. the analytic H(z); the
    measured spectral gain of the learned q follows 10·log10|H|² within 0.1 dB (5.96 dB measured
    vs 6.02 dB analytic at Nyquist).
  - The momentum model's pre-shear q/k are themselves far more high-frequency than the softmax
    model's (0.38-0.44 vs 0.14-0.18 of their energy above π/4): it learned token-varying q/k for
    the shear to difference, while the 1-layer softmax q/k are dominated by slow (positional)
    content.
  - RoPE pairs of the momentum model's k: the fastest pair (θ = 1 rad, above the cut-off) is 81 %
    high band, pairs with θ = 0.18-0.32 only 13 % (their |p|²/|x|² is 0.33-0.35, close to the
    static-content prediction 4 sin²(θ/2) = 0.03-0.10 plus some token content), but the slowest
    pairs (θ <= 0.003) are 64-69 % high band with |p|²/|x|² = 1.7-1.9 (white noise: 75 %, 2.0),
    against a static prediction of about 0. So the segregation predicted for static content holds
    for the fast and middle pairs; the learned model puts token-varying (AC) content in the
    slowest pairs, where RoPE itself adds no momentum.
"""

from __future__ import annotations

import dataclasses
import math

from momentum_jax.data import InductionTask
from momentum_jax.experiments.single_layer_induction.config import get_config as induction_config
from momentum_jax.nn import TransformerConfig
from momentum_jax.train import TrainConfig

MODELS = ("softmax_1L", "momentum_1L_g0.5")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """Models (as in ``single_layer_induction``) and the probes of the analysis.

  Attributes:
    task: the induction task the models train on.
    train: their training configuration.
    models: (name, model config) pairs, the softmax and the momentum model.
    probe_batch: sequences per probe (induction and repeated random tokens).
    repeat_len: L of the repeated random tokens (2L <= context length).
    cutoff: band cut-off ω_c in radians per step.
    fir_taps: taps of the fitted causal filters.
    seed: seeds the probe data (held out from training by a distinct key).
  """

  task: InductionTask
  train: TrainConfig
  models: tuple[tuple[str, TransformerConfig], ...]
  probe_batch: int
  repeat_len: int
  cutoff: float
  fir_taps: int
  seed: int = 1234


def get_config(quick: bool = False) -> ExperimentConfig:
  """The default configuration, or the tiny ``--quick`` one (the smoke models of
  ``single_layer_induction --quick``)."""
  base = induction_config(quick=quick)
  models = dict(base.models)
  return ExperimentConfig(
      task=base.task, train=base.train, models=tuple((name, models[name]) for name in MODELS),
      probe_batch=8 if quick else 64, repeat_len=base.task.seq_len // 2,
      cutoff=math.pi / 4, fir_taps=4)

"""Head detection on the trained models of ``single_layer_induction``.

Question: in the 2-layer softmax model, is there a previous-token head in layer 0 and an induction
head in layer 1 (the two-layer circuit)? In the 1-layer momentum model (γ = 0.5), is the induction
head in layer 0, i.e. does the shear let one layer do what softmax needs two layers for?

Method: the models train exactly as in ``single_layer_induction`` (same task, model and train
configs, seed 0) into ``<output-dir>/<model name>``; a directory that already holds their
checkpoints is loaded instead, so ``--output-dir runs/single_layer_induction`` analyses that run.
Probe: 64 sequences of 24 uniform random tokens repeated twice (48 of the 49 positions), patterns
captured with ``Transformer.run_with_cache``; per (layer, head) the previous-token, duplicate-token,
induction ("mul" score of the TransformerLens detection patterns) and prefix-matching scores of
``momentum_jax.analysis``, averaged over the batch, and each score's lift over the uniform causal
head on the same tokens (``chance_scores``: previous-token 0.074, induction 0.027, prefix
matching 0.028 here). A head is listed when its score is >= ``threshold`` = 0.1 and its lift
>= ``min_lift`` = 5: a tenth of its attention on the pattern, five times what chance puts there.
The lift is there because an absolute share misleads on this probe: a perfect induction head
scores only about 0.5 on induction (the first copy's rows have no induction key).
Outputs: ``head_detection.json`` and one heatmap per model and score.

Command:   python -m momentum_jax.experiments.head_detection
           (--quick: a tiny smoke run; --output-dir runs/single_layer_induction to load that run)
Hardware:  CPU (2 cores), float32.
Runtime:   3.9 min training both models from scratch (2-core CPU, partly shared with a test
           run); seconds when loading a single_layer_induction run. --quick: 15 s wall on a
           quiet 2-core CPU.

RESULT (default config, seed 0; held-out accuracies equal single_layer_induction's), score (lift):
  softmax_2L (100.0 %): previous-token heads in layer 0, L0H3 0.82 (11.2×) and L0H0 0.48 (6.5×),
    the other two 0.005 / 0.018 (< 0.3×); every layer-1 head is an induction head: induction
    0.544-0.554 (20.3-20.7×), prefix matching 0.812-0.826 (28.5-29.0×); layer 0's induction
    scores stay <= 0.018 (<= 0.7×). The two-layer circuit.
  momentum_1L_g0.5 (97.2 %): all four layer-0 heads are induction heads: induction 0.185-0.199
    (6.9-7.4×), prefix matching 0.251-0.275 (8.8-9.7×); previous-token 0.09-0.10 (1.2-1.4×), so
    no previous-token head: the shear does the previous-token step inside the logits. The heads
    are softer than softmax_2L's: a quarter of each second-copy row on the induction key, 0.06-0.08
    on the key two before it, the rest spread over keys 6-12 back.
  Every detected head has lift >= 6.5 and every other score lift <= 1.4, so any min_lift in
  (1.4, 6.5) with any threshold up to 0.18 gives the same heads. With an absolute threshold of 0.3
  alone the momentum heads would not be listed.
"""

from __future__ import annotations

import dataclasses

from momentum_jax.data import InductionTask
from momentum_jax.experiments.single_layer_induction.config import get_config as induction_config
from momentum_jax.nn import TransformerConfig
from momentum_jax.train import TrainConfig

MODELS = ("momentum_1L_g0.5", "softmax_2L")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """The models (as in ``single_layer_induction``) and the probe.

  Attributes:
    task: the induction task the models train on.
    train: their train config.
    models: (name, model config) pairs.
    repeat_len: length of the random sequence that the probe repeats twice.
    probe_batch: probe sequences.
    threshold: smallest score for a head to be listed.
    min_lift: smallest score over the uniform head's score (chance) for a head to be listed.
    seed: probe seed.
  """
  task: InductionTask
  train: TrainConfig
  models: tuple[tuple[str, TransformerConfig], ...]
  repeat_len: int
  probe_batch: int
  threshold: float = 0.1
  min_lift: float = 5.0
  seed: int = 1


def get_config(quick: bool = False) -> ExperimentConfig:
  """The default configuration, or the tiny ``--quick`` one (the quick induction models)."""
  base = induction_config(quick=quick)
  models = tuple((name, config) for name, config in base.models if name in MODELS)
  return ExperimentConfig(task=base.task, train=base.train, models=models,
                          repeat_len=(base.task.seq_len - 1) // 2,
                          probe_batch=8 if quick else 64)

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
``momentum_jax.analysis``, averaged over the batch; heads at or above ``threshold`` are listed.
Outputs: ``head_detection.json`` and one heatmap per model and score.

Command:   python -m momentum_jax.experiments.head_detection
           (--quick: a tiny smoke run; --output-dir runs/single_layer_induction to load that run)
Hardware:  CPU (2 cores), float32.
Runtime:   3.9 min training both models from scratch (2-core CPU, partly shared with a test
           run); seconds when loading a single_layer_induction run. --quick: about 15 s.

RESULT (default config, seed 0; held-out accuracies equal single_layer_induction's):
  softmax_2L (100.0 %): layer 0 has previous-token heads, L0H3 0.82 and L0H0 0.48 (the other two
    0.005 / 0.018); every layer-1 head is an induction head: induction 0.544-0.554, prefix
    matching 0.812-0.826 (layer 0: induction <= 0.018, prefix matching 0.000). The two-layer
    circuit, as expected.
  momentum_1L_g0.5 (97.2 %): all four layer-0 heads put induction-stripe attention well above
    chance (induction 0.185-0.199, prefix matching 0.251-0.275, against about 0.03 for a head
    attending uniformly to its causal prefix), previous-token 0.09-0.10, but none reaches the 0.3
    threshold: the shear's cross terms spread each head's attention over the matching key and
    its neighbours instead of one sharp stripe (spectral_forensics' stripe score: 0.26).
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
    seed: probe seed.
  """
  task: InductionTask
  train: TrainConfig
  models: tuple[tuple[str, TransformerConfig], ...]
  repeat_len: int
  probe_batch: int
  threshold: float = 0.3
  seed: int = 1


def get_config(quick: bool = False) -> ExperimentConfig:
  """The default configuration, or the tiny ``--quick`` one (the quick induction models)."""
  base = induction_config(quick=quick)
  models = tuple((name, config) for name, config in base.models if name in MODELS)
  return ExperimentConfig(task=base.task, train=base.train, models=models,
                          repeat_len=(base.task.seq_len - 1) // 2,
                          probe_batch=8 if quick else 64)

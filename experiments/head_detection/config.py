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
Runtime:   about 6 min training both models from scratch on an idle 2-core CPU; seconds when
           loading a single_layer_induction run. --quick: under a minute.

RESULT: filled in below from the default run (see the closing section of this docstring).
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

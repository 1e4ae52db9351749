"""Training: config and optimizer, masked losses, the jitted mesh-aware loop with orbax resume."""

from momentum_jax.train.config import TrainConfig, make_optimizer, make_schedule
from momentum_jax.train.loop import METRICS_FILE, TrainResult, train
from momentum_jax.train.loss import (
    masked_accuracy, masked_cross_entropy, masked_sums, momentum_distillation_loss)
from momentum_jax.train.sharding import DATA_AXIS, data_parallel_shardings, default_mesh

__all__ = [
    "DATA_AXIS",
    "METRICS_FILE",
    "TrainConfig",
    "TrainResult",
    "data_parallel_shardings",
    "default_mesh",
    "make_optimizer",
    "make_schedule",
    "masked_accuracy",
    "masked_cross_entropy",
    "masked_sums",
    "momentum_distillation_loss",
    "train",
]

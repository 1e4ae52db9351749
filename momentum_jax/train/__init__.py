"""Training: config, optimizer, learning-rate schedule and weight-decay mask, masked losses, ALBEF's
contrastive loss with a momentum encoder, queue and momentum distillation, the
jitted mesh-aware loop (synthetic tasks or packed text; data / FSDP / tensor-parallel meshes;
mixed precision; gradient accumulation) with orbax checkpoints of its ``TrainState`` that resume
on another mesh and skip damaged steps, and ``load_run``, which reads a trained run back for
generation."""

from momentum_jax.train.checkpoint import (
    ConfigMismatchError, CorruptCheckpointWarning, NonFiniteStateError)
from momentum_jax.train.checkpoint_writer import CheckpointSaveError
from momentum_jax.train.config import (
    LR_DECAYS, WEIGHT_DECAY_MASKS, TrainConfig, make_optimizer, make_schedule,
    weight_decay_mask_fn)
from momentum_jax.train.divergence import TrainingDivergedError
from momentum_jax.train.flops import model_flops_per_token, peak_flops_per_second
from momentum_jax.train.loop import METRICS_FILE, TENSORBOARD_DIR, TrainResult, train
from momentum_jax.train.loss import (
    masked_accuracy, masked_cross_entropy, masked_sums, momentum_distillation_loss)
from momentum_jax.train.momentum_distillation import (
    contrastive_logits, momentum_contrastive_loss, one_way_contrastive_loss, soft_targets)
from momentum_jax.train.run_lock import RunFolderLockedError
from momentum_jax.train.saved_run import load_run
from momentum_jax.train.sharding import (
    DATA_AXIS,
    FSDP_AXIS,
    LOGICAL_AXIS_RULES,
    MESH_AXES,
    TENSOR_AXIS,
    batch_sharding,
    bytes_per_device,
    make_mesh,
    opt_state_shardings,
    param_shardings,
)
from momentum_jax.train.state import TrainState
from momentum_jax.train.step import init_train_state, optimizer_step, token_loss

__all__ = [
    "DATA_AXIS",
    "FSDP_AXIS",
    "LOGICAL_AXIS_RULES",
    "LR_DECAYS",
    "MESH_AXES",
    "METRICS_FILE",
    "TENSORBOARD_DIR",
    "TENSOR_AXIS",
    "CheckpointSaveError",
    "ConfigMismatchError",
    "CorruptCheckpointWarning",
    "NonFiniteStateError",
    "RunFolderLockedError",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "TrainingDivergedError",
    "WEIGHT_DECAY_MASKS",
    "batch_sharding",
    "bytes_per_device",
    "contrastive_logits",
    "init_train_state",
    "load_run",
    "make_mesh",
    "make_optimizer",
    "make_schedule",
    "masked_accuracy",
    "masked_cross_entropy",
    "masked_sums",
    "model_flops_per_token",
    "momentum_contrastive_loss",
    "momentum_distillation_loss",
    "one_way_contrastive_loss",
    "opt_state_shardings",
    "optimizer_step",
    "param_shardings",
    "peak_flops_per_second",
    "soft_targets",
    "token_loss",
    "train",
    "weight_decay_mask_fn",
]

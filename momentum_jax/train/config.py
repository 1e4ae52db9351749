"""Training hyperparameters and the optax optimizer they describe."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import optax

OPTIMIZERS = ("adam", "adamw", "sgd")

# Fields that only say how often to evaluate, log or save, or how long to run: changing them
# between a run and its resumption does not change the trajectory.
SCHEDULE_ONLY_FIELDS = ("steps", "eval_every", "eval_batches", "checkpoint_every", "log_every")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """How to train: optimizer, schedule, batch size and the eval / log / checkpoint cadence.

  Attributes:
    steps: total optimizer steps of the run (a resumed run continues up to this count).
    batch_size: sequences per step; must divide by the mesh's ``"data"`` axis size.
    learning_rate: peak learning rate, reached after ``warmup_steps``.
    optimizer: ``"adam"``, ``"adamw"`` (decoupled weight decay, Loshchilov & Hutter,
      arXiv 1711.05101) or ``"sgd"`` (heavy-ball momentum ``b1``; 0 = plain SGD).
    b1: first-moment decay (Adam/AdamW) or momentum (SGD), in [0, 1).
    b2: second-moment decay (Adam/AdamW), in [0, 1).
    weight_decay: decoupled weight decay, AdamW only (must be 0 for the others).
    warmup_steps: linear warmup length, 0 = none (see ``make_schedule``).
    grad_clip_norm: clip gradients to this global L2 norm; ``None`` = no clipping.
    eval_every: evaluate every this many steps (0 = only at the end); always at the end.
    eval_batches: held-out batches per evaluation.
    checkpoint_every: save every this many steps (0 = only at the end); always at the end.
    log_every: log the training metrics every this many steps.
    seed: seeds the parameter initialisation, the training data and the held-out data.
  """

  steps: int = 1500
  batch_size: int = 64
  learning_rate: float = 3e-3
  optimizer: str = "adam"
  b1: float = 0.9
  b2: float = 0.999
  weight_decay: float = 0.0
  warmup_steps: int = 0
  grad_clip_norm: float | None = None
  eval_every: int = 100
  eval_batches: int = 4
  checkpoint_every: int = 0
  log_every: int = 10
  seed: int = 0

  def __post_init__(self):
    def _int(name: str, minimum: int) -> None:
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {name}={value!r}")

    _int("steps", 1)
    _int("batch_size", 1)
    _int("warmup_steps", 0)
    _int("eval_every", 0)
    _int("eval_batches", 1)
    _int("checkpoint_every", 0)
    _int("log_every", 1)
    _int("seed", 0)
    if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
      raise ValueError(
          f"learning_rate must be a positive finite float, got learning_rate={self.learning_rate!r}"
      )
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got optimizer={self.optimizer!r}")
    for name in ("b1", "b2"):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {name}={getattr(self, name)!r}")
    if not self.weight_decay >= 0.0:
      raise ValueError(f"weight_decay must be >= 0, got weight_decay={self.weight_decay!r}")
    if self.weight_decay and self.optimizer != "adamw":
      raise ValueError(
          f"weight_decay={self.weight_decay} is only used by optimizer='adamw', got "
          f"optimizer={self.optimizer!r}"
      )
    if self.grad_clip_norm is not None and not self.grad_clip_norm > 0:
      raise ValueError(
          f"grad_clip_norm must be None or > 0, got grad_clip_norm={self.grad_clip_norm!r}"
      )

  def to_dict(self) -> dict[str, Any]:
    """JSON-serialisable form."""
    return dataclasses.asdict(self)


def make_schedule(cfg: TrainConfig) -> optax.Schedule:
  """Linear warmup then constant: ``lr(t) = lr · min(1, t / warmup_steps)`` (``lr`` if no warmup).

  ``t`` counts completed updates, so the first update of a warmup uses ``lr(0) = 0`` (optax's
  convention for ``warmup_constant_schedule``).
  """
  if cfg.warmup_steps == 0:
    return optax.constant_schedule(cfg.learning_rate)
  return optax.warmup_constant_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  """The optimizer of ``cfg``: optional ``clip_by_global_norm``, then Adam / AdamW / SGD.

  Example:
    >>> tx = make_optimizer(TrainConfig(optimizer="adamw", weight_decay=0.01, warmup_steps=100))
  """
  schedule = make_schedule(cfg)
  if cfg.optimizer == "adam":
    tx = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2)
  elif cfg.optimizer == "adamw":
    tx = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
  else:
    tx = optax.sgd(schedule, momentum=cfg.b1 or None)
  if cfg.grad_clip_norm is None:
    return tx
  return optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)

"""Training hyperparameters and the optax optimizer they describe."""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import optax

from momentum_jax.optim.adaptive_momentum import am_adamw, am_sgd
from momentum_jax.optim.mkor import mkor_adamw
from momentum_jax.optim.spam import spam
from momentum_jax.optim.spikes import inject_gradient_spikes
from momentum_jax.optim.stable_spam import stable_spam

# Each optimizer's factory and the factory arguments that TrainConfig fields set ("momentum" is
# SGD's name for ``b1``). ``learning_rate`` is always the schedule; the rest of the factory's
# keyword arguments may be given through ``TrainConfig.optimizer_params``.
_OPTIMIZERS: dict[str, tuple[Callable[..., optax.GradientTransformation], tuple[str, ...]]] = {
    "adam": (optax.adam, ("b1", "b2")),
    "adamw": (optax.adamw, ("b1", "b2", "weight_decay")),
    "sgd": (optax.sgd, ("momentum",)),
    "spam": (spam, ("b1", "b2", "weight_decay")),
    "stable_spam": (stable_spam, ("b1", "b2", "weight_decay")),
    "am_sgd": (am_sgd, ("weight_decay",)),
    "am_adamw": (am_adamw, ("b2", "weight_decay")),
    "mkor": (mkor_adamw, ("b1", "b2", "weight_decay")),
}
OPTIMIZERS = tuple(_OPTIMIZERS)
# Optimizers whose update takes the dense layers' statistics (``layer_stats``), which the train
# step collects in the same forward/backward pass as the gradients.
LAYER_STATS_OPTIMIZERS = ("mkor",)
_DTYPES = ("float32", "bfloat16")
_PARAM_TYPES = (bool, int, float, str, type(None))  # JSON scalars: hashable, saved in checkpoints

# Fields that only say how often to evaluate, log or save, or how long to run: changing them
# between a run and its resumption does not change the trajectory.
SCHEDULE_ONLY_FIELDS = ("steps", "eval_every", "eval_batches", "checkpoint_every", "log_every")
# Fields that say where the computation runs, not what it computes: a run may resume on another
# mesh (the checkpoint is restored onto the new mesh's shardings).
PLACEMENT_FIELDS = ("mesh_shape", "tensorboard")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """How to train: optimizer, schedule, batch size and the eval / log / checkpoint cadence.

  Attributes:
    steps: total optimizer steps of the run (a resumed run continues up to this count).
    batch_size: sequences per micro-batch (per step without accumulation); must divide by the
      mesh's data-parallel size (``data`` × ``fsdp``).
    learning_rate: peak learning rate, reached after ``warmup_steps``.
    optimizer: ``"adam"``, ``"adamw"`` (decoupled weight decay, Loshchilov & Hutter,
      arXiv 1711.05101), ``"sgd"`` (heavy-ball momentum ``b1``; 0 = plain SGD), ``"spam"``
      (:func:`momentum_jax.optim.spam`), ``"stable_spam"`` (:func:`momentum_jax.optim.stable_spam`),
      ``"am_sgd"`` or ``"am_adamw"`` (adaptive memory momentum,
      :func:`momentum_jax.optim.am_sgd` / :func:`momentum_jax.optim.am_adamw`), ``"mkor"``
      (rank-1 K-FAC preconditioning before AdamW, :func:`momentum_jax.optim.mkor_adamw`; the
      train step collects its layer statistics in the same forward/backward pass).
    b1: first-moment decay (Adam, AdamW, SPAM, Stable-SPAM) or momentum (SGD), in [0, 1); unused
      by ``am_*``, whose momentum is adaptive (cap it with ``optimizer_params={"beta_max": ...}``).
    b2: second-moment decay (Adam, AdamW, SPAM, Stable-SPAM, AM-AdamW), in [0, 1).
    weight_decay: weight decay of ``adamw``, ``spam``, ``stable_spam``, ``am_adamw`` (decoupled)
      and ``am_sgd`` (coupled, an L2 term); must be 0 for the others. The default 0 overrides
      the 1e-2 default of ``am_adamw``.
    optimizer_params: further keyword arguments of the optimizer's factory, e.g.
      ``{"threshold": 5000.0, "reset_interval": 500}`` for SPAM or ``{"beta_max": 0.9}`` for
      AM-SGD; values are JSON scalars. Stored as a sorted tuple of pairs so the config stays
      hashable. Arguments that other fields set (``learning_rate``, ``b1``, ``b2``,
      ``weight_decay``, SGD's ``momentum``) are not accepted here.
    warmup_steps: linear warmup length, 0 = none (see ``make_schedule``).
    grad_clip_norm: clip gradients to this global L2 norm; ``None`` = no clipping.
    gradient_spikes: 1-indexed steps at which the gradient is multiplied by ``spike_factor``
      before clipping and the optimizer (:func:`momentum_jax.optim.inject_gradient_spikes`,
      simulating the loss spikes of the SPAM paper); ``()`` = none. Stored sorted, without
      duplicates.
    spike_factor: the multiplier of the spiked gradients.
    eval_every: evaluate every this many steps (0 = only at the end); always at the end.
    eval_batches: held-out batches per evaluation.
    checkpoint_every: save every this many steps (0 = only at the end); always at the end.
    log_every: log the training metrics every this many steps.
    seed: seeds the parameter initialisation, the training data and the held-out data.
    accumulate_steps: gradient accumulation: each optimizer step sums the gradients of this many
      micro-batches of ``batch_size`` sequences, so it sees ``batch_size · accumulate_steps``
      sequences (the same ones, and the same update up to float summation order, as one batch of
      that size).
    compute_dtype: ``"float32"`` or ``"bfloat16"``: the dtype of the model's matmuls and
      activations; ``None`` keeps ``TransformerConfig.dtype``. Losses are float32.
    param_dtype: ``"float32"`` (master weights, the usual mixed precision with bfloat16
      compute) or ``"bfloat16"`` (parameters and optimizer state in bfloat16); ``None`` keeps
      ``TransformerConfig.param_dtype``.
    mesh_shape: ``(data, fsdp, tensor)`` device counts of the training mesh
      (``momentum_jax.train.make_mesh``), whose product must be the number of devices; the batch
      is split over data × fsdp, parameters and optimizer state are sharded FSDP-style over
      ``fsdp`` and the attention and MLP kernels tensor-parallel over ``tensor``. ``None``: one
      device (or the ``mesh`` given to ``train``). Not part of the checkpoint signature: a run
      may resume on another mesh.
    tensorboard: also write the metrics as TensorBoard event files in ``workdir/tensorboard``
      (with the ``tensorboard`` extra; without it the run warns and writes none).
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
  optimizer_params: Any = ()
  gradient_spikes: tuple[int, ...] = ()
  spike_factor: float = 1000.0
  eval_every: int = 100
  eval_batches: int = 4
  checkpoint_every: int = 0
  log_every: int = 10
  seed: int = 0
  accumulate_steps: int = 1
  compute_dtype: str | None = None
  param_dtype: str | None = None
  mesh_shape: tuple[int, int, int] | None = None
  tensorboard: bool = True

  def __post_init__(self):
    params = self.optimizer_params
    params = params.items() if isinstance(params, Mapping) else params
    object.__setattr__(self, "optimizer_params", tuple(sorted(tuple(pair) for pair in params)))
    object.__setattr__(self, "gradient_spikes", tuple(sorted(set(self.gradient_spikes))))
    if self.mesh_shape is not None and not isinstance(self.mesh_shape, str):
      object.__setattr__(self, "mesh_shape", tuple(self.mesh_shape))
    self._validate()

  def _validate(self) -> None:
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
    _int("accumulate_steps", 1)
    for name in ("compute_dtype", "param_dtype"):
      if getattr(self, name) not in (None, *_DTYPES):
        raise ValueError(f"{name} must be None or one of {_DTYPES}, got "
                         f"{name}={getattr(self, name)!r}")
    shape = self.mesh_shape
    if shape is not None and (
        not isinstance(shape, tuple) or len(shape) != 3
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape)):
      raise ValueError(f"mesh_shape must be None or three ints >= 1 (data, fsdp, tensor), got "
                       f"mesh_shape={self.mesh_shape!r}")
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
    decayed = tuple(name for name, (_, fields) in _OPTIMIZERS.items() if "weight_decay" in fields)
    if self.weight_decay and self.optimizer not in decayed:
      raise ValueError(
          f"weight_decay={self.weight_decay} is only used by the optimizers {decayed}, got "
          f"optimizer={self.optimizer!r}"
      )
    if self.grad_clip_norm is not None and not self.grad_clip_norm > 0:
      raise ValueError(
          f"grad_clip_norm must be None or > 0, got grad_clip_norm={self.grad_clip_norm!r}"
      )
    bad = [s for s in self.gradient_spikes if not isinstance(s, int) or isinstance(s, bool)
           or s < 1]
    if bad:
      raise ValueError(f"gradient_spikes must be 1-indexed steps (ints >= 1), got {bad} in "
                       f"gradient_spikes={self.gradient_spikes!r}")
    if not math.isfinite(self.spike_factor):
      raise ValueError(f"spike_factor must be finite, got spike_factor={self.spike_factor!r}")
    self._validate_optimizer_params()

  def _validate_optimizer_params(self) -> None:
    factory, fields = _OPTIMIZERS[self.optimizer]
    accepted = sorted(set(inspect.signature(factory).parameters) - {"learning_rate", *fields})
    unknown = sorted(set(dict(self.optimizer_params)) - set(accepted))
    if unknown:
      raise ValueError(
          f"optimizer_params {unknown} are not accepted by optimizer={self.optimizer!r}; it "
          f"takes {accepted} (learning_rate and {list(fields)} come from the TrainConfig fields)")
    bad = [name for name, value in self.optimizer_params if not isinstance(value, _PARAM_TYPES)]
    if bad:
      raise ValueError(f"optimizer_params {bad} must be JSON scalars (bool, int, float, str or "
                       f"None), got optimizer_params={dict(self.optimizer_params)!r}")
    make_optimizer(self)  # the factory checks the values (its ValueError names the argument)

  def to_dict(self) -> dict[str, Any]:
    """JSON-serialisable form (``optimizer_params`` as a dict)."""
    d = dataclasses.asdict(self)
    d["optimizer_params"] = dict(self.optimizer_params)
    return d


def make_schedule(cfg: TrainConfig) -> optax.Schedule:
  """Linear warmup then constant: ``lr(t) = lr · min(1, t / warmup_steps)`` (``lr`` if no warmup).

  ``t`` counts completed updates, so the first update of a warmup uses ``lr(0) = 0`` (optax's
  convention for ``warmup_constant_schedule``).
  """
  if cfg.warmup_steps == 0:
    return optax.constant_schedule(cfg.learning_rate)
  return optax.warmup_constant_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  """The optimizer of ``cfg``: ``chain(spikes, clip, optimizer)``, each stage only if configured.

  The optional stages, in order: ``inject_gradient_spikes(gradient_spikes, spike_factor)``, then
  ``clip_by_global_norm(grad_clip_norm)``, then the optimizer's factory called with the schedule,
  the config fields it takes and ``optimizer_params``. Without spikes and clipping the optimizer
  is returned unchained.

  Example:
    >>> tx = make_optimizer(TrainConfig(optimizer="adamw", weight_decay=0.01, warmup_steps=100))
    >>> tx = make_optimizer(TrainConfig(optimizer="spam", optimizer_params={"threshold": 1e3},
    ...                                 gradient_spikes=(100, 250)))
  """
  factory, fields = _OPTIMIZERS[cfg.optimizer]
  from_fields = {name: (cfg.b1 or None) if name == "momentum" else getattr(cfg, name)
                 for name in fields}
  tx = factory(make_schedule(cfg), **from_fields, **dict(cfg.optimizer_params))
  stages = []
  if cfg.gradient_spikes:
    stages.append(inject_gradient_spikes(cfg.gradient_spikes, cfg.spike_factor))
  if cfg.grad_clip_norm is not None:
    stages.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  return optax.chain(*stages, tx) if stages else tx

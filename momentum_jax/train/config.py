"""Training hyperparameters and the optax optimizer they describe."""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
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
#: How the learning rate moves after the warmup (``make_schedule``).
LR_DECAYS = ("constant", "cosine", "linear")
#: Which parameters weight decay applies to (``weight_decay_mask_fn``).
WEIGHT_DECAY_MASKS = ("all", "matrices", "matrices_except_embeddings")
# Optimizers whose factory takes optax's ``mask`` of the decayed parameters.
_MASKABLE = tuple(name for name, (factory, _) in _OPTIMIZERS.items()
                  if "mask" in inspect.signature(factory).parameters)
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
    learning_rate: peak learning rate, reached after ``warmup_steps``; a float (for a
      schedule set ``lr_decay``, ``warmup_steps``, ``decay_steps`` and ``min_lr_ratio``: a
      callable is refused, since the config must be hashable and saved with the run).
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
    weight_decay_mask: which parameters are decayed (``weight_decay_mask_fn``): ``"all"``
      (every parameter, optax's default), ``"matrices"`` (the weight matrices: every dense
      layer's ``kernel`` and the token ``embedding``, nanoGPT's rule; not norm scales, biases or
      the attention variants' learned parameters such as γ) or
      ``"matrices_except_embeddings"`` (dense kernels only, minGPT's rule). Other than
      ``"all"`` only for the optimizers whose factory takes optax's ``mask`` (``adamw``).
    optimizer_params: further keyword arguments of the optimizer's factory, e.g.
      ``{"threshold": 5000.0, "reset_interval": 500}`` for SPAM or ``{"beta_max": 0.9}`` for
      AM-SGD; values are JSON scalars. Stored as a sorted tuple of pairs so the config stays
      hashable. Arguments that other fields set (``learning_rate``, ``b1``, ``b2``,
      ``weight_decay``, SGD's ``momentum``, the ``mask`` of ``weight_decay_mask``) are not
      accepted here.
    warmup_steps: linear warmup length, 0 = none (see ``make_schedule``).
    lr_decay: the learning rate after the warmup: ``"constant"`` (the peak), ``"cosine"`` or
      ``"linear"`` decay from the peak to ``min_lr_ratio`` × peak at step ``decay_steps``,
      held there after it (see ``make_schedule``).
    decay_steps: the step at which a decaying schedule reaches its floor, counting the warmup
      (optax's ``warmup_cosine_decay_schedule`` convention, nanoGPT's ``lr_decay_iters``);
      ``None`` = ``steps``, the end of the run. Must exceed ``warmup_steps``; only with a
      decaying ``lr_decay``. The horizon shapes every step's learning rate, so ``to_dict``
      writes it resolved and it is part of the checkpoint signature: a run resumed with another
      ``steps`` under ``decay_steps=None`` is refused, naming ``train.decay_steps`` (give the
      saved value explicitly to continue on its schedule).
    min_lr_ratio: the floor of a decaying schedule as a fraction of ``learning_rate``, in
      [0, 1]; must be 0 with ``lr_decay="constant"``.
    grad_clip_norm: clip gradients to this global L2 norm; ``None`` = no clipping.
    gradient_spikes: 1-indexed steps at which the gradient is multiplied by ``spike_factor``
      before clipping and the optimizer (:func:`momentum_jax.optim.inject_gradient_spikes`,
      simulating the loss spikes of the SPAM paper); ``()`` = none. Stored sorted, without
      duplicates.
    spike_factor: the multiplier of the spiked gradients.
    eval_every: evaluate every this many steps (0 = only at the end); always at the end.
    eval_batches: held-out batches of ``batch_size`` rows per evaluation: a synthetic task's
      batches ``fold_in(eval_key, i)``, or the first batches of one pass over a text dataset's
      validation split; ``None`` = the whole validation split of a text dataset (every full
      batch of one pass, the same rows at every evaluation, so held-out losses compare across
      trainers); a synthetic task has no finite split and ``train`` refuses ``None`` for it.
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
  weight_decay_mask: str = "all"
  warmup_steps: int = 0
  lr_decay: str = "constant"
  decay_steps: int | None = None
  min_lr_ratio: float = 0.0
  grad_clip_norm: float | None = None
  optimizer_params: Any = ()
  gradient_spikes: tuple[int, ...] = ()
  spike_factor: float = 1000.0
  eval_every: int = 100
  eval_batches: int | None = 4
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
    if self.eval_batches is not None:
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
    if callable(self.learning_rate):
      raise ValueError(
          f"learning_rate must be a float (the peak), got the callable {self.learning_rate!r}; "
          f"for a schedule set lr_decay={LR_DECAYS}, warmup_steps=..., decay_steps=... and "
          "min_lr_ratio=...")
    if (not isinstance(self.learning_rate, (int, float)) or isinstance(self.learning_rate, bool)
        or not (self.learning_rate > 0 and math.isfinite(self.learning_rate))):
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
    self._validate_schedule()
    if self.weight_decay_mask not in WEIGHT_DECAY_MASKS:
      raise ValueError(f"weight_decay_mask must be one of {WEIGHT_DECAY_MASKS}, got "
                       f"weight_decay_mask={self.weight_decay_mask!r}")
    if self.weight_decay_mask != "all" and self.optimizer not in _MASKABLE:
      raise ValueError(
          f"weight_decay_mask={self.weight_decay_mask!r} needs an optimizer whose factory takes a "
          f"weight-decay mask, one of {_MASKABLE}; got optimizer={self.optimizer!r}")
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

  def _validate_schedule(self) -> None:
    if self.lr_decay not in LR_DECAYS:
      raise ValueError(f"lr_decay must be one of {LR_DECAYS}, got lr_decay={self.lr_decay!r}")
    ratio = self.min_lr_ratio
    if (not isinstance(ratio, (int, float)) or isinstance(ratio, bool)
        or not 0.0 <= ratio <= 1.0):
      raise ValueError(f"min_lr_ratio must be a float in [0, 1], got min_lr_ratio={ratio!r}")
    if self.decay_steps is not None and (
        not isinstance(self.decay_steps, int) or isinstance(self.decay_steps, bool)
        or self.decay_steps < 1):
      raise ValueError(f"decay_steps must be None or an int >= 1, got "
                       f"decay_steps={self.decay_steps!r}")
    if self.lr_decay == "constant":
      for name, unused in (("decay_steps", None), ("min_lr_ratio", 0.0)):
        if getattr(self, name) != unused:
          raise ValueError(
              f"{name}={getattr(self, name)!r} is only used by a decaying schedule "
              f"(lr_decay='cosine' or 'linear'), got lr_decay='constant'")
      return
    if self.decay_horizon <= self.warmup_steps:
      given = (f"decay_steps={self.decay_steps}" if self.decay_steps is not None
               else f"decay_steps=None, i.e. steps={self.steps}")
      raise ValueError(
          f"lr_decay={self.lr_decay!r} decays from the end of the warmup to decay_steps, which "
          f"must exceed warmup_steps={self.warmup_steps}; got {given} (shorten warmup_steps or "
          "give a larger decay_steps)")

  @property
  def decay_horizon(self) -> int | None:
    """The step at which a decaying schedule reaches its floor (``decay_steps``, None: ``steps``);
    None for ``lr_decay="constant"``."""
    if self.lr_decay == "constant":
      return None
    return self.steps if self.decay_steps is None else self.decay_steps

  def _validate_optimizer_params(self) -> None:
    factory, fields = _OPTIMIZERS[self.optimizer]
    if "mask" in dict(self.optimizer_params):
      raise ValueError(
          f"optimizer_params may not set 'mask' (got mask={dict(self.optimizer_params)['mask']!r}):"
          f" choose the decayed parameters with weight_decay_mask, one of {WEIGHT_DECAY_MASKS}")
    accepted = sorted(set(inspect.signature(factory).parameters)
                      - {"learning_rate", "mask", *fields})
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
    """JSON-serialisable form (``optimizer_params`` as a dict), with the horizon of a decaying
    schedule resolved (``decay_steps=None`` written as ``steps``): the checkpoint signature and
    the experiments' records leave ``steps`` out but keep this. ``TrainConfig(**to_dict())``
    is the same config, or, with ``decay_steps=None`` under a decaying ``lr_decay``, the same
    schedule with the horizon explicit."""
    d = dataclasses.asdict(self)
    d["optimizer_params"] = dict(self.optimizer_params)
    d["decay_steps"] = self.decay_horizon
    return d


def make_schedule(cfg: TrainConfig) -> optax.Schedule:
  """The learning rate after ``t`` completed updates: linear warmup, then ``cfg.lr_decay``.

  With peak ``η = learning_rate``, ``w = warmup_steps``, ``D = decay_horizon`` (``decay_steps``,
  None: ``steps``), floor ratio ``ρ = min_lr_ratio`` and ``s = min(t − w, D − w) / (D − w)``::

      lr(t) = η · t / w                                  for t < w (the warmup),
      lr(t) = η                                          "constant",
      lr(t) = η · (ρ + (1 − ρ) · ½ (1 + cos(π s)))       "cosine" (SGDR without restarts,
                                                          Loshchilov & Hutter, arXiv 1608.03983),
      lr(t) = η · (1 − (1 − ρ) · s)                      "linear",

  for t >= w: the decay reaches ``ρ η`` at ``t = D`` and stays there (nanoGPT's ``get_lr``
  with ``min_lr = ρ η``). Built from optax's schedules (``constant_schedule``,
  ``warmup_constant_schedule``, ``warmup_cosine_decay_schedule``, ``linear_schedule`` joined by
  ``join_schedules``). ``t`` counts completed updates, so the first update of a warmup uses
  ``lr(0) = 0`` (optax's convention).
  """
  peak, warmup = cfg.learning_rate, cfg.warmup_steps
  if cfg.lr_decay == "constant":
    if warmup == 0:
      return optax.constant_schedule(peak)
    return optax.warmup_constant_schedule(0.0, peak, warmup)
  horizon, floor = cfg.decay_horizon, cfg.min_lr_ratio * peak
  if cfg.lr_decay == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, horizon, end_value=floor)
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup),
                               optax.linear_schedule(peak, floor, horizon - warmup)], [warmup])


def _path_names(path: tuple[Any, ...]) -> set[Any]:
  return {getattr(key, "key", getattr(key, "name", getattr(key, "idx", None))) for key in path}


def weight_decay_mask_fn(mask: str) -> Callable[[Any], Any] | None:
  """optax's ``mask`` for ``TrainConfig.weight_decay_mask``: ``params -> pytree of bools``
  (True = decayed), or None for ``"all"`` (optax decays every parameter).

  The decision is by name, not by shape, so it holds for any stacking of the layers: a leaf is
  a weight matrix when its path in the parameter tree has a key ``"kernel"`` (the weight of every
  dense layer of ``momentum_jax.nn``: attention and MLP projections, the unembedding, gates and
  routers) or, for ``"matrices"``, ``"embedding"`` (the token embedding, which is also the output
  matrix with tied embeddings). Everything else is not decayed: RMSNorm scales (``scale``),
  dense biases (``bias``), attention sinks and the attention variants' learned parameters (γ,
  KV-shift mixes, biases, fixed queries).

  Example:
    >>> mask = weight_decay_mask_fn("matrices")
    >>> mask({"embed": {"embedding": jnp.ones((4, 2))}, "final_norm": {"scale": jnp.ones(2)}})
    {'embed': {'embedding': True}, 'final_norm': {'scale': False}}
  """
  if mask not in WEIGHT_DECAY_MASKS:
    raise ValueError(f"mask must be one of {WEIGHT_DECAY_MASKS}, got mask={mask!r}")
  if mask == "all":
    return None
  decayed = {"kernel", "embedding"} if mask == "matrices" else {"kernel"}
  return lambda params: jax.tree_util.tree_map_with_path(
      lambda path, _: bool(_path_names(path) & decayed), params)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  """The optimizer of ``cfg``: ``chain(spikes, clip, optimizer)``, each stage only if configured.

  The optional stages, in order: ``inject_gradient_spikes(gradient_spikes, spike_factor)``, then
  ``clip_by_global_norm(grad_clip_norm)``, then the optimizer's factory called with the schedule,
  the config fields it takes (with the ``weight_decay_mask``) and ``optimizer_params``. Without
  spikes and clipping the optimizer is returned unchained.

  Example:
    >>> tx = make_optimizer(TrainConfig(optimizer="adamw", weight_decay=0.01, warmup_steps=100))
    >>> tx = make_optimizer(TrainConfig(optimizer="spam", optimizer_params={"threshold": 1e3},
    ...                                 gradient_spikes=(100, 250)))
  """
  factory, fields = _OPTIMIZERS[cfg.optimizer]
  from_fields = {name: (cfg.b1 or None) if name == "momentum" else getattr(cfg, name)
                 for name in fields}
  mask = weight_decay_mask_fn(cfg.weight_decay_mask)
  if mask is not None:
    from_fields["mask"] = mask
  tx = factory(make_schedule(cfg), **from_fields, **dict(cfg.optimizer_params))
  stages = []
  if cfg.gradient_spikes:
    stages.append(inject_gradient_spikes(cfg.gradient_spikes, cfg.spike_factor))
  if cfg.grad_clip_norm is not None:
    stages.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  return optax.chain(*stages, tx) if stages else tx

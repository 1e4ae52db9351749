"""The jitted train step and held-out evaluation on pure pytrees, placed on a mesh.

``nnx.split(model, nnx.Param, ...)`` gives ``(graphdef, params, rest)`` once; the step merges the
module inside the trace, so NNX's graph traversal is paid at trace time only. ``rest`` is the
module state that is not a parameter (running statistics, a router's random stream): the step
returns it updated.

Loss of an optimizer step over ``k = accumulate_steps`` micro-batches ``m`` of the step's batch,

    L = Σ_m Σ_{t ∈ m} mask_t · CE_t / max(Σ_t mask_t, 1) + (1/k) Σ_m aux_m,

where the token count in the denominator is that of the whole step's batch, so the summed
micro-batch gradients are the gradient of the same loss on one batch of ``k · batch_size``
sequences (up to float summation order); ``aux`` is the model's weighted auxiliary loss. With
``k = 1`` the program is the plain one (no scan). Optimizers that precondition with the dense
layers' statistics (MKOR) get them from ``momentum_jax.nn.value_grad_and_layer_stats`` in the
same forward/backward pass: input means averaged and output-gradient sums added over the
micro-batches.

Both functions are module-level jits whose static arguments (graphdef, optimizer config, task,
placement) are hashable, so repeated ``train`` calls on the same setup reuse one compilation.
``token_loss`` and ``optimizer_step`` are the token loss and the update for code that steps a
model itself (a vmapped ensemble, an ahead-of-time compiled benchmark).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from momentum_jax.data import Batch, Task
from momentum_jax.nn import Transformer, TransformerConfig, value_grad_and_layer_stats
from momentum_jax.nn.partitioning import layer_weight_placement
from momentum_jax.optim import adaptive_memory_beta
from momentum_jax.train.config import (
    LAYER_STATS_OPTIMIZERS,
    PLACEMENT_FIELDS,
    SCHEDULE_ONLY_FIELDS,
    TrainConfig,
    make_optimizer,
    make_schedule,
)
from momentum_jax.train.loss import masked_sums
from momentum_jax.train.sharding import (
    compute_shardings, gather_one_layer, opt_state_shardings, param_shardings)
from momentum_jax.train.state import TrainState

# ``loss(params, rest, batch) -> (loss, (masked sums, rest after the forward pass))``.
LossFn = Callable[[nnx.State, nnx.State, Batch],
                  tuple[jax.Array, tuple[dict[str, jax.Array], nnx.State]]]

# Auxiliary losses of the model (and MoH's share of dropped routed rows) logged with the train
# metrics when the model has them.
AUX_LOSS_METRICS = ("moh_load_balance", "flux_sparsity", "moh_dropped")


class Placement(NamedTuple):
  """Where the step's inputs and outputs live: hashable, so it can be a static jit argument.

  Attributes:
    params: the parameters' shardings, as the leaves of the parameter tree.
    opt_state: the optimizer state's shardings, as the leaves of its tree.
    batch: the batch axis split over the mesh's data-parallel axes.
    replicated: ``PartitionSpec()`` on the mesh (module state, metrics).
    compute_params: the parameters' shardings during the forward and backward pass: those of
      ``params`` without the ``fsdp`` axis (gathered, tensor-parallel splits kept), except the
      stacked weights of scanned layers, gathered one layer at a time inside the layer scan.
  """

  params: tuple[NamedSharding, ...]
  opt_state: tuple[NamedSharding, ...]
  batch: NamedSharding
  replicated: NamedSharding
  compute_params: tuple[NamedSharding, ...]


def step_config(cfg: TrainConfig) -> TrainConfig:
  """``cfg`` with the fields the step does not read reset, so equal steps share one compile; the
  horizon of a decaying schedule (``decay_steps=None``: ``steps``) is made explicit first."""
  defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
  unread = (*SCHEDULE_ONLY_FIELDS, *PLACEMENT_FIELDS, "seed")
  return dataclasses.replace(cfg, decay_steps=cfg.decay_horizon,
                             **{k: defaults[k] for k in unread})


def _placed(tree: Any, shardings: tuple[NamedSharding, ...]) -> Any:
  return jax.lax.with_sharding_constraint(
      tree, jax.tree.unflatten(jax.tree.structure(tree), shardings))


def _replicated(tree: Any, placement: Placement) -> Any:
  return jax.lax.with_sharding_constraint(tree, placement.replicated)


def _means(sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
  count = jnp.maximum(sums["count"], 1.0)
  return {"loss": sums["loss_sum"] / count, "accuracy": sums["correct_sum"] / count}


def _micro_batches(batch: Batch, k: int) -> Batch:
  """``[k·b, ...]`` → ``[k, b, ...]``, micro-batch i holding rows i, i + k, ...: the batch axis
  stays split the way the mesh splits it, so no data moves between devices."""
  return jax.tree.map(lambda x: x.reshape(-1, k, *x.shape[1:]).swapaxes(0, 1), batch)


def _forward(model: nnx.Module, batch: Batch) -> tuple[dict[str, jax.Array], dict[str, Any]]:
  logits_BxTxV, aux = model.logits_and_aux_loss(
      batch.tokens, positions_BxT=batch.positions, segment_ids_BxT=batch.segment_ids)
  return masked_sums(logits_BxTxV, batch), aux


def _eval_sums(model: nnx.Module, batch: Batch) -> dict[str, jax.Array]:
  logits_BxTxV = model(batch.tokens, positions_BxT=batch.positions,
                       segment_ids_BxT=batch.segment_ids)
  return masked_sums(logits_BxTxV, batch)


def _value_and_grad(params, rest, batch: Batch, count: jax.Array, aux_weight: float | None, *,
                    graphdef, with_stats: bool):
  """``(sums, aux, new_rest), grads, layer_stats`` of the step loss restricted to ``batch``: its
  token loss sum over ``count`` plus ``aux_weight`` (None = 1) times its auxiliary loss;
  ``layer_stats`` is None unless ``with_stats``."""

  def loss_of_model(model):
    sums, aux = _forward(model, batch)
    new_rest = nnx.split(model, nnx.Param, ...)[2]
    aux_loss = aux["total"] if aux_weight is None else aux_weight * aux["total"]
    return sums["loss_sum"] / count + aux_loss, (sums, aux, new_rest)

  # A copy: the module may update its state here, inside the gradient's trace.
  if with_stats:
    model = nnx.merge(graphdef, params, rest, copy=True)
    (_, out), grads, stats = value_grad_and_layer_stats(loss_of_model, model, has_aux=True)
    return out, grads, stats
  (_, out), grads = jax.value_and_grad(
      lambda p: loss_of_model(nnx.merge(graphdef, p, rest, copy=True)), has_aux=True)(params)
  return out, grads, None


def _accumulated(params, rest, batch: Batch, count: jax.Array, k: int, grad):
  """``(sums, aux, rest), grads, layer_stats`` summed over the ``k`` micro-batches of ``batch``
  (a ``lax.scan``; gradients summed in float32 and cast back to the parameters' dtype, auxiliary
  losses and input means averaged)."""

  def micro_step(rest, micro: Batch):
    (sums, aux, rest), grads, stats = grad(params, rest, micro, count, 1.0 / k)
    grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
    aux = {name: aux[name] / k for name in (*AUX_LOSS_METRICS, "total") if name in aux}
    if stats is not None:
      stats = {name: s._replace(input_mean=s.input_mean / k) for name, s in stats.items()}
    return (sums, aux, grads, stats), rest

  def accumulate(carry, micro: Batch):
    totals, rest = carry
    new, rest = micro_step(rest, micro)
    return (jax.tree.map(jnp.add, totals, new), rest), None

  micro_batches = _micro_batches(batch, k)
  first = jax.tree.map(lambda x: x[0], micro_batches)
  shapes = jax.eval_shape(micro_step, rest, first)[0]
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  (totals, rest), _ = jax.lax.scan(accumulate, (zeros, rest), micro_batches)
  sums, aux, grads, stats = totals
  grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
  return (sums, aux, rest), grads, stats


def init_train_state(model_config: TransformerConfig, cfg: TrainConfig, mesh: Mesh,
                     batch_placement: NamedSharding, params_key: jax.Array
                     ) -> tuple[nnx.GraphDef, TrainState, Placement]:
  """``graphdef, state, placement`` of a fresh model and optimizer on ``mesh`` (step 0).

  The model is initialised eagerly (the same draws as ``Transformer(config, rngs=...)``) and
  its state moved onto the shardings its logical axes give.
  """
  model = Transformer(model_config, rngs=nnx.Rngs(params_key))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  replicated = NamedSharding(mesh, PartitionSpec())
  params_sharding = param_shardings(params, mesh)
  params = jax.device_put(params, params_sharding)
  rest = jax.device_put(rest, replicated)
  tx = make_optimizer(cfg)
  opt_sharding = opt_state_shardings(tx, jax.eval_shape(tx.init, params), params_sharding, mesh)
  opt_state = jax.jit(tx.init, out_shardings=opt_sharding)(params)
  placement = Placement(params=tuple(jax.tree.leaves(params_sharding)),
                        opt_state=tuple(jax.tree.leaves(opt_sharding)),
                        batch=batch_placement, replicated=replicated,
                        compute_params=tuple(jax.tree.leaves(compute_shardings(params_sharding))))
  return graphdef, TrainState(params, opt_state, rest, step=0), placement


def _update(params, opt_state, rest, data, step, *, graphdef, cfg: TrainConfig,
            task: Task | None, placement: Placement):
  """One optimizer update.

  ``data`` is the step's batch of ``batch_size · accumulate_steps`` sequences, or, with a
  synthetic ``task``, the data key: the batch is then ``task.sample(fold_in(data, step), ...)``,
  drawn inside the step. Returns ``(params, opt_state, rest, metrics)``.
  """
  tx, schedule = make_optimizer(cfg), make_schedule(cfg)
  k = cfg.accumulate_steps
  n = cfg.batch_size * k
  batch = task.sample(jax.random.fold_in(data, step), n) if task is not None else data
  batch = jax.lax.with_sharding_constraint(batch, placement.batch)
  with_stats = cfg.optimizer in LAYER_STATS_OPTIMIZERS
  grad = functools.partial(_value_and_grad, graphdef=graphdef, with_stats=with_stats)
  count = jnp.maximum(jnp.sum(batch.loss_mask.astype(jnp.float32)), 1.0)
  # FSDP: the weights are gathered for the forward and backward pass and their gradients
  # reduce-scattered back onto the parameters' shards for the optimizer; the stacked weights of
  # scanned layers are gathered one layer at a time inside the layer scan.
  compute_params = _placed(params, placement.compute_params)
  with layer_weight_placement(gather_one_layer(placement.batch.mesh)):
    if k == 1:
      (sums, aux, rest), grads, stats = grad(compute_params, rest, batch, count, None)
    else:
      (sums, aux, rest), grads, stats = _accumulated(compute_params, rest, batch, count, k, grad)
  grads = _placed(grads, placement.params)
  if with_stats:
    updates, opt_state = tx.update(grads, opt_state, params, layer_stats=stats)
  else:
    updates, opt_state = tx.update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  means = _means(sums)
  metrics = {
      "train_loss": means["loss"],
      "train_accuracy": means["accuracy"],
      "grad_norm": optax.tree.norm(grads),
      "learning_rate": schedule(step),
  }
  for name in AUX_LOSS_METRICS:
    if name in aux:
      metrics[name] = aux[name]
  beta = adaptive_memory_beta(opt_state)  # found at trace time, so the choice is static
  if beta is not None:
    metrics["beta"] = beta
  return (_placed(params, placement.params), _placed(opt_state, placement.opt_state),
          _replicated(rest, placement), _replicated(metrics, placement))


_STATIC = ("graphdef", "cfg", "task", "placement")
_DONATED = ("params", "opt_state")
train_step = jax.jit(_update, static_argnames=_STATIC, donate_argnames=_DONATED)


def bound_train_step(*, graphdef: nnx.GraphDef, cfg: TrainConfig, task: Task | None,
                     placement: Placement) -> Callable[..., tuple[Any, Any, Any, dict]]:
  """:func:`train_step` with its static arguments bound once: a jitted
  ``step(params, opt_state, rest, data, step)``, donating ``params`` and ``opt_state``.

  ``train_step`` hashes its static arguments (the model's graph definition, the config, the
  placement) on every call: milliseconds per step on the host, which a small model on a CPU
  feels twice, since the host thread shares the cores with the step itself. The training loop
  calls this instead; ``step`` is best given as a NumPy int32 (a ``jnp.int32`` is one more
  dispatch per step).
  """
  return jax.jit(functools.partial(_update, graphdef=graphdef, cfg=cfg, task=task,
                                   placement=placement), donate_argnums=(0, 1))


@functools.partial(
    jax.jit, static_argnames=("graphdef", "task", "batch_size", "num_batches", "placement"))
def evaluate_task(params, rest, eval_key, *, graphdef, task: Task, batch_size: int,
                  num_batches: int, placement: Placement) -> dict[str, jax.Array]:
  """Masked ``{"loss", "accuracy"}`` over the held-out batches ``fold_in(eval_key, i)``,
  i < num_batches, of a synthetic task, weighting every counted token equally."""
  model = nnx.merge(graphdef, params, rest, copy=True)
  model.eval()  # deterministic routing, running statistics read and not updated

  def body(i, totals):
    batch = task.sample(jax.random.fold_in(eval_key, i), batch_size)
    batch = jax.lax.with_sharding_constraint(batch, placement.batch)
    return jax.tree.map(jnp.add, totals, _eval_sums(model, batch))

  zeros = {k: jnp.float32(0.0) for k in ("loss_sum", "correct_sum", "count")}
  return _replicated(_means(jax.lax.fori_loop(0, num_batches, body, zeros)), placement)


@functools.partial(jax.jit, static_argnames=("graphdef", "placement"))
def evaluate_batch(params, rest, batch: Batch, *, graphdef,
                   placement: Placement) -> dict[str, jax.Array]:
  """``{"loss_sum", "correct_sum", "count"}`` of the model in eval mode on one held-out batch."""
  model = nnx.merge(graphdef, params, rest, copy=True)
  model.eval()
  batch = jax.lax.with_sharding_constraint(batch, placement.batch)
  return _replicated(_eval_sums(model, batch), placement)


def token_loss(graphdef: nnx.GraphDef) -> LossFn:
  """The mean masked next-token cross-entropy of the model ``nnx.merge(graphdef, params, rest)``,

      L = Σ_t mask_t · CE_t / max(Σ_t mask_t, 1),

  as ``loss(params, rest, batch) -> (L, (sums, rest))``: ``sums`` are ``masked_sums`` of the
  batch, ``rest`` the module state the forward pass leaves (running statistics). The model's
  auxiliary losses are not added (``train_step`` adds them to this token loss).
  """

  def loss(params: nnx.State, rest: nnx.State, batch: Batch):
    model = nnx.merge(graphdef, params, rest, copy=True)  # fresh variables, mutable in the trace
    sums = masked_sums(model(batch.tokens, positions_BxT=batch.positions,
                             segment_ids_BxT=batch.segment_ids), batch)
    return sums["loss_sum"] / jnp.maximum(sums["count"], 1.0), (sums, nnx.split(
        model, nnx.Param, ...)[2])

  return loss


def optimizer_step(loss: LossFn, tx: optax.GradientTransformation) -> Callable[..., tuple]:
  """One update of ``tx`` on the gradient of ``loss`` (e.g. ``token_loss``) in the parameters,

      θ ← θ + tx(∇_θ L(θ; batch)),

  as the pure ``step(params, rest, opt_state, batch) -> (params, rest, opt_state, metrics)``,
  ``metrics = {"loss", "accuracy"}`` of the batch before the update. For callers that jit,
  ``vmap`` or compile it ahead of time themselves (ensembles, benchmarks); ``train`` runs
  ``train_step``.

  Example::

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(1e-3)
    step = jax.jit(optimizer_step(token_loss(graphdef), tx))
    params, rest, opt_state, metrics = step(params, rest, tx.init(params), batch)
  """

  def step(params: nnx.State, rest: nnx.State, opt_state: Any, batch: Batch):
    (value, (sums, rest)), grads = jax.value_and_grad(loss, has_aux=True)(params, rest, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    metrics = {"loss": value, "accuracy": sums["correct_sum"] / jnp.maximum(sums["count"], 1.0)}
    return optax.apply_updates(params, updates), rest, opt_state, metrics

  return step

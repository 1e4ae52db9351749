"""The training loop: a jitted pure step on a mesh, held-out eval, JSONL metrics, orbax resume.

The hot loop runs on pure pytrees: ``graphdef, params, rest = nnx.split(model, nnx.Param, ...)``
once, then one ``jax.jit``-ed step ``(params, opt_state, rest, step) -> (params, opt_state, rest,
metrics)`` that merges the module inside the trace, so NNX's graph traversal is paid at trace time
only. ``rest`` is the module state that is not a parameter (for example the running mean of the
affine-scaled attention's α, or a router's random-number stream): the step returns it updated and
it is checkpointed with the parameters. The loss is the task's masked cross-entropy plus the
model's weighted auxiliary losses (mixture-of-heads load balance, flux router sparsity); the
held-out evaluation runs the model in eval mode, under ``momentum_jax.nn.checked`` (the model's
input checks: token ids in ``[0, vocab_size)``, γ finite and >= 0); the train step runs unchecked.
The step and the eval are module-level jits with the graphdef, optimizer config, task and
shardings static, so repeated ``train`` calls on the same setup (a resume, a sweep over seeds)
reuse one compilation.
Each step builds its batch from ``fold_in(data_key, step)``: the data order depends only on the
seed and the step index, so a run resumed from a checkpoint at step k continues bit-identically
to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from momentum_jax.data import Batch, Task
from momentum_jax.nn import Transformer, TransformerConfig, checked
from momentum_jax.train import checkpoint
from momentum_jax.train.config import (
    SCHEDULE_ONLY_FIELDS,
    TrainConfig,
    make_optimizer,
    make_schedule,
)
from momentum_jax.train.loss import masked_sums
from momentum_jax.train.metrics_log import MetricsLog
from momentum_jax.train.sharding import data_parallel_shardings, default_mesh

# Auxiliary losses of the model logged with the train metrics when the model has them.
AUX_LOSS_METRICS = ("moh_load_balance", "flux_sparsity")
METRICS_FILE = "metrics.jsonl"
_START_OVER = ("to start over, rerun the experiment with --fresh (or delete the workdir); to keep "
               "both runs, give another --output-dir (or workdir)")


def _saveable(rest: nnx.State) -> Any:
  """``rest`` with typed PRNG keys as their raw key data, which orbax stores as plain arrays."""
  return jax.tree.map(
      lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x,
      rest)


def _restored(saved: Any, like: nnx.State) -> nnx.State:
  """Inverse of :func:`_saveable`: wraps key data back into keys of ``like``'s key type."""
  return jax.tree.map(
      lambda x, ref: (jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref))
                      if jnp.issubdtype(ref.dtype, jax.dtypes.prng_key) else x),
      saved, like)


class TrainResult(NamedTuple):
  """What ``train`` returns.

  Attributes:
    params: the final ``nnx.Param`` state (a pytree).
    final_eval: held-out ``{"loss", "accuracy"}`` at the final step, as Python floats.
    history: every record of ``metrics.jsonl`` (train records carry ``train_loss``,
      ``train_accuracy``, ``grad_norm`` (of the raw gradient, before any injected spike or
      clipping), ``learning_rate``, and ``beta`` when the optimizer state has a field of that
      name (the adaptive momentum β_t of ``am_sgd`` / ``am_adamw`` after the step);
      eval records ``eval_loss``, ``eval_accuracy``), in order.
    model: the trained ``Transformer`` (``nnx.merge`` of the final state).
  """

  params: nnx.State
  final_eval: dict[str, float]
  history: list[dict[str, Any]]
  model: Transformer


def _check_compatible(model_config: TransformerConfig, task: Task) -> None:
  if task.vocab_size != model_config.vocab_size:
    raise ValueError(
        f"task.vocab_size={task.vocab_size} must equal "
        f"model_config.vocab_size={model_config.vocab_size}"
    )
  if task.seq_len > model_config.context_len:
    raise ValueError(
        f"task.seq_len={task.seq_len} exceeds model_config.context_len={model_config.context_len}"
    )


def _sample_sharded(task: Task, key: jax.Array, batch_size: int, sharding: NamedSharding) -> Batch:
  return jax.lax.with_sharding_constraint(task.sample(key, batch_size), sharding)


def _masked_means(sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
  count = jnp.maximum(sums["count"], 1.0)
  return {"loss": sums["loss_sum"] / count, "accuracy": sums["correct_sum"] / count}


def _replicate(tree: Any, batch_sharding: NamedSharding) -> Any:
  return jax.lax.with_sharding_constraint(tree, NamedSharding(batch_sharding.mesh, PartitionSpec()))


def _step_config(cfg: TrainConfig) -> TrainConfig:
  """``cfg`` with the fields the step does not read reset, so equal steps share one compile."""
  defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
  return dataclasses.replace(cfg, **{k: defaults[k] for k in (*SCHEDULE_ONLY_FIELDS, "seed")})


@functools.partial(
    jax.jit,
    static_argnames=("graphdef", "cfg", "task", "batch_sharding"),
    donate_argnames=("params", "opt_state"),
)
def _train_step(params, opt_state, rest, data_key, step, *, graphdef, cfg, task, batch_sharding):
  """One update on the batch of ``fold_in(data_key, step)``; a module-level jit, so repeated
  ``train`` calls with the same model, optimizer and task reuse its compilation."""
  tx, schedule = make_optimizer(cfg), make_schedule(cfg)

  def loss_fn(params):
    batch = _sample_sharded(task, jax.random.fold_in(data_key, step), cfg.batch_size,
                            batch_sharding)
    # A copy: the module may update its state here, inside the gradient's trace.
    model = nnx.merge(graphdef, params, rest, copy=True)
    logits_BxTxV, aux = model.logits_and_aux_loss(batch.tokens)
    sums = masked_sums(logits_BxTxV, batch)
    new_rest = nnx.split(model, nnx.Param, ...)[2]
    return _masked_means(sums)["loss"] + aux["total"], (sums, aux, new_rest)

  (_, (sums, aux, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  means = _masked_means(sums)
  metrics = {
      "train_loss": means["loss"],
      "train_accuracy": means["accuracy"],
      "grad_norm": optax.tree.norm(grads),
      "learning_rate": schedule(step),
  }
  for name in AUX_LOSS_METRICS:
    if name in aux:
      metrics[name] = aux[name]
  beta = otu.tree_get(opt_state, "beta")  # found at trace time, so the choice is static
  if beta is not None:
    metrics["beta"] = beta
  return _replicate((params, opt_state, rest, metrics), batch_sharding)


@functools.partial(
    jax.jit, static_argnames=("graphdef", "task", "batch_size", "num_batches", "batch_sharding")
)
def _evaluate(params, rest, eval_key, *, graphdef, task, batch_size, num_batches, batch_sharding):
  """Masked loss and accuracy over the held-out batches ``fold_in(eval_key, i)``, i < num_batches,
  weighting every counted token equally."""
  model = nnx.merge(graphdef, params, rest, copy=True)
  model.eval()  # deterministic routing, running statistics read and not updated

  def body(i, totals):
    batch = _sample_sharded(task, jax.random.fold_in(eval_key, i), batch_size, batch_sharding)
    return jax.tree.map(jnp.add, totals, masked_sums(model(batch.tokens), batch))

  zeros = {k: jnp.float32(0.0) for k in ("loss_sum", "correct_sum", "count")}
  return _replicate(_masked_means(jax.lax.fori_loop(0, num_batches, body, zeros)), batch_sharding)


def train(
    model_config: TransformerConfig,
    train_config: TrainConfig,
    task: Task,
    workdir: str | os.PathLike[str],
    *,
    mesh: Mesh | None = None,
    progress: bool = True,
    experiment: Mapping[str, Any] | None = None,
) -> TrainResult:
  """Trains ``Transformer(model_config)`` on ``task`` with masked next-token cross-entropy.

  Writes ``workdir/metrics.jsonl`` (train metrics every ``log_every`` steps, held-out eval every
  ``eval_every`` steps and at the end) and orbax checkpoints in ``workdir/checkpoints`` (every
  ``checkpoint_every`` steps and at the end). If ``workdir`` holds a checkpoint, training resumes
  from the latest one, bit-identically to an uninterrupted run, and prints
  ``resumed <workdir name> from step <k> of <steps>``, or ``<workdir name> finished at step <k> of
  <steps>: skipped (--fresh retrains)`` when nothing is left to train (the final evaluation still
  runs). Resuming under a different package version, model, optimisation, task or experiment
  config raises ``ValueError`` listing each differing key. ``nnx.Param``
  state is trained; other module state (running statistics, random-number streams) is carried
  from step to step as the model updates it; both are checkpointed. The loss adds the model's
  weighted auxiliary losses (``Transformer.logits_and_aux_loss``) to the task loss.

  Args:
    model_config: the model; its ``vocab_size`` must equal the task's and its ``context_len``
      cover ``task.seq_len``.
    train_config: optimizer, schedule, batch size and cadences.
    task: a synthetic task, a frozen dataclass such as those of ``momentum_jax.data``, sampled
      inside the jitted step.
    workdir: directory for metrics and checkpoints (created if absent).
    mesh: a mesh with a ``"data"`` axis; the batch is sharded over it, params and optimizer state
      are replicated. Default: one device.
    progress: show a tqdm progress bar.
    experiment: a JSON record of the experiment that runs this training, saved in the checkpoint
      signature (the experiment CLI passes its name, the hash of its resolved config and that
      config); compared on resume with a saved record of the same experiment name
      (``checkpoint.signature_differences``).

  Returns:
    ``TrainResult(params, final_eval, history, model)``.
  """
  _check_compatible(model_config, task)
  cfg = train_config
  mesh = default_mesh() if mesh is None else mesh
  batch_sharding, replicated = data_parallel_shardings(mesh, cfg.batch_size)
  workdir = pathlib.Path(workdir)
  signature = checkpoint.run_signature(model_config, cfg, task, experiment)
  manager = checkpoint.checkpoint_manager(workdir)
  try:
    return _run(model_config, cfg, task, workdir, manager, signature, batch_sharding, replicated,
                progress)
  finally:
    manager.close()


def _run(
    model_config: TransformerConfig,
    cfg: TrainConfig,
    task: Task,
    workdir: pathlib.Path,
    manager: ocp.CheckpointManager,
    signature: dict[str, Any],
    batch_sharding: NamedSharding,
    replicated: NamedSharding,
    progress: bool,
) -> TrainResult:
  """``train`` after validation, with an open checkpoint manager and the run's signature."""
  latest = manager.latest_step()
  if latest is not None:
    differences = checkpoint.signature_differences(
        checkpoint.restore_signature(manager, latest), signature
    )
    if differences:
      raise ValueError(
          f"the checkpoint in {workdir} was saved under a different config; differing keys:\n  "
          + "\n  ".join(differences) + f"\n{_START_OVER}"
      )
    if latest > cfg.steps:
      raise ValueError(
          f"the latest checkpoint is at step {latest} > steps={cfg.steps} in {workdir}; "
          f"{_START_OVER}")
    if latest == cfg.steps:
      print(f"{workdir.name} finished at step {latest} of {cfg.steps}: skipped (--fresh retrains)")
    else:
      print(f"resumed {workdir.name} from step {latest} of {cfg.steps}")

  params_key, data_key, eval_key = jax.random.split(jax.random.key(cfg.seed), 3)
  model = Transformer(model_config, rngs=nnx.Rngs(params_key))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params = jax.device_put(params, replicated)
  opt_state = jax.jit(make_optimizer(cfg).init, out_shardings=replicated)(params)
  start = 0
  rest = jax.device_put(rest, replicated)
  if latest is not None:
    target = {"params": params, "opt_state": opt_state, "rest": _saveable(rest),
              "step": jax.device_put(0, replicated)}
    restored = checkpoint.restore_state(manager, latest, target)
    params, opt_state, start = restored["params"], restored["opt_state"], int(restored["step"])
    rest = _restored(restored["rest"], rest)
  log = MetricsLog(workdir / METRICS_FILE, keep_until_step=None if latest is None else start)

  step_static = dict(graphdef=graphdef, cfg=_step_config(cfg), task=task,
                     batch_sharding=batch_sharding)
  # The held-out evaluation runs with the model's input checks on (token ids in range, γ >= 0
  # and not NaN): a failed check raises a named error; the train step runs without them.
  evaluate = checked(functools.partial(
      _evaluate, graphdef=graphdef, task=task, batch_size=cfg.batch_size,
      num_batches=cfg.eval_batches, batch_sharding=batch_sharding))

  def run_eval(step: int) -> dict[str, float]:
    means = jax.device_get(evaluate(params, rest, eval_key))
    means = {k: float(v) for k, v in means.items()}
    if not log.has(step, "eval_loss"):
      log.append(step, {f"eval_{k}": v for k, v in means.items()})
    return means

  with tqdm(total=cfg.steps, initial=start, disable=not progress, desc="train") as bar:
    for step in range(start, cfg.steps):
      params, opt_state, rest, metrics = _train_step(
          params, opt_state, rest, data_key, jnp.int32(step), **step_static)
      done = step + 1
      if done % cfg.log_every == 0:
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        log.append(done, values)
        bar.set_postfix(loss=f"{values['train_loss']:.4f}")
      if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps:
        run_eval(done)
      if done == cfg.steps or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0):
        state = {"params": params, "opt_state": opt_state, "rest": _saveable(rest),
                 "step": jax.device_put(done, replicated)}
        checkpoint.save(manager, done, state, signature)
      bar.update(1)
  final_eval = run_eval(cfg.steps)
  manager.wait_until_finished()
  return TrainResult(
      params=params,
      final_eval=final_eval,
      history=list(log.records),
      model=nnx.merge(graphdef, params, rest),
  )

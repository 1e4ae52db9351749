"""The training loop: a jitted step on a mesh, held-out eval, JSONL / TensorBoard metrics, orbax
checkpoints that resume on any mesh.

``train`` takes a synthetic task (sampled inside the jitted step from ``fold_in(data_key,
step)``) or a ``TextDataset`` (packed rows read on the host by a resumable iterator whose
position is saved in each checkpoint). Either way the batch of a step depends only on the seed
and the step index, so a run resumed from a checkpoint at step k continues bit-identically to an
uninterrupted one. The step and the evaluation are in ``momentum_jax.train.step``; the placement
(``(data, fsdp, tensor)`` mesh, parameters sharded by their logical axis names) in
``momentum_jax.train.sharding``; checkpoint reading with fallback past damaged steps in
``momentum_jax.train.checkpoint``; the lock that keeps a second run out of the workdir in
``momentum_jax.train.run_lock``; the stop at the first non-finite loss or gradient norm in
``momentum_jax.train.divergence``.

The held-out evaluation runs the model in eval mode under ``momentum_jax.nn.checked`` (the
model's input checks: token ids in ``[0, vocab_size)``, γ finite and >= 0); the train step runs
unchecked. Train records carry ``tokens_per_second`` and ``model_flops_per_second`` (PaLM model
FLOPs, ``momentum_jax.train.flops``) measured between log records, and ``mfu`` on devices whose
peak is known; the first step of a run (compilation) is not in them: the first record after it
holds ``compile_seconds`` and ``first_step_seconds`` instead. They also carry the model's
small learned attention parameters as the variant receives them (``learned γ`` of
``"momentum_learned"`` per layer and kv head: ``Transformer.learned_attention_values``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import itertools
import math
import os
import pathlib
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from tqdm.auto import tqdm

from momentum_jax.data import Batch, Task, TextDataset
from momentum_jax.nn import Transformer, TransformerConfig, checked
from momentum_jax.train import checkpoint
from momentum_jax.train.checkpoint_writer import CheckpointWriter
from momentum_jax.train.config import TrainConfig
from momentum_jax.train.divergence import DivergenceWatch
from momentum_jax.train.flops import (
    model_flops_per_token, peak_flops_per_second, throughput_metrics)
from momentum_jax.train.metrics_log import MetricsLog
from momentum_jax.train.run_lock import RunLock
from momentum_jax.train.sharding import batch_sharding, make_mesh
from momentum_jax.train.state import TrainState
from momentum_jax.train.step import (
    Placement, bound_train_step, evaluate_batch, evaluate_task, init_train_state, step_config)

#: The file in the workdir holding one JSON record of metrics per logged step.
METRICS_FILE = "metrics.jsonl"
#: The folder in the workdir of the TensorBoard event file (with ``TrainConfig.tensorboard``).
TENSORBOARD_DIR = "tensorboard"


class _Advice(NamedTuple):
  """How to start a run over, in the words of the caller's interface."""

  start_over: str  # after a refused resume
  retrain: str  # after a finished run is skipped


# ``train`` called from Python, and ``train`` called by the experiment command line (which
# passes its ``experiment`` record).
_PYTHON_ADVICE = _Advice(
    start_over=("to start over, delete the workdir; to keep both runs, call train with another "
                "workdir"),
    retrain="a larger train_config.steps continues it; another workdir retrains")
_COMMAND_LINE_ADVICE = _Advice(
    start_over=("to start over, rerun the experiment with --fresh (or delete the workdir); to keep "
                "both runs, give another --output-dir (or workdir)"),
    retrain="--fresh retrains")


class TrainResult(NamedTuple):
  """What ``train`` returns.

  Attributes:
    params: the final ``nnx.Param`` state (a pytree, sharded as trained).
    final_eval: held-out ``{"loss", "accuracy"}`` at the final step, as Python floats; on a
      ``TextDataset`` also ``perplexity`` (``exp(loss)``) and ``bits_per_byte``
      (``loss / ln 2 / bytes_per_token`` of the validation text).
    history: every record of ``metrics.jsonl`` (train records carry ``train_loss``,
      ``train_accuracy``, ``grad_norm`` (of the raw gradient, before any injected spike or
      clipping), ``learning_rate``, ``beta`` when the optimizer state has a field of that name
      (the adaptive momentum β_t of ``am_sgd`` / ``am_adamw`` after the step), and the
      throughput ``tokens_per_second``, ``model_flops_per_second`` and ``mfu`` (where the
      device's peak is known) once a step has been timed; eval records carry ``eval_`` and each
      key of ``final_eval``; the first record after the first step of this call also carries
      ``compile_seconds`` and ``first_step_seconds``), in order.
    model: the trained ``Transformer`` (``nnx.merge`` of the final state).
  """

  params: nnx.State
  final_eval: dict[str, float]
  history: list[dict[str, Any]]
  model: Transformer


def _with_precision(model_config: TransformerConfig, cfg: TrainConfig) -> TransformerConfig:
  """``model_config`` with the train config's ``compute_dtype`` / ``param_dtype`` (if set)."""
  changes = {"dtype": cfg.compute_dtype, "param_dtype": cfg.param_dtype}
  return dataclasses.replace(model_config, **{k: v for k, v in changes.items() if v is not None})


def _check_compatible(model_config: TransformerConfig, data: Task | TextDataset) -> None:
  what = "task" if not isinstance(data, TextDataset) else "data"
  if data.vocab_size != model_config.vocab_size:
    raise ValueError(
        f"{what}.vocab_size={data.vocab_size} must equal "
        f"model_config.vocab_size={model_config.vocab_size}"
    )
  if data.seq_len > model_config.context_len:
    raise ValueError(
        f"{what}.seq_len={data.seq_len} exceeds "
        f"model_config.context_len={model_config.context_len}"
    )


def _data_record(data: Task | TextDataset) -> dict[str, Any]:
  """The data's part of the run signature: its class name and fields."""
  if isinstance(data, TextDataset):
    return {"name": "TextDataset", "vocab_size": data.vocab_size,
            **dataclasses.asdict(data.config)}
  return {"name": type(data).__name__, **dataclasses.asdict(data)}


def _tensorboard_dir(cfg: TrainConfig, workdir: pathlib.Path) -> pathlib.Path | None:
  """``workdir/tensorboard`` when ``cfg.tensorboard`` and tensorboardX is installed, else None
  (with a warning naming the extra when only tensorboardX is missing)."""
  if not cfg.tensorboard:
    return None
  if importlib.util.find_spec("tensorboardX") is None:
    warnings.warn("no TensorBoard event files are written: tensorboardX is not installed (pip "
                  "install 'momentum_jax[tensorboard]', or TrainConfig(tensorboard=False))",
                  stacklevel=4)
    return None
  return workdir / TENSORBOARD_DIR


def _training_mesh(cfg: TrainConfig, mesh: Mesh | None) -> Mesh:
  if mesh is not None:
    if cfg.mesh_shape is not None:
      raise ValueError(f"give either train_config.mesh_shape={cfg.mesh_shape} or mesh, not both")
    return mesh
  if cfg.mesh_shape is not None:
    return make_mesh(cfg.mesh_shape)
  if jax.process_count() > 1:  # one device would belong to process 0 alone
    return make_mesh((jax.device_count(), 1, 1))
  return make_mesh((1, 1, 1), jax.devices()[:1])


class _TextFeed:
  """Global batches of a ``TextDataset`` on the mesh: this process reads its slice of each batch
  (``TextDataset.iterator(..., shard_index=process_index)``) and the slices form one array."""

  def __init__(self, dataset: TextDataset, cfg: TrainConfig, placement: Placement):
    self._dataset, self._cfg, self._sharding = dataset, cfg, placement.batch
    self._shards = dict(shard_index=jax.process_index(), shard_count=jax.process_count())
    self.train = dataset.iterator("train", cfg.batch_size * cfg.accumulate_steps, seed=cfg.seed,
                                  **self._shards)
    # Built once here so that a validation split smaller than one batch fails before training.
    dataset.iterator("validation", cfg.batch_size, seed=cfg.seed, repeat=False, **self._shards)

  def _global(self, local: Batch) -> Batch:
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self._sharding, x), local)

  def next_train(self) -> Batch:
    return self._global(next(self.train))

  def evaluation_batches(self) -> Iterator[Batch]:
    """The first ``eval_batches`` batches of one pass over the validation rows (fewer if the
    split holds fewer; ``None``: all of them), read afresh: the same held-out tokens at every
    evaluation, and only one batch of them in host memory at a time."""
    validation = self._dataset.iterator("validation", self._cfg.batch_size, seed=self._cfg.seed,
                                        repeat=False, **self._shards)
    for batch in itertools.islice(validation, self._cfg.eval_batches):
      yield self._global(batch)


def train(
    model_config: TransformerConfig,
    train_config: TrainConfig,
    data: Task | TextDataset,
    workdir: str | os.PathLike[str],
    *,
    mesh: Mesh | None = None,
    progress: bool = True,
    experiment: Mapping[str, Any] | None = None,
) -> TrainResult:
  """Trains ``Transformer(model_config)`` on ``data`` with masked next-token cross-entropy.

  Writes ``workdir/metrics.jsonl`` (train metrics every ``log_every`` steps, held-out eval every
  ``eval_every`` steps and at the end; also as TensorBoard scalars in ``workdir/tensorboard``
  when ``train_config.tensorboard`` and the ``tensorboard`` extra is installed) and orbax
  checkpoints in ``workdir/checkpoints`` (every ``checkpoint_every`` steps and at the end), with
  the text iterator's position. The first record after the run's first step also holds
  ``compile_seconds`` (tracing and compiling the train step) and ``first_step_seconds`` (running
  it once, compiled), which ``progress`` also prints. If ``workdir`` holds a checkpoint, training
  resumes from the newest readable one, on whatever mesh this run has, bit-identically to an
  uninterrupted run, and prints ``resumed <workdir name> from step <k> of <steps>``, or
  ``<workdir name> finished at step <k> of <steps>: skipped (<how to continue or retrain>)``
  when nothing is left to train (the final evaluation still runs). A damaged newest checkpoint is
  set aside with a ``checkpoint.CorruptCheckpointWarning`` and the one before it used. Resuming
  under a different package version, model, optimisation (the horizon of a decaying learning
  rate included), data or experiment config raises ``ValueError`` listing each differing key
  and saying how to start over. These messages name ``train``'s arguments (another
  ``workdir``), or, when an ``experiment`` record is given, the experiment command line's
  ``--fresh`` and ``--output-dir``.

  One run per folder: ``train`` (process 0 of a multi-host run) holds an exclusive lock on
  ``workdir`` while it runs (``momentum_jax.train.run_lock``; released by the operating system
  however the process ends), and a second run into it stops at once with
  ``RunFolderLockedError``. A step whose loss or gradient norm is NaN or ±inf stops training
  with ``TrainingDivergedError`` naming it and the last finite loss; the losses are checked
  whenever the metrics are logged and before every evaluation and save, and ``checkpoint.save``
  refuses a non-finite state, so the newest checkpoint stays the last good one
  (``momentum_jax.train.divergence``). A save that fails (a full disk) stops training with
  ``CheckpointSaveError`` in one line, the newest complete checkpoint intact
  (``momentum_jax.train.checkpoint_writer``).

  ``nnx.Param`` state is trained; other module state (running statistics, random-number
  streams) is carried from step to step as the model updates it; both are checkpointed. The
  loss adds the model's weighted auxiliary losses (``Transformer.logits_and_aux_loss``) to the
  data loss; on packed text, attention and positions restart at each document and no loss
  crosses a document boundary.

  Args:
    model_config: the model; its ``vocab_size`` must equal the data's and its ``context_len``
      cover ``data.seq_len``. ``train_config.compute_dtype`` / ``param_dtype`` override its
      ``dtype`` / ``param_dtype``.
    train_config: optimizer, schedule, batch size, accumulation, precision, mesh and cadences.
    data: a synthetic task (a frozen dataclass such as those of ``momentum_jax.data``, sampled
      inside the jitted step) or a ``TextDataset`` (``momentum_jax.data.load_text_dataset``;
      trained on its train split, evaluated on the first ``eval_batches`` batches of its
      validation split, or with ``eval_batches=None`` on all of it).
    workdir: directory for metrics and checkpoints (created if absent).
    mesh: a mesh whose axes are among ``("data", "fsdp", "tensor")``, instead of
      ``train_config.mesh_shape``. Default: the mesh of ``mesh_shape``, or one device (in a
      run of several processes, ``jax.distributed``: data parallel over every device).
    progress: show a tqdm progress bar.
    experiment: a JSON record of the experiment that runs this training, saved in the checkpoint
      signature (the experiment CLI passes its name, the hash of its resolved config and that
      config); compared on resume with a saved record of the same experiment name
      (``checkpoint.signature_differences``). Its presence makes the messages about
      continuing or starting over speak of the command line's flags.

  Returns:
    ``TrainResult(params, final_eval, history, model)``.

  Raises:
    ValueError: the model does not fit the data, the mesh does not fit the devices or the batch
      (``batch_size`` must divide by the data × fsdp size), ``eval_batches=None`` is given for
      a synthetic task, or the checkpoint in ``workdir`` was saved under another config.
    RunFolderLockedError: another run holds ``workdir`` (the message names its process id).
    CheckpointSaveError: a checkpoint could not be written (a full disk): the message names the
      step, the cause and the newest complete checkpoint, which a rerun resumes from.
    TrainingDivergedError: a step's loss or gradient norm, or the state after it, is not finite.
  """
  cfg = train_config
  model_config = _with_precision(model_config, cfg)
  _check_compatible(model_config, data)
  if cfg.eval_batches is None and not isinstance(data, TextDataset):
    raise ValueError(
        f"train_config.eval_batches=None evaluates the whole validation split of a TextDataset; "
        f"the synthetic task {type(data).__name__} has no finite split: give eval_batches an int")
  mesh = _training_mesh(cfg, mesh)
  batch_placement = batch_sharding(mesh, cfg.batch_size)
  workdir = pathlib.Path(workdir)
  signature = checkpoint.run_signature(model_config, cfg, _data_record(data), experiment)
  # One lock per run: on a multi-host run, the processes share the workdir and process 0 holds it.
  with RunLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext():
    with CheckpointWriter(checkpoint.checkpoint_manager(workdir)) as writer:
      advice = _PYTHON_ADVICE if experiment is None else _COMMAND_LINE_ADVICE
      return _run(model_config, cfg, data, workdir, writer, signature, mesh, batch_placement,
                  progress, advice)


class _Throughput:
  """Tokens and seconds since the last reading, timed from the end of the run's first step."""

  def __init__(self, tokens_per_step: int, flops_per_token: float, peak: float | None,
               num_devices: int):
    self._tokens_per_step, self._flops_per_token = tokens_per_step, flops_per_token
    self._peak, self._num_devices = peak, num_devices
    self._start: float | None = None
    self._tokens = 0

  def stepped(self, outputs: Any) -> None:
    if self._start is None:  # the first step compiles: wait for it and start the clock after it
      jax.block_until_ready(outputs)
      self.restart()
    else:
      self._tokens += self._tokens_per_step

  def restart(self) -> None:
    self._start, self._tokens = time.perf_counter(), 0

  def read(self) -> dict[str, float]:
    """The throughput since the last restart (call after the outputs are fetched); restarts."""
    metrics = {}
    if self._tokens:
      metrics = throughput_metrics(self._tokens, time.perf_counter() - self._start,
                                   self._flops_per_token, self._peak, self._num_devices)
    self.restart()
    return metrics


def _timed_first_step(step_fn: Callable[..., tuple[Any, ...]], args: tuple[Any, ...]
                      ) -> tuple[tuple[Any, ...], dict[str, float]]:
  """``step_fn(*args)`` and ``{"compile_seconds", "first_step_seconds"}``: the wall time of
  tracing, lowering and compiling it ahead of time, then of the call, compiled (jit keeps the
  executable: the call does not compile again), until its outputs are ready."""
  start = time.perf_counter()
  step_fn.lower(*args).compile()
  compiled = time.perf_counter()
  outputs = jax.block_until_ready(step_fn(*args))
  return outputs, {"compile_seconds": compiled - start,
                   "first_step_seconds": time.perf_counter() - compiled}


def _run(
    model_config: TransformerConfig,
    cfg: TrainConfig,
    data: Task | TextDataset,
    workdir: pathlib.Path,
    writer: CheckpointWriter,
    signature: dict[str, Any],
    mesh: Mesh,
    batch_placement: NamedSharding,
    progress: bool,
    advice: _Advice,
) -> TrainResult:
  """``train`` after validation, with an open checkpoint writer and the run's signature."""
  params_key, data_key, eval_key = jax.random.split(jax.random.key(cfg.seed), 3)
  graphdef, fresh, placement = init_train_state(
      model_config, cfg, mesh, batch_placement, params_key)
  text = _TextFeed(data, cfg, placement) if isinstance(data, TextDataset) else None

  try:
    restored = checkpoint.restore_latest(
        writer.manager, fresh.checkpoint_tree(placement.replicated), signature)
  except checkpoint.ConfigMismatchError as error:
    raise ValueError(f"{error}\n{advice.start_over}") from None
  state = fresh
  if restored is not None:
    writer.newest = restored.step
    state = TrainState.from_checkpoint_tree(restored.state, like=fresh)
    if state.step > cfg.steps:
      raise ValueError(f"the latest checkpoint is at step {state.step} > steps={cfg.steps} in "
                       f"{workdir}; {advice.start_over}")
    if state.step == cfg.steps:
      print(f"{workdir.name} finished at step {state.step} of {cfg.steps}: skipped "
            f"({advice.retrain})")
    else:
      print(f"resumed {workdir.name} from step {state.step} of {cfg.steps}")
    if text is not None:
      text.train.set_state(restored.data_state)
  params, opt_state, rest, start = state
  watch = DivergenceWatch()

  step_fn = bound_train_step(graphdef=graphdef, cfg=step_config(cfg),
                             task=None if text is not None else data, placement=placement)
  if text is None:
    # The held-out evaluation runs with the model's input checks on (token ids in range, γ >= 0
    # and not NaN): a failed check raises a named error; the train step runs without them.
    evaluate = checked(functools.partial(
        evaluate_task, eval_key=eval_key, graphdef=graphdef, task=data,
        batch_size=cfg.batch_size, num_batches=cfg.eval_batches, placement=placement))
  else:
    evaluate = _text_evaluation(text.evaluation_batches, data, graphdef, placement)

  seq_len = data.seq_len
  throughput = _Throughput(
      tokens_per_step=cfg.batch_size * cfg.accumulate_steps * seq_len,
      flops_per_token=model_flops_per_token(model_config, seq_len),
      peak=peak_flops_per_second(jax.devices()[0], model_config.dtype),
      num_devices=mesh.size)
  with MetricsLog(workdir / METRICS_FILE, keep_until_step=None if restored is None else start,
                  tensorboard_dir=_tensorboard_dir(cfg, workdir)) as log:
    first_step: dict[str, float] = {}  # its timings, until a record holds them

    def append(step: int, values: dict[str, float]) -> None:
      log.append(step, {**values, **first_step})
      first_step.clear()

    def run_eval(step: int) -> dict[str, float]:
      means = {k: float(v) for k, v in jax.device_get(evaluate(params, rest)).items()}
      if not log.has(step, "eval_loss"):
        append(step, {f"eval_{k}": v for k, v in means.items()})
      return means

    with tqdm(total=cfg.steps, initial=start, disable=not progress, desc="train") as bar:
      for step in range(start, cfg.steps):
        batch_or_key = text.next_train() if text is not None else data_key
        args = (params, opt_state, rest, batch_or_key, np.int32(step))
        if step == start:
          (params, opt_state, rest, metrics), timings = _timed_first_step(step_fn, args)
          first_step.update(timings)
          if progress:
            bar.write(f"{workdir.name}: train step compiled in {timings['compile_seconds']:.1f} s, "
                      f"first step {timings['first_step_seconds']:.2f} s")
        else:
          params, opt_state, rest, metrics = step_fn(*args)
        throughput.stepped(metrics)
        done = step + 1
        watch.stepped(done, metrics)
        if done % cfg.log_every == 0:
          watch.check(writer.latest)
          values = {k: float(v) for k, v in jax.device_get(metrics).items()}
          values.update(throughput.read())
          values.update(nnx.merge(graphdef, params, rest).learned_attention_values())
          append(done, values)
          bar.set_postfix(loss=f"{values['train_loss']:.4f}")
        if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps:
          watch.check(writer.latest)
          run_eval(done)
          throughput.restart()
        if done == cfg.steps or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0):
          watch.check(writer.latest)
          state = TrainState(params, opt_state, rest, done)
          try:
            writer.save(done, state.checkpoint_tree(placement.replicated), signature,
                        data_state=None if text is None else text.train.get_state())
          except checkpoint.NonFiniteStateError as error:
            raise watch.diverged_state(done, str(error), writer.latest) from None
          throughput.restart()
        bar.update(1)
    final_eval = run_eval(cfg.steps)
    writer.wait()
    history = list(log.records)
  return TrainResult(
      params=params,
      final_eval=final_eval,
      history=history,
      model=nnx.merge(graphdef, params, rest),
  )


def _text_evaluation(batches: Callable[[], Iterator[Batch]], dataset: TextDataset,
                     graphdef: nnx.GraphDef, placement: Placement):
  """``evaluate(params, rest)``: loss, accuracy, perplexity and bits per byte over the held-out
  ``batches()``."""
  bytes_per_token = dataset.bytes_per_token("validation")
  evaluate_one = checked(functools.partial(evaluate_batch, graphdef=graphdef,
                                           placement=placement))

  def evaluate(params, rest) -> dict[str, float]:
    # Dispatched batch after batch and fetched once, so reading a batch overlaps the last one.
    sums = jax.device_get([evaluate_one(params, rest, batch) for batch in batches()])
    totals = {k: float(np.sum([s[k] for s in sums], dtype=np.float64)) for k in sums[0]}
    count = max(totals["count"], 1.0)
    loss = totals["loss_sum"] / count
    return {"loss": loss, "accuracy": totals["correct_sum"] / count,
            "perplexity": math.exp(loss), "bits_per_byte": loss / math.log(2) / bytes_per_token}

  return evaluate

"""One variant of the attention zoo trained for the budget: the causality check, and the train
step (``momentum_jax.train``'s token loss and optimizer step) compiled ahead of time, timed step
by step, with the compiled program's memory."""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from momentum_jax.attention import AttentionDims, get_attention
from momentum_jax.data import Task
from momentum_jax.experiments.attention_zoo.config import ATTENTION_PARAMS, ExperimentConfig
from momentum_jax.nn import Transformer, TransformerConfig
from momentum_jax.train import make_optimizer, optimizer_step, token_loss


def non_causal_reason(attention: str, config: ExperimentConfig, task: Task) -> str | None:
  """Why ``attention`` cannot serve a decoder, or None: the ``ValueError`` it raises for
  ``causal=True`` when it accepts ``causal=False``. Checked by abstract evaluation (no compute)
  at the model's sizes."""
  variant = get_attention(attention)
  head_dim = config.d_model // config.num_heads
  dims = AttentionDims(config.num_heads, config.num_heads, head_dim, task.seq_len)
  learned = {name: init(dims, jax.random.key(0)) for name, init in variant.learned.items()}
  x = jax.ShapeDtypeStruct((1, task.seq_len, config.num_heads, head_dim), jnp.float32)
  params = dict(ATTENTION_PARAMS.get(attention, {}))

  def attend(causal: bool) -> None:
    jax.eval_shape(lambda q, k, v: variant.fn(q, k, v, causal=causal, **params, **learned),
                   x, x, x)

  try:
    attend(True)
  except ValueError as causal_error:
    attend(False)  # a variant that rejects both is broken, not non-causal: let it raise
    return str(causal_error)
  return None


def _train_step(model: TransformerConfig, config: ExperimentConfig):
  """``(params, rest, opt_state, step)`` for ``model``: the initial ``nnx.Param`` state, the
  other module state (running statistics a forward pass may update), the optimizer state, and
  the pure step ``(params, rest, opt_state, batch) -> (params, rest, opt_state, metrics)``."""
  graphdef, params, rest = nnx.split(
      Transformer(model, rngs=nnx.Rngs(jax.random.key(config.train.seed))), nnx.Param, ...)
  tx = make_optimizer(config.train)
  return params, rest, tx.init(params), optimizer_step(token_loss(graphdef), tx)


def _compile(model: TransformerConfig, step, args: tuple, fast: bool,
             executables: dict[TransformerConfig, tuple]) -> tuple:
  """``(executable, its memory analysis, compile seconds)`` of ``step`` on ``args``, compiled
  ahead of time for the first task and reused from ``executables`` for tasks of equal shapes
  (``model`` holds the vocabulary and length)."""
  if model not in executables:
    start = time.perf_counter()
    lowered = jax.jit(step, donate_argnums=(0, 1, 2)).lower(*args)
    compiled = lowered.compile(
        compiler_options={"xla_backend_optimization_level": 0} if fast else None)
    executables[model] = (compiled, compiled.memory_analysis(), time.perf_counter() - start)
  return executables[model]


def run_variant(model: TransformerConfig, task: Task, config: ExperimentConfig, progress: bool,
                executables: dict[TransformerConfig, tuple]) -> dict[str, Any]:
  """Trains ``model`` on ``task`` for the budget of ``config``; returns its row of the table."""
  cfg = config.train
  params, rest, opt_state, step = _train_step(model, config)
  data_key = jax.random.key(cfg.seed)
  batch = lambda i: task.sample(jax.random.fold_in(data_key, i), cfg.batch_size)
  compiled, memory, compile_s = _compile(model, step, (params, rest, opt_state, batch(0)),
                                         config.fast_compile, executables)
  peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes
          + memory.temp_size_in_bytes - memory.alias_size_in_bytes)

  losses, accuracies, seconds = [], [], []
  for i in tqdm(range(cfg.steps), disable=not progress, desc=f"{model.attention}", leave=False):
    data = jax.block_until_ready(batch(i))
    tick = time.perf_counter()
    params, rest, opt_state, metrics = jax.block_until_ready(
        compiled(params, rest, opt_state, data))
    seconds.append(time.perf_counter() - tick)
    losses.append(float(metrics["loss"]))
    accuracies.append(float(metrics["accuracy"]))

  step_s = statistics.median(seconds[config.warmup_steps:])
  return {
      "final_loss": float(np.mean(losses[-config.final_steps:])),
      "final_accuracy": float(np.mean(accuracies[-config.final_steps:])),
      "tokens_per_s": cfg.batch_size * task.seq_len / step_s,
      "step_ms": step_s * 1e3,
      "peak_memory_bytes": int(peak),
      "memory_analysis": {name: int(getattr(memory, name)) for name in (
          "argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
          "alias_size_in_bytes")},
      "compile_s": compile_s,
      "loss_curve": losses,
      "attention_params": dict(model.attention_params),
  }

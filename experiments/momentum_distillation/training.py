"""The paired data, the two encoders and ALBEF's contrastive training of one run.

One run trains a student encoder per view with ``momentum_contrastive_loss`` (momentum encoders
by EMA, one queue of past momentum embeddings per view, soft targets of weight α) and reports
top-1 retrieval on clean held-out pairs. One jitted call runs ``chunk_steps`` steps
(``lax.scan``); α is an argument, not a constant, so every run of one shape compiles once.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from momentum_jax.experiments.momentum_distillation.config import PairTask, SweepConfig
from momentum_jax.optim.teachers import MomentumQueue, ema_update, queue_init, queue_push
from momentum_jax.train.momentum_distillation import momentum_contrastive_loss

# The held-out pairs' offset from the training seed, so they never coincide with training data.
EVAL_SEED_OFFSET = 1_000_003


class Pairs(NamedTuple):
  """``N`` pairs of views, row ``i`` of ``a_NxT`` paired with row ``i`` of ``b_NxT`` (int32)."""

  a_NxT: np.ndarray
  b_NxT: np.ndarray


def _view_b(x_NxT: np.ndarray, permutation_V: np.ndarray, task: PairTask,
            rng: np.random.Generator) -> np.ndarray:
  """``π(x)`` reversed, each token replaced by a uniform random one with probability
  ``corruption``."""
  b_NxT = permutation_V[x_NxT[:, ::-1]]
  replace_NxT = rng.random(b_NxT.shape) < task.corruption
  return np.where(replace_NxT, rng.integers(0, task.vocab_size, b_NxT.shape), b_NxT)


def make_pairs(task: PairTask, noise: float, seed: int) -> tuple[Pairs, Pairs, np.ndarray]:
  """``(train, held_out, mismatched_N)``: the training pairs, of which the rows flagged in
  ``mismatched_N`` (``round(noise · N)`` of them) carry another training row's view b, and clean
  held-out pairs; ``π`` and the data depend on ``seed`` only, not on ``noise``'s draw of rows."""
  rng = np.random.default_rng(seed)
  permutation_V = rng.permutation(task.vocab_size)
  x_NxT = rng.integers(0, task.vocab_size, (task.train_pairs, task.seq_len))
  b_NxT = _view_b(x_NxT, permutation_V, task, rng)
  chosen = np.random.default_rng([seed, 1]).permutation(task.train_pairs)[
      :round(noise * task.train_pairs)]
  mismatched_N = np.zeros(task.train_pairs, bool)
  if chosen.size >= 2:  # each chosen row takes the next chosen row's view b: none keeps its own
    b_NxT[chosen] = b_NxT[np.roll(chosen, 1)]
    mismatched_N[chosen] = True
  eval_rng = np.random.default_rng(seed + EVAL_SEED_OFFSET)
  x_eval = eval_rng.integers(0, task.vocab_size, (task.eval_pairs, task.seq_len))
  held_out = Pairs(x_eval.astype(np.int32),
                   _view_b(x_eval, permutation_V, task, eval_rng).astype(np.int32))
  return Pairs(x_NxT.astype(np.int32), b_NxT.astype(np.int32)), held_out, mismatched_N


class Encoder(nnx.Module):
  """Token and position embeddings, a residual GELU MLP per token, mean-pooled, projected and
  L2-normalised: ``[B, T]`` tokens to ``[B, E]`` unit embeddings."""

  def __init__(self, task: PairTask, sweep: SweepConfig, *, rngs: nnx.Rngs):
    self.token = nnx.Embed(task.vocab_size, sweep.d_model, rngs=rngs)
    self.position = nnx.Embed(task.seq_len, sweep.d_model, rngs=rngs)
    self.norm = nnx.LayerNorm(sweep.d_model, rngs=rngs)
    self.up = nnx.Linear(sweep.d_model, sweep.hidden, rngs=rngs)
    self.down = nnx.Linear(sweep.hidden, sweep.d_model, rngs=rngs)
    self.project = nnx.Linear(sweep.d_model, sweep.embed_dim, rngs=rngs)

  def __call__(self, tokens_BxT: jax.Array) -> jax.Array:
    x_BxTxD = self.token(tokens_BxT) + self.position(jnp.arange(tokens_BxT.shape[1]))[None]
    x_BxTxD = x_BxTxD + self.down(jax.nn.gelu(self.up(self.norm(x_BxTxD))))
    z_BxE = self.project(x_BxTxD.mean(axis=1))
    return z_BxE / jnp.maximum(jnp.linalg.norm(z_BxE, axis=-1, keepdims=True), 1e-6)


def retrieval_accuracy(a_NxE: np.ndarray | jax.Array, b_NxE: np.ndarray | jax.Array) -> dict:
  """Top-1 retrieval over ``N`` pairs: ``a_to_b`` (the share of rows ``i`` whose most similar
  row of ``b`` is ``i``), ``b_to_a`` likewise, and their ``mean``."""
  sim_NxN = np.asarray(a_NxE, np.float64) @ np.asarray(b_NxE, np.float64).T
  target = np.arange(sim_NxN.shape[0])
  a_to_b = float(np.mean(sim_NxN.argmax(1) == target))
  b_to_a = float(np.mean(sim_NxN.argmax(0) == target))
  return {"a_to_b": a_to_b, "b_to_a": b_to_a, "mean": 0.5 * (a_to_b + b_to_a)}


class _State(NamedTuple):
  params: nnx.State
  momentum_params: nnx.State
  opt_state: optax.OptState
  queue_a: MomentumQueue
  queue_b: MomentumQueue


def train_run(task: PairTask, sweep: SweepConfig, noise: float, alpha: float, seed: int) -> dict:
  """Trains one run; returns its held-out retrieval (``retrieval``), the training pairs' own
  top-1 retrieval over the matched and over the mismatched rows (``train_fit``: how far the noisy
  pairs were memorised) and the mean loss of each chunk (``loss_curve``), JSON-ready."""
  train, held_out, mismatched_N = make_pairs(task, noise, seed)
  graphdef, init = _initializer(task, sweep)
  params = init(jax.random.key(seed))
  state = _State(params, params, _optimizer(sweep).init(params),
                 queue_init(sweep.queue_size, sweep.embed_dim),
                 queue_init(sweep.queue_size, sweep.embed_dim))
  run_chunk = _chunk_runner(graphdef, sweep)
  a_NxT, b_NxT = jnp.asarray(train.a_NxT), jnp.asarray(train.b_NxT)
  key = jax.random.key(seed)
  loss_curve = []
  for first in range(0, sweep.steps, sweep.chunk_steps):
    state, loss_I = run_chunk(state, a_NxT, b_NxT, key, jnp.int32(first), jnp.float32(alpha))
    loss_curve.append(float(np.mean(loss_I)))
  encode = _encoder(graphdef)
  fit = _train_fit(encode, state.params, train, mismatched_N)
  a_E, b_E = encode(state.params, jnp.asarray(held_out.a_NxT), jnp.asarray(held_out.b_NxT))
  return {"retrieval": retrieval_accuracy(a_E, b_E), "train_fit": fit, "loss_curve": loss_curve}


@functools.cache
def _initializer(task: PairTask, sweep: SweepConfig) -> tuple[nnx.GraphDef, Any]:
  """``(graphdef, init)``: the students' (one ``Encoder`` per view) graph and a jitted
  ``key -> parameters``, so initialisation compiles once instead of once per eager operation."""

  def students(key: jax.Array) -> tuple[Encoder, Encoder]:
    rngs = nnx.Rngs(key)
    return Encoder(task, sweep, rngs=rngs), Encoder(task, sweep, rngs=rngs)

  graphdef = nnx.graphdef(nnx.eval_shape(lambda: students(jax.random.key(0))))
  return graphdef, jax.jit(lambda key: nnx.state(students(key), nnx.Param))


def _optimizer(sweep: SweepConfig) -> optax.GradientTransformation:
  return optax.adamw(sweep.learning_rate, weight_decay=0.01)


@functools.cache
def _encoder(graphdef: nnx.GraphDef):
  @jax.jit
  def encode(params, a_NxT, b_NxT):
    encoder_a, encoder_b = nnx.merge(graphdef, params)
    return encoder_a(a_NxT), encoder_b(b_NxT)

  return encode


def _train_fit(encode, params: nnx.State, train: Pairs, mismatched_N: np.ndarray) -> dict:
  """Top-1 a→b retrieval over the whole training set, counted on matched and mismatched rows."""
  a_E, b_E = encode(params, jnp.asarray(train.a_NxT), jnp.asarray(train.b_NxT))
  sim_NxN = np.asarray(a_E, np.float64) @ np.asarray(b_E, np.float64).T
  hit_N = sim_NxN.argmax(1) == np.arange(sim_NxN.shape[0])
  return {"matched": float(hit_N[~mismatched_N].mean()),
          "mismatched": float(hit_N[mismatched_N].mean()) if mismatched_N.any() else float("nan")}


@functools.cache
def _chunk_runner(graphdef: nnx.GraphDef, sweep: SweepConfig):
  """The jitted ``(state, a_NxT, b_NxT, key, first_step, alpha) -> (state, loss_I)`` of
  ``chunk_steps`` steps: EMA of the momentum encoders, then the loss on a batch drawn from the
  training pairs, an AdamW step of the students and the momentum embeddings into the queues.
  Cached: the runs of one sweep share one compilation."""
  tx = _optimizer(sweep)

  def embed(params, a_BxT, b_BxT):
    encoder_a, encoder_b = nnx.merge(graphdef, params)
    return encoder_a(a_BxT), encoder_b(b_BxT)

  def loss_fn(params, momentum_a, momentum_b, a_BxT, b_BxT, queue_a, queue_b, alpha):
    a_BxE, b_BxE = embed(params, a_BxT, b_BxT)
    return momentum_contrastive_loss(a_BxE, b_BxE, momentum_a, momentum_b, queue_a, queue_b,
                                     alpha, sweep.temperature)

  def step(state: _State, inputs):
    index, a_NxT, b_NxT, key, alpha = inputs
    rows_B = jax.random.randint(jax.random.fold_in(key, index), (sweep.batch_size,), 0,
                                a_NxT.shape[0])
    a_BxT, b_BxT = a_NxT[rows_B], b_NxT[rows_B]
    # As ALBEF: the momentum encoders take their EMA step first, then embed the batch.
    momentum_params = ema_update(state.momentum_params, state.params, sweep.momentum)
    momentum_a, momentum_b = embed(momentum_params, a_BxT, b_BxT)
    ramp = jnp.minimum(1.0, (index + 1) / max(sweep.alpha_warmup_steps, 1))
    loss, grads = jax.value_and_grad(loss_fn)(state.params, momentum_a, momentum_b, a_BxT, b_BxT,
                                              state.queue_a, state.queue_b, alpha * ramp)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return _State(optax.apply_updates(state.params, updates), momentum_params, opt_state,
                  queue_push(state.queue_a, momentum_a), queue_push(state.queue_b, momentum_b)
                  ), loss

  @jax.jit
  def run_chunk(state, a_NxT, b_NxT, key, first_step, alpha):
    def body(state, index):
      return step(state, (index, a_NxT, b_NxT, key, alpha))

    return jax.lax.scan(body, state, first_step + jnp.arange(sweep.chunk_steps))

  return run_chunk

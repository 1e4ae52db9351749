"""Many momentum-attention models of one shape trained as one vmapped computation.

The members of an ensemble share a ``TransformerConfig`` with ``attention="momentum_learned"``
and differ in their seed (initial weights and batches) and in their γ: a *fixed* member keeps
γ = its value in every layer and kv head (its γ gradient is zeroed, so Adam never moves it), a
*learned* member starts there and trains γ with the other weights. Members of one seed see the
same initial weights and the same batches, so their differences are due to γ alone.

One jitted call runs ``chunk_steps`` Adam steps of every member (``lax.scan`` over steps, ``vmap``
over members), so a whole γ grid × seeds compiles once per depth; ``train_unit`` trains the
experiment's ensembles of one (task, depth).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from momentum_jax.data import Batch
from momentum_jax.data.batch import Task
from momentum_jax.experiments.gamma_depth_law.config import Budget, SweepConfig
from momentum_jax.nn import Transformer, TransformerConfig
from momentum_jax.train import optimizer_step, token_loss

# A stored γ whose softplus is exactly 0.0 in float32 (and whose gradient is exactly 0.0): the
# learned parameterisation γ = softplus(θ) only approaches 0, the grid needs γ = 0 itself.
_ZERO_GAMMA_STORED = -200.0
_EVAL_CHUNK = 256
# The held-out sequences' key, apart from the training seeds' keys key(0), key(1), ...
EVAL_SEED = 987_654_321


class Members(NamedTuple):
  """The ensemble, one entry per member.

  Attributes:
    seed: ``[M] int``, which seed's initial weights and batches the member uses.
    gamma: ``[M] float``, the member's fixed γ, or its learned γ's starting value.
    learned: ``[M] bool``, whether the member trains its γ.
  """

  seed: np.ndarray
  gamma: np.ndarray
  learned: np.ndarray


class EnsembleResult(NamedTuple):
  """What each member ends with (M members, L layers, K kv heads, C chunks of steps).

  Attributes:
    eval_loss: ``[M]`` held-out loss at the counted positions.
    eval_accuracy: ``[M]`` held-out accuracy at the counted positions.
    gamma: ``[M, L, K]`` the γ each member ends with.
    gamma_curve: ``[C, M, L]`` the γ of each layer (mean over kv heads) after each chunk.
    train_loss: ``[C, M]`` mean training loss over each chunk.
  """

  eval_loss: np.ndarray
  eval_accuracy: np.ndarray
  gamma: np.ndarray
  gamma_curve: np.ndarray
  train_loss: np.ndarray


def _is_gamma(path: tuple) -> bool:
  names = [getattr(key, "key", None) for key in path]
  return "variant_params" in names and "gamma" in names


def _stored_gamma(gamma: float) -> float:
  """softplus⁻¹(γ) = γ + log(1 − e^−γ), or a value whose softplus is exactly 0 for γ = 0."""
  if gamma == 0.0:
    return _ZERO_GAMMA_STORED
  return float(gamma + np.log(-np.expm1(-gamma)))


def _gamma_of(state: nnx.State) -> jax.Array:
  """``[L, K]`` γ of one member's state (layers in order)."""
  leaves = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(state) if _is_gamma(path)]
  return jax.nn.softplus(jnp.stack(leaves))


def _member_states(config: TransformerConfig,
                   members: Members) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
  """The graph, the ``[M, ...]`` stacked parameters (the weights of each member's seed with
  every stored γ set to the member's value) and the other module state (empty for this model)."""
  graphdef, rest, by_seed = None, None, {}
  for seed in sorted(set(members.seed.tolist())):
    graphdef, by_seed[seed], rest = nnx.split(Transformer(config, rngs=nnx.Rngs(seed)),
                                              nnx.Param, ...)
  stored_M = jnp.asarray([_stored_gamma(float(g)) for g in members.gamma], jnp.float32)
  stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves),
                         *[by_seed[int(seed)] for seed in members.seed])
  states = jax.tree_util.tree_map_with_path(
      lambda path, x: (jnp.broadcast_to(stored_M.reshape((-1,) + (1,) * (x.ndim - 1)), x.shape)
                       if _is_gamma(path) else x), stacked)
  return graphdef, states, rest


def train_ensemble(config: TransformerConfig, task: Task, members: Members, *, steps: int,
                   chunk_steps: int, batch_size: int, learning_rate: float,
                   eval_batch: Batch) -> EnsembleResult:
  """Trains every member with Adam on ``task`` and evaluates it on ``eval_batch``.

  Args:
    config: the shared model; ``attention`` must be ``"momentum_learned"``.
    task: the synthetic task batches are sampled from (seed s, step i: key fold_in(key(s), i)).
    members: the ensemble.
    steps: Adam steps per member, a multiple of ``chunk_steps``.
    chunk_steps: steps per jitted call.
    batch_size: sequences per step.
    learning_rate: Adam's step size.
    eval_batch: the held-out sequences, the same for every member.
  """
  if config.attention != "momentum_learned":
    raise ValueError(f"config.attention must be 'momentum_learned', got {config.attention!r}")
  if steps % chunk_steps:
    raise ValueError(f"steps must be a multiple of chunk_steps, got steps={steps}, "
                     f"chunk_steps={chunk_steps}")
  graphdef, states, rest = _member_states(config, members)

  def optimizer(trains_gamma: jax.Array | float) -> optax.GradientTransformation:
    """Adam after zeroing a fixed member's γ gradient (``trains_gamma = 0``), so γ never moves."""
    return optax.chain(optax.stateless(lambda grads, _: jax.tree_util.tree_map_with_path(
        lambda path, g: g * trains_gamma if _is_gamma(path) else g, grads)),
                       optax.adam(learning_rate))

  opt_states = jax.vmap(optimizer(1.0).init)(states)
  seeds = sorted(set(members.seed.tolist()))
  seed_index_M = jnp.asarray([seeds.index(int(s)) for s in members.seed])
  seed_keys_S = jnp.stack([jax.random.key(s) for s in seeds])
  trains_gamma_M = jnp.asarray(members.learned, jnp.float32)
  loss = token_loss(graphdef)

  def member_step(state, opt_state, trains_gamma, batch):
    step = optimizer_step(loss, optimizer(trains_gamma))
    state, _, opt_state, metrics = step(state, rest, opt_state, batch)
    return state, opt_state, metrics["loss"]

  @jax.jit
  def run_chunk(states, opt_states, first_step):
    def step(carry, index):
      states, opt_states = carry
      keys_S = jax.vmap(lambda key: jax.random.fold_in(key, index))(seed_keys_S)
      batch_S = jax.vmap(lambda key: task.sample(key, batch_size))(keys_S)
      batch_M = jax.tree.map(lambda x: x[seed_index_M], batch_S)
      states, opt_states, loss_M = jax.vmap(member_step)(states, opt_states, trains_gamma_M,
                                                          batch_M)
      return (states, opt_states), loss_M

    (states, opt_states), loss_IxM = jax.lax.scan(
        step, (states, opt_states), first_step + jnp.arange(chunk_steps))
    return states, opt_states, loss_IxM.mean(0), jax.vmap(_gamma_of)(states)

  gamma_curve, train_loss = [], []
  for first in range(0, steps, chunk_steps):
    states, opt_states, loss_M, gamma_MxLxK = run_chunk(states, opt_states, first)
    train_loss.append(np.asarray(loss_M))
    gamma_curve.append(np.asarray(gamma_MxLxK).mean(-1))
  loss_M, accuracy_M = _evaluate(graphdef, states, rest, eval_batch)
  return EnsembleResult(eval_loss=loss_M, eval_accuracy=accuracy_M,
                        gamma=np.asarray(jax.vmap(_gamma_of)(states)),
                        gamma_curve=np.stack(gamma_curve), train_loss=np.stack(train_loss))


def _evaluate(graphdef: nnx.GraphDef, states: nnx.State, rest: nnx.State,
              eval_batch: Batch) -> tuple[np.ndarray, np.ndarray]:
  """``[M]`` loss and accuracy over ``eval_batch`` (in chunks of ``_EVAL_CHUNK`` sequences)."""
  loss = token_loss(graphdef)

  @jax.jit
  def sums(states, batch):
    return jax.vmap(lambda s: loss(s, rest, batch)[1][0])(states)

  totals = None
  for start in range(0, eval_batch.tokens.shape[0], _EVAL_CHUNK):
    part = jax.tree.map(lambda x: x[start:start + _EVAL_CHUNK], eval_batch)
    chunk = {k: np.asarray(v, np.float64) for k, v in sums(states, part).items()}
    totals = chunk if totals is None else {k: totals[k] + chunk[k] for k in totals}
  count = np.maximum(totals["count"], 1.0)
  return totals["loss_sum"] / count, totals["correct_sum"] / count


def _model(task: Task, sweep: SweepConfig, budget: Budget, depth: int,
           normalize_gain: bool) -> TransformerConfig:
  return TransformerConfig(
      vocab_size=task.vocab_size, context_len=task.seq_len, num_layers=depth,
      d_model=budget.d_model, num_heads=budget.num_heads, mlp_dim=0,
      attention="momentum_learned", attention_params={"normalize_gain": normalize_gain},
      attention_init={"gamma": sweep.learned_inits[0]})


def _learned_members(result: EnsembleResult, member_M: np.ndarray, inits: Sequence[float],
                     seeds: int) -> list[dict]:
  """Per start in ``inits``, the learned members' results (``member_M``: their indices, seed
  major, start minor) as JSON-ready lists over seeds."""
  members = []
  for start, init in enumerate(inits):
    index_S = member_M.reshape(seeds, len(inits))[:, start]
    members.append({"init": float(init), "loss": result.eval_loss[index_S].tolist(),
                    "accuracy": result.eval_accuracy[index_S].tolist(),
                    "gamma": result.gamma[index_S].tolist(),
                    "gamma_curve": result.gamma_curve[:, index_S].tolist()})
  return members


def train_unit(task: Task, depth: int, sweep: SweepConfig, budget: Budget) -> dict:
  """The γ grid and the learned-γ members of one (task, depth) trained with ``budget``, for
  every seed: the held-out loss and accuracy of each, and the learned γ's values and curves
  (JSON-ready lists; per shear, one entry per start in ``sweep.learned_inits``)."""
  eval_batch = task.sample(jax.random.key(EVAL_SEED), sweep.eval_sequences)
  seeds = np.arange(sweep.seeds)
  grid, inits = len(sweep.gammas), list(sweep.learned_inits)
  per_seed = grid + len(inits)
  training = dict(steps=budget.steps, chunk_steps=sweep.chunk_steps,
                  batch_size=budget.batch_size, learning_rate=budget.learning_rate,
                  eval_batch=eval_batch)
  # Ensemble 1: per seed, the grid (fixed γ) and one learned-γ member per start, plain shear.
  members = Members(seed=np.repeat(seeds, per_seed),
                    gamma=np.tile(list(sweep.gammas) + inits, sweep.seeds),
                    learned=np.tile([False] * grid + [True] * len(inits), sweep.seeds))
  plain = train_ensemble(_model(task, sweep, budget, depth, False), task, members,
                         **training)
  grid_M = np.arange(len(members.seed)).reshape(sweep.seeds, per_seed)
  unit = {"grid_loss": plain.eval_loss[grid_M[:, :grid]].tolist(),
          "grid_accuracy": plain.eval_accuracy[grid_M[:, :grid]].tolist(),
          "learned": _learned_members(plain, grid_M[:, grid:], inits, sweep.seeds)}
  # Ensemble 2: per seed, one learned-γ member per start on the gain-normalised shear.
  members = Members(seed=np.repeat(seeds, len(inits)), gamma=np.tile(inits, sweep.seeds),
                    learned=np.ones(sweep.seeds * len(inits), bool))
  normalized = train_ensemble(_model(task, sweep, budget, depth, True), task, members,
                              **training)
  unit["learned_normalized"] = _learned_members(normalized, np.arange(len(members.seed)), inits,
                                                sweep.seeds)
  return unit

"""The train state: what a run carries from step to step, checkpoints and restores.

``TrainState(params, opt_state, rest, step)`` is the one record of a run's state that training,
resuming and loading a run for generation share. Its checkpoint tree, the pytree orbax stores as
the ``state`` item (``momentum_jax.train.checkpoint``), is

    {"params": params, "opt_state": opt_state, "rest": rest with PRNG keys as key data,
     "step": step as a replicated int32 array}

``checkpoint_tree`` builds it and ``from_checkpoint_tree`` reads it back; the restore target is
the checkpoint tree of a fresh state on the current mesh, so a run resumes on any mesh.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding


class TrainState(NamedTuple):
  """A run's state after ``step`` optimizer updates.

  Attributes:
    params: the ``nnx.Param`` state, sharded by its logical axes.
    opt_state: the optimizer state, sharded like the parameters it follows.
    rest: the module state that is not a parameter (running statistics, random-number streams),
      replicated.
    step: the number of optimizer updates taken.
  """

  params: nnx.State
  opt_state: optax.OptState
  rest: nnx.State
  step: int

  def checkpoint_tree(self, replicated: NamedSharding) -> dict[str, Any]:
    """The pytree of arrays a checkpoint stores: typed PRNG keys of ``rest`` as their raw key
    data (orbax stores arrays, not keys) and ``step`` as an array on ``replicated``."""
    rest = jax.tree.map(
        lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x,
        self.rest)
    return {"params": self.params, "opt_state": self.opt_state, "rest": rest,
            "step": jax.device_put(self.step, replicated)}

  @classmethod
  def from_checkpoint_tree(cls, tree: dict[str, Any], like: TrainState) -> TrainState:
    """Inverse of :meth:`checkpoint_tree`: key data wrapped back into keys of ``like.rest``'s
    key types (``like``: a fresh state of the same model)."""
    rest = jax.tree.map(
        lambda x, ref: (jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref))
                        if jnp.issubdtype(ref.dtype, jax.dtypes.prng_key) else x),
        tree["rest"], like.rest)
    return cls(params=tree["params"], opt_state=tree["opt_state"], rest=rest,
               step=int(tree["step"]))

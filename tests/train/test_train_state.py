"""TrainState's checkpoint tree: the on-disk layout ({params, opt_state, rest, step}, PRNG keys as
key data) and a round trip through an orbax checkpoint that gives the same state back."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from momentum_jax.train import TrainState, make_mesh
from momentum_jax.train.checkpoint import checkpoint_manager, restore_latest, save

SIGNATURE = {"version": "test", "model": {}, "train": {}, "task": {}}


def _replicated() -> NamedSharding:
  return NamedSharding(make_mesh((1, 1, 1), jax.devices()[:1]), PartitionSpec())


def _state(seed: int, step: int) -> TrainState:
  key = jax.random.key(seed)
  return TrainState(params={"w": jax.random.normal(key, (3, 2))},
                    opt_state=({"mu": jnp.full((3, 2), float(seed))},),
                    rest={"stream": jax.random.fold_in(key, 1), "mean": jnp.arange(4.0)},
                    step=step)


def test_the_checkpoint_tree_is_the_saved_layout():
  tree = _state(0, 7).checkpoint_tree(_replicated())
  assert sorted(tree) == ["opt_state", "params", "rest", "step"]
  assert tree["rest"]["stream"].dtype == jnp.uint32  # key data: orbax stores arrays
  assert int(tree["step"]) == 7 and tree["step"].sharding == _replicated()


def test_a_state_survives_a_checkpoint(tmp_path):
  saved, fresh = _state(1, 5), _state(2, 0)
  manager = checkpoint_manager(tmp_path)
  save(manager, 5, saved.checkpoint_tree(_replicated()), SIGNATURE)
  manager.wait_until_finished()
  restored = restore_latest(manager, fresh.checkpoint_tree(_replicated()), SIGNATURE)
  manager.close()
  state = TrainState.from_checkpoint_tree(restored.state, like=fresh)
  assert state.step == 5
  stream = state.rest["stream"]
  assert jax.random.key_impl(stream) == jax.random.key_impl(saved.rest["stream"])
  np.testing.assert_array_equal(jax.random.key_data(stream),
                                jax.random.key_data(saved.rest["stream"]))
  arrays = lambda s: jax.tree.leaves((s.params, s.opt_state, s.rest["mean"]))
  for restored_leaf, saved_leaf in zip(arrays(state), arrays(saved), strict=True):
    np.testing.assert_array_equal(restored_leaf, saved_leaf)

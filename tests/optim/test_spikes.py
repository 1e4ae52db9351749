"""inject_gradient_spikes: exact values at the spike steps, the count, dtypes, jit, validation."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from momentum_jax.optim import inject_gradient_spikes


def _run(tx, grads, steps, jit=False):
  update = jax.jit(tx.update) if jit else tx.update
  state = tx.init(grads)
  outs = []
  for _ in range(steps):
    out, state = update(grads, state)
    outs.append(out)
  return outs, state


@pytest.mark.parametrize("jit", [False, True])
def test_multiplies_exactly_at_the_1_indexed_steps(jit):
  grads = {"w": jnp.array([0.5, -2.0, 3.0]), "b": jnp.array(0.25)}
  outs, state = _run(inject_gradient_spikes([2, 5, 5], factor=1000.0), grads, 6, jit=jit)
  for k, out in enumerate(outs, start=1):
    factor = 1000.0 if k in (2, 5) else 1.0
    for got, g in zip(jax.tree.leaves(out), jax.tree.leaves(grads)):
      np.testing.assert_array_equal(got, np.asarray(g) * factor)
  assert int(state.count) == 6


def test_no_steps_is_the_identity():
  grads = {"w": jnp.arange(3.0)}
  outs, state = _run(inject_gradient_spikes(()), grads, 3)
  for out in outs:
    np.testing.assert_array_equal(out["w"], grads["w"])
  assert int(state.count) == 3


def test_preserves_dtype():
  grads = {"w": jnp.ones(4, jnp.bfloat16)}
  (out,), _ = _run(inject_gradient_spikes([1], factor=8.0), grads, 1)
  assert out["w"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(out["w"], np.float32), 8.0)


def test_first_in_a_chain_the_clip_sees_the_spike():
  tx = optax.chain(inject_gradient_spikes([1], factor=100.0), optax.clip_by_global_norm(1.0))
  grads = {"w": jnp.array([0.3, 0.4])}  # norm 0.5: untouched by the clip unless spiked
  outs, _ = _run(tx, grads, 2)
  np.testing.assert_allclose(outs[0]["w"], [0.6, 0.8], rtol=1e-6)
  np.testing.assert_allclose(outs[1]["w"], [0.3, 0.4], rtol=1e-6)


def test_state_carries_the_step_across_a_restart():
  """Updating from a saved state continues the count, so a resumed run spikes at the same steps."""
  tx = inject_gradient_spikes([3], factor=10.0)
  grads = {"w": jnp.ones(2)}
  _, state = _run(tx, grads, 2)
  out, _ = tx.update(grads, jax.tree.map(jnp.array, state))
  np.testing.assert_array_equal(out["w"], [10.0, 10.0])


@pytest.mark.parametrize("steps, factor, match", [
    ([0], 10.0, "steps must be ints >= 1"),
    ([1.5], 10.0, "steps must be ints >= 1"),
    ([True], 10.0, "steps must be ints >= 1"),
    ([1], float("inf"), "factor="),
])
def test_bad_arguments_raise(steps, factor, match):
  with pytest.raises(ValueError, match=match):
    inject_gradient_spikes(steps, factor)

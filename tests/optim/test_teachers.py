"""Momentum teachers: parameter EMA and its schedule, momentum queue."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from momentum_jax.optim.teachers import (
    MomentumQueue,
    ema_momentum_schedule,
    ema_update,
    queue_init,
    queue_push,
    queue_valid_mask,
)

# --- EMA -----------------------------------------------------------------------------------------


def test_ema_update_exact_values_and_dtypes():
  teacher = {"w": jnp.array([1.0, 2.0]), "b": jnp.array([4.0], jnp.bfloat16), "e": {}, "n": None}
  student = {"w": jnp.array([3.0, 0.0]), "b": jnp.array([0.0], jnp.bfloat16), "e": {}, "n": None}
  new = ema_update(teacher, student, 0.75)
  np.testing.assert_array_equal(new["w"], [1.5, 1.5])
  np.testing.assert_array_equal(new["b"].astype(jnp.float32), [3.0])
  assert new["w"].dtype == jnp.float32 and new["b"].dtype == jnp.bfloat16
  assert new["e"] == {} and new["n"] is None
  np.testing.assert_array_equal(ema_update(teacher, student, 1.0)["w"], teacher["w"])
  np.testing.assert_array_equal(ema_update(teacher, student, 0.0)["w"], student["w"])


def test_ema_update_jit_with_scheduled_momentum():
  schedule = ema_momentum_schedule(0.5, 1.0, total_steps=2)

  traces = []

  @jax.jit
  def step(teacher, student, count):
    traces.append(None)
    return ema_update(teacher, student, schedule(count))

  teacher = {"w": jnp.zeros(2)}
  student = {"w": jnp.ones(2)}
  teacher = step(teacher, student, 0)  # m = 0.5
  np.testing.assert_allclose(teacher["w"], [0.5, 0.5])
  teacher = step(teacher, student, 1)  # m = 0.75
  np.testing.assert_allclose(teacher["w"], [0.625, 0.625], rtol=1e-6)
  teacher = step(teacher, student, 2)  # m = 1
  np.testing.assert_allclose(teacher["w"], [0.625, 0.625], rtol=1e-6)
  assert len(traces) == 1


def test_ema_momentum_schedule_endpoints_and_shape():
  schedule = ema_momentum_schedule(total_steps=1000)
  np.testing.assert_allclose(float(schedule(0)), 0.996, rtol=1e-7)
  np.testing.assert_allclose(float(schedule(500)), 0.998, rtol=1e-7)
  assert float(schedule(1000)) == 1.0
  assert float(schedule(5000)) == 1.0
  values = np.asarray(jax.vmap(schedule)(jnp.arange(1001)))
  assert np.all(np.diff(values) >= 0.0)
  # Same as DINO's cosine_scheduler: final + (base - final) * (1 + cos(pi k / K)) / 2.
  k = np.arange(1001)
  np.testing.assert_allclose(values, 1.0 + (0.996 - 1.0) * 0.5 * (1 + np.cos(np.pi * k / 1000)),
                             rtol=1e-6)


@pytest.mark.parametrize("momentum", [-0.1, 1.1])
def test_ema_bad_momentum(momentum):
  with pytest.raises(ValueError, match="momentum"):
    ema_update({"w": jnp.zeros(2)}, {"w": jnp.zeros(2)}, momentum)


def test_ema_bad_trees_and_schedule_arguments():
  with pytest.raises(ValueError, match="teacher_params"):
    ema_update({"w": jnp.zeros(2)}, {"v": jnp.zeros(2)}, 0.5)
  with pytest.raises(ValueError, match="shape"):
    ema_update({"w": jnp.zeros(2)}, {"w": jnp.zeros(3)}, 0.5)
  with pytest.raises(ValueError, match="base"):
    ema_momentum_schedule(1.2, total_steps=10)
  with pytest.raises(ValueError, match="final"):
    ema_momentum_schedule(0.9, -0.5, total_steps=10)
  with pytest.raises(ValueError, match="total_steps"):
    ema_momentum_schedule(total_steps=0)


# --- Momentum queue ------------------------------------------------------------------------------


def test_queue_wrap_around_order_and_mask(counted_jit):
  queue = queue_init(5, 2)
  push, traces = counted_jit(queue_push)
  rows = lambda start, n: jnp.stack([jnp.arange(start, start + n)] * 2, axis=1).astype(jnp.float32)
  queue = push(queue, rows(1, 3))  # slots 0..2 <- 1, 2, 3
  np.testing.assert_array_equal(queue_valid_mask(queue), [True, True, True, False, False])
  assert int(queue.pointer) == 3 and int(queue.filled) == 3
  queue = push(queue, rows(4, 3))  # slots 3, 4, 0 <- 4, 5, 6
  np.testing.assert_array_equal(queue.embeddings[:, 0], [6, 2, 3, 4, 5])
  np.testing.assert_array_equal(queue_valid_mask(queue), [True] * 5)
  assert int(queue.pointer) == 1 and int(queue.filled) == 5
  queue = push(queue, rows(7, 3))  # slots 1, 2, 3 <- 7, 8, 9
  np.testing.assert_array_equal(queue.embeddings[:, 1], [6, 7, 8, 9, 5])
  assert int(queue.pointer) == 4 and int(queue.filled) == 5
  assert len(traces) == 1


def test_queue_full_batch_and_dtype():
  queue = queue_init(3, 2, jnp.bfloat16)
  queue = queue_push(queue, jnp.ones((3, 2), jnp.float32))
  assert queue.embeddings.dtype == jnp.bfloat16
  assert int(queue.pointer) == 0 and int(queue.filled) == 3
  assert isinstance(queue, MomentumQueue)
  valid = jax.jit(queue_valid_mask)(queue)
  assert valid.dtype == jnp.bool_ and bool(valid.all())


def test_queue_bad_inputs():
  for size in (0, -3):
    with pytest.raises(ValueError, match="size"):
      queue_init(size, 4)
  with pytest.raises(ValueError, match="dim"):
    queue_init(4, 0)
  queue = queue_init(4, 3)
  with pytest.raises(ValueError, match="batch_BxD"):
    queue_push(queue, jnp.ones((5, 3)))  # larger than the queue
  with pytest.raises(ValueError, match="batch_BxD"):
    queue_push(queue, jnp.ones((2, 4)))  # wrong width
  with pytest.raises(ValueError, match="batch_BxD"):
    queue_push(queue, jnp.ones((3,)))  # not [B, D]

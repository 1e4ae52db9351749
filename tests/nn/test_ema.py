"""EMA teachers of NNX modules: only ``nnx.Param`` moves, eagerly and under ``nnx.jit``."""

from __future__ import annotations

import doctest

import jax.numpy as jnp
import numpy as np
from flax import nnx

import momentum_jax.nn.ema
from momentum_jax.nn import ema_update_model


def test_ema_update_model_params_only_eager_and_nnx_jit():
  class Net(nnx.Module):

    def __init__(self, rngs: nnx.Rngs):
      self.linear = nnx.Linear(3, 2, rngs=rngs, param_dtype=jnp.bfloat16)
      self.norm = nnx.BatchNorm(2, rngs=rngs)

  student, teacher = Net(nnx.Rngs(0)), Net(nnx.Rngs(1))
  student.norm.mean[...] = jnp.full((2,), 7.0)
  t_kernel = np.asarray(teacher.linear.kernel[...], np.float32)
  s_kernel = np.asarray(student.linear.kernel[...], np.float32)
  ema_update_model(teacher, student, 0.5)
  want = np.asarray(jnp.asarray(0.5 * t_kernel + 0.5 * s_kernel).astype(jnp.bfloat16), np.float32)
  np.testing.assert_array_equal(np.asarray(teacher.linear.kernel[...], np.float32), want)
  assert teacher.linear.kernel[...].dtype == jnp.bfloat16
  np.testing.assert_array_equal(teacher.norm.mean[...], jnp.zeros(2))  # batch stats untouched

  @nnx.jit
  def step(teacher, student, momentum):
    ema_update_model(teacher, student, momentum)

  step(teacher, student, jnp.asarray(0.0))
  np.testing.assert_array_equal(teacher.linear.kernel[...], student.linear.kernel[...])
  np.testing.assert_array_equal(teacher.norm.mean[...], jnp.zeros(2))


def test_docstring_example_runs():
  result = doctest.testmod(momentum_jax.nn.ema, optionflags=doctest.ELLIPSIS)
  assert result.attempted > 0 and result.failed == 0

"""Helpers shared by the attention tests: fast-compiling jit, relative error, model gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# The tests run small shapes: skip XLA's backend optimisations (compile time dominates).
FAST_COMPILE = {"xla_backend_optimization_level": 0}
jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)


def rel_err(a, b, floor=1e-30):
  """‖a − b‖ / max(‖b‖, floor), in float64."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), floor)


def forward_and_grads(model, tokens):
  """Logits and the gradients of mean(logits²) w.r.t. the model state, one compiled call."""
  graphdef, state = nnx.split(model)

  def run(state):
    loss = lambda s: jnp.mean(nnx.merge(graphdef, s)(tokens) ** 2)
    return nnx.merge(graphdef, state)(tokens), jax.grad(loss)(state)

  return jit(run)(state)

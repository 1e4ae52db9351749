"""``Dense``: the dense layer of every ``momentum_jax.nn`` module.

``Dense`` is ``nnx.Linear`` (same parameters, initialisers and outputs). Outside
``momentum_jax.nn.value_grad_and_layer_stats`` it traces exactly the program of ``nnx.Linear``;
inside, it hands its input and output to the active statistics collector (``layer_stats.py``),
which averages the input and adds a zero-valued output probe, so that the per-layer statistics
of rank-1 K-FAC optimizers (MKOR) come out of the same forward/backward pass as the gradients.
"""

from __future__ import annotations

import contextvars
from typing import Any, Protocol

import jax
from flax import nnx


class _Observer(Protocol):
  """What ``Dense`` calls while a collector is active: returns the (probed) output."""

  def observe(self, layer: Dense, x: jax.Array, y: jax.Array) -> jax.Array:
    ...


# Set by ``layer_stats.value_grad_and_layer_stats`` for the duration of one loss evaluation.
ACTIVE_COLLECTOR: contextvars.ContextVar[_Observer | None] = contextvars.ContextVar(
    "momentum_jax_layer_stats_collector", default=None)


class Dense(nnx.Linear):
  """``nnx.Linear`` that reports its input mean and summed output gradient when asked.

  Parameters (``kernel`` [d_in, d_out], optional ``bias`` [d_out]), initialisation and outputs
  are those of ``nnx.Linear``; only inside ``value_grad_and_layer_stats`` does the forward pass
  also average the input and add the zero-valued output probe.
  """

  def __call__(self, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
    y = super().__call__(inputs, out_sharding=out_sharding)
    collector = ACTIVE_COLLECTOR.get()
    return y if collector is None else collector.observe(self, inputs, y)

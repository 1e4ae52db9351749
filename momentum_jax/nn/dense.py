"""``Dense``: the dense layer of every ``momentum_jax.nn`` module.

``Dense`` is ``nnx.Linear`` (same parameters, initialisers and outputs), applied to the input's
rows: the leading axes are flattened, ``[B, T, I] -> [B·T, I]``, before the matrix product and
restored after it. The product is the same; its gradient is not computed the same way: for a
3-D input, differentiation gives the kernel's gradient as a product contracting two axes whose
operand XLA's CPU backend first writes out transposed, in a loop fusion that also recomputes the
elementwise backward of the layer before it (GELU's), with strided reads: 5 ms per MLP layer at
nanoGPT's CPU shape, a quarter of the train step. With rows it is one plain ``xᵀ · dy``.
Inside ``momentum_jax.nn.value_grad_and_layer_stats`` it also hands its input and output to the
active statistics collector (``layer_stats.py``), which averages the input and adds a zero-valued
output probe, so that the per-layer statistics of rank-1 K-FAC optimizers (MKOR) come out of the
same forward/backward pass as the gradients.
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
  are those of ``nnx.Linear`` (computed on the input's rows, see the module docstring); only inside ``value_grad_and_layer_stats`` does the forward pass
  also average the input and add the zero-valued output probe.
  """

  def __call__(self, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
    rows_RxI = inputs.reshape(-1, inputs.shape[-1])
    y = super().__call__(rows_RxI, out_sharding=out_sharding).reshape(*inputs.shape[:-1], -1)
    collector = ACTIVE_COLLECTOR.get()
    return y if collector is None else collector.observe(self, inputs, y)

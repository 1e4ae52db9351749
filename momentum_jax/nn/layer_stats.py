"""Per-layer statistics for rank-1 K-FAC optimizers (MKOR), from one forward/backward pass.

``Dense`` (``dense.py``) is ``nnx.Linear`` (same parameters, initialisers and outputs) that can
report, while ``value_grad_and_layer_stats`` runs, two vectors per layer:

* ``input_mean`` [d_in]: the mean of the layer input x over every leading axis (batch, time);
* ``output_grad_sum`` [d_out]: Σ_tokens ∂L/∂y, the output gradient summed over every leading axis.

The second comes from a zero-valued probe p [d_out] added to the output, y = x W + b + p: since
∂L/∂p = Σ_tokens ∂L/∂y, differentiating with respect to the probes beside the parameters yields it
in the same backward pass that yields the parameter gradients, which the probes leave unchanged.
Outside ``value_grad_and_layer_stats`` a ``Dense`` traces exactly the program of ``nnx.Linear``.

``layer_stats`` is a dict keyed by the dotted path of each ``Dense`` kernel in the model's state
(``"blocks.0.attn.q_proj.kernel"``), the key that ``momentum_jax.optim.mkor`` looks up for that
kernel's gradient. A layer the loss calls several times reports the mean input over all its calls
and the output gradient summed over all of them; a layer the loss never calls reports zeros.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from momentum_jax.nn.dense import ACTIVE_COLLECTOR, Dense


class DenseStats(NamedTuple):
  """Statistics of one dense layer for one batch.

  Attributes:
    input_mean: [d_in] float32, the layer input averaged over every leading axis.
    output_grad_sum: [d_out] float32, Σ_tokens ∂L/∂y, the output gradient summed over every
      leading axis.
  """

  input_mean: jax.Array
  output_grad_sum: jax.Array


class _Collector:
  """Trace-time state of one ``value_grad_and_layer_stats`` call: probes in, input sums out."""

  def __init__(self, names: dict[int, str], probes: dict[str, jax.Array]):
    self._names = names
    self._probes = probes
    self._input_sums: dict[str, jax.Array] = {}
    self._token_counts: dict[str, int] = {}

  def observe(self, layer: Dense, x: jax.Array, y: jax.Array) -> jax.Array:
    name = self._names[id(layer)]
    x_NxD = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    self._input_sums[name] = self._input_sums.get(name, 0.0) + x_NxD.sum(axis=0)
    self._token_counts[name] = self._token_counts.get(name, 0) + x_NxD.shape[0]
    return y + self._probes[name].astype(y.dtype)

  def input_means(self, in_features: dict[str, int]) -> dict[str, jax.Array]:
    return {
        name: (self._input_sums[name] / self._token_counts[name] if name in self._input_sums
               else jnp.zeros((d_in,), jnp.float32))
        for name, d_in in in_features.items()
    }


def _dense_kernels(model: nnx.Module) -> dict[str, Dense]:
  """Every ``Dense`` in ``model``, keyed by the dotted path of its kernel."""
  return {".".join(map(str, (*path, "kernel"))): node
          for path, node in nnx.iter_graph(model) if isinstance(node, Dense)}


def value_grad_and_layer_stats(
    loss_fn: Callable[..., Any],
    model: nnx.Module,
    *args: Any,
    has_aux: bool = False,
) -> tuple[Any, nnx.State, dict[str, DenseStats]]:
  """``loss_fn(model, *args)``, its ``nnx.Param`` gradients and every ``Dense`` layer's statistics.

  One forward and one backward pass: the parameter gradients equal those of
  ``nnx.value_and_grad(loss_fn)(model, *args)``, and for each ``Dense`` layer with input x and
  output y,

      a = mean_tokens x  ∈ R^{d_in},        g = Σ_tokens ∂L/∂y  ∈ R^{d_out},

  where "tokens" are all the leading axes of x and y. Usable inside ``jax.jit`` / ``nnx.jit``.

  Args:
    loss_fn: ``loss_fn(model, *args) -> scalar`` (``-> (scalar, aux)`` when ``has_aux``).
    model: an NNX module whose dense layers are ``Dense``.
    *args: further arguments of ``loss_fn``.
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``.

  Returns:
    ``(loss, grads, layer_stats)``, or ``((loss, aux), grads, layer_stats)`` when ``has_aux``;
    ``grads`` is the ``nnx.Param`` state of the gradient, ``layer_stats`` maps each ``Dense``
    kernel's dotted path (``"blocks.0.mlp.up.kernel"``) to its ``DenseStats``.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from momentum_jax.nn import Dense, value_grad_and_layer_stats
    >>> layer = Dense(3, 2, rngs=nnx.Rngs(0))
    >>> x_BxTxD = jnp.ones((4, 5, 3))
    >>> loss, grads, stats = value_grad_and_layer_stats(lambda m, x: m(x).sum(), layer, x_BxTxD)
    >>> stats["kernel"].output_grad_sum  # 20 tokens, ∂L/∂y = 1 each
    Array([20., 20.], dtype=float32)
  """
  in_features = {name: layer.in_features for name, layer in _dense_kernels(model).items()}
  probes = {name: jnp.zeros((layer.out_features,), jnp.float32)
            for name, layer in _dense_kernels(model).items()}

  def probed_loss(model: nnx.Module, probes: dict[str, jax.Array]):
    names = {id(layer): name for name, layer in _dense_kernels(model).items()}
    collector = _Collector(names, probes)
    token = ACTIVE_COLLECTOR.set(collector)
    try:
      out = loss_fn(model, *args)
    finally:
      ACTIVE_COLLECTOR.reset(token)
    loss, aux = out if has_aux else (out, None)
    return loss, (aux, collector.input_means(in_features))

  (loss, (aux, input_means)), (grads, probe_grads) = nnx.value_and_grad(
      probed_loss, argnums=(0, 1), has_aux=True)(model, probes)
  stats = {name: DenseStats(input_means[name], probe_grads[name]) for name in probes}
  return ((loss, aux) if has_aux else loss), grads, stats

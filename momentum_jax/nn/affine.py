"""The α projection of affine-scaled attention (arXiv 2602.23057) and its running mean α_ma.

    α_t   = clip(0.1 · W_a x_t + 0.5, 0, 1)               per token and head, [B, T, N]
    α_ma ← ρ · α_ma + (1 − ρ) · mean_{B,T}(α),   ρ = 0.9   per head, [N], no gradient

The attention itself is ``momentum_jax.attention.affine.affine_attention``: α·SDPA + β·Σ_visible v
with β = (α_ma − α)/S_t. α_ma starts at 0.5, the value of α at W_a = 0.

α_ma is an :class:`AlphaEma` variable, not an ``nnx.Param``: it gets no gradient and the
optimiser never sees it. It is updated in training mode only (``use_running_average=False``, the
default, as for ``nnx.BatchNorm``; ``model.eval()`` freezes it and ``model.train()`` resumes the
updates), before it is used, so a training forward pass uses the EMA including the current batch.
A train step on pure pytrees carries it like batch statistics, as ``momentum_jax.train`` does:
split the model as ``graphdef, params, rest = nnx.split(model, nnx.Param, ...)``, run the forward
on ``nnx.merge(graphdef, params, rest, copy=True)`` (a copy, so that the update is allowed inside
the gradient's trace) and return the merged model's new ``rest`` from the step. A step that drops
it keeps α_ma at its initial value. Evaluation inside an inner trace (a ``lax.fori_loop`` body)
calls the model in evaluation mode (``model.eval()``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from momentum_jax.nn.dense import Dense

ALPHA_MA_INIT = 0.5

Hook = Callable[[str, jax.Array], jax.Array]


class AlphaEma(nnx.Variable):
  """Running mean α_ma of affine-scaled attention: module state, never differentiated."""


class AffineAlpha(nnx.Module):
  """α = clip(0.1·W_a x + 0.5, 0, 1) per token and head, and the per-head running mean α_ma.

  Args:
    d_model: width D of the layer input.
    num_heads: query heads N.
    momentum: ρ of the running mean (0.9 in the paper).
    use_running_average: True freezes α_ma (evaluation); False updates it on every call.
    dtype: compute dtype of the projection.
    rngs: initialisation keys.
  """

  def __init__(self, d_model: int, num_heads: int, *, momentum: float = 0.9,
               use_running_average: bool = False, dtype: jax.typing.DTypeLike = jnp.float32,
               rngs: nnx.Rngs):
    if not 0.0 <= momentum < 1.0:
      raise ValueError(f"momentum must be in [0, 1), got momentum={momentum!r}")
    self.proj = Dense(d_model, num_heads, use_bias=False, dtype=dtype, rngs=rngs)
    self.alpha_ma = AlphaEma(jnp.full((num_heads,), ALPHA_MA_INIT, jnp.float32))
    self.momentum = momentum
    self.use_running_average = use_running_average

  def __call__(self, x_BxTxD: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(alpha_BxTxN, alpha_ma_N)`` in float32; α_ma is updated first in training mode and is
    returned under ``stop_gradient``."""
    alpha_BxTxN = jnp.clip(0.1 * self.proj(x_BxTxD).astype(jnp.float32) + 0.5, 0.0, 1.0)
    if not self.use_running_average:
      batch_mean_N = jax.lax.stop_gradient(jnp.mean(alpha_BxTxN, axis=(0, 1)))
      self.alpha_ma[...] = self.momentum * self.alpha_ma[...] + (1 - self.momentum) * batch_mean_N
    return alpha_BxTxN, jax.lax.stop_gradient(self.alpha_ma[...])

  def variant_kwargs(self, x_BxTxD: jax.Array, hook: Hook) -> dict[str, jax.Array]:
    """The keyword arguments of ``affine_attention`` for input x, α exposed as ``hook_alpha``."""
    alpha_BxTxN, alpha_ma_N = self(x_BxTxD)
    return {"alpha_BxTxN": hook("hook_alpha", alpha_BxTxN), "alpha_ma": alpha_ma_N}

"""The momentum shear of Momentum Attention (Maitra, arXiv 2602.04902), shared by the pure
attention functions and the fused kernels.

    p_t = x_t − x_{t−1},    x̂_t = x_t + γ p_t = (1 + γ) x_t − γ x_{t−1}

applied per head to queries and keys after RoPE. The boundary is ``"zero"`` (x_{−1} = 0) or
``"replicate"`` (p_0 = 0), and the shear restarts at every segment start of packed sequences
(see :mod:`momentum_jax.attention.momentum` for the attention built on it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from momentum_jax.core.checks import (
    check_boundary, check_floating, check_per_head, check_rank4, check_segment_ids,
)
from momentum_jax.core.masks import previous_step, previous_step_matrix

Gamma = float | jax.Array


def _check_shear(x: jax.Array, gamma: Gamma, boundary: str, segment_ids: jax.Array | None) -> None:
  check_rank4("x", x)
  check_floating("x", x)
  check_boundary(boundary)
  check_segment_ids(segment_ids, x)
  check_per_head("gamma", gamma, x.shape[2], nonnegative=True)


def momentum_shear(
    x_BxTxNxH: jax.Array,
    gamma: Gamma,
    *,
    boundary: str = "zero",
    segment_ids: jax.Array | None = None,
) -> jax.Array:
  """x̂_t = x_t + γ (x_t − x_{t−1}), one fused O(T·H) elementwise pass.

  Args:
    x_BxTxNxH: queries or keys (after RoPE).
    gamma: γ >= 0; a float, a scalar array or ``[N]`` (N = x's head axis). Differentiable.
      Concrete values that are negative or NaN raise ``ValueError``; traced values are unchecked.
    boundary: ``"zero"`` (x_{−1} = 0, so x̂_0 = (1+γ) x_0) or ``"replicate"`` (x̂_0 = x_0).
    segment_ids: optional ``[B, T]`` ints; the first token of each segment is treated like t = 0.

  Returns:
    ``[B, T, N, H]`` in x's dtype (computed in float32).
  """
  _check_shear(x_BxTxNxH, gamma, boundary, segment_ids)
  gamma_N = jnp.asarray(gamma, jnp.float32)
  gamma_1x1xNx1 = gamma_N[:, None] if gamma_N.ndim else gamma_N
  x32 = x_BxTxNxH.astype(jnp.float32)
  prev = previous_step(x32, boundary=boundary, segment_ids=segment_ids)
  return (x32 + gamma_1x1xNx1 * (x32 - prev)).astype(x_BxTxNxH.dtype)


def momentum_shear_reference(
    x_BxTxNxH: jax.Array,
    gamma: Gamma,
    *,
    boundary: str = "zero",
    segment_ids: jax.Array | None = None,
) -> jax.Array:
  """Float32 reference of :func:`momentum_shear`: x̂ = ((1+γ) I − γ P) x with the explicit T×T
  previous-step matrix P (P[t, t−1] = 1 within a segment, boundary rows as documented)."""
  _check_shear(x_BxTxNxH, gamma, boundary, segment_ids)
  _, seq, heads, _ = x_BxTxNxH.shape
  gamma_1xNx1x1 = jnp.broadcast_to(jnp.asarray(gamma, jnp.float32), (heads,))[None, :, None, None]
  prev_Bx1xTxT = previous_step_matrix(seq, boundary=boundary, segment_ids=segment_ids)[:, None]
  shear_BxNxTxT = (1 + gamma_1xNx1x1) * jnp.eye(seq) - gamma_1xNx1x1 * prev_Bx1xTxT
  out = jnp.einsum(
      "bnts,bsnh->btnh", shear_BxNxTxT, x_BxTxNxH.astype(jnp.float32),
      precision=jax.lax.Precision.HIGHEST,
  )
  return out.astype(x_BxTxNxH.dtype)

"""Rotary position embedding (Su et al., RoFormer, arXiv 2104.09864), rotate-half convention.

Pair i of a head is the channels (i, i + H/2) (GPT-NeoX layout), rotated by the angle
θ_i(m) = m · base^(-2i/H) at position m:

    y_i       = x_i cos θ_i − x_{i+H/2} sin θ_i
    y_{i+H/2} = x_{i+H/2} cos θ_i + x_i sin θ_i

so ⟨rope(q, m), rope(k, n)⟩ depends on q, k and m − n only, and norms are preserved.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from momentum_jax.core.checks import check_floating, check_positions, check_rank4


def rope_frequencies(head_dim: int, base: float = 10000.0) -> jax.Array:
  """Float32 ``[H/2]`` angular frequencies base^(-2i/H), i = 0 … H/2 − 1."""
  if head_dim % 2:
    raise ValueError(f"RoPE needs an even head_dim, got head_dim={head_dim}")
  return base ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)


def apply_rope(
    x_BxTxNxH: jax.Array, positions_BxT: jax.Array | None = None, *, base: float = 10000.0
) -> jax.Array:
  """Rotates each head of ``x`` by its position; computed in float32, returned in x's dtype.

  Args:
    x_BxTxNxH: queries or keys; H must be even.
    positions_BxT: integer or float positions, ``[B, T]`` or ``[T]``; default ``arange(T)``.
    base: RoPE base (θ_i = m · base^(-2i/H)).
  """
  check_rank4("x", x_BxTxNxH)
  check_floating("x", x_BxTxNxH)
  check_positions("x", positions_BxT, x_BxTxNxH)
  _, seq, _, head_dim = x_BxTxNxH.shape
  freq_F = rope_frequencies(head_dim, base)
  if positions_BxT is None:
    positions_BxT = jnp.arange(seq)
  positions_BxT = jnp.atleast_2d(positions_BxT).astype(jnp.float32)
  angle_BxTx1xF = (positions_BxT[:, :, None] * freq_F)[:, :, None, :]
  cos, sin = jnp.cos(angle_BxTx1xF), jnp.sin(angle_BxTx1xF)
  x1, x2 = jnp.split(x_BxTxNxH.astype(jnp.float32), 2, axis=-1)
  y_BxTxNxH = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return y_BxTxNxH.astype(x_BxTxNxH.dtype)

"""Trace-time shape checks shared by the attention-analysis functions.

Messages name the argument and its shape, like the checks in ``momentum_jax.core.checks``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def check_weights(name: str, weights: jax.Array, *, square: bool = False) -> None:
  """Raises ``ValueError`` unless ``weights`` is a floating ``[B, N, T, S]`` array (T == S when
  ``square``)."""
  if np.ndim(weights) != 4:
    raise ValueError(
        f"{name} must have rank 4 [batch, head, query_pos, key_pos], "
        f"got {name}.shape={np.shape(weights)}")
  if not jnp.issubdtype(jnp.result_type(weights), jnp.floating):
    raise ValueError(f"{name} must be floating, got {name}.dtype={jnp.result_type(weights)}")
  if square and weights.shape[2] != weights.shape[3]:
    raise ValueError(
        f"{name} must be square in (query_pos, key_pos), got {name}.shape={weights.shape}")


def check_rank(name: str, x: jax.Array, rank: int, layout: str) -> None:
  """Raises ``ValueError`` unless ``x`` has rank ``rank`` (``layout`` names the axes)."""
  if np.ndim(x) != rank:
    raise ValueError(f"{name} must have rank {rank} {layout}, got {name}.shape={np.shape(x)}")


def token_mask(name: str, mask: jax.Array, batch: int, seq: int) -> jax.Array:
  """A boolean ``[B, S]`` or ``[S]`` token mask as a float ``[B, 1, 1, S]`` multiplier."""
  shape = np.shape(mask)
  if shape not in ((seq,), (batch, seq), (1, seq)):
    raise ValueError(
        f"{name} must have shape [S] or [B, S] = {(batch, seq)}, got {name}.shape={shape}")
  mask = jnp.asarray(mask)
  if mask.dtype != jnp.bool_:
    raise ValueError(f"{name} must be boolean, got {name}.dtype={mask.dtype}")
  return jnp.reshape(mask, (-1, 1, 1, seq)).astype(jnp.float32)


def normalize_rows(weights_BxNxTxS: jax.Array) -> jax.Array:
  """Divides each row by its sum; rows whose sum is 0 are left as they are."""
  total_BxNxTx1 = jnp.sum(weights_BxNxTxS, axis=-1, keepdims=True)
  safe = jnp.where(total_BxNxTx1 > 0, total_BxNxTx1, 1.0)
  return jnp.where(total_BxNxTx1 > 0, weights_BxNxTxS / safe, weights_BxNxTxS)

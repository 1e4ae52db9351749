"""Chunking of the sequence axis for the blocked scans of the linear-time attention forms (linear,
Lightning, sigmoid): ``[B, T, ...]`` cut into T/C blocks of C positions, the block axis first
for ``lax.scan``, and back.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def to_blocks(x_BxTx: jax.Array, block_size: int) -> jax.Array:
  """``[B, T, ...] -> [T/C, B, C, ...]``, zero-padding T up to a multiple of C = ``block_size``."""
  batch, seq = x_BxTx.shape[:2]
  blocks = -(-seq // block_size)
  pad = [(0, 0), (0, blocks * block_size - seq)] + [(0, 0)] * (x_BxTx.ndim - 2)
  x_BxLxC = jnp.pad(x_BxTx, pad).reshape(batch, blocks, block_size, *x_BxTx.shape[2:])
  return jnp.moveaxis(x_BxLxC, 1, 0)


def from_blocks(x_LxBxC: jax.Array, seq: int) -> jax.Array:
  """Inverse of :func:`to_blocks`: ``[T/C, B, C, ...] -> [B, T, ...]`` without the padding."""
  x_BxLxC = jnp.moveaxis(x_LxBxC, 0, 1)
  batch, blocks, block = x_BxLxC.shape[:3]
  return x_BxLxC.reshape(batch, blocks * block, *x_BxLxC.shape[3:])[:, :seq]


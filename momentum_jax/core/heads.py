"""Head and dtype helpers shared by the attention functions and the kernels."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def repeat_kv(x_BxSxKxH: jax.Array, heads: int) -> jax.Array:
  """GQA: ``[B, S, K, H] -> [B, S, N, H]`` so that query head n reads kv head n // (N // K)."""
  return jnp.repeat(x_BxSxKxH, heads // x_BxSxKxH.shape[2], axis=2)


def compute_dtype(x: jax.Array) -> jnp.dtype:
  """Float32, or float64 for float64 inputs (so that x64 tests can check the algebra exactly)."""
  return jnp.promote_types(x.dtype, jnp.float32)

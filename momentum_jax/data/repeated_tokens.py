"""Repeated random tokens: the standard probe for induction heads.

A uniformly random sequence followed by an exact copy of itself (Olsson et al., "In-context
Learning and Induction Heads", 2022). In the second half an induction head attends from token
t to t - seq_len + 1 and predicts perfectly. Fixed period, so it is a diagnostic, not a training
task: a RoPE model can solve it by relative position alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def repeated_random_tokens(
    key: jax.Array, batch_size: int, seq_len: int, vocab_size: int
) -> jax.Array:
  """Returns ``tokens_Bx2T`` int32: ``seq_len`` uniform tokens in ``[0, vocab_size)``, twice."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got batch_size={batch_size}")
  if seq_len < 1:
    raise ValueError(f"seq_len must be >= 1, got seq_len={seq_len}")
  if vocab_size < 2:
    raise ValueError(f"vocab_size must be >= 2, got vocab_size={vocab_size}")
  tokens_BxT = jax.random.randint(key, (batch_size, seq_len), 0, vocab_size, dtype=jnp.int32)
  return jnp.concatenate([tokens_BxT, tokens_BxT], axis=1)

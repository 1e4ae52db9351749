"""Learned per-layer parameters of the lightning, agent and FlashBias variants: the initialisers
their registrations declare in ``AttentionVariant.learned``.

- lightning (arXiv 2401.04658): the per-head decay rates ``[N]``, starting at the ALiBi slopes
  (the fixed default). The transformer layer stores their logarithm and passes exp of it, so the
  rate stays positive and λ_n = exp(−decay_n) stays in (0, 1) whatever the optimiser does.
- agent (arXiv 2312.08874): the agent bias B1 as a per-head, per-key-position table
  ``[1, N, 1, context_len]`` shared by the agents (zero init). The query bias B2 varies over the
  agents, whose number is a fixed parameter of the variant the initialiser does not see, and a B2
  constant over agents cancels in its softmax, so B2 is not learned.
- flash_bias (arXiv 2505.12044): a learned low-rank positional bias q_bias·k_biasᵀ with factors
  ``[1, context_len, N, R]`` and ``[1, context_len, K, R]``, R = ``LEARNED_BIAS_RANK``, small
  random init (std ``LEARNED_BIAS_STD``).

Each per-position initialiser returns the keyword argument for a batch of one sequence of
``context_len`` tokens; its registration's ``LearnedLayout.at_positions``
(:func:`rows_at_positions`, :func:`key_columns_at_positions`) gathers a batch's token positions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from momentum_jax.attention.registry import AttentionDims
from momentum_jax.core.alibi import alibi_slopes

LEARNED_BIAS_RANK = 4
LEARNED_BIAS_STD = 0.1


def alibi_decay_init(dims: AttentionDims, key: jax.Array) -> jax.Array:
  """``[N]`` ALiBi slopes 2^(−8i/N): lightning's default decay rates, the learned decay's start."""
  del key
  return jnp.asarray(alibi_slopes(dims.num_heads), jnp.float32)


def zero_agent_bias(dims: AttentionDims, key: jax.Array) -> jax.Array:
  """``[1, N, 1, context_len]`` zeros: agent attention's B1 per head and key position."""
  del key
  return jnp.zeros((1, dims.num_heads, 1, dims.context_len), jnp.float32)


def flash_bias_q_init(dims: AttentionDims, key: jax.Array) -> jax.Array:
  """``[1, context_len, N, R]`` normal(0, ``LEARNED_BIAS_STD``) query-side bias factors."""
  shape = (1, dims.context_len, dims.num_heads, LEARNED_BIAS_RANK)
  return LEARNED_BIAS_STD * jax.random.normal(key, shape, jnp.float32)


def flash_bias_k_init(dims: AttentionDims, key: jax.Array) -> jax.Array:
  """``[1, context_len, K, R]`` normal(0, ``LEARNED_BIAS_STD``) key-side bias factors."""
  shape = (1, dims.context_len, dims.num_kv_heads, LEARNED_BIAS_RANK)
  return LEARNED_BIAS_STD * jax.random.normal(key, shape, jnp.float32)


def rows_at_positions(table_1xCxAxR: jax.Array, positions_BxT: jax.Array) -> jax.Array:
  """``[1, C, A, R]`` table (C = context_len) → ``[B, T, A, R]``: row p of each token's position."""
  return table_1xCxAxR[0][positions_BxT]


def key_columns_at_positions(table_1xNx1xC: jax.Array, positions_BxT: jax.Array) -> jax.Array:
  """``[1, N, 1, C]`` per-key table → ``[B, N, 1, S]``: column p of each key's position."""
  return jnp.moveaxis(table_1xNx1xC[0][..., positions_BxT], 2, 0)

"""Multi-query associative recall (MQAR; Arora et al., "Zoology", arXiv 2312.04927).

A sequence lists ``num_pairs`` key-value pairs ``k1 v1 k2 v2 … kn vn`` with distinct keys from
the first half of the vocabulary and values from the second half, then ``num_queries`` distinct
keys drawn from the pairs, each followed by its value: ``… k_j v_j …``. Loss counts at the query
keys, where the next token is the value bound to that key earlier in the sequence. This is the
compact form without noise tokens between pairs and queries.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from momentum_jax.data.batch import Batch


@dataclasses.dataclass(frozen=True)
class AssociativeRecallTask:
  """Multi-query associative recall.

  Attributes:
    vocab_size: number of token ids; keys are ``[0, vocab_size // 2)``, values
      ``[vocab_size // 2, vocab_size)``.
    num_pairs: key-value pairs per sequence, ``1 <= num_pairs <= vocab_size // 2``.
    num_queries: queried keys per sequence (distinct), ``1 <= num_queries <= num_pairs``.
  """

  vocab_size: int = 64
  num_pairs: int = 8
  num_queries: int = 8

  def __post_init__(self):
    if self.vocab_size < 4:
      raise ValueError(f"vocab_size must be >= 4, got vocab_size={self.vocab_size}")
    if not 1 <= self.num_pairs <= self.vocab_size // 2:
      raise ValueError(
          f"num_pairs must be in [1, vocab_size // 2] (distinct keys), got "
          f"num_pairs={self.num_pairs}, vocab_size={self.vocab_size}"
      )
    if not 1 <= self.num_queries <= self.num_pairs:
      raise ValueError(
          f"num_queries must be in [1, num_pairs], got num_queries={self.num_queries}, "
          f"num_pairs={self.num_pairs}"
      )

  @property
  def seq_len(self) -> int:
    """T = 2 (num_pairs + num_queries) - 1: the final value is a target, never an input."""
    return 2 * (self.num_pairs + self.num_queries) - 1

  @functools.partial(jax.jit, static_argnums=(0, 2))
  def sample(self, key: jax.Array, batch_size: int) -> Batch:
    """Samples ``batch_size`` sequences; deterministic in ``key``, jitted with B static."""
    keys_B = jax.random.split(key, batch_size)
    raw_Bx1T = jax.vmap(self._sample_one)(keys_B)
    pos_T = jnp.arange(self.seq_len)
    first_query = 2 * self.num_pairs
    mask_T = ((pos_T >= first_query) & ((pos_T - first_query) % 2 == 0)).astype(jnp.float32)
    return Batch(
        tokens=raw_Bx1T[:, :-1],
        targets=raw_Bx1T[:, 1:],
        loss_mask=jnp.broadcast_to(mask_T, (batch_size, self.seq_len)),
    )

  def _sample_one(self, key: jax.Array) -> jax.Array:
    """One raw sequence of length T+1 = 2 (num_pairs + num_queries)."""
    half = self.vocab_size // 2
    key_key, value_key, query_key = jax.random.split(key, 3)
    keys_P = jax.random.permutation(key_key, half)[: self.num_pairs]
    values_P = jax.random.randint(value_key, (self.num_pairs,), half, self.vocab_size)
    which_Q = jax.random.permutation(query_key, self.num_pairs)[: self.num_queries]
    pairs_Px2 = jnp.stack([keys_P, values_P], axis=-1)
    queries_Qx2 = pairs_Px2[which_Q]
    return jnp.concatenate([pairs_Px2.reshape(-1), queries_Qx2.reshape(-1)]).astype(jnp.int32)

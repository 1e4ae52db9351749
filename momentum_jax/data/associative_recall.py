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
    """T = 2 (num_pairs + num_queries) - 1, since the final value is a target, never an input."""
    return 2 * (self.num_pairs + self.num_queries) - 1

  @functools.partial(jax.jit, static_argnums=(0, 2))
  def sample(self, key: jax.Array, batch_size: int) -> Batch:
    """Samples ``batch_size`` sequences; deterministic in ``key``, jitted with B static.

    All randomness comes from one draw of 32-bit words (one threefry call keeps compile time
    small): keys and queried pairs are prefixes of per-sequence permutations (argsort of random
    words), values are words reduced modulo ``vocab_size // 2`` (bias below 2^-24).
    """
    half, p, q = self.vocab_size // 2, self.num_pairs, self.num_queries
    bits_BxW = jax.random.bits(key, (batch_size, half + 2 * p))
    keys_BxP = jnp.argsort(bits_BxW[:, :half], axis=-1)[:, :p]
    values_BxP = half + bits_BxW[:, half : half + p] % (self.vocab_size - half)
    which_BxQ = jnp.argsort(bits_BxW[:, half + p :], axis=-1)[:, :q]
    pairs_BxPx2 = jnp.stack([keys_BxP, values_BxP.astype(keys_BxP.dtype)], axis=-1)
    queries_BxQx2 = jnp.take_along_axis(pairs_BxPx2, which_BxQ[:, :, None], axis=1)
    raw_BxT1 = jnp.concatenate(
        [pairs_BxPx2.reshape(batch_size, -1), queries_BxQx2.reshape(batch_size, -1)], axis=1
    ).astype(jnp.int32)

    pos_T = jnp.arange(self.seq_len)
    mask_T = (pos_T >= 2 * p) & ((pos_T - 2 * p) % 2 == 0)
    return Batch(
        tokens=raw_BxT1[:, :-1],
        targets=raw_BxT1[:, 1:],
        loss_mask=jnp.broadcast_to(mask_T.astype(jnp.float32), (batch_size, self.seq_len)),
    )

"""Induction with a variable gap: a task that a fixed relative offset cannot solve.

Per sequence: a segment S of M distinct random tokens, a gap of n random tokens (n uniform in
[0, max_gap], tokens outside S, repeats allowed), S again, then more gap tokens up to the fixed
length. At position t of the second copy the next token is S[j] whenever the current token is
S[j-1], j = 1..M-1: each such target is fixed by the earlier occurrence of the current token (the
induction match "…A B … A → B"). Only these M-1 positions carry loss. Since n varies per sequence,
the distance back to the earlier occurrence varies too, which defeats the positional shortcut a
1-layer RoPE model finds on a fixed-period repeated sequence (see the momentum-attention spec, §3).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from momentum_jax.data.batch import Batch


@dataclasses.dataclass(frozen=True)
class InductionTask:
  """Variable-gap induction.

  Attributes:
    vocab_size: number of token ids, ``vocab_size >= segment_len + 2`` so that gap tokens (drawn
      from the ids outside S) are random.
    segment_len: M, the length of the repeated segment, ``>= 2``.
    max_gap: the largest gap n between the two copies, ``>= 0``.
  """

  vocab_size: int = 64
  segment_len: int = 12
  max_gap: int = 24

  def __post_init__(self):
    if self.segment_len < 2:
      raise ValueError(f"segment_len must be >= 2, got segment_len={self.segment_len}")
    if self.max_gap < 0:
      raise ValueError(f"max_gap must be >= 0, got max_gap={self.max_gap}")
    if self.vocab_size < self.segment_len + 2:
      raise ValueError(
          f"vocab_size must be >= segment_len + 2 (at least two tokens outside the segment for "
          f"the gap), got vocab_size={self.vocab_size}, segment_len={self.segment_len}"
      )

  @property
  def seq_len(self) -> int:
    """T = 2M + max_gap + 1, so the second copy fits for every gap."""
    return 2 * self.segment_len + self.max_gap + 1

  @functools.partial(jax.jit, static_argnums=(0, 2))
  def sample(self, key: jax.Array, batch_size: int) -> Batch:
    """Samples ``batch_size`` sequences; deterministic in ``key``, jitted with B static.

    All randomness comes from one draw of 32-bit words (one threefry call keeps compile time
    small): S is the first M entries of a per-sequence permutation of the vocabulary (argsort of
    random words), the gap length and gap tokens are words reduced modulo their range (bias
    below 2^-24 for these ranges).
    """
    v, m, t = self.vocab_size, self.segment_len, self.seq_len
    bits_BxW = jax.random.bits(key, (batch_size, v + 1 + t + 1))
    perm_BxV = jnp.argsort(bits_BxW[:, :v], axis=-1).astype(jnp.int32)
    second_Bx1 = m + (bits_BxW[:, v : v + 1] % (self.max_gap + 1)).astype(jnp.int32)
    # Gap and padding tokens: the permutation's entries after S, i.e. ids outside S.
    fill_idx_BxT1 = m + (bits_BxW[:, v + 1 :] % (v - m)).astype(jnp.int32)
    fill_BxT1 = jnp.take_along_axis(perm_BxV, fill_idx_BxT1, axis=-1)

    pos_T1 = jnp.arange(t + 1)
    in_first_T1 = pos_T1 < m
    in_second_BxT1 = (pos_T1 >= second_Bx1) & (pos_T1 < second_Bx1 + m)
    seg_idx_BxT1 = jnp.clip(jnp.where(in_first_T1, pos_T1, pos_T1 - second_Bx1), 0, m - 1)
    seg_BxT1 = jnp.take_along_axis(perm_BxV, seg_idx_BxT1, axis=-1)
    raw_BxT1 = jnp.where(in_first_T1 | in_second_BxT1, seg_BxT1, fill_BxT1)

    # targets[t] = raw[t+1] is the second copy's element j = t+1-second; j in 1..M-1 count.
    pos_T = jnp.arange(t)
    mask_BxT = (pos_T >= second_Bx1) & (pos_T < second_Bx1 + m - 1)
    return Batch(
        tokens=raw_BxT1[:, :-1],
        targets=raw_BxT1[:, 1:],
        loss_mask=mask_BxT.astype(jnp.float32),
    )

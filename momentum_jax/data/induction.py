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
    """Samples ``batch_size`` sequences; deterministic in ``key``, jitted with B static."""
    keys_B = jax.random.split(key, batch_size)
    tokens_Bx1T, mask_BxT = jax.vmap(self._sample_one)(keys_B)
    return Batch(
        tokens=tokens_Bx1T[:, :-1],
        targets=tokens_Bx1T[:, 1:],
        loss_mask=mask_BxT,
    )

  def _sample_one(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One raw sequence of length T+1 (inputs and shifted targets) and its [T] loss mask."""
    m, t = self.segment_len, self.seq_len
    perm_key, gap_key, fill_key = jax.random.split(key, 3)
    # The first M ids of a permutation form S; the remaining V-M are the gap alphabet.
    perm_V = jax.random.permutation(perm_key, self.vocab_size).astype(jnp.int32)
    gap = jax.random.randint(gap_key, (), 0, self.max_gap + 1)
    fill_T1 = perm_V[m + jax.random.randint(fill_key, (t + 1,), 0, self.vocab_size - m)]

    pos_T1 = jnp.arange(t + 1)
    second = m + gap  # start of the second copy
    in_first = pos_T1 < m
    in_second = (pos_T1 >= second) & (pos_T1 < second + m)
    seg_idx = jnp.where(in_first, pos_T1, pos_T1 - second)
    seg_T1 = perm_V[jnp.clip(seg_idx, 0, m - 1)]
    raw_T1 = jnp.where(in_first | in_second, seg_T1, fill_T1)

    # targets[t] = raw[t+1] is the copy's element j = t+1-second; j in 1..M-1 is determined.
    pos_T = jnp.arange(t)
    mask_T = ((pos_T >= second) & (pos_T < second + m - 1)).astype(jnp.float32)
    return raw_T1, mask_T

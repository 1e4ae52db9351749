"""The batch every synthetic task yields, and the protocol a task satisfies."""

from __future__ import annotations

from typing import NamedTuple, Protocol

import jax


class Batch(NamedTuple):
  """A batch of next-token examples.

  Attributes:
    tokens: ``[B, T] int32`` model inputs.
    targets: ``[B, T] int32`` next-token labels: ``targets[:, t]`` is the token the model should
      predict at position ``t``.
    loss_mask: ``[B, T] float32``, 1 where loss and accuracy count, 0 elsewhere.
    segment_ids: ``[B, T] int32`` id of the document each token belongs to in its row (1, 2,
      ...; 0 on padding) for packed text, so attention stays inside a document; None for the
      synthetic tasks (one sequence per row).
    positions: ``[B, T] int32`` position of each token inside its document piece, for RoPE;
      None for the synthetic tasks (0, 1, ... along the row).
  """

  tokens: jax.Array
  targets: jax.Array
  loss_mask: jax.Array
  segment_ids: jax.Array | None = None
  positions: jax.Array | None = None


class Task(Protocol):
  """A synthetic task: a frozen, hashable config that samples batches from a PRNG key.

  ``sample`` is pure and traceable (``batch_size`` static), so it can run inside a jitted step.
  """

  @property
  def vocab_size(self) -> int: ...

  @property
  def seq_len(self) -> int: ...

  def sample(self, key: jax.Array, batch_size: int) -> Batch: ...

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
  """

  tokens: jax.Array
  targets: jax.Array
  loss_mask: jax.Array


class Task(Protocol):
  """A synthetic task: a frozen, hashable config that samples batches from a PRNG key.

  ``sample`` is pure and traceable (``batch_size`` static), so it can run inside a jitted step.
  """

  @property
  def vocab_size(self) -> int: ...

  @property
  def seq_len(self) -> int: ...

  def sample(self, key: jax.Array, batch_size: int) -> Batch: ...

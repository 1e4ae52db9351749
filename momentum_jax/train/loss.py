"""Masked next-token cross-entropy and accuracy: only positions with ``loss_mask = 1`` count."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from momentum_jax.data import Batch


def masked_sums(logits_BxTxV: jax.Array, batch: Batch) -> dict[str, jax.Array]:
  """Sums over the masked positions: ``{"loss_sum", "correct_sum", "count"}`` (float32 scalars).

  Sums rather than means, so metrics over several batches weigh every counted token equally.
  """
  logits_BxTxV = logits_BxTxV.astype(jnp.float32)
  mask_BxT = batch.loss_mask.astype(jnp.float32)
  ce_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, batch.targets)
  correct_BxT = (jnp.argmax(logits_BxTxV, axis=-1) == batch.targets).astype(jnp.float32)
  return {
      "loss_sum": jnp.sum(ce_BxT * mask_BxT),
      "correct_sum": jnp.sum(correct_BxT * mask_BxT),
      "count": jnp.sum(mask_BxT),
  }


def masked_cross_entropy(logits_BxTxV: jax.Array, batch: Batch) -> jax.Array:
  """Mean over masked positions of ``-log softmax(logits)[target]``; 0 if nothing is masked.

  ``L = Σ_{b,t} m_{bt} · (logsumexp(z_{bt}) - z_{bt,y_{bt}}) / max(Σ m, 1)``.
  """
  sums = masked_sums(logits_BxTxV, batch)
  return sums["loss_sum"] / jnp.maximum(sums["count"], 1.0)


def masked_accuracy(logits_BxTxV: jax.Array, batch: Batch) -> jax.Array:
  """Fraction of masked positions where ``argmax(logits) == target``; 0 if nothing is masked."""
  sums = masked_sums(logits_BxTxV, batch)
  return sums["correct_sum"] / jnp.maximum(sums["count"], 1.0)

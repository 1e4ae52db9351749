"""Masked cross-entropy and accuracy against a NumPy computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from momentum_jax.data import Batch
from momentum_jax.train import masked_accuracy, masked_cross_entropy


def _batch_and_logits(seed: int = 0):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(3, 5, 7)).astype(np.float32)
  targets = rng.integers(0, 7, size=(3, 5)).astype(np.int32)
  mask = (rng.random((3, 5)) < 0.5).astype(np.float32)
  mask[0, 0] = 1.0
  batch = Batch(tokens=jnp.zeros((3, 5), jnp.int32), targets=jnp.asarray(targets),
                loss_mask=jnp.asarray(mask))
  return logits, batch


def test_matches_numpy():
  logits, batch = _batch_and_logits()
  targets, mask = np.asarray(batch.targets), np.asarray(batch.loss_mask)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  correct = logits.argmax(-1) == targets
  assert float(masked_cross_entropy(jnp.asarray(logits), batch)) == pytest.approx(
      (nll * mask).sum() / mask.sum(), rel=1e-5)
  assert float(masked_accuracy(jnp.asarray(logits), batch)) == pytest.approx(
      (correct * mask).sum() / mask.sum(), rel=1e-6)


def test_unmasked_positions_do_not_count():
  logits, batch = _batch_and_logits(1)
  noisy = np.where(np.asarray(batch.loss_mask)[..., None] > 0, logits, 1e3 * logits)
  for fn in (masked_cross_entropy, masked_accuracy):
    assert float(fn(jnp.asarray(noisy), batch)) == pytest.approx(
        float(fn(jnp.asarray(logits), batch)), rel=1e-6)
  grads = jax.grad(masked_cross_entropy)(jnp.asarray(logits), batch)
  assert np.all(np.asarray(grads)[np.asarray(batch.loss_mask) == 0] == 0)


def test_empty_mask_gives_zero():
  logits, batch = _batch_and_logits()
  batch = batch._replace(loss_mask=jnp.zeros_like(batch.loss_mask))
  assert float(masked_cross_entropy(jnp.asarray(logits), batch)) == 0.0
  assert float(masked_accuracy(jnp.asarray(logits), batch)) == 0.0

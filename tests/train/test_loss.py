"""Masked cross-entropy and accuracy, and momentum distillation, against NumPy computations."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import momentum_jax.train.loss
from momentum_jax.data import Batch
from momentum_jax.train import masked_accuracy, masked_cross_entropy, momentum_distillation_loss


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


# --- Momentum distillation -----------------------------------------------------------------------


def _inputs(seed=0, shape=(4, 3), classes=5):
  rng = np.random.default_rng(seed)
  student = jnp.asarray(rng.normal(size=(*shape, classes)), jnp.float32)
  teacher = jnp.asarray(rng.normal(size=(*shape, classes)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, classes, size=shape), jnp.int32)
  return student, teacher, labels


def test_distillation_is_cross_entropy_at_alpha_zero():
  student, teacher, labels = _inputs()
  want = optax.softmax_cross_entropy_with_integer_labels(student, labels).mean()
  got = momentum_distillation_loss(student, teacher, labels, alpha=0.0)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-6)


def test_distillation_exact_values_against_numpy():
  student, teacher, labels = _inputs(seed=1)
  alpha, tau = 0.4, 0.5
  mask = jnp.asarray(np.random.default_rng(2).random(labels.shape) > 0.3)
  s, t = np.asarray(student, np.float64), np.asarray(teacher, np.float64)
  log_p = s - np.log(np.sum(np.exp(s), -1, keepdims=True))
  q = np.exp(t / tau) / np.sum(np.exp(t / tau), -1, keepdims=True)
  hard = -np.take_along_axis(log_p, np.asarray(labels)[..., None], -1)[..., 0]
  soft = -np.sum(q * log_p, -1)
  per = (1 - alpha) * hard + alpha * soft
  m = np.asarray(mask, np.float64)
  want = np.sum(per * m) / np.sum(m)
  got = momentum_distillation_loss(student, teacher, labels, alpha, tau, mask)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  # At alpha = 1 it is the soft cross-entropy against the teacher (ALBEF's -sum q log p).
  got1 = momentum_distillation_loss(student, teacher, labels, 1.0, tau)
  np.testing.assert_allclose(float(got1), np.mean(soft), rtol=1e-5)


def test_distillation_has_no_gradient_to_the_teacher_and_jits():
  student, teacher, labels = _inputs()
  loss = jax.jit(lambda s, t: momentum_distillation_loss(s, t, labels, 0.4, 2.0))
  g_student, g_teacher = jax.grad(loss, argnums=(0, 1))(student, teacher)
  assert bool(jnp.all(g_teacher == 0.0))
  assert float(jnp.max(jnp.abs(g_student))) > 0.0


def test_distillation_empty_mask_gives_zero():
  student, teacher, labels = _inputs()
  got = momentum_distillation_loss(student, teacher, labels, mask=jnp.zeros(labels.shape, bool))
  assert float(got) == 0.0


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": -0.1}, "alpha"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"teacher_logits": jnp.zeros((4, 3, 6))}, "teacher_logits"),
        ({"labels": jnp.zeros((4,), jnp.int32)}, "labels"),
        ({"labels": jnp.zeros((4, 3), jnp.float32)}, "labels"),
        ({"mask": jnp.ones((4,), bool)}, "mask"),
    ],
)
def test_distillation_bad_inputs(kwargs, name):
  student, teacher, labels = _inputs()
  args = {"student_logits": student, "teacher_logits": teacher, "labels": labels, **kwargs}
  with pytest.raises(ValueError, match=name):
    momentum_distillation_loss(**args)


def test_distillation_docstring_documents_the_rule_and_its_example_runs():
  doc = momentum_distillation_loss.__doc__
  assert "math::" in doc and "Args:" in doc and "arxiv.org" in doc
  result = doctest.testmod(momentum_jax.train.loss, optionflags=doctest.ELLIPSIS)
  assert result.attempted > 0 and result.failed == 0

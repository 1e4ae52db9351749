"""ALBEF's contrastive loss with a momentum encoder, a queue and momentum distillation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from momentum_jax.optim.teachers import queue_init, queue_push
from momentum_jax.train.momentum_distillation import (
    MASKED_LOGIT, contrastive_logits, momentum_contrastive_loss, one_way_contrastive_loss,
    soft_targets)


# Jitted once per test shape: one compilation instead of one per eager operation.
one_way = jax.jit(one_way_contrastive_loss)
both_ways = jax.jit(momentum_contrastive_loss)


def _unit(x):
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def _embeddings(seed, *shape):
  x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
  return jnp.asarray(x / np.linalg.norm(x, axis=-1, keepdims=True))


def _full_queue(seed, size, dim):
  return queue_push(queue_init(size, dim), _embeddings(seed, size, dim))


def test_hand_computed_two_pairs_one_queued_key():
  # a2b with alpha 0.5, tau 1: query (1, 0), momentum query (0, 1); keys (1, 0), (0, 1) and one
  # queued (-1, 0). Row 0: s = (1, 0, -1), s_hat = (0, 1, 0), y = (0.5, 0, 0) + 0.5 softmax(s_hat).
  a = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  a_hat = jnp.array([[0.0, 1.0], [1.0, 0.0]])
  keys = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  queue = queue_push(queue_init(2, 2), jnp.array([[-1.0, 0.0]]))
  got = one_way(a, a_hat, keys, queue, alpha=0.5, temperature=1.0)
  e = np.e
  s = np.array([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
  s_hat = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, -1.0]])
  q = np.exp(s_hat) / np.exp(s_hat).sum(1, keepdims=True)
  y = 0.5 * q + 0.5 * np.eye(2, 3)
  log_p = s - np.log(np.exp(s).sum(1, keepdims=True))
  want = -(y * log_p).sum(1).mean()
  assert float(got) == pytest.approx(want, rel=1e-6)
  # Row 0's targets, written out: softmax(0, 1, 0) = (1, e, 1) / (e + 2).
  np.testing.assert_allclose(
      soft_targets(contrastive_logits(a_hat, keys, queue, 1.0), 0.5)[0, :3],
      [0.5 + 0.5 / (e + 2), 0.5 * e / (e + 2), 0.5 / (e + 2)], rtol=1e-6)


def test_alpha_zero_is_infonce_over_batch_and_queue():
  a, b, a_hat, b_hat = (_embeddings(i, 4, 6) for i in range(4))
  queue_a, queue_b = _full_queue(4, 5, 6), _full_queue(5, 5, 6)
  got = both_ways(a, b, a_hat, b_hat, queue_a, queue_b, alpha=0.0, temperature=0.1)
  labels = jnp.arange(4)

  def infonce(query, keys, queue):
    logits = query @ jnp.concatenate([keys, queue.embeddings]).T / 0.1
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  want = 0.5 * (infonce(a, b_hat, queue_b) + infonce(b, a_hat, queue_a))
  assert float(got) == pytest.approx(float(want), rel=1e-5)


def test_queue_entries_enter_the_denominator_and_unwritten_slots_do_not():
  a, a_hat, keys = (_embeddings(i, 4, 6) for i in range(3))
  empty = queue_init(5, 6)
  half = queue_push(empty, _embeddings(7, 2, 6))
  batch_only = one_way(a, a_hat, keys, empty, alpha=0.3, temperature=0.2)
  with_two = one_way(a, a_hat, keys, half, alpha=0.3, temperature=0.2)
  trimmed = queue_push(queue_init(2, 6), half.embeddings[:2])
  assert float(with_two) == pytest.approx(
      float(one_way(a, a_hat, keys, trimmed, 0.3, 0.2)), rel=1e-6)
  assert float(with_two) > float(batch_only)  # more negatives, larger denominators
  # By hand at alpha 0: -log(exp s_ii / (sum_j exp s_ij + sum_queue exp s_iu)).
  s = np.asarray(a @ keys.T / 0.2)
  u = np.asarray(a @ half.embeddings[:2].T / 0.2)
  denominator = np.exp(s).sum(1) + np.exp(u).sum(1)
  want = -np.mean(np.diag(s) - np.log(denominator))
  assert float(one_way(a, a_hat, keys, half, 0.0, 0.2)) == pytest.approx(
      want, rel=1e-5)
  logits = contrastive_logits(a, keys, half, 0.2)
  assert logits.shape == (4, 9) and bool((logits[:, 6:] == MASKED_LOGIT).all())
  assert np.isfinite(np.asarray(jax.jit(jax.grad(
      lambda x: one_way_contrastive_loss(x, a_hat, keys, half, 0.4, 0.2)))(a))).all()


def test_alpha_one_targets_are_the_momentum_softmax():
  a, a_hat, keys = (_embeddings(i, 4, 6) for i in range(3))
  queue = _full_queue(3, 5, 6)
  targets = soft_targets(contrastive_logits(a_hat, keys, queue, 0.5), 1.0)
  np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-6)
  logits = contrastive_logits(a, keys, queue, 0.5)
  want = optax.softmax_cross_entropy(logits, targets).mean()
  got = one_way(a, a_hat, keys, queue, alpha=1.0, temperature=0.5)
  assert float(got) == pytest.approx(float(want), rel=1e-6)
  # When the student equals the momentum model, alpha = 1 is the targets' entropy: its minimum.
  same = one_way(a_hat, a_hat, keys, queue, alpha=1.0, temperature=0.5)
  entropy = -jnp.sum(targets * jnp.log(targets), axis=1).mean()
  assert float(same) == pytest.approx(float(entropy), rel=1e-5)


def test_gradient_reaches_the_students_only():
  # Linear encoders x W; the momentum encoders' weights and the queues get no gradient.
  x_a, x_b = _embeddings(0, 6, 4), _embeddings(1, 6, 4)
  weights = [jnp.asarray(np.random.default_rng(s).normal(size=(4, 3)), jnp.float32)
             for s in range(4)]
  queues = (_full_queue(4, 5, 3), _full_queue(5, 5, 3))

  def loss(student_a, student_b, momentum_a, momentum_b, stored_a, stored_b):
    return momentum_contrastive_loss(
        _unit(x_a @ student_a), _unit(x_b @ student_b), _unit(x_a @ momentum_a),
        _unit(x_b @ momentum_b), queues[0]._replace(embeddings=stored_a),
        queues[1]._replace(embeddings=stored_b), alpha=0.4, temperature=0.1)

  grads = jax.jit(jax.grad(loss, argnums=tuple(range(6))))(
      *weights, queues[0].embeddings, queues[1].embeddings)
  assert all(float(jnp.abs(g).max()) > 0 for g in grads[:2])
  assert all(float(jnp.abs(g).max()) == 0 for g in grads[2:])


def test_jit_with_traced_alpha_and_temperature():
  a, b, a_hat, b_hat = (_embeddings(i, 4, 6) for i in range(4))
  queues = (_full_queue(4, 5, 6), _full_queue(5, 5, 6))
  loss = jax.jit(momentum_contrastive_loss)
  got = loss(a, b, a_hat, b_hat, *queues, jnp.float32(0.4), jnp.float32(0.1))
  want = momentum_contrastive_loss(a, b, a_hat, b_hat, *queues, 0.4, 0.1)
  assert float(got) == pytest.approx(float(want), rel=1e-6)


@pytest.mark.parametrize("call, message", [
    (lambda x, q: contrastive_logits(x[0], x, q, 0.1), r"query_BxD must have shape \[B, D\]"),
    (lambda x, q: contrastive_logits(x, x[:2], q, 0.1), "keys_BxD must have the shape"),
    (lambda x, q: contrastive_logits(x, x, queue_init(2, 5), 0.1), r"queue.embeddings .*\[Q, 4\]"),
    (lambda x, q: contrastive_logits(x, x, q, 0.0), "temperature must be > 0"),
    (lambda x, q: soft_targets(x[:, :2], 0.4), "K >= B"),
    (lambda x, q: soft_targets(x, 1.5), r"alpha must be in \[0, 1\]"),
    (lambda x, q: one_way_contrastive_loss(x, x[:2], x, q), "momentum_query_BxD must have"),
    (lambda x, q: momentum_contrastive_loss(x, x, x[:, :2], x, q, q), "momentum_a_BxD must"),
])
def test_bad_input_names_the_argument(call, message):
  with pytest.raises(ValueError, match=message):
    call(_embeddings(0, 3, 4), queue_init(2, 4))

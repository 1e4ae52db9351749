r"""ALBEF's image-text contrastive loss with a momentum encoder, a queue and momentum distillation.

Two views ``a`` and ``b`` of each of ``B`` pairs are embedded by a student encoder per view
(:math:`a_i, b_i`) and by its EMA copy, the momentum encoder (:math:`\hat a_i, \hat b_i`, from
:func:`momentum_jax.optim.ema_update`). Past momentum embeddings wait in one
:class:`~momentum_jax.optim.teachers.MomentumQueue` per view (MoCo) and serve as extra
negatives. For the direction a→b the keys are the batch's momentum embeddings followed by the
queue, :math:`k = [\hat b_1, \dots, \hat b_B, u_1, \dots, u_Q]`, and

.. math::

  s_{ij} = a_i^\top k_j / \tau, \qquad \hat s_{ij} = \hat a_i^\top k_j / \tau, \qquad
  y_{ij} = \alpha\, \mathrm{softmax}_j(\hat s_{i\cdot}) + (1 - \alpha)\,[j = i], \\
  \mathcal{L}_{a \to b} = -\frac{1}{B} \sum_i \sum_j y_{ij} \log \mathrm{softmax}_j(s_{i\cdot})

(ALBEF, Sec. 3.2-3.3: the ITC loss with the momentum model's similarities as soft targets).
With :math:`\alpha = 0` it is MoCo's InfoNCE over the batch and the queue. The full loss is
:math:`(\mathcal{L}_{a \to b} + \mathcal{L}_{b \to a}) / 2`. Keys, queues and the momentum
embeddings are constants of the loss (stop-gradient): only the student is trained by it; the
caller then pushes :math:`\hat a, \hat b` into the queues
(:func:`~momentum_jax.optim.teachers.queue_push`). Queue slots not yet written are left out of
every softmax (ALBEF starts from a queue of random unit vectors instead).

Embeddings are used as given: ALBEF L2-normalises them (cosine similarity, :math:`\tau = 0.07`),
which the caller does. The soft-target cross-entropy is
:func:`momentum_jax.train.loss.momentum_distillation_loss` over the ``[B, B + Q]`` similarities.

References:
  Li et al., "Align before Fuse: Vision and Language Representation Learning with Momentum
  Distillation" (ALBEF), https://arxiv.org/abs/2107.07651
  He et al., "Momentum Contrast for Unsupervised Visual Representation Learning" (MoCo),
  https://arxiv.org/abs/1911.05722
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from momentum_jax.optim.checks import check, check_unit_interval
from momentum_jax.optim.teachers import MomentumQueue, queue_valid_mask
from momentum_jax.train.loss import momentum_distillation_loss

#: The similarity given to queue slots not yet written: ``exp`` of it is exactly 0 in float32,
#: so such a slot adds nothing to a softmax, and (unlike ``-inf``) 0 · it is 0.
MASKED_LOGIT = -1e30


def _check_embeddings(name: str, x_BxD: jax.Array) -> None:
  if x_BxD.ndim != 2 or x_BxD.shape[0] < 1:
    raise ValueError(f"{name} must have shape [B, D] with B >= 1, got {name}.shape={x_BxD.shape}")


def contrastive_logits(
    query_BxD: jax.Array, keys_BxD: jax.Array, queue: MomentumQueue,
    temperature: float | jax.Array) -> jax.Array:
  r"""Similarities of each query to the batch's keys and the queue, ``[B, B + Q]`` float32.

  .. math::

    s_{ij} = q_i^\top k_j / \tau, \quad k = [\mathrm{sg}(\text{keys}); \mathrm{sg}(\text{queue})]

  Column ``i < B`` is key ``i`` (the positive of query ``i``), column ``B + s`` is queue slot
  ``s``; slots not yet written hold :data:`MASKED_LOGIT`. Keys and queue are stop-gradiented.

  Args:
    query_BxD: ``[B, D]`` query embeddings (student or momentum encoder).
    keys_BxD: ``[B, D]`` momentum embeddings of the other view, row ``i`` paired with query ``i``.
    queue: the other view's queue of past momentum embeddings, ``[Q, D]``.
    temperature: :math:`\tau > 0`.

  Returns:
    ``[B, B + Q]`` float32 logits.

  Example:
    >>> import jax.numpy as jnp
    >>> from momentum_jax.optim.teachers import queue_init, queue_push
    >>> queue = queue_push(queue_init(2, 2), jnp.array([[1.0, 0.0]]))  # slot 1 not yet written
    >>> logits = contrastive_logits(jnp.eye(2), jnp.eye(2), queue, 0.5)
    >>> logits[:, :3].tolist(), bool((logits[:, 3] == MASKED_LOGIT).all())
    ([[2.0, 0.0, 2.0], [0.0, 2.0, 0.0]], True)
  """
  _check_embeddings("query_BxD", query_BxD)
  if keys_BxD.shape != query_BxD.shape:
    raise ValueError(
        f"keys_BxD must have the shape of query_BxD {query_BxD.shape}, got {keys_BxD.shape=}")
  if queue.embeddings.ndim != 2 or queue.embeddings.shape[1] != query_BxD.shape[1]:
    raise ValueError(
        f"queue.embeddings must have shape [Q, {query_BxD.shape[1]}] to match query_BxD, got "
        f"queue.embeddings.shape={queue.embeddings.shape}")
  check("temperature", temperature, lambda v: v > 0.0, "> 0")
  keys_KxD = jax.lax.stop_gradient(jnp.concatenate(
      [keys_BxD.astype(jnp.float32), queue.embeddings.astype(jnp.float32)], axis=0))
  logits_BxK = query_BxD.astype(jnp.float32) @ keys_KxD.T / jnp.asarray(temperature, jnp.float32)
  valid_K = jnp.concatenate([jnp.ones(query_BxD.shape[0], bool), queue_valid_mask(queue)])
  return jnp.where(valid_K[None, :], logits_BxK, MASKED_LOGIT)


def soft_targets(momentum_logits_BxK: jax.Array, alpha: float | jax.Array) -> jax.Array:
  r"""ALBEF's targets :math:`y = \alpha\,\mathrm{softmax}(\mathrm{sg}(\hat s)) + (1 - \alpha)\,I`,
  ``[B, K]`` float32, where :math:`I` is one at ``(i, i)`` (the positives).

  Args:
    momentum_logits_BxK: ``[B, K]`` momentum similarities :math:`\hat s` (``K >= B``), as
      :func:`contrastive_logits` gives them.
    alpha: :math:`\alpha \in [0, 1]`.

  Example:
    >>> import jax.numpy as jnp
    >>> soft_targets(jnp.zeros((1, 2)), 0.5).tolist()
    [[0.75, 0.25]]
  """
  check_unit_interval("alpha", alpha)
  if momentum_logits_BxK.ndim != 2 or momentum_logits_BxK.shape[1] < momentum_logits_BxK.shape[0]:
    raise ValueError("momentum_logits_BxK must have shape [B, K] with K >= B, got "
                     f"momentum_logits_BxK.shape={momentum_logits_BxK.shape}")
  batch, width = momentum_logits_BxK.shape
  q_BxK = jax.nn.softmax(jax.lax.stop_gradient(momentum_logits_BxK).astype(jnp.float32), axis=-1)
  alpha = jnp.asarray(alpha, jnp.float32)
  return alpha * q_BxK + (1.0 - alpha) * jnp.eye(batch, width, dtype=jnp.float32)


def one_way_contrastive_loss(
    query_BxD: jax.Array, momentum_query_BxD: jax.Array, momentum_keys_BxD: jax.Array,
    queue: MomentumQueue, alpha: float | jax.Array = 0.4,
    temperature: float | jax.Array = 0.07) -> jax.Array:
  r"""One direction of the loss, :math:`\mathcal{L}_{a \to b}` of the module docstring.

  .. math::

    \mathcal{L} = -\frac{1}{B} \sum_i \sum_j y_{ij} \log \mathrm{softmax}_j(s_{i\cdot})

  with :math:`s` = ``contrastive_logits(query, momentum_keys, queue)``, :math:`y` =
  ``soft_targets(contrastive_logits(momentum_query, momentum_keys, queue), alpha)``.

  Args:
    query_BxD: ``[B, D]`` student embeddings of view a (the only input that gets a gradient).
    momentum_query_BxD: ``[B, D]`` momentum embeddings of view a.
    momentum_keys_BxD: ``[B, D]`` momentum embeddings of view b, row ``i`` paired with row ``i``.
    queue: view b's queue of past momentum embeddings.
    alpha: weight :math:`\alpha \in [0, 1]` of the momentum model's soft targets (ALBEF: 0.4;
      0 is InfoNCE with the batch and the queue as negatives).
    temperature: :math:`\tau > 0` (ALBEF: 0.07, learned there).

  Returns:
    The float32 scalar loss.
  """
  if momentum_query_BxD.shape != query_BxD.shape:
    raise ValueError(f"momentum_query_BxD must have the shape of query_BxD {query_BxD.shape}, "
                     f"got {momentum_query_BxD.shape=}")
  logits_BxK = contrastive_logits(query_BxD, momentum_keys_BxD, queue, temperature)
  momentum_logits_BxK = contrastive_logits(
      jax.lax.stop_gradient(momentum_query_BxD), momentum_keys_BxD, queue, temperature)
  labels_B = jnp.arange(query_BxD.shape[0])
  return momentum_distillation_loss(logits_BxK, momentum_logits_BxK, labels_B, alpha)


def momentum_contrastive_loss(
    a_BxD: jax.Array, b_BxD: jax.Array, momentum_a_BxD: jax.Array, momentum_b_BxD: jax.Array,
    queue_a: MomentumQueue, queue_b: MomentumQueue, alpha: float | jax.Array = 0.4,
    temperature: float | jax.Array = 0.07) -> jax.Array:
  r"""ALBEF's symmetric contrastive loss :math:`(\mathcal{L}_{a \to b} + \mathcal{L}_{b \to a})/2`
  with momentum distillation (see the module docstring).

  Args:
    a_BxD, b_BxD: ``[B, D]`` student embeddings of the two views, row ``i`` a pair.
    momentum_a_BxD, momentum_b_BxD: ``[B, D]`` momentum-encoder embeddings of the same pairs.
    queue_a, queue_b: queues of past momentum embeddings of view a and of view b.
    alpha: weight :math:`\alpha \in [0, 1]` of the soft targets; 0 gives MoCo-style InfoNCE.
    temperature: :math:`\tau > 0`.

  Returns:
    The float32 scalar loss. The caller then pushes ``momentum_a_BxD`` into ``queue_a`` and
    ``momentum_b_BxD`` into ``queue_b``.

  Example:
    >>> import jax.numpy as jnp
    >>> from momentum_jax.optim.teachers import queue_init
    >>> x = jnp.eye(2)
    >>> loss = momentum_contrastive_loss(x, x, x, x, queue_init(2, 2), queue_init(2, 2), 0.0, 1.0)
    >>> round(float(loss), 4)  # -log(e / (e + 1))
    0.3133
  """
  _check_embeddings("a_BxD", a_BxD)
  for name, x in (("b_BxD", b_BxD), ("momentum_a_BxD", momentum_a_BxD),
                  ("momentum_b_BxD", momentum_b_BxD)):
    if x.shape != a_BxD.shape:
      raise ValueError(f"{name} must have the shape of a_BxD {a_BxD.shape}, got {x.shape}")
  a_to_b = one_way_contrastive_loss(a_BxD, momentum_a_BxD, momentum_b_BxD, queue_b, alpha,
                                    temperature)
  b_to_a = one_way_contrastive_loss(b_BxD, momentum_b_BxD, momentum_a_BxD, queue_a, alpha,
                                    temperature)
  return 0.5 * (a_to_b + b_to_a)

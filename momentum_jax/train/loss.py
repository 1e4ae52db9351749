"""Training losses: masked next-token cross-entropy and accuracy, and momentum distillation.

The masked metrics count only positions with ``loss_mask = 1``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


def _check_scalar(name: str, value: Any, ok: Callable[[float], bool], requirement: str) -> None:
  """Raises ``ValueError`` naming ``name`` when a concrete ``value`` fails ``ok``."""
  if not isinstance(value, jax.core.Tracer) and not ok(float(value)):
    raise ValueError(f"{name} must be {requirement}, got {name}={value!r}")


def momentum_distillation_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    labels: jax.Array,
    alpha: float | jax.Array = 0.4,
    temperature: float | jax.Array = 1.0,
    mask: jax.Array | None = None,
) -> jax.Array:
  r"""ALBEF momentum distillation: hard-label CE mixed with CE against the teacher's soft targets.

  .. math::

    q = \mathrm{softmax}(\mathrm{sg}(z^{T}) / \tau), \qquad p = \mathrm{softmax}(z^{S}), \\
    \mathcal{L} = \frac{1}{\sum_i w_i} \sum_i w_i \Big[ -(1-\alpha) \log p_{i, y_i}
                  - \alpha \sum_c q_{i,c} \log p_{i,c} \Big]

  with :math:`\mathrm{sg}` the stop-gradient and :math:`w` the mask (all ones by default). The
  soft term is a cross-entropy, as in ALBEF's code; it differs from
  :math:`\mathrm{KL}(q \| p)` by the teacher entropy, a constant for the student, so gradients
  agree. The temperature sharpens or smooths only the teacher (ALBEF itself uses
  :math:`\tau = 1`); Hinton-style distillation would also divide the student logits by
  :math:`\tau` and scale by :math:`\tau^2`. A mask with no selected entry gives 0.

  Args:
    student_logits: ``[..., C]`` student logits :math:`z^{S}`.
    teacher_logits: ``[..., C]`` teacher (momentum model) logits :math:`z^{T}`.
    labels: ``[...]`` integer class labels :math:`y`.
    alpha: weight :math:`\alpha \in [0, 1]` of the soft targets (ALBEF uses 0.4).
    temperature: :math:`\tau > 0` applied to the teacher logits.
    mask: optional ``[...]`` boolean or float weights of the positions averaged over.

  Returns:
    The float32 scalar loss.

  Example:
    >>> import jax.numpy as jnp
    >>> z = jnp.array([[2.0, 0.0, -1.0]])
    >>> loss = momentum_distillation_loss(z, z, jnp.array([0]), alpha=0.0)
    >>> round(float(loss), 4)  # plain cross-entropy at alpha = 0
    0.1698

  References:
    Li et al., "Align before Fuse: Vision and Language Representation Learning with Momentum
    Distillation" (ALBEF), https://arxiv.org/abs/2107.07651, Sec. 3.3.
  """
  _check_scalar("alpha", alpha, lambda v: 0.0 <= v <= 1.0, "in [0, 1]")
  _check_scalar("temperature", temperature, lambda v: v > 0.0, "> 0")
  if student_logits.ndim < 1 or student_logits.shape != teacher_logits.shape:
    raise ValueError(
        "student_logits and teacher_logits must have the same shape [..., C], got "
        f"{student_logits.shape=} and {teacher_logits.shape=}")
  if labels.shape != student_logits.shape[:-1]:
    raise ValueError(
        f"labels must have shape student_logits.shape[:-1]={student_logits.shape[:-1]}, got "
        f"{labels.shape=}")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"labels must have an integer dtype, got {labels.dtype=}")
  if mask is not None and mask.shape != labels.shape:
    raise ValueError(f"mask must have the shape of labels {labels.shape}, got {mask.shape=}")

  log_p = jax.nn.log_softmax(student_logits.astype(jnp.float32), axis=-1)
  teacher = jax.lax.stop_gradient(teacher_logits).astype(jnp.float32)
  q = jax.nn.softmax(teacher / jnp.asarray(temperature, jnp.float32), axis=-1)
  hard = -jnp.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]
  soft = -jnp.sum(q * log_p, axis=-1)
  alpha = jnp.asarray(alpha, jnp.float32)
  per_position = (1.0 - alpha) * hard + alpha * soft
  weights = jnp.ones_like(per_position) if mask is None else mask.astype(jnp.float32)
  return jnp.sum(weights * per_position) / jnp.maximum(jnp.sum(weights), 1.0)

r"""Momentum (EMA) teachers: parameter EMA, momentum distillation and a momentum queue.

Small functional pieces, all usable under ``jax.jit``:

* :func:`ema_update` and :func:`ema_momentum_schedule`: the teacher is an exponential moving
  average of the student, :math:`\theta^{T}_t = m_t \theta^{T}_{t-1} + (1 - m_t)\theta^{S}_t`,
  with the BYOL/DINO cosine schedule for :math:`m_t`; :func:`ema_update_model` does the same for
  the ``nnx.Param`` state of Flax NNX modules.
* :func:`momentum_distillation_loss`: ALBEF's mix of hard labels and the teacher's soft targets.
* :class:`MomentumQueue`: MoCo's fixed-size FIFO of teacher embeddings used as negatives.

Validation runs on concrete (Python or NumPy) values only, so traced values pass through.

References:
  Grill et al., "Bootstrap Your Own Latent" (BYOL), https://arxiv.org/abs/2006.07733
  Caron et al., "Emerging Properties in Self-Supervised Vision Transformers" (DINO),
  https://arxiv.org/abs/2104.14294
  Li et al., "Align before Fuse: Vision and Language Representation Learning with Momentum
  Distillation" (ALBEF), https://arxiv.org/abs/2107.07651
  He et al., "Momentum Contrast for Unsupervised Visual Representation Learning" (MoCo),
  https://arxiv.org/abs/1911.05722
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


def _concrete_float(value: Any) -> float | None:
  """The value as a float when it is known at trace time, else None."""
  if isinstance(value, jax.core.Tracer):
    return None
  return float(value)


def _check_unit_interval(name: str, value: Any) -> None:
  v = _concrete_float(value)
  if v is not None and not 0.0 <= v <= 1.0:
    raise ValueError(f"{name} must lie in [0, 1], got {name}={v}")


def ema_update(teacher_params: Any, student_params: Any, momentum: float | jax.Array) -> Any:
  r"""One EMA step of the teacher towards the student.

  .. math::

    \theta^{T} \leftarrow m\,\theta^{T} + (1 - m)\,\theta^{S}

  computed in float32 (or wider) and cast back to each teacher leaf's dtype.

  Args:
    teacher_params: the teacher pytree :math:`\theta^{T}`.
    student_params: the student pytree :math:`\theta^{S}`, same structure and shapes.
    momentum: :math:`m \in [0, 1]`, a scalar (may be traced, e.g. from a schedule).

  Returns:
    The new teacher pytree, with the teacher's dtypes.

  Example:
    >>> import jax.numpy as jnp
    >>> ema_update({"w": jnp.array([1.0])}, {"w": jnp.array([3.0])}, 0.75)["w"]
    Array([1.5], dtype=float32)

  References:
    Grill et al. (BYOL), https://arxiv.org/abs/2006.07733
  """
  _check_unit_interval("momentum", momentum)
  teacher_def = jax.tree.structure(teacher_params)
  student_def = jax.tree.structure(student_params)
  if teacher_def != student_def:
    raise ValueError(
        "teacher_params and student_params must have the same tree structure, got "
        f"teacher_params={teacher_def} and student_params={student_def}")
  for t, s in zip(jax.tree.leaves(teacher_params), jax.tree.leaves(student_params)):
    if jnp.shape(t) != jnp.shape(s):
      raise ValueError(
          "teacher_params and student_params leaves must have the same shapes, got "
          f"teacher shape {jnp.shape(t)} and student shape {jnp.shape(s)}")
  m = jnp.asarray(momentum, jnp.float32)

  def leaf(t, s):
    dtype = jnp.promote_types(t.dtype, jnp.float32)
    new = m.astype(dtype) * t.astype(dtype) + (1 - m.astype(dtype)) * s.astype(dtype)
    return new.astype(t.dtype)

  return jax.tree.map(leaf, teacher_params, student_params)


def ema_momentum_schedule(
    base: float = 0.996, final: float = 1.0, *, total_steps: int
) -> optax.Schedule:
  r"""Cosine schedule of the EMA momentum from ``base`` to ``final``, as in BYOL and DINO.

  .. math::

    m_k = m_{\text{final}} - (m_{\text{final}} - m_{\text{base}})
          \frac{1 + \cos(\pi \min(k, K) / K)}{2}

  so :math:`m_0 = m_{\text{base}}` and :math:`m_k = m_{\text{final}}` for :math:`k \ge K`.

  Args:
    base: momentum at step 0, in [0, 1].
    final: momentum at and after ``total_steps``, in [0, 1].
    total_steps: :math:`K \ge 1`, the length of the cosine.

  Returns:
    An optax-style schedule ``step -> momentum`` (float32).

  Example:
    >>> schedule = ema_momentum_schedule(0.996, 1.0, total_steps=100)
    >>> round(float(schedule(0)), 6), float(schedule(100))
    (0.996, 1.0)

  References:
    Grill et al. (BYOL), https://arxiv.org/abs/2006.07733, Sec. 3.2.
    Caron et al. (DINO), https://arxiv.org/abs/2104.14294, Sec. 3.1.
  """
  _check_unit_interval("base", base)
  _check_unit_interval("final", final)
  if int(total_steps) != total_steps or total_steps < 1:
    raise ValueError(f"total_steps must be an integer >= 1, got {total_steps=}")

  def schedule(count: jax.Array | int) -> jax.Array:
    progress = jnp.clip(jnp.asarray(count, jnp.float32) / total_steps, 0.0, 1.0)
    return final - (final - base) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))

  return schedule


def ema_update_model(teacher: Any, student: Any, momentum: float | jax.Array) -> None:
  r"""EMA step of a Flax NNX teacher module's ``nnx.Param`` state towards a student's, in place.

  .. math::

    \theta^{T} \leftarrow m\,\theta^{T} + (1 - m)\,\theta^{S} \quad \text{for every } \texttt{nnx.Param}

  Other variables (batch statistics, RNG state) are left alone. Works eagerly and inside
  ``nnx.jit``.

  Args:
    teacher: an ``nnx.Module``, updated in place.
    student: an ``nnx.Module`` with the same parameter structure.
    momentum: :math:`m \in [0, 1]`.

  Example:
    >>> from flax import nnx
    >>> student = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    >>> teacher = nnx.Linear(2, 2, rngs=nnx.Rngs(1))
    >>> ema_update_model(teacher, student, 0.0)
    >>> bool((teacher.kernel[...] == student.kernel[...]).all())
    True

  References:
    He et al. (MoCo), https://arxiv.org/abs/1911.05722
  """
  from flax import nnx  # Imported here: the rest of ``optim`` depends on jax and optax only.

  teacher_params = nnx.state(teacher, nnx.Param)
  student_params = nnx.state(student, nnx.Param)
  nnx.update(teacher, ema_update(teacher_params, student_params, momentum))


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
    Li et al. (ALBEF), https://arxiv.org/abs/2107.07651, Sec. 3.3.
  """
  _check_unit_interval("alpha", alpha)
  tau = _concrete_float(temperature)
  if tau is not None and not tau > 0.0:
    raise ValueError(f"temperature must be > 0, got temperature={tau}")
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


class MomentumQueue(NamedTuple):
  """A fixed-size FIFO of embeddings (MoCo's queue of negatives).

  Attributes:
    embeddings: ``[Q, D]`` stored embeddings; slots not yet written hold zeros.
    pointer: int32 scalar, the slot the next push writes first.
    filled: int32 scalar, how many slots hold real embeddings (saturates at ``Q``).
  """

  embeddings: jax.Array
  pointer: jax.Array
  filled: jax.Array


def queue_init(size: int, dim: int, dtype: jnp.dtype = jnp.float32) -> MomentumQueue:
  """An empty queue of ``size`` slots of ``dim``-dimensional embeddings.

  Args:
    size: number of slots ``Q >= 1``.
    dim: embedding width ``D >= 1``.
    dtype: storage dtype; pushed embeddings are cast to it.

  Returns:
    A :class:`MomentumQueue` with zero embeddings and nothing filled.

  Example:
    >>> queue = queue_init(4, 2)
    >>> queue.embeddings.shape, int(queue.filled)
    ((4, 2), 0)
  """
  if int(size) != size or size < 1:
    raise ValueError(f"size must be an integer >= 1, got {size=}")
  if int(dim) != dim or dim < 1:
    raise ValueError(f"dim must be an integer >= 1, got {dim=}")
  return MomentumQueue(
      embeddings=jnp.zeros((size, dim), dtype),
      pointer=jnp.zeros((), jnp.int32),
      filled=jnp.zeros((), jnp.int32),
  )


def queue_push(queue: MomentumQueue, batch_BxD: jax.Array) -> MomentumQueue:
  """Enqueues a batch, overwriting the oldest slots (wrap-around); shapes are static under jit.

  Row ``b`` of the batch goes to slot ``(pointer + b) % Q``; the pointer then advances by ``B``.
  Unlike MoCo, ``Q`` need not be a multiple of ``B``.

  Args:
    queue: the queue.
    batch_BxD: ``[B, D]`` embeddings (typically the teacher's keys, already stop-gradiented),
      with ``1 <= B <= Q``.

  Returns:
    The updated queue.

  Example:
    >>> import jax.numpy as jnp
    >>> queue = queue_push(queue_init(3, 1), jnp.array([[1.0], [2.0]]))
    >>> queue = queue_push(queue, jnp.array([[3.0], [4.0]]))
    >>> queue.embeddings[:, 0].tolist(), int(queue.pointer), int(queue.filled)
    ([4.0, 2.0, 3.0], 1, 3)

  References:
    He et al. (MoCo), https://arxiv.org/abs/1911.05722, Algorithm 1.
  """
  size, dim = queue.embeddings.shape
  if batch_BxD.ndim != 2 or batch_BxD.shape[1] != dim:
    raise ValueError(
        f"batch_BxD must have shape [B, {dim}] to match queue.embeddings.shape="
        f"{queue.embeddings.shape}, got {batch_BxD.shape=}")
  batch = batch_BxD.shape[0]
  if not 1 <= batch <= size:
    raise ValueError(
        f"batch_BxD must hold between 1 and the queue size {size} rows, got {batch_BxD.shape=}")
  slots = (queue.pointer + jnp.arange(batch, dtype=jnp.int32)) % size
  return MomentumQueue(
      embeddings=queue.embeddings.at[slots].set(batch_BxD.astype(queue.embeddings.dtype)),
      pointer=(queue.pointer + batch) % size,
      filled=jnp.minimum(queue.filled + batch, size),
  )


def queue_valid_mask(queue: MomentumQueue) -> jax.Array:
  """``[Q]`` boolean mask of the slots that hold pushed embeddings.

  Slots fill in order from 0, so before the first wrap these are the first ``filled`` slots and
  afterwards all of them.

  Example:
    >>> import jax.numpy as jnp
    >>> queue_valid_mask(queue_push(queue_init(3, 1), jnp.ones((2, 1)))).tolist()
    [True, True, False]
  """
  return jnp.arange(queue.embeddings.shape[0]) < queue.filled

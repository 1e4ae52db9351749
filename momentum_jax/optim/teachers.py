r"""Momentum (EMA) teachers: parameter EMA and a momentum queue.

Small functional pieces, all usable under ``jax.jit``:

* :func:`ema_update` and :func:`ema_momentum_schedule`: the teacher is an exponential moving
  average of the student, :math:`\theta^{T}_t = m_t \theta^{T}_{t-1} + (1 - m_t)\theta^{S}_t`,
  with the BYOL/DINO cosine schedule for :math:`m_t` (``momentum_jax.nn.ema_update_model``
  applies the EMA to the parameters of Flax NNX modules).
* :class:`MomentumQueue`: MoCo's fixed-size FIFO of teacher embeddings used as negatives.

(ALBEF's contrastive loss with a momentum encoder, these queues and momentum distillation is
``momentum_jax.train.momentum_contrastive_loss``; its soft-target cross-entropy is
``momentum_jax.train.momentum_distillation_loss``.)

Validation runs on concrete (Python or NumPy) values only, so traced values pass through.

References:
  Grill et al., "Bootstrap Your Own Latent" (BYOL), https://arxiv.org/abs/2006.07733
  Caron et al., "Emerging Properties in Self-Supervised Vision Transformers" (DINO),
  https://arxiv.org/abs/2104.14294
  He et al., "Momentum Contrast for Unsupervised Visual Representation Learning" (MoCo),
  https://arxiv.org/abs/1911.05722
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from momentum_jax.optim.checks import check_count, check_unit_interval


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
  check_unit_interval("momentum", momentum)
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
  check_unit_interval("base", base)
  check_unit_interval("final", final)
  check_count("total_steps", total_steps, 1)

  def schedule(count: jax.Array | int) -> jax.Array:
    progress = jnp.clip(jnp.asarray(count, jnp.float32) / total_steps, 0.0, 1.0)
    return final - (final - base) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))

  return schedule


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
  check_count("size", size, 1)
  check_count("dim", dim, 1)
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

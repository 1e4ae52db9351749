r"""EMA (momentum) teachers of Flax NNX modules: the parameter EMA applied to a module in place."""

from __future__ import annotations

import jax
from flax import nnx

from momentum_jax.optim import ema_update


def ema_update_model(teacher: nnx.Module, student: nnx.Module, momentum: float | jax.Array) -> None:
  r"""EMA step of a Flax NNX teacher module's ``nnx.Param`` state towards a student's, in place.

  .. math::

    \theta^{T} \leftarrow m\,\theta^{T} + (1 - m)\,\theta^{S}
    \quad \text{for every } \texttt{nnx.Param}

  computed by :func:`momentum_jax.optim.ema_update`. Other variables (batch statistics, RNG
  state) are left alone. Works eagerly and inside ``nnx.jit``.

  Args:
    teacher: an ``nnx.Module``, updated in place.
    student: an ``nnx.Module`` with the same parameter structure.
    momentum: :math:`m \in [0, 1]`.

  Raises:
    ValueError: a concrete ``momentum`` outside [0, 1], or parameters of different structure or
      shapes.

  Example:
    >>> from flax import nnx
    >>> student = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    >>> teacher = nnx.Linear(2, 2, rngs=nnx.Rngs(1))
    >>> ema_update_model(teacher, student, 0.0)
    >>> bool((teacher.kernel[...] == student.kernel[...]).all())
    True

  References:
    He et al., "Momentum Contrast for Unsupervised Visual Representation Learning" (MoCo),
    https://arxiv.org/abs/1911.05722
  """
  teacher_params = nnx.state(teacher, nnx.Param)
  student_params = nnx.state(student, nnx.Param)
  nnx.update(teacher, ema_update(teacher_params, student_params, momentum))

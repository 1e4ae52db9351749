r"""Artificial gradient spikes, for studying how optimizers survive them.

Huang et al. (SPAM, ICLR 2025) trace loss spikes in LLM training to rare gradients hundreds or
thousands of times larger than usual, which poison Adam's moments for many steps afterwards.
:func:`inject_gradient_spikes` reproduces that failure on demand: placed first in an optimizer
chain, it multiplies the whole incoming gradient by a large factor at chosen steps, so that any
optimizer (clipped, spike-aware or not) can be run through the same spikes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from momentum_jax.optim.checks import check_finite, fail


class InjectGradientSpikesState(NamedTuple):
  """State of :func:`inject_gradient_spikes`.

  Attributes:
    count: number of updates taken so far (the 1-indexed step of the next update minus one).
  """
  count: jax.Array


def inject_gradient_spikes(
    steps: Sequence[int], factor: float = 1000.0
) -> optax.GradientTransformation:
  r"""Multiply the gradient by ``factor`` at the given 1-indexed steps.

  With :math:`k` the 1-indexed step (the :math:`k`-th call of ``update``) and :math:`S` the set
  of spike steps,

  .. math::
    g_k \leftarrow \begin{cases} c \, g_k & k \in S \\ g_k & \text{otherwise,} \end{cases}

  applied to every leaf at once (a global spike, as in the SPAM paper's simulation of loss
  spikes). The step is the traced count in the state, so one compilation serves every step and
  a resumed run spikes at the same steps as an uninterrupted one. Put it first in the chain, so
  that clipping and the optimizer see the spiked gradient:
  ``optax.chain(inject_gradient_spikes(S, c), optax.clip_by_global_norm(1.0), optax.adamw(...))``.

  Args:
    steps: the 1-indexed steps :math:`S` to spike (duplicates are ignored; empty: identity).
    factor: the multiplier :math:`c`, a finite float.

  Returns:
    An ``optax.GradientTransformation`` whose state counts the updates.

  Raises:
    ValueError: a step is not an int >= 1, or ``factor`` is not finite.

  Example:
    >>> import jax.numpy as jnp
    >>> tx = inject_gradient_spikes([2], factor=1000.0)
    >>> state = tx.init({"w": jnp.ones(2)})
    >>> for _ in range(3):
    ...   g, state = tx.update({"w": jnp.ones(2)}, state)
    ...   print(g["w"].tolist())
    [1.0, 1.0]
    [1000.0, 1000.0]
    [1.0, 1.0]

  References:
    Huang et al., "SPAM: Spike-Aware Adam with Momentum Reset for Stable LLM Training", ICLR 2025,
    arXiv:2501.06842 (gradient spikes and their effect on Adam's moments).
  """
  if any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in steps):
    fail("steps", steps, "ints >= 1 (1-indexed)")
  check_finite("factor", factor)
  spike_steps = tuple(sorted(set(steps)))

  def init_fn(params: optax.Params) -> InjectGradientSpikesState:
    del params
    return InjectGradientSpikesState(count=jnp.zeros([], jnp.int32))

  def update_fn(
      updates: optax.Updates, state: InjectGradientSpikesState, params: optax.Params | None = None
  ) -> tuple[optax.Updates, InjectGradientSpikesState]:
    del params
    step = optax.safe_increment(state.count)  # 1-indexed step of this update
    spike = jnp.any(step == jnp.asarray(spike_steps, jnp.int32)) if spike_steps else False
    scale = jnp.where(spike, jnp.float32(factor), jnp.float32(1.0))
    updates = jax.tree.map(lambda g: (g * scale).astype(g.dtype), updates)
    return updates, InjectGradientSpikesState(count=step)

  return optax.GradientTransformation(init_fn, update_fn)

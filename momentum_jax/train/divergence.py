"""Stopping a run whose loss or gradient norm is no longer finite.

A diverged run (a learning rate far too large, an overflow in low precision) gives NaN or ±inf
losses from some step on and, left alone, trains to its last step and saves NaN parameters. The
loop keeps each step's ``train_loss`` and ``grad_norm`` (of the raw gradient) as the jitted step
returns them, device scalars that nothing waits for, and ``DivergenceWatch.check`` stacks those of
every step since the last check on the device and fetches them in one transfer (a fetch per
scalar would cost about 9 µs each on a CPU). The loop checks when it fetches the metrics for
its log anyway and before every evaluation and checkpoint save, so the hot loop gains no
synchronisation and no state after a non-finite step is evaluated or saved: the newest checkpoint
stays the last good one, the point a rerun resumes from. (MaxText and Levanter stop the same way.)

Steps are numbered as in ``metrics.jsonl`` and the checkpoints: step k is the k-th update, and its
loss is that of its batch before the update.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp


class TrainingDivergedError(FloatingPointError):
  """Training stopped at a step whose loss or gradient norm (or the state after it) is not finite.

  Attributes:
    step: the first step found non-finite.
    last_finite_step: the last step of this run (since it started or resumed) whose loss and
      gradient norm were finite, or None.
    last_finite_loss: that step's loss, or None.
    newest_checkpoint: the step of the newest checkpoint, the one a rerun resumes from, or None.
  """

  def __init__(self, step: int, what: str, last_finite: tuple[int, float] | None,
               newest_checkpoint: int | None):
    last = ("no step of this run before it had a finite loss" if last_finite is None
            else f"the last finite loss was {last_finite[1]:.6g} at step {last_finite[0]}")
    saved = ("no checkpoint was saved" if newest_checkpoint is None
             else f"the newest checkpoint, step {newest_checkpoint}, is where a rerun resumes")
    super().__init__(
        f"training diverged at step {step}: {what}; {last}. Nothing from step {step} on was "
        f"saved: {saved} (lower learning_rate, add warmup_steps or set grad_clip_norm, and "
        "start over)")
    self.step = step
    self.last_finite_step, self.last_finite_loss = last_finite or (None, None)
    self.newest_checkpoint = newest_checkpoint


class DivergenceWatch:
  """The loss and gradient norm of each step since the last check, and the last finite loss."""

  def __init__(self) -> None:
    self._pending: list[tuple[int, jax.Array, jax.Array]] = []
    self._last_finite: tuple[int, float] | None = None

  def stepped(self, step: int, metrics: Mapping[str, jax.Array]) -> None:
    """Keeps step ``step``'s ``train_loss`` and ``grad_norm`` (device scalars, not fetched)."""
    self._pending.append((step, metrics["train_loss"], metrics["grad_norm"]))

  def check(self, newest_checkpoint: int | None) -> None:
    """Fetches the values kept since the last check, in one transfer.

    Raises:
      TrainingDivergedError: at the first of those steps whose loss or gradient norm is NaN or
        ±inf.
    """
    pending, self._pending = self._pending, []
    if not pending:
      return
    losses, norms = jax.device_get(_stacked([loss for _, loss, _ in pending],
                                            [norm for _, _, norm in pending]))
    for (step, _, _), loss, norm in zip(pending, losses.tolist(), norms.tolist()):
      if not (math.isfinite(loss) and math.isfinite(norm)):
        raise TrainingDivergedError(step, f"train_loss={loss}, grad_norm={norm}",
                                    self._last_finite, newest_checkpoint)
      self._last_finite = (step, loss)

  def diverged_state(self, step: int, cause: str,
                     newest_checkpoint: int | None) -> TrainingDivergedError:
    """The error for a state found non-finite after a step whose metrics were finite."""
    return TrainingDivergedError(step, f"the state after it holds NaN or ±inf ({cause})",
                                 self._last_finite, newest_checkpoint)


@jax.jit
def _stacked(losses: list[jax.Array], norms: list[jax.Array]) -> jax.Array:
  """``[2, n]``: the ``n`` losses over the ``n`` gradient norms (compiled once per ``n``)."""
  return jnp.stack([jnp.stack(losses), jnp.stack(norms)]).astype(jnp.float32)

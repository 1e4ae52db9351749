"""The checkpoint saves of a training run: one in flight at a time, and a failed save named.

Orbax writes a checkpoint in background threads. When one of them fails (a full disk, a folder
removed under the run), the failure surfaces at the next save or at the end of the run as several
hundred lines of logged and chained tracebacks. :class:`CheckpointWriter` first checks that the
folder's file system has room for the state's bytes (plus a margin for metadata) and refuses to
start a save that cannot fit, so the common case never starts writing (in a run of several
processes, each checks its own and all refuse when one lacks the room). It waits for the previous
save to finish before starting the next one (orbax waits there anyway, so no overlap with
training is lost), so a failure is known to belong to its step, and raises
:class:`CheckpointSaveError`, one line naming the step, the folder, the innermost cause (e.g.
``OSError: [Errno 28] No space left on device``) and the newest complete checkpoint. That
checkpoint is untouched: orbax writes a step into a temporary folder and renames it only when
every item is written, and the next manager over the folder removes a temporary folder left
behind, so a rerun resumes from the newest complete step.

While the writer is open, the error records orbax logs itself (``absl`` records from orbax's
modules) are held back from the log and kept, as text, on the raised error's ``details``.
"""

from __future__ import annotations

import logging
import os
import shutil
import types
from typing import Any

import jax
import orbax.checkpoint as ocp

from momentum_jax.train import checkpoint, distributed


class CheckpointSaveError(RuntimeError):
  """Saving a checkpoint failed; the newest complete checkpoint is where a rerun resumes.

  Attributes:
    step: the step whose save failed.
    cause: ``"Type: first line"`` of the innermost error.
    newest_checkpoint: the newest step saved completely, or None.
    details: the error records orbax logged while the run saved, as text.
  """

  def __init__(self, step: int, directory: os.PathLike[str], cause: str,
               newest_checkpoint: int | None, details: list[str]):
    kept = ("no checkpoint was saved before it" if newest_checkpoint is None else
            f"the newest complete checkpoint, step {newest_checkpoint}, is intact and is where a "
            "rerun resumes")
    super().__init__(f"saving checkpoint step {step} in {directory} failed ({cause}); {kept}")
    self.step = step
    self.cause = cause
    self.newest_checkpoint = newest_checkpoint
    self.details = details


# Room kept beyond the state's array bytes for a step's metadata, config, digest and data items.
_METADATA_MARGIN_BYTES = 1 << 16


def _megabytes(n: int) -> str:
  return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


class _HeldOrbaxErrors(logging.Filter):
  """Drops orbax's own error records from the ``absl`` logger and keeps their text."""

  def __init__(self):
    super().__init__()
    self.records: list[str] = []

  def filter(self, record: logging.LogRecord) -> bool:
    from_orbax = f"{os.sep}orbax{os.sep}" in record.pathname
    if record.levelno < logging.ERROR or not from_orbax:
      return True
    self.records.append(logging.Formatter().format(record))
    return False


class CheckpointWriter:
  """Owns a run's checkpoint manager and starts its saves (``checkpoint.save``) one at a time.

  A context manager: on leaving, the save in flight is waited for (raising if it failed, unless
  an error is already leaving the block), the manager is closed, and orbax's error records reach
  the log again.

  Attributes:
    manager: the run's ``CheckpointManager``.
    newest: the newest step saved completely: None until the run sets the step it restored.
    pending: the step being saved, or None.
  """

  def __init__(self, manager: ocp.CheckpointManager):
    self.manager = manager
    self.newest: int | None = None
    self.pending: int | None = None
    self._save_failed = False  # a CheckpointSaveError was raised: closing may fail alike
    self._held = _HeldOrbaxErrors()
    self._logger = logging.getLogger("absl")

  @property
  def latest(self) -> int | None:
    """The step a rerun will resume from once the save in flight finishes."""
    return self.newest if self.pending is None else self.pending

  def __enter__(self) -> CheckpointWriter:
    self._logger.addFilter(self._held)
    return self

  def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
               traceback: types.TracebackType | None) -> None:
    try:
      if kind is None:
        self.wait()
      else:
        self._wait_quietly()
    finally:
      try:
        self.manager.close()
      except Exception:  # a failed save already raised (or is leaving) as CheckpointSaveError
        if kind is None and not self._save_failed:
          raise
      finally:
        self._logger.removeFilter(self._held)

  def save(self, step: int, state: dict[str, Any], signature: dict[str, Any],
           data_state: dict[str, Any] | None = None) -> None:
    """Waits for the previous save, then starts saving ``state`` at ``step``.

    Raises:
      CheckpointSaveError: the previous save, or the start of this one, failed.
      checkpoint.NonFiniteStateError: ``state`` holds NaN or ±inf (nothing saved).
    """
    self.wait()
    needed = sum(leaf.nbytes for leaf in jax.tree.leaves(state)) + _METADATA_MARGIN_BYTES
    free = shutil.disk_usage(self.manager.directory).free
    # Every process decides alike, or the ones that go on would wait for the others in orbax.
    short = [p for p, fits in enumerate(distributed.each_process(free >= needed)) if not fits]
    if short:
      where, here = ("", "")
      if jax.process_count() > 1:
        where, here = f" on process(es) {short}", f" on process {jax.process_index()}"
      raise CheckpointSaveError(
          step, self.manager.directory, f"No space left on device{where}: it needs about "
          f"{_megabytes(needed)} and {_megabytes(free)} are free{here}; nothing was written",
          self.newest, [])
    try:
      checkpoint.save(self.manager, step, state, signature, data_state)
    except checkpoint.NonFiniteStateError:
      raise
    except Exception as error:  # whatever orbax raises while it starts writing
      raise self._failed(step, error) from None
    self.pending = step

  def wait(self) -> None:
    """Waits for the save in flight.

    Raises:
      CheckpointSaveError: it failed.
    """
    try:
      self.manager.wait_until_finished()
    except Exception as error:  # whatever a background save thread raised
      step, self.pending = self.pending, None
      raise self._failed(step, error) from None
    if self.pending is not None:
      self.newest, self.pending = self.pending, None

  def _wait_quietly(self) -> None:
    """Waits for the save in flight while another error leaves the run: its failure is dropped."""
    try:
      self.wait()
    except CheckpointSaveError:
      pass

  def _failed(self, step: int | None, error: Exception) -> CheckpointSaveError:
    self._save_failed = True
    return CheckpointSaveError(step, self.manager.directory, checkpoint.error_cause(error),
                               self.newest, list(self._held.records))

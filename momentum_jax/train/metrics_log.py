"""Metrics as JSON lines, one record per (step, kind), truncated on resume; optionally also as
TensorBoard scalars (through ``tensorboardX``, which the ``tensorboard`` extra installs)."""

from __future__ import annotations

import json
import numbers
import pathlib
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

import jax

if TYPE_CHECKING:
  import tensorboardX

_EVENT_FILES = "events.out.tfevents.*"


def _scalars(record: dict[str, Any]) -> dict[str, float]:
  """The record's numeric values other than its step (booleans are not scalars here)."""
  return {key: float(value) for key, value in record.items()
          if key != "step" and isinstance(value, numbers.Real) and not isinstance(value, bool)}


class MetricsLog:
  """Appends ``{"step": s, ...}`` records to a ``.jsonl`` file and keeps them in memory.

  ``records`` always equals the file's content, so a resumed run's history is the same list an
  uninterrupted run would have accumulated (up to evaluations that happened at a resume point).

  With ``tensorboard_dir``, every appended record's numeric values are also written as
  TensorBoard scalars (tag = key, global step = the record's step) through
  ``tensorboardX.SummaryWriter``. Event files cannot be truncated, so a resumed run opens a new
  event file instead, which starts with a purge at ``keep_until_step + 1`` (tensorboardX's
  ``purge_step``: a ``SessionLog.START`` event at that step): TensorBoard's Python loader
  (``EventAccumulator``) then discards every earlier event at or past that step, and the fast
  (Rust) data server, which ignores the purge event, discards a tag's earlier points at or past a
  step when the resumed run writes that tag at that step again. Either way TensorBoard shows the
  resumed run's values. A fresh start (``keep_until_step=None``) in a directory that holds event
  files purges from step 0. A directory without event files (TensorBoard turned on at a resume)
  first receives the records kept from the JSONL file, stamped with the current wall time.

  Close the log (``close()`` or ``with MetricsLog(...) as log:``) to flush the event file.

  In a run of several processes (``momentum_jax.train.distributed``) every process keeps the
  same ``records`` and process 0 alone writes the files: the others read the kept records from
  the file (which process 0 rewrites by an atomic rename, so they read it whole, before or
  after) and then only append in memory.
  """

  def __init__(self, path: pathlib.Path, *, keep_until_step: int | None,
               tensorboard_dir: pathlib.Path | None = None, write_files: bool | None = None):
    """Opens ``path``; keeps records with ``step <= keep_until_step`` (``None`` = start afresh).

    A run killed mid-write can leave a torn last line; it is dropped with the other records
    past the resume point. ``tensorboard_dir`` (None = no event files) receives the scalars.
    ``write_files``: whether this log writes ``path`` and the event files (default: when this
    is process 0, ``jax.process_index() == 0``); without, it keeps its records in memory only.
    """
    self.path = path
    self.write_files = jax.process_index() == 0 if write_files is None else write_files
    self.records: list[dict[str, Any]] = []
    if keep_until_step is not None and path.exists():
      for line in path.read_text().splitlines():
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue
        if record["step"] <= keep_until_step:
          self.records.append(record)
    self._closed = False
    self._writer = None
    if not self.write_files:
      return
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = path.with_name(f".{path.name}.kept")
    kept.write_text("".join(json.dumps(r) + "\n" for r in self.records))
    kept.replace(path)
    if tensorboard_dir is not None:
      self._writer = self._open_writer(tensorboard_dir, keep_until_step)

  def _open_writer(self, directory: pathlib.Path,
                   keep_until_step: int | None) -> tensorboardX.SummaryWriter:
    """A writer on a new event file in ``directory``: after a purge past the kept records when
    the directory already has event files, else with the kept records written first.
    ``ModuleNotFoundError`` naming the extra to install when tensorboardX is missing."""
    try:
      import tensorboardX
    except ModuleNotFoundError as error:
      raise ModuleNotFoundError(
          "TensorBoard event files need tensorboardX: pip install 'momentum_jax[tensorboard]'",
          name=error.name) from error
    earlier = directory.is_dir() and any(directory.glob(_EVENT_FILES))
    purge_step = (0 if keep_until_step is None else keep_until_step + 1) if earlier else None
    # tensorboardX names the file by the second and the host and opens it with "wb": the
    # nanosecond suffix keeps a run resumed within the same second from overwriting the file
    # before it, and sorts after it, as TensorBoard reads a directory's files in name order.
    writer = tensorboardX.SummaryWriter(str(directory), purge_step=purge_step,
                                        filename_suffix=f".{time.time_ns()}")
    if not earlier:
      for record in self.records:
        self._add_scalars(writer, record)
    return writer

  @staticmethod
  def _add_scalars(writer: tensorboardX.SummaryWriter, record: dict[str, Any]) -> None:
    for tag, value in _scalars(record).items():
      writer.add_scalar(tag, value, global_step=record["step"])

  def has(self, step: int, key: str) -> bool:
    """Whether a record at ``step`` already holds ``key``."""
    return any(r["step"] == step and key in r for r in self.records)

  def append(self, step: int, values: dict[str, float]) -> None:
    """Adds the record ``{"step": step, **values}`` to the file (and the event file)."""
    if self._closed:
      raise ValueError(f"append to the closed MetricsLog of {self.path}")
    record = {"step": step, **values}
    self.records.append(record)
    if not self.write_files:
      return
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")
    if self._writer is not None:
      self._add_scalars(self._writer, record)

  def close(self) -> None:
    """Flushes and closes the event file; later appends raise ``ValueError``. Idempotent."""
    self._closed = True
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def __enter__(self) -> MetricsLog:
    return self

  def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
               traceback: TracebackType | None) -> None:
    self.close()

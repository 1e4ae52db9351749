"""Metrics as JSON lines, one record per (step, kind), truncated on resume."""

from __future__ import annotations

import json
import pathlib
from typing import Any


class MetricsLog:
  """Appends ``{"step": s, ...}`` records to a ``.jsonl`` file and keeps them in memory.

  ``records`` always equals the file's content, so a resumed run's history is the same list an
  uninterrupted run would have accumulated (up to evaluations that happened at a resume point).
  """

  def __init__(self, path: pathlib.Path, *, keep_until_step: int | None):
    """Opens ``path``; keeps records with ``step <= keep_until_step`` (``None`` = start afresh).

    A run killed mid-write can leave a torn last line; it is dropped with the other records
    past the resume point.
    """
    self.path = path
    self.records: list[dict[str, Any]] = []
    if keep_until_step is not None and path.exists():
      for line in path.read_text().splitlines():
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue
        if record["step"] <= keep_until_step:
          self.records.append(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in self.records))

  def has(self, step: int, key: str) -> bool:
    """Whether a record at ``step`` already holds ``key``."""
    return any(r["step"] == step and key in r for r in self.records)

  def append(self, step: int, values: dict[str, float]) -> None:
    record = {"step": step, **values}
    self.records.append(record)
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")

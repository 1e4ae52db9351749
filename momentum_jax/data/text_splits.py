"""Train and validation text of a ``TextDataConfig``: its sources' pieces routed to the two
splits as ``validation_source`` and ``split_by`` say (``TextDataConfig``'s docstring), as one
stream of ``(split, TextPiece)``.

:func:`plan_split` decides the cut, reading what it needs: nothing for explicit sources; the
first ``max(2, round(1 / validation_fraction))`` documents for ``"auto"`` and ``"document"``
(whether the source is one document; whether there are enough to hold one out); the whole text's
byte count for ``"position"``. :func:`split_pieces` then streams the pieces, as many times as it
is called (a BPE tokeniser is trained on one pass over the train pieces, the tokens written in
another).
"""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
from collections.abc import Iterator
from typing import Any

from momentum_jax.data.text_config import TextDataConfig
from momentum_jax.data.text_sources import PIECE_BYTES, Source, TextPiece, text_pieces


@dataclasses.dataclass(frozen=True)
class SplitPlan:
  """Where the validation text of a config comes from (``dataclasses.asdict`` is JSON).

  Attributes:
    by: ``"sources"`` (``validation_source`` given), ``"document"`` or ``"position"``.
    period: for ``"document"``, every ``period``-th document is held out.
    cut_byte: for ``"position"``, the byte offset in the source's text (documents end to end,
      UTF-8) where validation starts, before moving forward to a character boundary.
    source_bytes: for ``"position"``, the bytes of the source's text.
  """

  by: str
  period: int | None = None
  cut_byte: int | None = None
  source_bytes: int | None = None


def _pieces(config: TextDataConfig, source: Source, piece_bytes: int) -> Iterator[TextPiece]:
  return text_pieces(source, text_field=config.text_field, group_by=config.group_by,
                     data_dir=config.data_dir, tfds_split=config.tfds_split,
                     piece_bytes=piece_bytes)


def plan_split(config: TextDataConfig, *, piece_bytes: int = PIECE_BYTES) -> SplitPlan:
  """How ``config``'s text is cut (see the module docstring).

  Raises:
    ValueError: from reading the source, or, for a document split, naming the number of
      documents when they are too few to hold one out.
  """
  if config.validation_source is not None:
    return SplitPlan("sources")
  period = round(1.0 / config.validation_fraction)
  by = config.split_by
  if by in ("auto", "document"):
    ends = (p for p in _pieces(config, config.source, piece_bytes) if p.ends_document)
    documents = sum(1 for _ in itertools.islice(ends, max(2, period)))
    if by == "auto":
      by = "position" if documents == 1 else "document"
    if by == "document" and documents < period:
      raise ValueError(f"the source has {documents} document(s), too few to hold out every "
                       f"{period}-th for validation (validation_fraction="
                       f"{config.validation_fraction}): give a validation_source, or "
                       "split_by='position'")
  if by == "document":
    return SplitPlan("document", period=period)
  total = sum(len(p.text.encode("utf-8")) for p in _pieces(config, config.source, piece_bytes))
  return SplitPlan("position", cut_byte=int(total * (1.0 - config.validation_fraction)),
                   source_bytes=total)


def split_pieces(config: TextDataConfig, plan: SplitPlan, *,
                 piece_bytes: int = PIECE_BYTES) -> Iterator[tuple[str, TextPiece]]:
  """``config``'s text as ``("train" | "validation", piece)``, cut as ``plan`` says.

  A position cut inside a piece ends the train part of its document there and starts a
  validation document with the rest.
  """
  if plan.by == "sources":
    yield from (("train", p) for p in _pieces(config, config.source, piece_bytes))
    yield from (("validation", p)
                for p in _pieces(config, config.validation_source, piece_bytes))
  elif plan.by == "document":
    index = 0
    for piece in _pieces(config, config.source, piece_bytes):
      yield ("validation" if index % plan.period == plan.period - 1 else "train"), piece
      index += piece.ends_document
  else:
    offset = 0
    for piece in _pieces(config, config.source, piece_bytes):
      if offset >= plan.cut_byte:
        yield "validation", piece
        continue
      raw = piece.text.encode("utf-8")
      offset += len(raw)
      if offset <= plan.cut_byte:
        yield "train", piece
        continue
      cut = plan.cut_byte - (offset - len(raw))
      while cut < len(raw) and raw[cut] & 0xC0 == 0x80:  # a UTF-8 continuation byte
        cut += 1
      if cut:
        yield "train", TextPiece(raw[:cut].decode("utf-8"), True)
      if cut < len(raw):
        yield "validation", TextPiece(raw[cut:].decode("utf-8"), piece.ends_document)


def _local_files(described: list[dict[str, Any]]) -> set[pathlib.Path]:
  return {pathlib.Path(path).resolve() for entry in described for path in entry.get("files", {})}


def check_disjoint(train: list[dict[str, Any]], validation: list[dict[str, Any]]) -> None:
  """``ValueError`` naming a file that both ``describe_source`` records list: the validation
  text must not be trained on."""
  shared = sorted(_local_files(train) & _local_files(validation))
  if shared:
    raise ValueError(f"source and validation_source share {len(shared)} file(s), e.g. "
                     f"{shared[0]}: the validation text must not be trained on")

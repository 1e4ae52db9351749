"""Packing tokenised documents into fixed-length rows with segment ids and per-document positions.

Documents are concatenated in their given order (greedily, no reordering) and the stream is cut
into rows of ``seq_len + 1`` tokens; a document longer than what is left of a row continues at
the start of the next row, and only the last row is padded (with token 0). Row ``r`` gives the
model, for ``t < seq_len``::

    tokens[t] = row[t],  targets[t] = row[t + 1]
    segment_ids[t] = 1, 2, ... for the pieces of documents in the row, in order; 0 on padding
    positions[t] = position of token t inside its piece (0 where a piece starts: a document
                   split across rows restarts at 0 in the next row); 0 on padding
    loss_mask[t] = 1 iff row[t] and row[t + 1] are tokens of the same document

so no loss crosses a document boundary (a document's last token predicts nothing) or reaches
padding, and attention given ``segment_ids`` never looks across a boundary. Rows do not overlap:
the last token of a row is a target only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


class PackedRows(NamedTuple):
  """Packed rows, each field ``[R, seq_len]``: int32 tokens, targets, segment_ids and positions;
  float32 loss_mask (the fields and order of ``Batch``)."""

  tokens: np.ndarray
  targets: np.ndarray
  loss_mask: np.ndarray
  segment_ids: np.ndarray
  positions: np.ndarray


def pack_documents(documents: Sequence[np.ndarray], seq_len: int) -> PackedRows:
  """Packs ``documents`` into rows of ``seq_len`` inputs and targets (see the module docstring).

  Args:
    documents: 1-D integer token arrays, in the order they are packed; empty ones are skipped.
    seq_len: T, the tokens per row given to the model (each row spans ``T + 1`` tokens).

  Returns:
    ``PackedRows`` of ``R = ceil(total tokens / (T + 1))`` rows.

  Raises:
    ValueError: naming ``seq_len`` when it is not an int >= 1, a document that is not 1-D
      integers, or ``documents`` when none is non-empty.
  """
  if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 1:
    raise ValueError(f"seq_len must be an int >= 1, got seq_len={seq_len!r}")
  docs = []
  for i, document in enumerate(documents):
    doc_N = np.asarray(document)
    if doc_N.ndim != 1 or (doc_N.size and not np.issubdtype(doc_N.dtype, np.integer)):
      raise ValueError(f"documents[{i}] must be a 1-D array of token ids, got shape "
                       f"{doc_N.shape} and dtype {doc_N.dtype}")
    if doc_N.size:
      docs.append(doc_N.astype(np.int32))
  if not docs:
    raise ValueError("documents must hold at least one non-empty document")
  width = seq_len + 1
  stream_N = np.concatenate(docs)
  doc_N = np.repeat(np.arange(len(docs)), [len(d) for d in docs])
  rows = -(-len(stream_N) // width)
  pad = rows * width - len(stream_N)
  stream_RxW = np.concatenate([stream_N, np.zeros(pad, np.int32)]).reshape(rows, width)
  doc_RxW = np.concatenate([doc_N, np.full(pad, -1)]).reshape(rows, width)

  # A piece starts at a row's first token and wherever the document changes.
  starts_RxW = np.ones((rows, width), bool)
  starts_RxW[:, 1:] = doc_RxW[:, 1:] != doc_RxW[:, :-1]
  segment_RxW = np.cumsum(starts_RxW, axis=1, dtype=np.int32)
  segment_RxW[doc_RxW < 0] = 0
  column_RxW = np.broadcast_to(np.arange(width), (rows, width))
  piece_start_RxW = np.maximum.accumulate(np.where(starts_RxW, column_RxW, 0), axis=1)
  positions_RxW = np.where(doc_RxW >= 0, column_RxW - piece_start_RxW, 0).astype(np.int32)
  same_RxT = (doc_RxW[:, 1:] == doc_RxW[:, :-1]) & (doc_RxW[:, 1:] >= 0)
  return PackedRows(
      tokens=stream_RxW[:, :-1].copy(),
      targets=stream_RxW[:, 1:].copy(),
      loss_mask=same_RxT.astype(np.float32),
      segment_ids=segment_RxW[:, :-1].copy(),
      positions=positions_RxW[:, :-1].copy(),
  )

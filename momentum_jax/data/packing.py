"""Packing tokenised documents into fixed-length rows with segment ids and per-document positions.

Documents are concatenated in their given order (greedily, no reordering) into one token stream,
and the stream is cut into rows of ``seq_len + 1`` tokens; a document longer than what is left of
a row continues at the start of the next row, and only the last row is padded (with token 0).
Row ``r`` gives the model, for ``t < seq_len``::

    tokens[t] = row[t],  targets[t] = row[t + 1]
    segment_ids[t] = 1, 2, ... for the pieces of documents in the row, in order; 0 on padding
    positions[t] = position of token t inside its piece (0 where a piece starts: a document
                   split across rows restarts at 0 in the next row); 0 on padding
    loss_mask[t] = 1 iff row[t] and row[t + 1] are tokens of the same document

so no loss crosses a document boundary (a document's last token predicts nothing) or reaches
padding, and attention given ``segment_ids`` never looks across a boundary. Rows do not overlap:
the last token of a row is a target only.

:func:`read_rows` computes any rows of the packing from the stream and its document ends alone
(row ``r`` is the stream's tokens ``[r (T+1), (r+1)(T+1))``), reading only those rows' tokens: the
stream may be a memory-mapped token file of any size (``momentum_jax.data.token_files``).
:func:`pack_documents` is ``read_rows`` of every row of an in-memory stream.
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


def _check_seq_len(seq_len: int) -> None:
  if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 1:
    raise ValueError(f"seq_len must be an int >= 1, got seq_len={seq_len!r}")


def num_rows(num_tokens: int, seq_len: int) -> int:
  """``ceil(num_tokens / (seq_len + 1))``: the rows a stream of ``num_tokens`` packs into."""
  return -(-num_tokens // (seq_len + 1))


def read_rows(tokens_N: np.ndarray, ends_D: np.ndarray, rows_B: np.ndarray,
              seq_len: int) -> PackedRows:
  """Rows ``rows_B`` of the packing of the stream ``tokens_N`` (see the module docstring).

  Args:
    tokens_N: the documents' tokens end to end, 1-D unsigned or signed integers (a
      ``np.memmap`` is read only where the rows are).
    ends_D: int64, the running token count at the end of each document (non-decreasing, the
      last one N): document d holds the tokens ``[ends_D[d-1], ends_D[d])``.
    rows_B: the rows to read, integers in ``[0, ceil(N / (seq_len + 1)))``, in any order.
    seq_len: T, the tokens per row given to the model.

  Returns:
    ``PackedRows`` of the B rows, in the order of ``rows_B``.

  Raises:
    ValueError: naming ``seq_len`` when it is not an int >= 1, or ``rows_B`` when it is not 1-D
      integers in range.
  """
  _check_seq_len(seq_len)
  width, num_tokens = seq_len + 1, len(tokens_N)
  rows_B = np.asarray(rows_B)
  limit = num_rows(num_tokens, seq_len)
  if rows_B.ndim != 1 or not np.issubdtype(rows_B.dtype, np.integer) or (
      rows_B.size and not 0 <= rows_B.min() <= rows_B.max() < limit):
    raise ValueError(f"rows_B must be 1-D integers in [0, {limit}) (the rows of {num_tokens} "
                     f"tokens at seq_len={seq_len}), got shape {rows_B.shape}, dtype "
                     f"{rows_B.dtype}")
  index_BxW = rows_B.astype(np.int64)[:, None] * width + np.arange(width, dtype=np.int64)
  inside_BxW = index_BxW < num_tokens
  stream_BxW = np.where(inside_BxW, tokens_N[np.minimum(index_BxW, num_tokens - 1)], 0)
  # The document of each position: the number of documents that end at or before it.
  doc_BxW = np.searchsorted(ends_D, index_BxW, side="right")
  doc_BxW = np.where(inside_BxW, doc_BxW, -1)

  # A piece starts at a row's first token and wherever the document changes.
  starts_BxW = np.ones(doc_BxW.shape, bool)
  starts_BxW[:, 1:] = doc_BxW[:, 1:] != doc_BxW[:, :-1]
  segment_BxW = np.cumsum(starts_BxW, axis=1, dtype=np.int32)
  segment_BxW[doc_BxW < 0] = 0
  column_BxW = np.broadcast_to(np.arange(width), doc_BxW.shape)
  piece_start_BxW = np.maximum.accumulate(np.where(starts_BxW, column_BxW, 0), axis=1)
  positions_BxW = np.where(doc_BxW >= 0, column_BxW - piece_start_BxW, 0).astype(np.int32)
  same_BxT = (doc_BxW[:, 1:] == doc_BxW[:, :-1]) & (doc_BxW[:, 1:] >= 0)
  stream_BxW = stream_BxW.astype(np.int32)
  return PackedRows(
      tokens=stream_BxW[:, :-1].copy(),
      targets=stream_BxW[:, 1:].copy(),
      loss_mask=same_BxT.astype(np.float32),
      segment_ids=segment_BxW[:, :-1].copy(),
      positions=positions_BxW[:, :-1].copy(),
  )


def pack_documents(documents: Sequence[np.ndarray], seq_len: int) -> PackedRows:
  """Packs ``documents`` into rows of ``seq_len`` inputs and targets (see the module docstring):
  :func:`read_rows` of every row of their stream.

  Args:
    documents: 1-D integer token arrays, in the order they are packed; empty ones are skipped.
    seq_len: T, the tokens per row given to the model (each row spans ``T + 1`` tokens).

  Returns:
    ``PackedRows`` of ``R = ceil(total tokens / (T + 1))`` rows.

  Raises:
    ValueError: naming ``seq_len`` when it is not an int >= 1, a document that is not 1-D
      integers, or ``documents`` when none is non-empty.
  """
  _check_seq_len(seq_len)
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
  stream_N = np.concatenate(docs)
  ends_D = np.cumsum([len(d) for d in docs], dtype=np.int64)
  return read_rows(stream_N, ends_D, np.arange(num_rows(len(stream_N), seq_len)), seq_len)

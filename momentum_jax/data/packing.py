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


def check_rows(rows_B: np.ndarray, num_tokens: int, seq_len: int) -> np.ndarray:
  """``rows_B`` as int64, checked to be rows of the packing of ``num_tokens`` tokens.

  Raises:
    ValueError: naming ``seq_len`` when it is not an int >= 1, or ``rows_B`` when it is not 1-D
      integers in ``[0, ceil(num_tokens / (seq_len + 1)))``.
  """
  _check_seq_len(seq_len)
  rows_B = np.asarray(rows_B)
  limit = num_rows(num_tokens, seq_len)
  if rows_B.ndim != 1 or not np.issubdtype(rows_B.dtype, np.integer) or (
      rows_B.size and not 0 <= rows_B.min() <= rows_B.max() < limit):
    raise ValueError(f"rows_B must be 1-D integers in [0, {limit}) (the rows of {num_tokens} "
                     f"tokens at seq_len={seq_len}), got shape {rows_B.shape}, dtype "
                     f"{rows_B.dtype}")
  return rows_B.astype(np.int64)


def read_rows(tokens_N: np.ndarray, ends_D: np.ndarray, rows_B: np.ndarray,
              seq_len: int) -> PackedRows:
  """Rows ``rows_B`` of the packing of the stream ``tokens_N`` (see the module docstring): the
  rows' tokens copied out of ``tokens_N``, then :func:`pack_windows`.

  Args:
    tokens_N: the documents' tokens end to end, 1-D unsigned or signed integers (a memory-mapped
      file is read only where the rows are).
    ends_D: int64, the running token count at the end of each document (non-decreasing, the
      last one N): document d holds the tokens ``[ends_D[d-1], ends_D[d])``.
    rows_B: the rows to read, integers in ``[0, ceil(N / (seq_len + 1)))``, in any order.
    seq_len: T, the tokens per row given to the model.

  Returns:
    ``PackedRows`` of the B rows, in the order of ``rows_B``.

  Raises:
    ValueError: as :func:`check_rows`.
  """
  num_tokens = len(tokens_N)
  rows_B = check_rows(rows_B, num_tokens, seq_len)
  width = seq_len + 1
  full = num_tokens // width  # rows without padding
  stream_BxW = np.zeros((len(rows_B), width), np.int32)
  whole_B = rows_B < full
  stream_BxW[whole_B] = tokens_N[:full * width].reshape(full, width)[rows_B[whole_B]]
  if not whole_B.all():  # the last, padded row
    stream_BxW[~whole_B, :num_tokens - full * width] = tokens_N[full * width:]
  return pack_windows(stream_BxW, rows_B, num_tokens, ends_D)


def pack_windows(stream_BxW: np.ndarray, rows_B: np.ndarray, num_tokens: int,
                 ends_D: np.ndarray) -> PackedRows:
  """The packed fields of rows ``rows_B`` (checked, see :func:`check_rows`) of a stream of
  ``num_tokens`` tokens, given their tokens ``stream_BxW`` (``W = T + 1``; zero past the
  stream's end) and the stream's document ends ``ends_D`` (as in :func:`read_rows`).

  Row r holds ``v_r = min(W, N - r W)`` tokens of the stream from ``s_r = r W`` and padding
  after them. A piece starts at column 0, at each column ``e - s_r`` where a document ends
  (``s_r < e < s_r + v_r``: two binary searches of ``ends_D`` per row find them) and at the
  padding; segment ids count the pieces, positions count from each piece's start.
  """
  stream_BxW = stream_BxW.astype(np.int32, copy=False)
  width = stream_BxW.shape[1]
  start_B = rows_B * width
  valid_B = np.minimum(num_tokens - start_B, width)
  starts_BxW = np.zeros(stream_BxW.shape, bool)
  starts_BxW[:, 0] = True
  first_B = np.searchsorted(ends_D, start_B, side="right")
  count_B = np.searchsorted(ends_D, start_B + valid_B - 1, side="right") - first_B
  row_K = np.repeat(np.arange(len(rows_B)), count_B)
  offset_K = np.arange(len(row_K)) - np.repeat(np.cumsum(count_B) - count_B, count_B)
  starts_BxW[row_K, ends_D[first_B[row_K] + offset_K] - start_B[row_K]] = True
  padded_B = valid_B < width
  starts_BxW[padded_B, valid_B[padded_B]] = True

  # Along the flattened rows (every row starts a piece, so the running counts restart there).
  starts_F = starts_BxW.reshape(-1)
  index_F = np.arange(len(starts_F), dtype=np.int32)
  positions_BxW = (index_F - np.maximum.accumulate(np.where(starts_F, index_F, 0))).reshape(
      starts_BxW.shape)
  segment_BxW = np.cumsum(starts_F, dtype=np.int32).reshape(starts_BxW.shape)
  segment_BxW -= segment_BxW[:, :1] - 1
  same_BxT = ~starts_BxW[:, 1:]
  if padded_B.any():
    padding_BxW = np.arange(width) >= valid_B[:, None]
    segment_BxW[padding_BxW] = 0
    positions_BxW[padding_BxW] = 0
    same_BxT &= ~padding_BxW[:, 1:]
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

"""pack_documents on hand-built documents: targets, boundaries, segment ids, positions, padding;
read_rows of any rows, over a memmap and with empty documents in the ends, against it."""

import numpy as np
import pytest

from momentum_jax.data import PackedRows, pack_documents, read_rows


def _rows(packed: PackedRows) -> dict[str, list[list[float]]]:
  return {name: field.tolist() for name, field in packed._asdict().items()}


def test_two_documents_in_one_row_no_loss_across_the_boundary():
  packed = pack_documents([np.array([10, 11, 12]), np.array([20, 21])], seq_len=4)
  assert _rows(packed) == {
      "tokens": [[10, 11, 12, 20]],
      "targets": [[11, 12, 20, 21]],
      "loss_mask": [[1, 1, 0, 1]],  # 12 -> 20 crosses into the next document
      "segment_ids": [[1, 1, 1, 2]],
      "positions": [[0, 1, 2, 0]],
  }
  assert [f.dtype for f in packed] == [np.int32, np.int32, np.float32, np.int32, np.int32]


def test_a_document_exactly_filling_a_row_and_the_next_starting_a_new_row():
  packed = pack_documents([np.arange(1, 6), np.array([7, 8])], seq_len=4)
  assert _rows(packed) == {
      "tokens": [[1, 2, 3, 4], [7, 8, 0, 0]],
      "targets": [[2, 3, 4, 5], [8, 0, 0, 0]],
      "loss_mask": [[1, 1, 1, 1], [1, 0, 0, 0]],
      "segment_ids": [[1, 1, 1, 1], [1, 1, 0, 0]],
      "positions": [[0, 1, 2, 3], [0, 1, 0, 0]],
  }


def test_a_document_longer_than_two_rows_restarts_its_positions_in_each_row():
  packed = pack_documents([np.arange(100, 112)], seq_len=4)  # 12 tokens, rows of 5
  assert _rows(packed) == {
      "tokens": [[100, 101, 102, 103], [105, 106, 107, 108], [110, 111, 0, 0]],
      "targets": [[101, 102, 103, 104], [106, 107, 108, 109], [111, 0, 0, 0]],
      "loss_mask": [[1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 0, 0]],
      "segment_ids": [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]],
      "positions": [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 0, 0]],
  }


def test_invariants_on_random_documents_padding_only_in_the_last_row():
  rng = np.random.default_rng(0)
  docs = [rng.integers(1, 50, size=n) for n in rng.integers(0, 40, size=60)]
  seq_len = 16
  packed = pack_documents(docs, seq_len)
  stream = np.concatenate(docs)
  rows = -(-len(stream) // (seq_len + 1))
  assert packed.tokens.shape == (rows, seq_len)

  # The rows are the stream cut into pieces of seq_len + 1, the last one padded.
  full = np.concatenate([packed.tokens, packed.targets[:, -1:]], axis=1).reshape(-1)
  assert np.array_equal(full[:len(stream)], stream) and not full[len(stream):].any()
  assert np.array_equal(packed.targets[:, :-1], packed.tokens[:, 1:])
  assert (packed.segment_ids[:-1] > 0).all()  # padding only in the last row

  # Loss counts exactly where the target is the next token of the same document.
  doc_of = np.repeat(np.arange(len(docs)), [len(d) for d in docs])
  for r in range(rows):
    for t in range(seq_len):
      g = r * (seq_len + 1) + t
      same = g + 1 < len(stream) and doc_of[g] == doc_of[g + 1]
      assert packed.loss_mask[r, t] == same, (r, t)

  # Positions count from 0 at each piece's start.
  for r in range(rows):
    for s in set(packed.segment_ids[r].tolist()) - {0}:
      assert packed.positions[r][packed.segment_ids[r] == s].tolist() == list(
          range((packed.segment_ids[r] == s).sum()))


def test_empty_documents_are_skipped():
  packed = pack_documents([np.array([], np.int32), np.array([3, 4]), []], seq_len=1)
  assert packed.tokens.tolist() == [[3]] and packed.segment_ids.tolist() == [[1]]


@pytest.mark.parametrize("seq_len", [0, -1, 2.0, True])
def test_a_bad_seq_len_is_named(seq_len):
  with pytest.raises(ValueError, match=f"seq_len must be an int >= 1, got seq_len={seq_len!r}"):
    pack_documents([np.arange(4)], seq_len)


def test_bad_documents_are_named():
  with pytest.raises(ValueError, match=r"documents\[1\] must be a 1-D array of token ids, got "
                                       r"shape \(2, 2\)"):
    pack_documents([np.arange(3), np.zeros((2, 2), np.int32)], 4)
  with pytest.raises(ValueError, match=r"documents\[0\] .* dtype float64"):
    pack_documents([np.array([0.5, 1.5])], 4)
  with pytest.raises(ValueError, match="at least one non-empty document"):
    pack_documents([[], np.array([], np.int32)], 4)


# --- read_rows: any rows of the packing, from the stream and its document ends ------------------


def _stream(docs):
  nonempty = [np.asarray(d) for d in docs if len(d)]
  return np.concatenate(nonempty), np.cumsum([len(d) for d in nonempty], dtype=np.int64)


def test_read_rows_in_any_order_equals_those_rows_of_pack_documents():
  rng = np.random.default_rng(1)
  docs = [rng.integers(1, 300, size=n) for n in rng.integers(0, 30, size=40)]
  packed = pack_documents(docs, 8)
  stream_N, ends_D = _stream(docs)
  rows_B = np.array([5, 0, 5, len(packed.tokens) - 1, 2])
  for tokens_N in (stream_N.astype(np.uint16), stream_N.astype(np.int64)):
    rows = read_rows(tokens_N, ends_D, rows_B, 8)
    for field, reference in zip(rows, packed, strict=True):
      np.testing.assert_array_equal(field, reference[rows_B])
      assert field.dtype == reference.dtype


def test_read_rows_over_a_memmap_and_with_empty_documents_in_the_ends(tmp_path):
  docs = [np.arange(1, 8), np.array([], np.int32), np.arange(20, 26), np.arange(40, 43)]
  packed = pack_documents(docs, 4)
  path = tmp_path / "tokens.bin"
  np.concatenate(docs).astype("<u2").tofile(path)
  tokens_N = np.memmap(path, "<u2", mode="r", shape=(16,))
  ends_D = np.array([7, 7, 13, 16], np.int64)  # the empty document ends where the first does
  rows = read_rows(tokens_N, ends_D, np.arange(len(packed.tokens)), 4)
  assert _rows(rows) == _rows(packed)


@pytest.mark.parametrize("rows_B", [[4], [-1], [0.5], [[0]]])
def test_read_rows_refuses_rows_out_of_range(rows_B):
  tokens_N, ends_D = _stream([np.arange(1, 20)])  # 19 tokens: 4 rows of 5
  with pytest.raises(ValueError, match=r"rows_B must be 1-D integers in \[0, 4\) \(the rows of 19 "
                     r"tokens at seq_len=4\)"):
    read_rows(tokens_N, ends_D, np.array(rows_B), 4)

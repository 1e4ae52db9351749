"""load_text_dataset and its iterator, on a small local corpus (40 .txt documents, each marked
with its index; byte and BPE tokens) and on the offline King James Bible (bytes, seq_len 64):
the split by document, bytes per token, batch fields and loss mask at document boundaries,
determinism, host sharding, get_state / set_state resume (also across an epoch boundary and onto
another shard count), epochs as permutations, repeat=False, tokenizer_dir, and every ValueError
of TextDataConfig, TextDataset.iterator and set_state."""

import dataclasses
import json
import re
from collections import Counter

import numpy as np
import pytest

from momentum_jax.data import (Batch, BpeTokenizer, ByteTokenizer, TextDataConfig, TextDataset,
                               TextIterator, load_text_dataset)

NUM_DOCUMENTS = 40
VALIDATION_FRACTION = 0.25  # every 4th document, indices 3, 7, ..., 39
HELD_OUT = {i for i in range(NUM_DOCUMENTS) if i % 4 == 3}
SEQ_LEN = 32
BATCH_SIZE = 8
WORDS = ("apple", "river", "stone", "cloud", "lantern", "meadow", "harbour", "violet", "engine",
         "window", "copper", "thunder", "garden", "pencil", "falcon", "silver", "orchard")
MARKER = re.compile(r"<(\d\d)>")


def _document(i: int) -> str:
  """~180-300 bytes; the marker <ii> every ~12 bytes, so every piece of 32 tokens holds one."""
  chunks = [f"<{i:02d}> {WORDS[(7 * i + 3 * j) % len(WORDS)]}" for j in range(15 + i % 10)]
  return " ".join(chunks) + ".\n"


DOCUMENTS = [_document(i) for i in range(NUM_DOCUMENTS)]
SPLIT_DOCUMENTS = {
    "train": [d for i, d in enumerate(DOCUMENTS) if i not in HELD_OUT],
    "validation": [d for i, d in enumerate(DOCUMENTS) if i in HELD_OUT],
}


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
  folder = tmp_path_factory.mktemp("corpus")
  for i, text in enumerate(DOCUMENTS):
    (folder / f"doc_{i:02d}.txt").write_text(text, encoding="utf-8")
  return folder


def _config(corpus_dir, **overrides) -> TextDataConfig:
  settings = dict(source=str(corpus_dir), seq_len=SEQ_LEN,
                  validation_fraction=VALIDATION_FRACTION)
  settings.update(overrides)
  return TextDataConfig(**settings)


@pytest.fixture(scope="module")
def byte_dataset(corpus_dir) -> TextDataset:
  return load_text_dataset(_config(corpus_dir))


@pytest.fixture(scope="module")
def bpe_dataset(corpus_dir) -> TextDataset:
  return load_text_dataset(_config(corpus_dir, tokenizer="bpe", bpe_vocab_size=300))


@pytest.fixture(scope="module")
def kjv_dataset() -> TextDataset:
  return load_text_dataset(TextDataConfig(source="kjv", seq_len=64))


@pytest.fixture(params=["byte", "bpe", "kjv"])
def dataset(request) -> TextDataset:
  return request.getfixturevalue(f"{request.param}_dataset")


def _all_rows(dataset: TextDataset, split: str) -> Batch:
  """Every row of ``split``, in one shuffled batch."""
  return next(dataset.iterator(split, dataset.num_rows(split), seed=0, repeat=False))


def _row_keys(batch: Batch) -> list[bytes]:
  return [b"".join(np.ascontiguousarray(field[r]).tobytes() for field in batch)
          for r in range(len(batch.tokens))]


def _same(first: Batch, second: Batch) -> bool:
  return all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def _take(iterator: TextIterator, count: int) -> list[Batch]:
  return [next(iterator) for _ in range(count)]


def _markers_by_piece(dataset: TextDataset, batch: Batch) -> set[int]:
  """The document markers decoded from each document piece of each row."""
  found = set()
  for tokens_T, segments_T in zip(batch.tokens, batch.segment_ids):
    for segment in np.unique(segments_T[segments_T > 0]):
      text = dataset.tokenizer.decode(tokens_T[segments_T == segment])
      found.update(int(marker) for marker in MARKER.findall(text))
  return found


# --- split, tokens, rows -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["byte", "bpe"])
def test_split_is_by_document_every_fourth_held_out_none_in_both(name, request):
  dataset = request.getfixturevalue(f"{name}_dataset")
  train = _markers_by_piece(dataset, _all_rows(dataset, "train"))
  validation = _markers_by_piece(dataset, _all_rows(dataset, "validation"))
  assert validation == HELD_OUT
  assert train == set(range(NUM_DOCUMENTS)) - HELD_OUT
  assert not train & validation


@pytest.mark.parametrize("name", ["byte", "bpe"])
def test_row_count_and_bytes_per_token_follow_from_the_split_documents(name, request):
  dataset = request.getfixturevalue(f"{name}_dataset")
  for split, texts in SPLIT_DOCUMENTS.items():
    num_tokens = sum(len(dataset.tokenizer.encode(text)) for text in texts)
    num_bytes = sum(len(text.encode("utf-8")) for text in texts)
    assert dataset.num_rows(split) == -(-num_tokens // (SEQ_LEN + 1))
    assert dataset.bytes_per_token(split) == pytest.approx(num_bytes / num_tokens)
    if name == "byte":
      assert dataset.bytes_per_token(split) == 1.0
    else:
      assert dataset.bytes_per_token(split) > 1.5


def test_dataset_properties(byte_dataset, bpe_dataset):
  assert isinstance(byte_dataset.tokenizer, ByteTokenizer)
  assert byte_dataset.vocab_size == 256
  assert bpe_dataset.tokenizer.name == "bpe"
  assert bpe_dataset.vocab_size == 300
  assert byte_dataset.seq_len == bpe_dataset.seq_len == SEQ_LEN
  assert byte_dataset.config == _config(byte_dataset.config.source)


def test_bpe_is_trained_on_the_train_split_only(bpe_dataset):
  texts = DOCUMENTS + ["<03> <07> <39> thunder orchard, the falcon's harbour."]
  from_train = BpeTokenizer.train(SPLIT_DOCUMENTS["train"], 300)
  from_all = BpeTokenizer.train(DOCUMENTS, 300)
  encodings = [bpe_dataset.tokenizer.encode(text).tolist() for text in texts]
  assert encodings == [from_train.encode(text).tolist() for text in texts]
  assert encodings != [from_all.encode(text).tolist() for text in texts]


def test_bpe_rows_decode_back_to_pieces_of_the_held_out_documents(bpe_dataset):
  rows = _all_rows(bpe_dataset, "validation")
  pieces: dict[int, list[str]] = {}
  for tokens_T, segments_T in zip(rows.tokens, rows.segment_ids):
    for segment in np.unique(segments_T[segments_T > 0]):
      text = bpe_dataset.tokenizer.decode(tokens_T[segments_T == segment])
      markers = MARKER.findall(text)
      if markers:
        pieces.setdefault(int(markers[0]), []).append(text)
  assert set(pieces) == HELD_OUT
  for index, texts in pieces.items():
    for text in texts:
      assert text in _document(index)


def test_kjv_split_holds_out_every_twentieth_chapter(kjv_dataset):
  assert kjv_dataset.bytes_per_token("train") == kjv_dataset.bytes_per_token("validation") == 1
  train_rows, validation_rows = kjv_dataset.num_rows("train"), kjv_dataset.num_rows("validation")
  assert 50_000 < train_rows < 80_000  # ~4.1 MB in rows of 65 bytes, 95% of it for training
  assert 19 * validation_rows == pytest.approx(train_rows, rel=0.25)

  def texts(split):
    rows = _all_rows(kjv_dataset, split)
    return [kjv_dataset.tokenizer.decode(row) for row in rows.tokens]

  train, validation = texts("train"), texts("validation")
  assert sum(t.startswith("In the beginning God created") for t in train) == 1  # Genesis 1
  assert not any(t.startswith("In the beginning God created") for t in validation)
  # Genesis 20, the 20th chapter, is the first held out: validation's first row.
  assert sum(t.startswith("And Abraham journeyed from thence") for t in validation) == 1
  assert not any("Abraham journeyed from thence" in t for t in train)


# --- batch fields ------------------------------------------------------------------------------


@pytest.mark.parametrize("shard_count", [1, 4])
def test_batch_fields_shapes_and_dtypes(dataset, shard_count):
  batch = next(dataset.iterator("train", BATCH_SIZE, seed=0, shard_count=shard_count))
  assert isinstance(batch, Batch)
  shape = (BATCH_SIZE // shard_count, dataset.seq_len)
  for name in ("tokens", "targets", "segment_ids", "positions"):
    field = getattr(batch, name)
    assert isinstance(field, np.ndarray) and field.dtype == np.int32 and field.shape == shape
  assert batch.loss_mask.dtype == np.float32 and batch.loss_mask.shape == shape
  assert batch.tokens.min() >= 0 and batch.tokens.max() < dataset.vocab_size


def test_targets_are_the_next_tokens_and_no_loss_crosses_a_document(dataset):
  for split in ("train", "validation"):
    rows = _all_rows(dataset, split)
    np.testing.assert_array_equal(rows.targets[:, :-1], rows.tokens[:, 1:])
    segments = rows.segment_ids
    same_document = (segments[:, :-1] == segments[:, 1:]) & (segments[:, 1:] > 0)
    np.testing.assert_array_equal(rows.loss_mask[:, :-1], same_document.astype(np.float32))
    assert set(np.unique(rows.loss_mask)) <= {0.0, 1.0}
    assert (rows.loss_mask[:, :-1] == 0).any()  # documents do end inside rows
    # Positions count up inside a piece and restart where the segment id changes.
    starts = np.ones_like(segments, bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    np.testing.assert_array_equal(rows.positions[:, 1:][~starts[:, 1:] & (segments[:, 1:] > 0)],
                                  rows.positions[:, :-1][~starts[:, 1:] & (segments[:, 1:] > 0)]
                                  + 1)
    assert (rows.positions[starts & (segments > 0)] == 0).all()


def test_byte_loss_mask_is_zero_exactly_after_each_document_end(byte_dataset):
  rows = _all_rows(byte_dataset, "train")
  crossing = (rows.loss_mask == 0) & (rows.segment_ids > 0)
  # Each document ends with ".\n": a token "\n" whose target starts the next document "<".
  last_tokens = rows.tokens[crossing & (rows.targets != 0)]
  assert set(last_tokens.tolist()) == {ord("\n")}
  assert set(rows.targets[crossing & (rows.targets != 0)].tolist()) == {ord("<")}


# --- order: determinism, epochs, sharding, resume ----------------------------------------------


def test_same_seed_gives_identical_batches_another_seed_differs(dataset):
  first = _take(dataset.iterator("train", BATCH_SIZE, seed=3), 5)
  second = _take(dataset.iterator("train", BATCH_SIZE, seed=3), 5)
  other_seed = _take(dataset.iterator("train", BATCH_SIZE, seed=4), 5)
  assert all(_same(a, b) for a, b in zip(first, second))
  assert not all(_same(a, b) for a, b in zip(first, other_seed))


def test_a_reloaded_dataset_gives_the_same_batches(byte_dataset, corpus_dir):
  reloaded = load_text_dataset(_config(corpus_dir))
  first = _take(byte_dataset.iterator("train", BATCH_SIZE, seed=1), 4)
  second = _take(reloaded.iterator("train", BATCH_SIZE, seed=1), 4)
  assert all(_same(a, b) for a, b in zip(first, second))


def test_each_epoch_is_a_permutation_and_the_next_epoch_reorders(dataset):
  # Rows are told apart by their contents; the KJV repeats some passages verbatim, so compare
  # counts: an epoch reads no row content more often than the split holds it.
  all_rows = Counter(_row_keys(_all_rows(dataset, "train")))
  if dataset.config.source != "kjv":
    assert max(all_rows.values()) == 1
  rows = dataset.num_rows("train")
  batch_size = BATCH_SIZE if dataset.config.source != "kjv" else 2048
  per_epoch = rows // batch_size
  iterator = dataset.iterator("train", batch_size, seed=7)
  epochs = [[key for batch in _take(iterator, per_epoch) for key in _row_keys(batch)]
            for _ in range(2)]
  for keys in epochs:
    assert len(keys) == per_epoch * batch_size
    assert Counter(keys) <= all_rows  # no row twice in an epoch
    assert (all_rows - Counter(keys)).total() == rows - per_epoch * batch_size
  assert epochs[0] != epochs[1]


def test_repeat_false_stops_after_one_epoch(dataset):
  batch_size = BATCH_SIZE if dataset.config.source != "kjv" else 256
  for split in ("train", "validation"):
    iterator = dataset.iterator(split, batch_size, seed=0, repeat=False)
    assert sum(1 for _ in iterator) == dataset.num_rows(split) // batch_size
    with pytest.raises(StopIteration):
      next(iterator)
  once = dataset.iterator("validation", batch_size, seed=5, repeat=False)
  repeating = dataset.iterator("validation", batch_size, seed=5)
  for batch in once:
    assert _same(batch, next(repeating))


def test_shards_together_read_exactly_the_global_batch(dataset):
  global_batches = _take(dataset.iterator("train", BATCH_SIZE, seed=2), 6)
  shards = [_take(dataset.iterator("train", BATCH_SIZE, seed=2, shard_index=s, shard_count=4),
                  6) for s in range(4)]
  for step, global_batch in enumerate(global_batches):
    union = Batch(*(np.concatenate(fields) for fields in zip(
        *(shards[s][step] for s in range(4)))))
    assert _same(union, global_batch)


@pytest.mark.parametrize("steps_past_an_epoch", [-2, 0, 3])
def test_set_state_resumes_where_get_state_left_off(byte_dataset, steps_past_an_epoch):
  per_epoch = byte_dataset.num_rows("train") // BATCH_SIZE
  steps = per_epoch + steps_past_an_epoch
  advanced = byte_dataset.iterator("train", BATCH_SIZE, seed=11)
  _take(advanced, steps)
  state = advanced.get_state()
  assert state == {"step": steps, "split": "train", "seed": 11, "batch_size": BATCH_SIZE}
  fresh = byte_dataset.iterator("train", BATCH_SIZE, seed=11)
  fresh.set_state(json.loads(json.dumps(state)))
  assert fresh.get_state() == state
  for a, b in zip(_take(advanced, per_epoch + 2), _take(fresh, per_epoch + 2)):
    assert _same(a, b)


def test_set_state_resumes_on_kjv_and_bpe(kjv_dataset, bpe_dataset):
  for dataset in (kjv_dataset, bpe_dataset):
    steps = dataset.num_rows("validation") // BATCH_SIZE + 1  # into the second epoch
    advanced = dataset.iterator("validation", BATCH_SIZE, seed=0)
    _take(advanced, steps)
    fresh = dataset.iterator("validation", BATCH_SIZE, seed=0)
    fresh.set_state(advanced.get_state())
    for a, b in zip(_take(advanced, 3), _take(fresh, 3)):
      assert _same(a, b)


def test_a_state_resumes_on_another_shard_count(byte_dataset):
  steps = byte_dataset.num_rows("train") // BATCH_SIZE + 1
  single = byte_dataset.iterator("train", BATCH_SIZE, seed=9)
  _take(single, steps)
  state = single.get_state()
  shards = [byte_dataset.iterator("train", BATCH_SIZE, seed=9, shard_index=s, shard_count=2)
            for s in range(2)]
  for shard in shards:
    shard.set_state(state)
    assert shard.get_state() == state
  for _ in range(3):
    global_batch = next(single)
    union = Batch(*(np.concatenate(fields) for fields in zip(*(next(s) for s in shards))))
    assert _same(union, global_batch)


def test_set_state_before_any_step_rewinds(byte_dataset):
  iterator = byte_dataset.iterator("train", BATCH_SIZE, seed=0)
  start = iterator.get_state()
  first = _take(iterator, 3)
  iterator.set_state(start)
  assert all(_same(a, b) for a, b in zip(first, _take(iterator, 3)))


# --- tokenizer_dir -----------------------------------------------------------------------------


def test_tokenizer_dir_saves_the_tokenizer_and_a_second_load_reads_it(corpus_dir, bpe_dataset,
                                                                       tmp_path):
  config = _config(corpus_dir, tokenizer="bpe", bpe_vocab_size=300)
  first = load_text_dataset(config, tokenizer_dir=tmp_path / "run")
  saved = tmp_path / "run" / "tokenizer.json"
  assert saved.is_file()
  contents = saved.read_bytes()
  sample = "<05> river and <17> falcon, in the garden."
  assert first.tokenizer.encode(sample).tolist() == bpe_dataset.tokenizer.encode(
      sample).tolist()

  # Another corpus through the same tokenizer_dir: the saved BPE is read, not retrained on it.
  other_corpus = tmp_path / "other"
  other_corpus.mkdir()
  sentences = ["Quick zephyrs blow, vexing daft Jim.", "Sphinx of black quartz, judge my vow!",
               "Jackdaws love my big sphinx of quartz.", "How vexingly quick daft zebras jump.",
               "Waltz, bad nymph, for quick jigs vex.", "Glib jocks quiz nymph to vex dwarf."]
  for i in range(8):
    (other_corpus / f"{i}.txt").write_text(" ".join(sentences[i % 6:] + sentences[:i % 6]) * 3,
                                           encoding="utf-8")
  other_config = dataclasses.replace(config, source=str(other_corpus))
  retrained = load_text_dataset(other_config)
  assert retrained.tokenizer.encode(sample).tolist() != first.tokenizer.encode(sample).tolist()
  second = load_text_dataset(other_config, tokenizer_dir=tmp_path / "run")
  assert second.tokenizer.encode(sample).tolist() == first.tokenizer.encode(sample).tolist()
  assert saved.read_bytes() == contents


def test_tokenizer_dir_with_a_byte_tokenizer(corpus_dir, byte_dataset, tmp_path):
  dataset = load_text_dataset(_config(corpus_dir), tokenizer_dir=tmp_path)
  assert json.loads((tmp_path / "tokenizer.json").read_text()) == {"name": "byte",
                                                                   "vocab_size": 256}
  again = load_text_dataset(_config(corpus_dir), tokenizer_dir=tmp_path)
  assert isinstance(again.tokenizer, ByteTokenizer)
  assert _same(next(again.iterator("train", BATCH_SIZE, seed=0)),
               next(dataset.iterator("train", BATCH_SIZE, seed=0)))


def test_tokenizer_dir_refuses_a_tokenizer_of_another_kind_or_size(corpus_dir, tmp_path):
  load_text_dataset(_config(corpus_dir, tokenizer="bpe", bpe_vocab_size=300),
                    tokenizer_dir=tmp_path)
  with pytest.raises(ValueError, match=r"tokenizer\.json holds a BPE tokenizer of 300 ids, not "
                     r"vocab_size=280"):
    load_text_dataset(_config(corpus_dir, tokenizer="bpe", bpe_vocab_size=280),
                      tokenizer_dir=tmp_path)
  with pytest.raises(ValueError, match=r"tokenizer\.json does not hold the byte tokenizer"):
    load_text_dataset(_config(corpus_dir), tokenizer_dir=tmp_path)


# --- errors ------------------------------------------------------------------------------------


def test_config_group_by_list_becomes_a_tuple_and_the_config_is_hashable():
  config = TextDataConfig(group_by=["book", "chapter"])
  assert config.group_by == ("book", "chapter")
  assert hash(config) == hash(TextDataConfig(group_by=("book", "chapter")))
  assert TextDataConfig(**json.loads(json.dumps(dataclasses.asdict(config)))) == config


@pytest.mark.parametrize("overrides, message", [
    ({"source": ""}, r"source must be a non-empty string, got source=''"),
    ({"source": None}, r"source must be a non-empty string, got source=None"),
    ({"text_field": ""}, r"text_field must be a non-empty string"),
    ({"tfds_split": 3}, r"tfds_split must be a non-empty string, got tfds_split=3"),
    ({"tokenizer": "wordpiece"},
     r"tokenizer must be one of \('byte', 'bpe'\), got tokenizer='wordpiece'"),
    ({"seq_len": 0}, r"seq_len must be an int >= 1, got seq_len=0"),
    ({"seq_len": 16.0}, r"seq_len must be an int >= 1, got seq_len=16.0"),
    ({"seq_len": True}, r"seq_len must be an int >= 1, got seq_len=True"),
    ({"bpe_vocab_size": 256}, r"bpe_vocab_size must be an int >= 257, got bpe_vocab_size=256"),
    ({"group_by": "book"}, r"group_by must be a tuple of field names, got group_by='book'"),
    ({"group_by": ("book", "")}, r"group_by must be a tuple of field names"),
    ({"group_by": ["book", 1]}, r"group_by must be a tuple of field names"),
    ({"validation_fraction": 0.0}, r"validation_fraction must be in \(0, 0.5\], got "
                                   r"validation_fraction=0.0"),
    ({"validation_fraction": 0.6}, r"validation_fraction must be in \(0, 0.5\]"),
    ({"validation_fraction": True}, r"validation_fraction must be in \(0, 0.5\]"),
    ({"validation_fraction": "0.1"}, r"validation_fraction must be in \(0, 0.5\]"),
    ({"data_dir": 3}, r"data_dir must be a string or None, got data_dir=3"),
])
def test_config_refuses_bad_fields(overrides, message):
  with pytest.raises(ValueError, match=message):
    TextDataConfig(**overrides)


def test_too_few_documents_to_hold_one_out(tmp_path):
  for i in range(3):
    (tmp_path / f"{i}.txt").write_text(f"document {i}", encoding="utf-8")
  with pytest.raises(ValueError, match=r"the source has 3 document\(s\), too few to hold out "
                     r"every 4-th for validation \(validation_fraction=0.25\)"):
    load_text_dataset(_config(tmp_path))


def test_a_bad_source_is_refused_by_load_text_dataset(tmp_path):
  with pytest.raises(ValueError, match="matches no file"):
    load_text_dataset(_config(tmp_path / "nothing_here"))


def test_split_must_be_train_or_validation(byte_dataset):
  message = r"split must be one of \('train', 'validation'\), got split='test'"
  with pytest.raises(ValueError, match=message):
    byte_dataset.iterator("test", BATCH_SIZE, seed=0)
  with pytest.raises(ValueError, match=message):
    byte_dataset.num_rows("test")
  with pytest.raises(ValueError, match=message):
    byte_dataset.bytes_per_token("test")


@pytest.mark.parametrize("arguments, message", [
    ({"batch_size": 0}, r"batch_size must be an int >= 1, got batch_size=0"),
    ({"batch_size": 8.0}, r"batch_size must be an int >= 1, got batch_size=8.0"),
    ({"seed": -1}, r"seed must be an int >= 0, got seed=-1"),
    ({"seed": None}, r"seed must be an int >= 0, got seed=None"),
    ({"shard_count": 0}, r"shard_count must be an int >= 1, got shard_count=0"),
    ({"shard_index": 4, "shard_count": 4},
     r"shard_index must be in \[0, shard_count=4\), got shard_index=4"),
    ({"shard_index": -1, "shard_count": 4},
     r"shard_index must be in \[0, shard_count=4\), got shard_index=-1"),
    ({"shard_index": 1}, r"shard_index must be in \[0, shard_count=1\), got shard_index=1"),
    ({"shard_index": True, "shard_count": 2}, r"shard_index must be in \[0, shard_count=2\)"),
    ({"batch_size": 6, "shard_count": 4},
     r"batch_size=6 must be divisible by shard_count=4"),
    ({"repeat": 1}, r"repeat must be a bool, got repeat=1"),
])
def test_iterator_refuses_bad_arguments(byte_dataset, arguments, message):
  settings = {"batch_size": BATCH_SIZE, "seed": 0, **arguments}
  with pytest.raises(ValueError, match=message):
    byte_dataset.iterator("train", **settings)


def test_iterator_refuses_a_batch_bigger_than_the_split(byte_dataset):
  rows = byte_dataset.num_rows("validation")
  assert len(_take(byte_dataset.iterator("validation", rows, seed=0), 2)) == 2
  with pytest.raises(ValueError, match=rf"split='validation' has {rows} rows of seq_len="
                     rf"{SEQ_LEN}, fewer than one batch of batch_size={rows + 1}"):
    byte_dataset.iterator("validation", rows + 1, seed=0)


@pytest.mark.parametrize("change, message", [
    ({"seed": 2}, r"state is the position of an iterator with seed=2, this one has seed=1"),
    ({"batch_size": 4},
     r"state is the position of an iterator with batch_size=4, this one has batch_size=8"),
    ({"split": "validation"}, r"state is the position of an iterator with split='validation', "
                              r"this one has split='train'"),
    ({"step": -1}, r"state\['step'\] must be an int >= 0, got state\['step'\]=-1"),
    ({"step": 1.0}, r"state\['step'\] must be an int >= 0"),
    ({"extra": 0}, r"state must be a dict from get_state with keys \['batch_size', 'seed', "
                   r"'split', 'step'\]"),
])
def test_set_state_refuses_a_state_of_another_iterator(byte_dataset, change, message):
  iterator = byte_dataset.iterator("train", BATCH_SIZE, seed=1)
  state = {**iterator.get_state(), **change}
  with pytest.raises(ValueError, match=message):
    iterator.set_state(state)
  assert iterator.get_state()["step"] == 0


@pytest.mark.parametrize("state", [None, [("step", 0)], {"step": 0}])
def test_set_state_refuses_what_is_not_a_state(byte_dataset, state):
  with pytest.raises(ValueError, match=r"state must be a dict from get_state"):
    byte_dataset.iterator("train", BATCH_SIZE, seed=1).set_state(state)

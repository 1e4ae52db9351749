"""Train and validation text as a user brings it: a single .txt file split by position (nanoGPT's
90/10 and any fraction, the cut moved to a character boundary, byte and BPE), a folder split by
position, explicit train and validation sources (files, folders, lists of files), and bad input
named clearly (missing file, empty file, shared files, a validation split too small for a row)."""

import dataclasses
import json
import re

import numpy as np
import pytest

from momentum_jax.data import TextDataConfig, load_text_dataset

SEQ_LEN = 8
LINES = [f"Line {i}: the {('quiet', 'amber', 'north', 'stone')[i % 4]} river runs past mill "
         f"{i * 7 % 13}." for i in range(60)]
TEXT = "\n".join(LINES) + "\n"


def _split_tokens(dataset, split) -> np.ndarray:
  tokens = dataset.token_file(split)
  return np.fromfile(tokens.tokens_path, tokens.dtype)


def _split_text(dataset, split) -> str:
  return dataset.tokenizer.decode(_split_tokens(dataset, split))


def _ends(dataset, split) -> list[int]:
  return np.fromfile(dataset.token_file(split).ends_path, np.int64).tolist()


def _write(path, text):
  path.write_text(text, encoding="utf-8")
  return path


# --- one file, split by position -----------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.1, 0.05, 0.5])
def test_a_single_file_is_split_by_position_its_last_fraction_held_out(tmp_path, fraction):
  path = _write(tmp_path / "input.txt", TEXT)
  dataset = load_text_dataset(TextDataConfig(source=str(path), seq_len=SEQ_LEN,
                                             validation_fraction=fraction))
  cut = int(len(TEXT) * (1 - fraction))  # nanoGPT: data[:int(n * 0.9)], data[int(n * 0.9):]
  assert _split_text(dataset, "train") == TEXT[:cut]
  assert _split_text(dataset, "validation") == TEXT[cut:]
  assert _ends(dataset, "train") == [cut] and _ends(dataset, "validation") == [len(TEXT) - cut]
  assert dataset.num_rows("validation") == -(-(len(TEXT) - cut) // (SEQ_LEN + 1))


def test_the_position_cut_moves_forward_to_a_character_boundary(tmp_path):
  text = "a" * 89 + "é" + "b" * 9  # 100 bytes; byte 90 is the second byte of é
  dataset = load_text_dataset(TextDataConfig(source=str(_write(tmp_path / "x.txt", text)),
                                             seq_len=4, validation_fraction=0.1))
  assert _split_text(dataset, "train") == "a" * 89 + "é"
  assert _split_text(dataset, "validation") == "b" * 9


def test_a_bpe_position_split_trains_on_the_head_and_decodes_back_to_the_text(tmp_path):
  path = _write(tmp_path / "input.txt", TEXT * 3)
  dataset = load_text_dataset(TextDataConfig(source=str(path), seq_len=SEQ_LEN,
                                             tokenizer="bpe", bpe_vocab_size=300,
                                             validation_fraction=0.1))
  cut = int(len(TEXT * 3) * 0.9)
  assert _split_text(dataset, "train") == (TEXT * 3)[:cut]
  assert _split_text(dataset, "validation") == (TEXT * 3)[cut:]
  assert dataset.bytes_per_token("train") > 1.2


def test_a_folder_split_by_position_keeps_its_documents_and_cuts_one_in_two(tmp_path):
  texts = [f"{i:02d} " + " ".join(LINES[i:i + 5]) + "\n" for i in range(10)]
  for i, text in enumerate(texts):
    _write(tmp_path / f"{i:02d}.txt", text)
  dataset = load_text_dataset(TextDataConfig(source=str(tmp_path), seq_len=SEQ_LEN,
                                             split_by="position", validation_fraction=0.25))
  total = sum(len(t) for t in texts)
  cut = int(total * 0.75)
  assert _split_text(dataset, "train") + _split_text(dataset, "validation") == "".join(texts)
  assert len(_split_text(dataset, "train")) == cut
  ends = np.cumsum([len(t) for t in texts]).tolist()
  assert _ends(dataset, "train") == [end for end in ends if end < cut] + [cut]
  assert _ends(dataset, "validation") == [end - cut for end in ends if end > cut]


def test_auto_splits_a_folder_of_many_documents_by_document(tmp_path):
  for i in range(8):
    _write(tmp_path / f"{i}.txt", f"document {i}: " + LINES[i] + "\n")
  dataset = load_text_dataset(TextDataConfig(source=str(tmp_path), seq_len=SEQ_LEN,
                                             validation_fraction=0.25))
  validation = _split_text(dataset, "validation")
  assert validation == "document 3: " + LINES[3] + "\n" + "document 7: " + LINES[7] + "\n"


# --- explicit sources ----------------------------------------------------------------------------


def test_explicit_train_files_and_a_validation_folder(tmp_path):
  train_a = _write(tmp_path / "a.txt", TEXT)
  train_b = _write(tmp_path / "b.jsonl", "".join(json.dumps({"text": line}) + "\n"
                                                 for line in LINES[:10]))
  (tmp_path / "held").mkdir()
  _write(tmp_path / "held" / "2.txt", "second held-out text, long enough for a row.\n")
  _write(tmp_path / "held" / "1.txt", "first held-out text, long enough for a row.\n")
  config = TextDataConfig(source=[str(train_a), str(train_b)],
                          validation_source=str(tmp_path / "held"), seq_len=SEQ_LEN)
  assert config.source == (str(train_a), str(train_b))
  dataset = load_text_dataset(config)
  assert _split_text(dataset, "train") == TEXT + "".join(LINES[:10])
  assert _split_text(dataset, "validation") == ("first held-out text, long enough for a row.\n"
                                                "second held-out text, long enough for a row.\n")
  assert len(_ends(dataset, "train")) == 11 and len(_ends(dataset, "validation")) == 2
  assert TextDataConfig(**json.loads(json.dumps(dataclasses.asdict(config)))) == config


def test_a_validation_file_beside_a_train_file_is_the_nanogpt_layout(tmp_path):
  _write(tmp_path / "train.txt", TEXT)
  _write(tmp_path / "val.txt", TEXT[:200])
  dataset = load_text_dataset(TextDataConfig(source=str(tmp_path / "train.txt"),
                                             validation_source=str(tmp_path / "val.txt"),
                                             seq_len=SEQ_LEN))
  assert _split_text(dataset, "train") == TEXT
  assert _split_text(dataset, "validation") == TEXT[:200]


# --- bad input -----------------------------------------------------------------------------------


def test_a_missing_train_or_validation_file_is_named(tmp_path):
  present = _write(tmp_path / "present.txt", TEXT)
  missing = tmp_path / "missing.txt"
  with pytest.raises(ValueError, match=rf"source={re.escape(repr(str(missing)))} matches no file "
                     r"\(no such file or folder\)"):
    load_text_dataset(TextDataConfig(source=[str(present), str(missing)], seq_len=SEQ_LEN))
  with pytest.raises(ValueError, match=rf"validation_source: source="
                     rf"{re.escape(repr(str(missing)))} matches no file"):
    load_text_dataset(TextDataConfig(source=str(present), validation_source=str(missing),
                                     seq_len=SEQ_LEN))


def test_an_empty_train_or_validation_file_is_named(tmp_path):
  present = _write(tmp_path / "present.txt", TEXT)
  empty = _write(tmp_path / "empty.txt", " \n")
  with pytest.raises(ValueError, match=r"empty\.txt is empty"):
    load_text_dataset(TextDataConfig(source=str(present), validation_source=str(empty),
                                     seq_len=SEQ_LEN))
  with pytest.raises(ValueError, match=r"empty\.txt is empty"):
    load_text_dataset(TextDataConfig(source=[str(present), str(empty)], seq_len=SEQ_LEN))


def test_a_file_in_both_sources_is_refused(tmp_path):
  for name in ("a.txt", "b.txt"):
    _write(tmp_path / name, TEXT)
  with pytest.raises(ValueError, match=r"source and validation_source share 1 file\(s\), e\.g\. "
                     r".*b\.txt: the validation text must not be trained on"):
    load_text_dataset(TextDataConfig(source=str(tmp_path), validation_source=str(
        tmp_path / "b.txt"), seq_len=SEQ_LEN))


def test_a_validation_split_too_small_for_one_row_is_named(tmp_path):
  path = _write(tmp_path / "short.txt", "x" * 100)
  with pytest.raises(ValueError, match=r"the validation split holds 5 tokens, fewer than one row "
                     r"of seq_len \+ 1 = 17: give more validation text \(a larger "
                     r"validation_fraction or a longer validation_source"):
    load_text_dataset(TextDataConfig(source=str(path), seq_len=16))
  with pytest.raises(ValueError, match=r"the validation split holds 3 tokens, fewer than one row"):
    load_text_dataset(TextDataConfig(source=str(path), seq_len=4,
                                     validation_source=str(_write(tmp_path / "v.txt", "abc"))))


def test_too_few_documents_for_a_document_split_says_what_to_do(tmp_path):
  for i in range(3):
    _write(tmp_path / f"{i}.txt", f"document {i}")
  with pytest.raises(ValueError, match=r"the source has 3 document\(s\), too few to hold out "
                     r"every 4-th .*: give a validation_source, or split_by='position'"):
    load_text_dataset(TextDataConfig(source=str(tmp_path), split_by="document",
                                     validation_fraction=0.25, seq_len=SEQ_LEN))


@pytest.mark.parametrize("overrides, message", [
    ({"source": ["a.txt", ""]}, r"source\[1\] must be a non-empty string, got source\[1\]=''"),
    ({"source": []}, r"source must be a non-empty string, got source=\(\)"),
    ({"validation_source": ""}, r"validation_source must be a non-empty string, got "
                                r"validation_source=''"),
    ({"validation_source": ["v.txt", 3]}, r"validation_source\[1\] must be a non-empty string"),
    ({"split_by": "random"}, r"split_by must be one of \('auto', 'document', 'position'\), got "
                             r"split_by='random'"),
    ({"validation_source": "v.txt", "split_by": "position"},
     r"split_by='position' cuts one source in two; with validation_source='v.txt' given, source "
     r"is the train text and validation_source the validation text: leave split_by='auto'"),
])
def test_config_refuses_bad_sources_and_splits(overrides, message):
  with pytest.raises(ValueError, match=message):
    TextDataConfig(**overrides)

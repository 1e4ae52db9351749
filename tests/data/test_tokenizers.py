"""Tokenisers: ByteTokenizer (UTF-8 bytes, exact round trip, id checks), BpeTokenizer (trained on a
small English corpus: deterministic, exact round trip, the requested vocabulary, compression,
save/load) and load_tokenizer (saves when the file is absent, loads without retraining when it
is present, refuses a file of another kind or size)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from momentum_jax.data import BpeTokenizer, ByteTokenizer, load_tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog, and the dog sleeps on in the sun.",
    "In the morning the farmer walks to the field; in the evening he walks home again.",
    "A language model predicts the next token of a text from the tokens before it.",
    "Tokenisers split the text into pieces: bytes, or merges of frequent byte pairs.",
    "She sells sea shells by the sea shore, and the shells she sells are sea shells.",
    "How much wood would a woodchuck chuck if a woodchuck could chuck wood?",
    "The rain in Spain stays mainly in the plain, said the teacher to the student.",
    "Training is deterministic when the same texts give the same merges every time.",
] * 3
UNSEEN_TEXTS = [
    "Hello, world! This sentence was not in the training texts.",
    "  leading spaces, trailing spaces  \n\ttabs and\r\nnewlines\n",
    "naïve café, Grüße, Ελληνικά, 日本語のテキスト, emoji 🙂🚀 and a NUL \x00 byte",
    "",
]
BPE_VOCAB_SIZE = 320


@pytest.fixture(scope="module")
def bpe():
  return BpeTokenizer.train(CORPUS, BPE_VOCAB_SIZE)


def _encodings(tokenizer, texts):
  return [tokenizer.encode(text).tolist() for text in texts]


# --- ByteTokenizer -----------------------------------------------------------------------------


def test_byte_tokenizer_ids_are_the_utf8_bytes_and_decode_inverts_them():
  tokenizer = ByteTokenizer()
  assert tokenizer.name == "byte"
  assert tokenizer.vocab_size == 256
  for text in UNSEEN_TEXTS:
    ids = tokenizer.encode(text)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert ids.tolist() == list(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids.tolist()) == text
  assert tokenizer.encode("é").tolist() == [0xC3, 0xA9]
  assert [ids.tolist() for ids in tokenizer.encode_batch(UNSEEN_TEXTS)] == _encodings(
      tokenizer, UNSEEN_TEXTS)


def test_byte_tokenizer_decodes_a_character_cut_in_the_middle_as_a_replacement_character():
  tokenizer = ByteTokenizer()
  assert tokenizer.decode(tokenizer.encode("aé")[:2]) == "a\ufffd"


@pytest.mark.parametrize("ids, bad", [([104, 105, 256], 256), ([-1, 104], -1), ([300, 1000], 300)])
def test_byte_tokenizer_decode_refuses_ids_out_of_range_naming_them(ids, bad):
  with pytest.raises(ValueError, match=rf"ids must be in \[0, vocab_size=256\), got {bad}$"):
    ByteTokenizer().decode(ids)


@pytest.mark.parametrize("ids", [[[104, 105]], [1.5, 2.0], np.zeros((2, 2), np.int32)])
def test_byte_tokenizer_decode_refuses_ids_that_are_not_a_1d_int_sequence(ids):
  with pytest.raises(ValueError, match="ids must be a 1-D sequence of ints"):
    ByteTokenizer().decode(ids)


def test_byte_tokenizer_saves_its_name_and_size(tmp_path):
  ByteTokenizer().save(tmp_path / "tokenizer.json")
  assert json.loads((tmp_path / "tokenizer.json").read_text()) == {"name": "byte",
                                                                   "vocab_size": 256}


# --- BpeTokenizer ------------------------------------------------------------------------------


def test_bpe_has_the_requested_vocab_size_and_name(bpe):
  assert bpe.name == "bpe"
  assert bpe.vocab_size == BPE_VOCAB_SIZE
  ids = np.concatenate(bpe.encode_batch(CORPUS))
  assert ids.dtype == np.int32
  assert ids.min() >= 0 and ids.max() < BPE_VOCAB_SIZE
  assert ids.max() >= 256  # merges beyond the byte alphabet are used


def test_bpe_training_is_deterministic(bpe):
  retrained = BpeTokenizer.train(CORPUS, BPE_VOCAB_SIZE)
  texts = CORPUS + UNSEEN_TEXTS
  assert _encodings(retrained, texts) == _encodings(bpe, texts)


def test_bpe_training_gives_the_same_file_in_another_process(bpe, tmp_path):
  bpe.save(tmp_path / "here.json")
  script = ("import sys\nfrom momentum_jax.data import BpeTokenizer\n"
            f"BpeTokenizer.train({CORPUS!r}, {BPE_VOCAB_SIZE}).save(sys.argv[1])\n")
  environment = dict(os.environ, PYTHONHASHSEED="12345", JAX_PLATFORMS="cpu")
  subprocess.run([sys.executable, "-c", script, str(tmp_path / "there.json")], check=True,
                 env=environment, timeout=120)
  assert (tmp_path / "there.json").read_bytes() == (tmp_path / "here.json").read_bytes()


def test_bpe_decode_inverts_encode_exactly(bpe):
  for text in CORPUS + UNSEEN_TEXTS:
    assert bpe.decode(bpe.encode(text)) == text
    assert bpe.decode(bpe.encode(text).tolist()) == text


def test_bpe_encode_batch_equals_encode_of_each_text(bpe):
  texts = CORPUS + UNSEEN_TEXTS
  assert [ids.tolist() for ids in bpe.encode_batch(texts)] == _encodings(bpe, texts)


def test_bpe_uses_fewer_tokens_than_bytes_on_english_text(bpe):
  for text in CORPUS[:8] + ["The farmer said the rain in the field was deterministic."]:
    assert len(bpe.encode(text)) < 0.8 * len(text.encode("utf-8")), text


def test_bpe_save_and_load_give_identical_encodings(bpe, tmp_path):
  bpe.save(tmp_path / "bpe.json")
  loaded = BpeTokenizer.load(tmp_path / "bpe.json")
  assert loaded.vocab_size == BPE_VOCAB_SIZE
  texts = CORPUS + UNSEEN_TEXTS
  assert _encodings(loaded, texts) == _encodings(bpe, texts)
  assert loaded.decode(bpe.encode(UNSEEN_TEXTS[2])) == UNSEEN_TEXTS[2]


def test_bpe_decode_refuses_ids_out_of_range(bpe):
  with pytest.raises(ValueError, match=rf"ids must be in \[0, vocab_size={BPE_VOCAB_SIZE}\), "
                     rf"got {BPE_VOCAB_SIZE}$"):
    bpe.decode([1, 2, BPE_VOCAB_SIZE])


@pytest.mark.parametrize("vocab_size", [256, 100, 300.0, True, "512"])
def test_bpe_train_refuses_a_vocab_size_that_is_not_an_int_above_256(vocab_size):
  with pytest.raises(ValueError, match=r"vocab_size must be an int > 256 \(the byte alphabet\)"):
    BpeTokenizer.train(CORPUS, vocab_size)


def test_bpe_train_refuses_a_vocab_size_the_texts_cannot_reach():
  with pytest.raises(ValueError, match=r"the training texts yield only \d+ BPE ids, fewer than "
                     r"vocab_size=5000"):
    BpeTokenizer.train(["abab abab"], 5000)


def test_bpe_load_refuses_a_file_that_is_not_a_bpe_tokenizer(tmp_path):
  (tmp_path / "not_bpe.json").write_text('{"hello": "world"}')
  with pytest.raises(ValueError, match=r"not_bpe\.json is not a saved BPE tokenizer"):
    BpeTokenizer.load(tmp_path / "not_bpe.json")
  with pytest.raises(ValueError, match=r"missing\.json is not a saved BPE tokenizer"):
    BpeTokenizer.load(tmp_path / "missing.json")


# --- load_tokenizer ----------------------------------------------------------------------------


def test_load_tokenizer_without_a_path_makes_or_trains_and_saves_nothing(bpe, tmp_path,
                                                                        monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert isinstance(load_tokenizer("byte"), ByteTokenizer)
  assert isinstance(load_tokenizer("byte", vocab_size=256), ByteTokenizer)
  trained = load_tokenizer("bpe", vocab_size=BPE_VOCAB_SIZE, train_texts=CORPUS)
  assert _encodings(trained, CORPUS) == _encodings(bpe, CORPUS)
  assert list(tmp_path.iterdir()) == []


def test_load_tokenizer_byte_saves_when_absent_and_loads_when_present(tmp_path):
  path = tmp_path / "run" / "nested" / "tokenizer.json"  # parent folders are made
  assert isinstance(load_tokenizer("byte", path=path), ByteTokenizer)
  assert json.loads(path.read_text()) == {"name": "byte", "vocab_size": 256}
  assert isinstance(load_tokenizer("byte", path=str(path)), ByteTokenizer)
  # A file that is present is only read, never rewritten.
  path.write_text(json.dumps({"vocab_size": 256, "name": "byte"}, indent=2))
  contents = path.read_bytes()
  assert isinstance(load_tokenizer("byte", path=path, vocab_size=256), ByteTokenizer)
  assert path.read_bytes() == contents


def test_load_tokenizer_bpe_saves_when_absent_and_loads_without_retraining(bpe, tmp_path):
  path = tmp_path / "tokenizer.json"
  first = load_tokenizer("bpe", path=path, vocab_size=BPE_VOCAB_SIZE, train_texts=CORPUS)
  assert path.is_file()
  saved = path.read_bytes()
  texts = CORPUS + UNSEEN_TEXTS
  assert _encodings(first, texts) == _encodings(bpe, texts)

  other_texts = ["Completely different training text, zebra quartz jinx vexed. " * 10,
                 "Other words entirely: xylophone, quixotic, zephyr, jackdaw, sphinx. " * 10]
  retrained_on_other_texts = BpeTokenizer.train(other_texts, BPE_VOCAB_SIZE)
  assert _encodings(retrained_on_other_texts, texts) != _encodings(bpe, texts)

  loaded = load_tokenizer("bpe", path=path, vocab_size=BPE_VOCAB_SIZE, train_texts=other_texts)
  assert _encodings(loaded, texts) == _encodings(bpe, texts)
  loaded_without_texts = load_tokenizer("bpe", path=path)  # neither texts nor size needed
  assert _encodings(loaded_without_texts, texts) == _encodings(bpe, texts)
  assert path.read_bytes() == saved


def test_load_tokenizer_refuses_a_saved_bpe_of_another_size(bpe, tmp_path):
  path = tmp_path / "tokenizer.json"
  bpe.save(path)
  with pytest.raises(ValueError, match=rf"tokenizer\.json holds a BPE tokenizer of "
                     rf"{BPE_VOCAB_SIZE} ids, not vocab_size=400"):
    load_tokenizer("bpe", path=path, vocab_size=400, train_texts=CORPUS)


def test_load_tokenizer_refuses_a_saved_tokenizer_of_another_kind(bpe, tmp_path):
  bpe_path, byte_path = tmp_path / "bpe.json", tmp_path / "byte.json"
  bpe.save(bpe_path)
  ByteTokenizer().save(byte_path)
  with pytest.raises(ValueError, match=r"bpe\.json does not hold the byte tokenizer"):
    load_tokenizer("byte", path=bpe_path)
  with pytest.raises(ValueError, match=r"byte\.json is not a saved BPE tokenizer"):
    load_tokenizer("bpe", path=byte_path, vocab_size=BPE_VOCAB_SIZE, train_texts=CORPUS)


def test_load_tokenizer_byte_refuses_a_file_that_is_not_json(tmp_path):
  path = tmp_path / "tokenizer.json"
  path.write_bytes(b"\xff\xfe not json")
  with pytest.raises(ValueError, match=r"tokenizer\.json is not a saved byte tokenizer"):
    load_tokenizer("byte", path=path)


def test_load_tokenizer_refuses_an_unknown_name():
  with pytest.raises(ValueError, match=r"tokenizer must be one of \('byte', 'bpe'\), got "
                     r"tokenizer='wordpiece'"):
    load_tokenizer("wordpiece")


def test_load_tokenizer_byte_refuses_a_vocab_size_other_than_256():
  with pytest.raises(ValueError, match=r"the byte tokenizer has 256 ids, got vocab_size=512"):
    load_tokenizer("byte", vocab_size=512)


@pytest.mark.parametrize("arguments", [{"vocab_size": BPE_VOCAB_SIZE}, {"train_texts": CORPUS},
                                       {}])
def test_load_tokenizer_bpe_without_a_file_needs_texts_and_a_size(tmp_path, arguments):
  with pytest.raises(ValueError, match=r"tokenizer='bpe' needs a saved tokenizer file at path, "
                     r"or train_texts and vocab_size"):
    load_tokenizer("bpe", path=tmp_path / "absent.json", **arguments)
  assert not (tmp_path / "absent.json").exists()

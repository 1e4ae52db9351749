"""Token files through load_text_dataset(token_dir=...): the rows read from the memory-mapped files
equal pack_documents of the same documents (the in-memory reference), byte and BPE; the manifest;
a second load reuses the files; a changed source, config field or tokeniser and a damaged file are
refused by name; a streamed file resumes bit-identically (in this process and in a fresh one);
small pieces and small encode batches write the same files; a tfds source streams into the same
format; the temporary folder of a dataset without token_dir lives as long as its iterators."""

import dataclasses
import gc
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from momentum_jax.data import (
    TextDataConfig, TokenFile, load_text_dataset, pack_documents, read_documents)
from momentum_jax.data import token_files
from momentum_jax.data.text_splits import plan_split, split_pieces

try:
  import tensorflow_datasets as tfds
except ImportError:  # the optional text extra: the tfds test skips, the others run
  tfds = None

SEQ_LEN = 16
BATCH_SIZE = 4
WORDS = ("north", "amber", "quill", "ridge", "tundra", "vessel", "lumen", "cobalt", "fjord",
         "hollow", "ember", "sable", "juniper", "osprey")


def _document(i: int) -> str:
  """Lines of four words (newlines where a piece may be cut), some ending in blank or indented
  lines (where it may not)."""
  words = [WORDS[(5 * i + 3 * j) % len(WORDS)] for j in range(20 + 7 * (i % 5))]
  lines = [" ".join(words[k:k + 4]) for k in range(0, len(words), 4)]
  return f"[{i:02d}] " + "\n".join(lines) + (".\n" if i % 3 else "!\n\n  indented line\n")


DOCUMENTS = [_document(i) for i in range(24)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  folder = tmp_path_factory.mktemp("corpus")
  for i, text in enumerate(DOCUMENTS):
    (folder / f"doc_{i:02d}.txt").write_text(text, encoding="utf-8")
  return folder


def _config(corpus, **overrides) -> TextDataConfig:
  return TextDataConfig(**{"source": str(corpus), "seq_len": SEQ_LEN,
                           "validation_fraction": 0.25, **overrides})


def _all_rows(dataset, split):
  tokens = dataset.token_file(split)
  return tokens.read_rows(np.arange(tokens.num_rows(dataset.seq_len)), dataset.seq_len)


def _same(first, second) -> bool:
  return all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def _take(iterator, count):
  return [next(iterator) for _ in range(count)]


@pytest.mark.parametrize("tokenizer, dtype", [("byte", "|u1"), ("bpe", "<u2")])
def test_rows_from_the_token_files_equal_pack_documents_of_the_split_documents(
    corpus, tmp_path, tokenizer, dtype):
  dataset = load_text_dataset(_config(corpus, tokenizer=tokenizer, bpe_vocab_size=300),
                              token_dir=tmp_path)
  held_out = {"train": [d for i, d in enumerate(DOCUMENTS) if i % 4 != 3],
              "validation": [d for i, d in enumerate(DOCUMENTS) if i % 4 == 3]}
  for split, texts in held_out.items():
    reference = pack_documents(dataset.tokenizer.encode_batch(texts), SEQ_LEN)
    assert _same(_all_rows(dataset, split), reference)
    assert dataset.token_file(split).dtype == dtype
    assert dataset.num_rows(split) == len(reference.tokens)


def test_the_manifest_records_tokenizer_source_split_and_counts(corpus, tmp_path):
  dataset = load_text_dataset(_config(corpus), token_dir=tmp_path)
  manifest = json.loads((tmp_path / "manifest.json").read_text())
  assert manifest["format"] == token_files.FORMAT
  assert manifest["tokenizer"]["name"] == "byte" and manifest["tokenizer"]["vocab_size"] == 256
  assert manifest["tokenizer"]["sha256"] == token_files.file_sha256(tmp_path / "tokenizer.json")
  assert manifest["source"]["config"]["source"] == str(corpus)
  files = manifest["source"]["train"][0]["files"]
  assert list(files) == [str(corpus / f"doc_{i:02d}.txt") for i in range(24)]
  assert manifest["split"] == {"by": "document", "period": 4, "cut_byte": None,
                               "source_bytes": None}
  for split, count in (("train", 18), ("validation", 6)):
    entry = manifest["splits"][split]
    assert entry["documents"] == count
    tokens = np.fromfile(tmp_path / f"{split}.tokens", np.uint8)
    assert entry["tokens"] == len(tokens) == entry["text_bytes"]
    ends = np.fromfile(tmp_path / f"{split}.ends", np.int64)
    assert len(ends) == count and ends[-1] == len(tokens)
    assert entry["tokens_sha256"] == token_files.file_sha256(tmp_path / f"{split}.tokens")
    assert isinstance(dataset.token_file(split), TokenFile)
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".partial")]


def test_a_second_load_reuses_the_files_for_any_seq_len(corpus, tmp_path):
  first = load_text_dataset(_config(corpus), token_dir=tmp_path)
  stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
  again = load_text_dataset(_config(corpus), token_dir=tmp_path)
  longer = load_text_dataset(_config(corpus, seq_len=2 * SEQ_LEN), token_dir=tmp_path)
  assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamps
  assert _same(next(first.iterator("train", BATCH_SIZE, seed=0)),
               next(again.iterator("train", BATCH_SIZE, seed=0)))
  assert next(longer.iterator("train", BATCH_SIZE, seed=0)).tokens.shape == (BATCH_SIZE,
                                                                             2 * SEQ_LEN)


def test_a_bpe_tokenizer_is_read_back_from_the_token_dir_and_kept_in_tokenizer_dir(corpus,
                                                                                 tmp_path):
  config = _config(corpus, tokenizer="bpe", bpe_vocab_size=300)
  first = load_text_dataset(config, token_dir=tmp_path / "tokens")
  again = load_text_dataset(config, token_dir=tmp_path / "tokens", tokenizer_dir=tmp_path / "run")
  assert (tmp_path / "run" / "tokenizer.json").read_bytes() == (
      tmp_path / "tokens" / "tokenizer.json").read_bytes()
  sample = "[05] juniper and osprey by the fjord."
  assert again.tokenizer.encode(sample).tolist() == first.tokenizer.encode(sample).tolist()


def _copy(corpus, folder):
  folder.mkdir()
  for path in corpus.iterdir():
    (folder / path.name).write_bytes(path.read_bytes())
  return folder


def test_a_changed_or_added_source_file_is_named(corpus, tmp_path):
  changed = _copy(corpus, tmp_path / "changed")
  load_text_dataset(_config(changed), token_dir=tmp_path / "tokens_1")
  (changed / "doc_05.txt").write_text(DOCUMENTS[5] + "one more line\n", encoding="utf-8")
  with pytest.raises(ValueError, match=r"tokens_1 holds tokens of another source: "
                     r"source\.train\[0\]\.files\..*doc_05\.txt\.bytes is \d+ now, \d+ when the "
                     r"tokens were written; remove the folder to tokenise anew"):
    load_text_dataset(_config(changed), token_dir=tmp_path / "tokens_1")
  added = _copy(corpus, tmp_path / "added")
  load_text_dataset(_config(added), token_dir=tmp_path / "tokens_2")
  (added / "doc_99.txt").write_text("a new document", encoding="utf-8")
  with pytest.raises(ValueError, match=r"another source: source\.train\[0\]\.files\..*"
                     r"doc_99\.txt\.bytes is 14 now, '<absent>' when"):
    load_text_dataset(_config(added), token_dir=tmp_path / "tokens_2")


@pytest.mark.parametrize("change, message", [
    ({"validation_fraction": 0.5}, r"another source: source\.config\.validation_fraction is 0\.5 "
                                   r"now, 0\.25 when the tokens were written"),
    ({"split_by": "position"}, r"source\.config\.split_by is 'position' now, 'auto'"),
    ({"tokenizer": "bpe", "bpe_vocab_size": 300},
     r"another tokenizer: tokenizer\.name is 'bpe' now, 'byte' when the tokens were written"),
])
def test_a_changed_config_or_tokenizer_is_named(corpus, tmp_path, change, message):
  load_text_dataset(_config(corpus), token_dir=tmp_path)
  with pytest.raises(ValueError, match=message):
    load_text_dataset(_config(corpus, **change), token_dir=tmp_path)


def test_a_tokenizer_dir_holding_another_tokenizer_is_refused(corpus, tmp_path):
  config = _config(corpus, tokenizer="bpe", bpe_vocab_size=300)
  load_text_dataset(config, token_dir=tmp_path / "tokens")
  other = tmp_path / "other"
  other.mkdir()
  sentences = ["Quick zephyrs blow, vexing daft Jim.", "Sphinx of black quartz, judge my vow!",
               "Jackdaws love my big sphinx of quartz.", "How vexingly quick daft zebras jump.",
               "Waltz, bad nymph, for quick jigs vex.", "Glib jocks quiz nymph to vex dwarf."]
  for i in range(8):
    (other / f"{i}.txt").write_text(" ".join(sentences[i % 6:] + sentences[:i % 6]) * 3,
                                    encoding="utf-8")
  load_text_dataset(dataclasses.replace(config, source=str(other)),
                    tokenizer_dir=tmp_path / "run")  # a BPE trained on the other text
  with pytest.raises(ValueError, match=r"run/tokenizer\.json holds another tokenizer than the one "
                     r"the tokens in .*tokens were made with"):
    load_text_dataset(config, token_dir=tmp_path / "tokens", tokenizer_dir=tmp_path / "run")


def test_a_damaged_or_truncated_token_file_is_refused(corpus, tmp_path):
  load_text_dataset(_config(corpus), token_dir=tmp_path)
  path = tmp_path / "train.tokens"
  data = bytearray(path.read_bytes())
  data[100] ^= 1
  path.write_bytes(bytes(data))
  with pytest.raises(ValueError, match=r"train\.tokens fails its SHA-256"):
    load_text_dataset(_config(corpus), token_dir=tmp_path)
  path.write_bytes(bytes(data[:-3]))
  with pytest.raises(ValueError, match=rf"train\.tokens should hold {len(data)} bytes by .*"
                     rf"manifest\.json, found {len(data) - 3}"):
    load_text_dataset(_config(corpus), token_dir=tmp_path)


def test_a_manifest_of_another_format_is_refused(corpus, tmp_path):
  (tmp_path / "manifest.json").write_text(json.dumps({"format": "something else"}))
  with pytest.raises(ValueError, match=r"manifest\.json is not a manifest of 'momentum_jax token "
                     r"files, version 1'"):
    load_text_dataset(_config(corpus), token_dir=tmp_path)


def test_a_streamed_file_resumes_bit_identically_from_a_fresh_load(corpus, tmp_path):
  dataset = load_text_dataset(_config(corpus), token_dir=tmp_path)
  per_epoch = dataset.num_rows("train") // BATCH_SIZE
  uninterrupted = dataset.iterator("train", BATCH_SIZE, seed=3)
  _take(uninterrupted, per_epoch + 1)  # into the second epoch
  state = json.loads(json.dumps(uninterrupted.get_state()))
  resumed = load_text_dataset(_config(corpus), token_dir=tmp_path).iterator("train", BATCH_SIZE,
                                                                            seed=3)
  resumed.set_state(state)
  for a, b in zip(_take(uninterrupted, per_epoch), _take(resumed, per_epoch)):
    assert _same(a, b)


_RESUME_WORKER = """
import json, sys
import numpy as np
from momentum_jax.data import TextDataConfig, load_text_dataset

config, token_dir, state, out = sys.argv[1:]
dataset = load_text_dataset(TextDataConfig(**json.loads(config)), token_dir=token_dir)
iterator = dataset.iterator("train", 4, seed=3)
iterator.set_state(json.loads(state))
batches = [next(iterator) for _ in range(5)]
np.savez(out, **{f"{i}_{name}": field for i, batch in enumerate(batches)
                 for name, field in batch._asdict().items()})
"""


@pytest.mark.slow
def test_a_streamed_file_resumes_bit_identically_in_a_fresh_process(corpus, tmp_path):
  config = _config(corpus)
  dataset = load_text_dataset(config, token_dir=tmp_path / "tokens")
  iterator = dataset.iterator("train", BATCH_SIZE, seed=3)
  _take(iterator, 7)
  state = iterator.get_state()
  expected = _take(iterator, 5)
  subprocess.run([sys.executable, "-c", _RESUME_WORKER, json.dumps(dataclasses.asdict(config)),
                  str(tmp_path / "tokens"), json.dumps(state), str(tmp_path / "out.npz")],
                 check=True, timeout=300)
  saved = np.load(tmp_path / "out.npz")
  for i, batch in enumerate(expected):
    for name, field in batch._asdict().items():
      np.testing.assert_array_equal(saved[f"{i}_{name}"], field)
      assert saved[f"{i}_{name}"].dtype == field.dtype


def test_small_pieces_and_encode_batches_write_the_same_files(corpus, tmp_path, monkeypatch):
  config = _config(corpus, tokenizer="bpe", bpe_vocab_size=300)
  dataset = load_text_dataset(config, token_dir=tmp_path / "whole")
  monkeypatch.setattr(token_files, "ENCODE_BATCH_CHARS", 50)
  plan = plan_split(config, piece_bytes=32)
  token_files.write_token_files(tmp_path / "pieces", split_pieces(config, plan, piece_bytes=32),
                                dataset.tokenizer, tokenizer_file=None, source={}, split={})
  for split in ("train", "validation"):
    for kind in ("tokens", "ends"):
      name = f"{split}.{kind}"
      assert (tmp_path / "pieces" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


def test_a_failed_write_leaves_no_files(tmp_path):
  (tmp_path / "corpus").mkdir()
  for i in range(8):
    (tmp_path / "corpus" / f"{i}.txt").write_text(f"document {i}" if i != 6 else "  \n")
  with pytest.raises(ValueError, match=r"6\.txt is empty"):
    load_text_dataset(_config(tmp_path / "corpus", validation_fraction=0.5),
                      token_dir=tmp_path / "tokens")
  assert not (tmp_path / "tokens").exists() or not list((tmp_path / "tokens").iterdir())


def test_without_token_dir_the_files_live_as_long_as_the_dataset_or_an_iterator(corpus):
  dataset = load_text_dataset(_config(corpus))
  folder = dataset.token_file("train").tokens_path.parent
  assert (folder / "manifest.json").is_file()
  iterator = dataset.iterator("train", BATCH_SIZE, seed=0)
  del dataset
  gc.collect()
  assert folder.is_dir()
  next(iterator)
  del iterator
  gc.collect()
  assert not folder.exists()


def test_an_int32_shuffle_draws_numpys_permutation():
  for rows, seed, epoch in ((1, 0, 0), (97, 3, 1), (100_003, 11, 4)):
    order = np.arange(rows, dtype=np.int32)
    np.random.default_rng([seed, epoch]).shuffle(order)
    np.testing.assert_array_equal(order, np.random.default_rng([seed, epoch]).permutation(rows))


# --- tensorflow-datasets -----------------------------------------------------------------------

if tfds is not None:

  class TinyDocs(tfds.core.GeneratorBasedBuilder):
    """Twelve short documents, prepared offline as array_record (registered as tiny_docs)."""

    # tfds looks for a checksums file beside a builder's module; for a dotted module of a
    # namespace package it needs importlib_resources, which recent etils does not install, and
    # for a one-part name it uses inspect.getfile.
    __module__ = __name__.rpartition(".")[2]
    VERSION = tfds.core.Version("1.2.0")

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, features=tfds.features.FeaturesDict({"body": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i, text in enumerate(DOCUMENTS[:12]):
        yield i, {"body": text}


def test_a_tfds_source_streams_into_the_same_token_files(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  data_dir = str(tmp_path / "tfds")
  TinyDocs(data_dir=data_dir, file_format="array_record").download_and_prepare()
  config = TextDataConfig(source="tfds:tiny_docs", text_field="body", data_dir=data_dir,
                          seq_len=SEQ_LEN, validation_fraction=0.25)
  dataset = load_text_dataset(config, token_dir=tmp_path / "tokens")
  documents = read_documents("tfds:tiny_docs", text_field="body", data_dir=data_dir)
  assert sorted(documents) == sorted(DOCUMENTS[:12])
  for split, keep in (("train", lambda i: i % 4 != 3), ("validation", lambda i: i % 4 == 3)):
    texts = [d for i, d in enumerate(documents) if keep(i)]
    assert _same(_all_rows(dataset, split),
                 pack_documents(dataset.tokenizer.encode_batch(texts), SEQ_LEN))
  manifest = json.loads((tmp_path / "tokens" / "manifest.json").read_text())
  assert manifest["source"]["train"] == [{"source": "tfds:tiny_docs", "tfds": {
      "name": "tiny_docs", "version": "1.2.0", "split": "train", "data_dir": data_dir,
      "examples": 12}}]
  again = load_text_dataset(config, token_dir=tmp_path / "tokens")
  assert _same(next(again.iterator("train", BATCH_SIZE, seed=1)),
               next(dataset.iterator("train", BATCH_SIZE, seed=1)))
  assert os.path.samefile(again.token_file("train").tokens_path,
                          dataset.token_file("train").tokens_path)

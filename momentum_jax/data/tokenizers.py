"""Tokenisers: UTF-8 bytes (the default, no files) and a byte-level BPE trained locally.

Both map text to ``int32`` ids and back, and save themselves as one JSON file that a run keeps,
so that evaluation and generation use the very same vocabulary. The BPE tokeniser is trained
with HF ``tokenizers`` on byte-level pre-tokens (GPT-2's scheme): its alphabet is the 256 bytes,
so every string is encodable and decoding is exact; training is deterministic (the same texts
and ``vocab_size`` give the same file, in any process). HF ``tokenizers`` is imported when a BPE
tokeniser is trained or loaded: it comes with the ``text`` extra.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
  import tokenizers

TOKENIZERS = ("byte", "bpe")
BYTE_VOCAB_SIZE = 256


class Tokenizer(Protocol):
  """What the text pipeline needs of a tokeniser."""

  @property
  def name(self) -> str: ...

  @property
  def vocab_size(self) -> int: ...

  def encode(self, text: str) -> np.ndarray: ...

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]: ...

  def decode(self, ids: Sequence[int] | np.ndarray) -> str: ...

  def save(self, path: str | os.PathLike[str]) -> None: ...


def _checked_ids(ids: Sequence[int] | np.ndarray, vocab_size: int) -> np.ndarray:
  ids_N = np.asarray(ids)
  if ids_N.ndim != 1 or (ids_N.size and not np.issubdtype(ids_N.dtype, np.integer)):
    raise ValueError(f"ids must be a 1-D sequence of ints, got shape {ids_N.shape} and dtype "
                     f"{ids_N.dtype}")
  bad = ids_N[(ids_N < 0) | (ids_N >= vocab_size)]
  if bad.size:
    raise ValueError(f"ids must be in [0, vocab_size={vocab_size}), got {bad[0]}")
  return ids_N


def _hf_tokenizers() -> ModuleType:
  """HF ``tokenizers``; ``ModuleNotFoundError`` naming the extra that installs it if missing."""
  try:
    import tokenizers
  except ModuleNotFoundError as error:
    raise ModuleNotFoundError(
        "the BPE tokenizer needs HF tokenizers: pip install 'momentum_jax[text]'",
        name=error.name) from error
  return tokenizers


class ByteTokenizer:
  """UTF-8 bytes as token ids 0..255: ``encode(s) = list(s.encode("utf-8"))``."""

  name = "byte"
  vocab_size = BYTE_VOCAB_SIZE

  def encode(self, text: str) -> np.ndarray:
    """``[N] int32``, the N UTF-8 bytes of ``text``."""
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    return [self.encode(text) for text in texts]

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """The text of ``ids`` (each in [0, 256), else ``ValueError``); a byte sequence cut inside a
    character decodes that character as U+FFFD."""
    ids_N = _checked_ids(ids, BYTE_VOCAB_SIZE)
    return ids_N.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

  def save(self, path: str | os.PathLike[str]) -> None:
    """Writes ``{"name": "byte", "vocab_size": 256}``: the run's record of its tokeniser."""
    pathlib.Path(path).write_text(json.dumps({"name": self.name, "vocab_size": self.vocab_size}))


class BpeTokenizer:
  """Byte-level BPE (Sennrich et al. 2016, arXiv 1508.07909; GPT-2's byte-level variant) from
  HF ``tokenizers``, without special tokens: documents are separated by segment ids, not by
  an end-of-text token."""

  name = "bpe"

  def __init__(self, backend: tokenizers.Tokenizer):
    self.backend = backend

  @classmethod
  def train(cls, texts: Iterable[str], vocab_size: int) -> BpeTokenizer:
    """Trains on ``texts``: the 256 byte symbols, then the most frequent merges until there are
    ``vocab_size`` ids. Raises ``ValueError`` when ``vocab_size <= 256`` or when the texts hold
    too few distinct pairs to reach ``vocab_size``."""
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or (
        vocab_size <= BYTE_VOCAB_SIZE):
      raise ValueError(f"vocab_size must be an int > {BYTE_VOCAB_SIZE} (the byte alphabet), got "
                       f"vocab_size={vocab_size!r}")
    hf = _hf_tokenizers()
    backend = hf.Tokenizer(hf.models.BPE())
    backend.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = hf.decoders.ByteLevel()
    trainer = hf.trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                     initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer=trainer)
    if backend.get_vocab_size() < vocab_size:
      raise ValueError(f"the training texts yield only {backend.get_vocab_size()} BPE ids, fewer "
                       f"than vocab_size={vocab_size}: train on more text or ask for fewer ids")
    return cls(backend)

  @classmethod
  def load(cls, path: str | os.PathLike[str]) -> BpeTokenizer:
    """The tokeniser saved at ``path``; ``ValueError`` naming it when it is not one."""
    hf = _hf_tokenizers()
    try:
      return cls(hf.Tokenizer.from_file(str(path)))
    except Exception as error:  # tokenizers raises a bare Exception for a malformed file
      raise ValueError(f"{path} is not a saved BPE tokenizer: {error}") from error

  def save(self, path: str | os.PathLike[str]) -> None:
    """Writes the HF ``tokenizers`` JSON (vocabulary, merges, pre-tokeniser and decoder)."""
    self.backend.save(str(path))

  @property
  def vocab_size(self) -> int:
    return self.backend.get_vocab_size()

  def encode(self, text: str) -> np.ndarray:
    """``[N] int32`` ids of ``text``."""
    return np.asarray(self.backend.encode(text).ids, np.int32)

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    """``encode`` of each text, on all cores."""
    return [np.asarray(e.ids, np.int32) for e in self.backend.encode_batch(list(texts))]

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """The text of ``ids`` (each in [0, vocab_size), else ``ValueError``)."""
    return self.backend.decode(_checked_ids(ids, self.vocab_size).tolist())


def _load_byte(path: pathlib.Path) -> ByteTokenizer:
  try:
    saved = json.loads(path.read_text())
  except (UnicodeDecodeError, json.JSONDecodeError) as error:
    raise ValueError(f"{path} is not a saved byte tokenizer: {error}") from error
  if saved != {"name": ByteTokenizer.name, "vocab_size": BYTE_VOCAB_SIZE}:
    raise ValueError(f"{path} does not hold the byte tokenizer (found {str(saved)[:80]}...); "
                     f"give another path or remove it")
  return ByteTokenizer()


def load_tokenizer(name: str, *, path: str | os.PathLike[str] | None = None,
                   vocab_size: int | None = None,
                   train_texts: Iterable[str] | None = None) -> Tokenizer:
  """The tokeniser ``name``, ``"byte"`` or ``"bpe"``, saved with a run at ``path``.

  If the file ``path`` exists, the tokeniser is loaded from it (so evaluation and generation
  use the one the run trained with); otherwise it is made (``"byte"``) or trained on
  ``train_texts`` to ``vocab_size`` ids (``"bpe"``) and, when ``path`` is given, saved there.

  Args:
    name: ``"byte"`` or ``"bpe"``.
    path: the tokeniser's JSON file, or None to neither load nor save.
    vocab_size: the number of ids; for ``"bpe"`` required to train, and checked against a
      loaded file; for ``"byte"`` None or 256.
    train_texts: the texts a new BPE tokeniser is trained on.

  Returns:
    The tokeniser.

  Raises:
    ValueError: naming ``name`` when it is unknown, ``vocab_size`` when it does not match the
      tokeniser (or a loaded file), ``path`` when the file holds another tokeniser, or the
      missing ``train_texts`` / ``vocab_size`` when a BPE tokeniser has to be trained.
  """
  if name not in TOKENIZERS:
    raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got tokenizer={name!r}")
  saved = path is not None and pathlib.Path(path).is_file()
  if name == "byte":
    if vocab_size not in (None, BYTE_VOCAB_SIZE):
      raise ValueError(f"the byte tokenizer has {BYTE_VOCAB_SIZE} ids, got "
                       f"vocab_size={vocab_size!r}")
    tokenizer = _load_byte(pathlib.Path(path)) if saved else ByteTokenizer()
  elif saved:
    tokenizer = BpeTokenizer.load(path)
    if vocab_size is not None and tokenizer.vocab_size != vocab_size:
      raise ValueError(f"{path} holds a BPE tokenizer of {tokenizer.vocab_size} ids, not "
                       f"vocab_size={vocab_size}: give another path, or remove it to train anew")
  elif train_texts is None or vocab_size is None:
    raise ValueError("tokenizer='bpe' needs a saved tokenizer file at path, or train_texts and "
                     f"vocab_size to train one (path={path!r}, vocab_size={vocab_size!r})")
  else:
    tokenizer = BpeTokenizer.train(train_texts, vocab_size)
  if path is not None and not saved:
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(path)
  return tokenizer

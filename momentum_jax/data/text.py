"""Text datasets for language modelling: documents → tokens → packed rows → a deterministic,
resumable, host-sharded batch iterator.

``load_text_dataset(TextDataConfig(source="kjv"))`` reads the documents (``text_sources``),
splits them into train and validation by document index (document i is held out iff
``i % k == k - 1`` with ``k = round(1 / validation_fraction)``, so the split never depends on the
tokeniser or the row length and no document is in both), tokenises them (``tokenizers``; a BPE
vocabulary is trained on the train split only) and packs each split into rows of ``seq_len``
tokens with segment ids and positions (``packing``). Everything is held in host memory: the
corpora meant here are a few MB to a few hundred MB of tokens.

Iterating a split of R rows with global batch size B: step i reads the rows
``perm_e[j·B : (j+1)·B]`` with ``e, j = divmod(i, R // B)`` and ``perm_e`` a permutation of the
rows drawn from ``numpy.random.default_rng([seed, e])``. Each epoch is a fresh shuffle of the
rows (documents keep their packed order inside the rows) and leaves out its last ``R mod B``
rows; the batch at a step is a pure function of the config, the seed, B and the step. Process
``s`` of ``S`` reads the ``s``-th of ``S`` equal slices of each global batch, so the processes
together read exactly the global batch, and the iterator's state, ``{"step": i}`` and the
split, seed and B it belongs to (JSON), does not depend on ``S``: a run may resume on another
number of processes.

The ``grain`` loader (``MapDataset.range(R).shuffle(seed).repeat().batch(B)``, sliced per
process) does the same job but was not used: it takes ~0.7 ms per batch of 8 rows here, against
a few µs for the numpy indexing below, and derives epoch e's shuffle from ``seed + e``, so runs
with seeds 0 and 1 see the same row orders one epoch apart.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from momentum_jax.data.batch import Batch
from momentum_jax.data.packing import PackedRows, pack_documents
from momentum_jax.data.text_sources import read_documents
from momentum_jax.data.tokenizers import TOKENIZERS, Tokenizer, load_tokenizer

SPLITS = ("train", "validation")
TOKENIZER_FILE = "tokenizer.json"


def _check_int(name: str, value: Any, minimum: int) -> None:
  if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
    raise ValueError(f"{name} must be an int >= {minimum}, got {name}={value!r}")


@dataclasses.dataclass(frozen=True)
class TextDataConfig:
  """Which text, tokenised how, in rows of which length (hashable; ``dataclasses.asdict`` is
  JSON).

  Attributes:
    source: ``"kjv"`` (the offline corpus), ``"tfds:<name>"`` or a path / folder / glob of
      ``.txt`` and ``.jsonl`` files (see ``momentum_jax.data.text_sources``).
    tokenizer: ``"byte"`` (UTF-8 bytes, 256 ids) or ``"bpe"`` (byte-level BPE trained locally on
      the train split).
    bpe_vocab_size: ids of the BPE tokeniser, > 256 (unused by ``"byte"``).
    seq_len: T, the tokens per row given to the model, >= 1.
    text_field: the text field of ``.jsonl`` lines and tfds examples (``"kjv"``: ``"text"``).
    group_by: ``.jsonl`` fields whose equal values on consecutive lines join them into one
      document; empty means one document per line, except for ``"kjv"``, where empty means
      ``("book", "chapter")``: one document per chapter (1,189 documents of a few KB).
    validation_fraction: share of the documents held out, in (0, 0.5]: every
      ``round(1 / validation_fraction)``-th document.
    data_dir: the tensorflow-datasets data directory (None: tfds's default).
    tfds_split: the tfds split the documents come from (train and validation are both cut
      from it).
  """

  source: str = "kjv"
  tokenizer: str = "byte"
  bpe_vocab_size: int = 1024
  seq_len: int = 256
  text_field: str = "text"
  group_by: tuple[str, ...] = ()
  validation_fraction: float = 0.05
  data_dir: str | None = None
  tfds_split: str = "train"

  def __post_init__(self):
    if isinstance(self.group_by, list):  # a config read back from JSON
      object.__setattr__(self, "group_by", tuple(self.group_by))
    for name in ("source", "text_field", "tfds_split"):
      value = getattr(self, name)
      if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {name}={value!r}")
    if self.tokenizer not in TOKENIZERS:
      raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got tokenizer={self.tokenizer!r}")
    _check_int("seq_len", self.seq_len, 1)
    _check_int("bpe_vocab_size", self.bpe_vocab_size, 257)
    if not isinstance(self.group_by, tuple) or not all(
        isinstance(f, str) and f for f in self.group_by):
      raise ValueError(f"group_by must be a tuple of field names, got group_by={self.group_by!r}")
    fraction = self.validation_fraction
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (
        0.0 < fraction <= 0.5):
      raise ValueError(f"validation_fraction must be in (0, 0.5], got "
                       f"validation_fraction={fraction!r}")
    if self.data_dir is not None and not isinstance(self.data_dir, str):
      raise ValueError(f"data_dir must be a string or None, got data_dir={self.data_dir!r}")


def _split_documents(documents: list[str], fraction: float) -> dict[str, list[str]]:
  period = round(1.0 / fraction)
  held_out = [d for i, d in enumerate(documents) if i % period == period - 1]
  if not held_out:
    raise ValueError(f"the source has {len(documents)} document(s), too few to hold out every "
                     f"{period}-th for validation (validation_fraction={fraction})")
  return {"train": [d for i, d in enumerate(documents) if i % period != period - 1],
          "validation": held_out}


class TextIterator(Iterator[Batch]):
  """This process's slice of each global batch of one split: ``Batch`` of numpy arrays
  ``[batch_size // shard_count, seq_len]`` (int32 tokens, targets, segment_ids, positions;
  float32 loss_mask). Made by :meth:`TextDataset.iterator`."""

  def __init__(self, rows: PackedRows, split: str, batch_size: int, seed: int, shard_index: int,
               shard_count: int, repeat: bool):
    self._rows, self._split, self._batch_size = rows, split, batch_size
    self._seed, self._repeat = seed, repeat
    self._per_epoch = len(rows.tokens) // batch_size
    width = batch_size // shard_count
    self._shard = slice(shard_index * width, (shard_index + 1) * width)
    self._step = 0
    self._order: tuple[int, np.ndarray] = (-1, np.empty(0, np.int64))

  def _permutation(self, epoch: int) -> np.ndarray:
    if self._order[0] != epoch:
      rng = np.random.default_rng([self._seed, epoch])
      self._order = (epoch, rng.permutation(len(self._rows.tokens)))
    return self._order[1]

  def __next__(self) -> Batch:
    """The next batch; ``StopIteration`` after one epoch when not repeating."""
    epoch, j = divmod(self._step, self._per_epoch)
    if epoch and not self._repeat:
      raise StopIteration
    rows_B = self._permutation(epoch)[j * self._batch_size:(j + 1) * self._batch_size]
    rows_b = rows_B[self._shard]
    self._step += 1
    return Batch(**{name: field[rows_b] for name, field in self._rows._asdict().items()})

  def get_state(self) -> dict[str, Any]:
    """The position, JSON: ``{"step": batches read, "split", "seed", "batch_size"}``."""
    return {"step": self._step, "split": self._split, "seed": self._seed,
            "batch_size": self._batch_size}

  def set_state(self, state: dict[str, Any]) -> None:
    """Continues after ``state["step"]`` batches, as the iterator that saved ``state`` does.

    Raises:
      ValueError: ``state`` is not a state of ``get_state``, or one of another split, seed or
        batch size.
    """
    mine = self.get_state()
    if not isinstance(state, dict) or set(state) != set(mine):
      raise ValueError(f"state must be a dict from get_state with keys {sorted(mine)}, got "
                       f"state={state!r}")
    for key in ("split", "seed", "batch_size"):
      if state[key] != mine[key]:
        raise ValueError(f"state is the position of an iterator with {key}={state[key]!r}, this "
                         f"one has {key}={mine[key]!r}")
    _check_int("state['step']", state["step"], 0)
    self._step = state["step"]


class TextDataset:
  """The packed train and validation rows of one ``TextDataConfig`` and their tokeniser;
  immutable. Built by :func:`load_text_dataset`; see the module docstring."""

  def __init__(self, config: TextDataConfig, tokenizer: Tokenizer, rows: dict[str, PackedRows],
               bytes_per_token: dict[str, float]):
    for split_rows in rows.values():
      for field in split_rows:
        field.flags.writeable = False
    self._config, self._tokenizer = config, tokenizer
    self._rows, self._bytes_per_token = dict(rows), dict(bytes_per_token)

  @property
  def config(self) -> TextDataConfig:
    return self._config

  @property
  def tokenizer(self) -> Tokenizer:
    return self._tokenizer

  @property
  def vocab_size(self) -> int:
    return self._tokenizer.vocab_size

  @property
  def seq_len(self) -> int:
    return self._config.seq_len

  def _split(self, split: str) -> PackedRows:
    if split not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got split={split!r}")
    return self._rows[split]

  def num_rows(self, split: str) -> int:
    """The packed rows of ``seq_len`` tokens in ``split``."""
    return len(self._split(split).tokens)

  def bytes_per_token(self, split: str) -> float:
    """UTF-8 bytes per token of ``split``'s text (1 for ``"byte"``), for bits per byte:
    ``bpb = loss_nats_per_token / ln 2 / bytes_per_token``."""
    self._split(split)
    return self._bytes_per_token[split]

  def iterator(self, split: str, batch_size: int, *, seed: int, shard_index: int = 0,
               shard_count: int = 1, repeat: bool = True) -> TextIterator:
    """Batches of ``split`` in the order of the module docstring.

    Args:
      split: ``"train"`` or ``"validation"``.
      batch_size: B, the global batch size (all processes together), a multiple of
        ``shard_count``.
      seed: the shuffle's seed, >= 0.
      shard_index: this process's slice of each global batch, in ``[0, shard_count)``.
      shard_count: the number of processes sharing each global batch.
      repeat: endless epochs (training) or one epoch of ``R // B`` batches (evaluation).

    Returns:
      An iterator of ``Batch`` ``[B // shard_count, seq_len]``, at step 0.

    Raises:
      ValueError: naming the argument that is out of range, or saying that ``split`` has fewer
        rows than one batch.
    """
    rows = self._split(split)
    _check_int("batch_size", batch_size, 1)
    _check_int("seed", seed, 0)
    _check_int("shard_count", shard_count, 1)
    if not isinstance(shard_index, int) or isinstance(shard_index, bool) or not (
        0 <= shard_index < shard_count):
      raise ValueError(f"shard_index must be in [0, shard_count={shard_count}), got "
                       f"shard_index={shard_index!r}")
    if batch_size % shard_count:
      raise ValueError(f"batch_size={batch_size} must be divisible by shard_count={shard_count}")
    if not isinstance(repeat, bool):
      raise ValueError(f"repeat must be a bool, got repeat={repeat!r}")
    if len(rows.tokens) < batch_size:
      raise ValueError(f"split={split!r} has {len(rows.tokens)} rows of seq_len={self.seq_len}, "
                       f"fewer than one batch of batch_size={batch_size}")
    return TextIterator(rows, split, batch_size, seed, shard_index, shard_count, repeat)


def load_text_dataset(config: TextDataConfig, *,
                      tokenizer_dir: str | os.PathLike[str] | None = None) -> TextDataset:
  """Reads, splits, tokenises and packs ``config``'s source (see the module docstring).

  Args:
    config: the dataset.
    tokenizer_dir: where the tokeniser is kept with a run, as ``tokenizer.json``: loaded from
      there when present (a BPE vocabulary is then not retrained), else made or trained and
      saved there. None: a BPE tokeniser is trained afresh (deterministically), nothing saved.

  Returns:
    The dataset.

  Raises:
    ValueError: from the source, the split (too few documents to hold any out), the tokeniser
      (a saved one of another kind or size) or the packing.
  """
  documents = read_documents(config.source, text_field=config.text_field,
                             group_by=config.group_by, data_dir=config.data_dir,
                             tfds_split=config.tfds_split)
  splits = _split_documents(documents, config.validation_fraction)
  path = None if tokenizer_dir is None else pathlib.Path(tokenizer_dir) / TOKENIZER_FILE
  tokenizer = load_tokenizer(
      config.tokenizer, path=path,
      vocab_size=config.bpe_vocab_size if config.tokenizer == "bpe" else None,
      train_texts=splits["train"])
  rows, bytes_per_token = {}, {}
  for split, texts in splits.items():
    encoded = tokenizer.encode_batch(texts)
    rows[split] = pack_documents(encoded, config.seq_len)
    num_bytes = sum(len(text.encode("utf-8")) for text in texts)
    bytes_per_token[split] = num_bytes / sum(len(ids) for ids in encoded)
  return TextDataset(config, tokenizer, rows, bytes_per_token)

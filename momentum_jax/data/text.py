"""Text datasets for language modelling: documents → token files → packed rows → a deterministic,
resumable, host-sharded batch iterator.

``load_text_dataset(TextDataConfig(source="kjv"))`` streams the source's documents
(``text_sources``), routes them to the train and validation splits (``text_splits``: an explicit
``validation_source``, every k-th document held out, or the text's last fraction by position),
tokenises them (``tokenizers``; a BPE vocabulary is trained on the train split only) into a token
file per split on disk (``token_files``, nanoGPT's ``train.bin``) and reads packed rows of
``seq_len`` tokens with segment ids and positions from those files one batch at a time
(``packing.read_rows``). Host memory does not grow with the corpus, save for the row order below
(4 bytes a row). Given a ``token_dir``, the files are kept there with a manifest and a second
load reads them without tokenising again; a changed source or tokeniser is refused by name.
Without one, they are written to a temporary folder that lives as long as the dataset: one code
path for a 4 MB corpus and a 100 GB one.

Iterating a split of R rows with global batch size B: step i reads the rows
``perm_e[j·B : (j+1)·B]`` with ``e, j = divmod(i, R // B)`` and ``perm_e`` a permutation of the
rows drawn from ``numpy.random.default_rng([seed, e])`` (``shuffle`` of ``arange(R)`` in int32,
which draws what ``permutation(R)`` draws). Each epoch is a fresh shuffle of the rows (documents
keep their packed order inside the rows) and leaves out its last ``R mod B`` rows; the batch at a
step is a pure function of the config, the seed, B and the step. Process ``s`` of ``S`` reads the
``s``-th of ``S`` equal slices of each global batch, so the processes together read exactly the
global batch, and the iterator's state, ``{"step": i}`` and the split, seed and B it belongs to
(JSON), does not depend on ``S``: a run may resume on another number of processes.

The ``grain`` loader (``MapDataset.range(R).shuffle(seed).repeat().batch(B)``, sliced per
process) does the same job but was not used: it takes ~0.7 ms per batch of 8 rows here, and
derives epoch e's shuffle from ``seed + e``, so runs with seeds 0 and 1 see the same row orders
one epoch apart.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from momentum_jax.data.batch import Batch
from momentum_jax.data.text_config import TextDataConfig, check_int
from momentum_jax.data.text_sources import describe_source
from momentum_jax.data.text_splits import check_disjoint, plan_split, split_pieces
from momentum_jax.data.token_files import (
    SPLITS, TOKENIZER_FILE, TokenFile, file_sha256, open_token_files, read_manifest,
    write_token_files)
from momentum_jax.data.tokenizers import BYTE_VOCAB_SIZE, Tokenizer, load_tokenizer

# The config fields that say which text is read and how it is split: the token files' source.
_SOURCE_FIELDS = ("source", "validation_source", "text_field", "group_by", "data_dir",
                  "tfds_split", "validation_fraction", "split_by")


class TextIterator(Iterator[Batch]):
  """This process's slice of each global batch of one split: ``Batch`` of numpy arrays
  ``[batch_size // shard_count, seq_len]`` (int32 tokens, targets, segment_ids, positions;
  float32 loss_mask). Made by :meth:`TextDataset.iterator`; holds the dataset, so that a
  temporary folder of token files lives as long as an iterator reads it."""

  def __init__(self, dataset: TextDataset, split: str, batch_size: int, seed: int,
               shard_index: int, shard_count: int, repeat: bool):
    self._dataset, self._seq_len = dataset, dataset.seq_len
    tokens = self._tokens = dataset.token_file(split)
    self._split, self._batch_size, self._seed, self._repeat = split, batch_size, seed, repeat
    self._num_rows = tokens.num_rows(self._seq_len)
    self._per_epoch = self._num_rows // batch_size
    width = batch_size // shard_count
    self._shard = slice(shard_index * width, (shard_index + 1) * width)
    self._step = 0
    self._order: tuple[int, np.ndarray] = (-1, np.empty(0, np.int64))

  def _permutation(self, epoch: int) -> np.ndarray:
    if self._order[0] != epoch:
      rows = np.arange(self._num_rows, dtype=np.int32 if self._num_rows < 2**31 else np.int64)
      np.random.default_rng([self._seed, epoch]).shuffle(rows)
      self._order = (epoch, rows)
    return self._order[1]

  def __next__(self) -> Batch:
    """The next batch; ``StopIteration`` after one epoch when not repeating."""
    epoch, j = divmod(self._step, self._per_epoch)
    if epoch and not self._repeat:
      raise StopIteration
    rows_B = self._permutation(epoch)[j * self._batch_size:(j + 1) * self._batch_size]
    rows = self._tokens.read_rows(rows_B[self._shard], self._seq_len)
    self._step += 1
    return Batch(**rows._asdict())

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
    check_int("state['step']", state["step"], 0)
    self._step = state["step"]


class TextDataset:
  """The train and validation token files of one ``TextDataConfig`` and their tokeniser, read
  as packed rows; immutable. Built by :func:`load_text_dataset`; see the module docstring.

  Args:
    config: the dataset's config.
    tokenizer: the tokeniser of the files.
    splits: per split of ``SPLITS``, its token file.
    scratch: a temporary folder holding the files, removed with the dataset (None: they are
      kept).
  """

  def __init__(self, config: TextDataConfig, tokenizer: Tokenizer,
               splits: Mapping[str, TokenFile],
               scratch: tempfile.TemporaryDirectory | None = None):
    self._config, self._tokenizer, self._splits = config, tokenizer, dict(splits)
    self._scratch = scratch

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

  def token_file(self, split: str) -> TokenFile:
    """``split``'s tokens on disk."""
    if split not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got split={split!r}")
    return self._splits[split]

  def num_rows(self, split: str) -> int:
    """The packed rows of ``seq_len`` tokens in ``split``."""
    return self.token_file(split).num_rows(self.seq_len)

  def bytes_per_token(self, split: str) -> float:
    """UTF-8 bytes per token of ``split``'s text (1 for ``"byte"``), for bits per byte:
    ``bpb = loss_nats_per_token / ln 2 / bytes_per_token``."""
    tokens = self.token_file(split)
    return tokens.text_bytes / tokens.num_tokens

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
    tokens = self.token_file(split)
    check_int("batch_size", batch_size, 1)
    check_int("seed", seed, 0)
    check_int("shard_count", shard_count, 1)
    if not isinstance(shard_index, int) or isinstance(shard_index, bool) or not (
        0 <= shard_index < shard_count):
      raise ValueError(f"shard_index must be in [0, shard_count={shard_count}), got "
                       f"shard_index={shard_index!r}")
    if batch_size % shard_count:
      raise ValueError(f"batch_size={batch_size} must be divisible by shard_count={shard_count}")
    if not isinstance(repeat, bool):
      raise ValueError(f"repeat must be a bool, got repeat={repeat!r}")
    rows = tokens.num_rows(self.seq_len)
    if rows < batch_size:
      raise ValueError(f"split={split!r} has {rows} rows of seq_len={self.seq_len}, fewer than "
                       f"one batch of batch_size={batch_size}")
    return TextIterator(self, split, batch_size, seed, shard_index, shard_count, repeat)


def _source_record(config: TextDataConfig) -> dict[str, Any]:
  """What the token files of ``config`` are read from: the source fields of the config and
  ``describe_source`` of each source (JSON)."""
  fields = {name: getattr(config, name) for name in _SOURCE_FIELDS}
  if config.validation_source is not None:  # then unused: changing them changes no token
    del fields["validation_fraction"], fields["split_by"]
  describe = dict(data_dir=config.data_dir, tfds_split=config.tfds_split)
  record = {"config": fields, "train": describe_source(config.source, **describe)}
  if config.validation_source is not None:
    try:
      record["validation"] = describe_source(config.validation_source, **describe)
    except ValueError as error:
      raise ValueError(f"validation_source: {error}") from None
    check_disjoint(record["train"], record["validation"])
  return json.loads(json.dumps(record))


def _keep_tokenizer(folder: pathlib.Path, tokenizer_path: pathlib.Path | None,
                    manifest: dict[str, Any]) -> None:
  """Copies the token files' tokeniser to ``tokenizer_path``, or checks that the one there is
  the same file."""
  if tokenizer_path is None:
    return
  if not tokenizer_path.is_file():
    tokenizer_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder / TOKENIZER_FILE, tokenizer_path)
  elif file_sha256(tokenizer_path) != manifest["tokenizer"]["sha256"]:
    raise ValueError(f"{tokenizer_path} holds another tokenizer than the one the tokens in "
                     f"{folder} were made with: give another tokenizer_dir or token_dir")


def load_text_dataset(config: TextDataConfig, *,
                      tokenizer_dir: str | os.PathLike[str] | None = None,
                      token_dir: str | os.PathLike[str] | None = None) -> TextDataset:
  """Reads, splits and tokenises ``config``'s source into token files, once (see the module
  docstring).

  Args:
    config: the dataset.
    tokenizer_dir: where the tokeniser is kept with a run, as ``tokenizer.json``: loaded from
      there when present (a BPE vocabulary is then not retrained), else made or trained and
      saved there. None: a BPE tokeniser is trained afresh (deterministically), nothing saved.
    token_dir: a folder of token files for ``config``'s source and tokeniser (any ``seq_len``):
      read when it has a manifest, else written. None: written to a temporary folder removed
      with the dataset.

  Returns:
    The dataset.

  Raises:
    ValueError: from the source (a missing or empty file, ...), the split (too few documents to
      hold any out; a split with fewer tokens than one row of ``seq_len + 1``), the tokeniser (a
      saved one of another kind or size) or ``token_dir`` (token files of another source or
      tokeniser, naming the field; damaged files).
  """
  scratch = None
  if token_dir is None:
    scratch = tempfile.TemporaryDirectory(prefix="momentum_jax_tokens_")
    folder = pathlib.Path(scratch.name)
  else:
    folder = pathlib.Path(token_dir)
  tokenizer_path = None if tokenizer_dir is None else pathlib.Path(tokenizer_dir) / TOKENIZER_FILE
  vocab_size = BYTE_VOCAB_SIZE if config.tokenizer == "byte" else config.bpe_vocab_size
  source = _source_record(config)
  manifest = read_manifest(folder)
  if manifest is not None:
    splits = open_token_files(folder, tokenizer={"name": config.tokenizer,
                                                 "vocab_size": vocab_size}, source=source)
    _keep_tokenizer(folder, tokenizer_path, manifest)
    tokenizer = load_tokenizer(config.tokenizer, path=folder / TOKENIZER_FILE,
                               vocab_size=vocab_size)
  else:
    plan = plan_split(config)
    train_texts = (piece.text for split, piece in split_pieces(config, plan) if split == "train")
    tokenizer = load_tokenizer(config.tokenizer, path=tokenizer_path, vocab_size=vocab_size,
                               train_texts=train_texts)
    splits = write_token_files(
        folder, split_pieces(config, plan), tokenizer,
        tokenizer_file=tokenizer_path, source=source, split=dataclasses.asdict(plan))
  width = config.seq_len + 1
  for split, tokens in splits.items():
    if tokens.num_tokens < width:
      raise ValueError(
          f"the {split} split holds {tokens.num_tokens} tokens, fewer than one row of "
          f"seq_len + 1 = {width}: give more {split} text (a larger validation_fraction or a "
          "longer validation_source for validation) or a shorter seq_len")
  return TextDataset(config, tokenizer, splits, scratch)

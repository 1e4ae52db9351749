"""``TextDataConfig``: which text, split how, tokenised how, in rows of which length."""

from __future__ import annotations

import dataclasses
from typing import Any

from momentum_jax.data.text_sources import source_names
from momentum_jax.data.tokenizers import TOKENIZERS

#: How one source is cut into train and validation text (``TextDataConfig.split_by``).
SPLIT_BY = ("auto", "document", "position")


def check_int(name: str, value: Any, minimum: int) -> None:
  """``ValueError`` naming ``name`` unless ``value`` is an int (not a bool) >= ``minimum``."""
  if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
    raise ValueError(f"{name} must be an int >= {minimum}, got {name}={value!r}")


@dataclasses.dataclass(frozen=True)
class TextDataConfig:
  """Which text, split and tokenised how, in rows of which length (hashable;
  ``dataclasses.asdict`` is JSON, and a config read back from JSON equals the original).

  Attributes:
    source: ``"kjv"`` (the offline corpus), ``"tfds:<name>"``, a path / folder / glob of
      ``.txt`` and ``.jsonl`` files, or a list of these (held as a tuple), read one after another
      (see ``momentum_jax.data.text_sources``). The train text when ``validation_source`` is
      given, else both splits' text.
    tokenizer: ``"byte"`` (UTF-8 bytes, 256 ids) or ``"bpe"`` (byte-level BPE trained locally on
      the train split).
    bpe_vocab_size: ids of the BPE tokeniser, > 256 (unused by ``"byte"``).
    seq_len: T, the tokens per row given to the model, >= 1.
    text_field: the text field of ``.jsonl`` lines and tfds examples (``"kjv"``: ``"text"``).
    group_by: ``.jsonl`` fields whose equal values on consecutive lines join them into one
      document; empty means one document per line, except for ``"kjv"``, where empty means
      ``("book", "chapter")``: one document per chapter (1,189 documents of a few KB).
    validation_fraction: the share of ``source`` held out for validation, in (0, 0.5], when no
      ``validation_source`` is given (unused when one is).
    data_dir: the tensorflow-datasets data directory (None: tfds's default).
    tfds_split: the tfds split the documents come from (of ``source`` and of
      ``validation_source``).
    validation_source: the validation text, in any form ``source`` takes; None: cut from
      ``source`` as ``split_by`` says.
    split_by: how ``source`` is cut when ``validation_source`` is None. ``"document"``: every
      ``round(1 / validation_fraction)``-th document is held out (the split never depends on the
      tokeniser or the row length, and no document is in both). ``"position"``: the text's last
      ``validation_fraction`` of UTF-8 bytes is held out, the cut moved forward to a character
      boundary (nanoGPT's split of one file: ``validation_fraction=0.1`` is its 90/10); the
      document that holds the cut becomes two. ``"auto"``: ``"position"`` when the source is a
      single document (one ``.txt`` file), ``"document"`` otherwise.
  """

  source: str | tuple[str, ...] = "kjv"
  tokenizer: str = "byte"
  bpe_vocab_size: int = 1024
  seq_len: int = 256
  text_field: str = "text"
  group_by: tuple[str, ...] = ()
  validation_fraction: float = 0.05
  data_dir: str | None = None
  tfds_split: str = "train"
  validation_source: str | tuple[str, ...] | None = None
  split_by: str = "auto"

  def __post_init__(self):
    # A config read back from JSON holds lists where it had tuples.
    for name in ("group_by", "source", "validation_source"):
      if isinstance(getattr(self, name), list):
        object.__setattr__(self, name, tuple(getattr(self, name)))
    source_names(self.source, "source")
    if self.validation_source is not None:
      source_names(self.validation_source, "validation_source")
    for name in ("text_field", "tfds_split"):
      value = getattr(self, name)
      if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {name}={value!r}")
    if self.tokenizer not in TOKENIZERS:
      raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got tokenizer={self.tokenizer!r}")
    check_int("seq_len", self.seq_len, 1)
    check_int("bpe_vocab_size", self.bpe_vocab_size, 257)
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
    if self.split_by not in SPLIT_BY:
      raise ValueError(f"split_by must be one of {SPLIT_BY}, got split_by={self.split_by!r}")
    if self.validation_source is not None and self.split_by != "auto":
      raise ValueError(f"split_by={self.split_by!r} cuts one source in two; with "
                       f"validation_source={self.validation_source!r} given, source is the train "
                       "text and validation_source the validation text: leave split_by='auto'")

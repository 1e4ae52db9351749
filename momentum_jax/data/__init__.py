"""Synthetic tasks generated on the fly with JAX, deterministic from a PRNG key, jit-able."""

from momentum_jax.data.associative_recall import AssociativeRecallTask
from momentum_jax.data.batch import Batch, Task
from momentum_jax.data.induction import InductionTask
from momentum_jax.data.markov_zipf import MarkovZipfLanguage
from momentum_jax.data.repeated_tokens import repeated_random_tokens

__all__ = [
    "AssociativeRecallTask",
    "Batch",
    "InductionTask",
    "MarkovZipfLanguage",
    "Task",
    "repeated_random_tokens",
]

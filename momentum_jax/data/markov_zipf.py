"""A synthetic language for small LMs: a first-order Markov chain with Zipfian transitions.

Every state s has its own ranking of the vocabulary (a random permutation, fixed by
``language_seed``) and emits the token of rank r with probability ∝ (r + 1)^(−a): the marginal
statistics are heavy-tailed like text, each next token depends on the current one only, and the
chain is the same for every batch and run. The first token is drawn from the Zipf law over the
identity ranking. By default there is no BOS token: position 0 is an ordinary token, as in the
setting where Gu et al. (arXiv 2410.10781) find the sink on the first token whatever it is. With
``bos`` every sequence starts with a BOS token, id V − 1, which the chain (over ids 0 … V − 2)
never emits; the model then predicts the chain's first token from it.

With ``copy_len`` L > 0 every sequence also carries one verbatim repeat: the span [c, c + L) of
the chain (c uniform in [T/2, T + 1 − L]) is overwritten by the earlier span [s, s + L)
(s uniform in [0, c − L]). Past its first token the repeat is predictable by induction, so
attention heads have work to do on some queries and none on the others: the situation in which
softmax heads need a place to park their attention.

Loss counts every position. Without repeats the entropy rate (the best achievable loss) is the
Zipf law's entropy.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from momentum_jax.data.batch import Batch


@dataclasses.dataclass(frozen=True)
class MarkovZipfLanguage:
  """Markov chain whose rows are Zipf laws over state-specific rankings of the vocabulary.

  Attributes:
    vocab_size: number of token ids, >= 2.
    seq_len: tokens per sequence T, >= 2.
    zipf_exponent: a > 0 of p(rank r) ∝ (r + 1)^(−a).
    language_seed: fixes the rankings (the language), independent of the sampling key.
    copy_len: length L of the repeated span per sequence, 0 (none) or 1 <= L <= T/4.
    bos: start every sequence with the BOS token ``vocab_size - 1`` (then ``vocab_size >= 3``).
  """

  vocab_size: int = 128
  seq_len: int = 64
  zipf_exponent: float = 1.2
  language_seed: int = 0
  copy_len: int = 0
  bos: bool = False

  def __post_init__(self):
    if self.vocab_size < (3 if self.bos else 2):
      raise ValueError(f"vocab_size must be >= 2 (>= 3 with bos), got vocab_size="
                       f"{self.vocab_size} and bos={self.bos}")
    if self.seq_len < 2:
      raise ValueError(f"seq_len must be >= 2, got seq_len={self.seq_len}")
    if not self.zipf_exponent > 0:
      raise ValueError(f"zipf_exponent must be > 0, got zipf_exponent={self.zipf_exponent}")
    if not 0 <= self.copy_len <= self.seq_len // 4:
      raise ValueError(f"copy_len must be in [0, seq_len // 4], got copy_len={self.copy_len} and "
                       f"seq_len={self.seq_len}")

  @property
  def chain_size(self) -> int:
    """C, the number of ids the chain emits; V, or V − 1 with ``bos``."""
    return self.vocab_size - 1 if self.bos else self.vocab_size

  def zipf_logits(self) -> jax.Array:
    """``[C]`` log-probabilities (up to a constant) of ranks 0 … C−1."""
    return -self.zipf_exponent * jnp.log1p(jnp.arange(self.chain_size, dtype=jnp.float32))

  def transition_logits(self) -> jax.Array:
    """``[C, C]`` logits of the next token given the current one (row = current)."""
    uniform_VxV = jax.random.uniform(jax.random.key(self.language_seed),
                                     (self.chain_size, self.chain_size))
    rank_VxV = jnp.argsort(jnp.argsort(uniform_VxV, axis=-1), axis=-1)
    return self.zipf_logits()[rank_VxV]

  def entropy_rate(self) -> float:
    """Entropy of the next token (nats), the same for every state: the lowest achievable loss
    without repeats (``copy_len=0``)."""
    log_p = jax.nn.log_softmax(self.zipf_logits())
    return float(-jnp.sum(jnp.exp(log_p) * log_p))

  @functools.partial(jax.jit, static_argnums=(0, 2))
  def sample(self, key: jax.Array, batch_size: int) -> Batch:
    """``batch_size`` sequences of the chain (with their repeat when ``copy_len > 0``);
    ``targets`` are the next tokens, all counted."""
    first_key, chain_key, copy_key, source_key = jax.random.split(key, 4)
    logits_VxV = self.transition_logits()
    first_B = jax.random.categorical(first_key, self.zipf_logits(), shape=(batch_size,))

    def step(token_B, step_key):
      nxt_B = jax.random.categorical(step_key, logits_VxV[token_B])
      return nxt_B, nxt_B

    _, rest_TxB = jax.lax.scan(step, first_B, jax.random.split(chain_key, self.seq_len))
    raw_BxT1 = jnp.concatenate([first_B[:, None], rest_TxB.T], axis=1).astype(jnp.int32)
    if self.copy_len:
      span, length = self.copy_len, self.seq_len + 1
      start_Bx1 = jax.random.randint(copy_key, (batch_size, 1), self.seq_len // 2,
                                     length - span + 1)
      source_Bx1 = jax.random.randint(source_key, (batch_size, 1), 0, start_Bx1 - span + 1)
      pos_T1 = jnp.arange(length)
      in_copy_BxT1 = (pos_T1 >= start_Bx1) & (pos_T1 < start_Bx1 + span)
      index_BxT1 = jnp.where(in_copy_BxT1, pos_T1 - start_Bx1 + source_Bx1, pos_T1)
      raw_BxT1 = jnp.take_along_axis(raw_BxT1, index_BxT1, axis=1)
    if self.bos:  # BOS, then the chain shifted one place right (its last token dropped)
      bos_Bx1 = jnp.full((batch_size, 1), self.vocab_size - 1, jnp.int32)
      raw_BxT1 = jnp.concatenate([bos_Bx1, raw_BxT1[:, :-1]], axis=1)
    return Batch(raw_BxT1[:, :-1], raw_BxT1[:, 1:],
                 jnp.ones((batch_size, self.seq_len), jnp.float32))

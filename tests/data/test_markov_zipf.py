"""The Markov–Zipf language: fixed Zipf transition rows, the copied span, bad fields."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from momentum_jax.data import MarkovZipfLanguage


def test_language_is_a_fixed_markov_chain_with_zipf_rows():
  language = MarkovZipfLanguage(vocab_size=16, seq_len=33, zipf_exponent=1.5, language_seed=3)
  logits_VxV = language.transition_logits()
  np.testing.assert_array_equal(jnp.sort(logits_VxV, axis=-1),
                                jnp.broadcast_to(jnp.sort(language.zipf_logits()), (16, 16)))
  batch = language.sample(jax.random.key(0), 256)
  assert batch.tokens.shape == batch.targets.shape == batch.loss_mask.shape == (256, 33)
  np.testing.assert_array_equal(batch.targets[:, :-1], batch.tokens[:, 1:])
  assert bool(jnp.all(batch.loss_mask == 1.0))
  again = language.sample(jax.random.key(0), 256)
  np.testing.assert_array_equal(batch.tokens, again.tokens)
  # Every transition is the state's rank-0 token with probability p(0) of the Zipf law.
  top_next_V = jnp.argmax(logits_VxV, axis=-1)
  is_top = batch.targets == top_next_V[batch.tokens]
  p0 = float(jax.nn.softmax(language.zipf_logits())[0])
  assert abs(float(is_top.mean()) - p0) < 0.02
  log_p = jax.nn.log_softmax(language.zipf_logits())
  np.testing.assert_allclose(language.entropy_rate(), -float(jnp.sum(jnp.exp(log_p) * log_p)),
                             rtol=1e-6)
  other = MarkovZipfLanguage(vocab_size=16, seq_len=33, zipf_exponent=1.5, language_seed=4)
  assert not bool(jnp.all(other.transition_logits() == logits_VxV))


def _has_repeat(raw_T1: np.ndarray, span: int) -> bool:
  """Whether some span of ``span`` tokens in the second half equals an earlier one."""
  length = raw_T1.shape[0]
  return any(np.array_equal(raw_T1[c:c + span], raw_T1[s:s + span])
             for c in range((length - 1) // 2, length - span + 1) for s in range(c - span + 1))


def test_language_copy_span_repeats_an_earlier_span():
  language = MarkovZipfLanguage(vocab_size=64, seq_len=40, copy_len=10, language_seed=1)
  batch = language.sample(jax.random.key(2), 6)
  raw_BxT1 = np.concatenate([batch.tokens, batch.targets[:, -1:]], axis=1)
  assert all(_has_repeat(raw, 10) for raw in raw_BxT1)
  plain = MarkovZipfLanguage(vocab_size=64, seq_len=40, copy_len=0, language_seed=1)
  plain_raw_BxT1 = np.asarray(plain.sample(jax.random.key(2), 6).tokens)
  assert not any(_has_repeat(raw, 10) for raw in plain_raw_BxT1)


def test_language_with_bos():
  """BOS (id V − 1) opens every sequence and nowhere else; the rest is the chain over V − 1 ids,
  the same chain as a V − 1 language without BOS, shifted one place right."""
  language = MarkovZipfLanguage(vocab_size=17, seq_len=33, copy_len=8, language_seed=3, bos=True)
  plain = MarkovZipfLanguage(vocab_size=16, seq_len=33, copy_len=8, language_seed=3)
  assert language.chain_size == 16 and language.transition_logits().shape == (16, 16)
  np.testing.assert_array_equal(language.transition_logits(), plain.transition_logits())
  batch = language.sample(jax.random.key(0), 64)
  chain = plain.sample(jax.random.key(0), 64)
  assert batch.tokens.shape == batch.targets.shape == (64, 33)
  assert bool(jnp.all(batch.tokens[:, 0] == 16))
  assert not bool(jnp.any(batch.tokens[:, 1:] == 16)) and not bool(jnp.any(batch.targets == 16))
  np.testing.assert_array_equal(batch.tokens[:, 1:], chain.tokens[:, :-1])
  np.testing.assert_array_equal(batch.targets, chain.tokens)
  np.testing.assert_allclose(language.entropy_rate(), plain.entropy_rate(), rtol=1e-6)


def test_language_rejects_bad_fields():
  with pytest.raises(ValueError, match="vocab_size=1"):
    MarkovZipfLanguage(vocab_size=1)
  with pytest.raises(ValueError, match="vocab_size=2 and bos=True"):
    MarkovZipfLanguage(vocab_size=2, bos=True)
  with pytest.raises(ValueError, match="zipf_exponent=0"):
    MarkovZipfLanguage(zipf_exponent=0)
  with pytest.raises(ValueError, match="copy_len=17"):
    MarkovZipfLanguage(seq_len=64, copy_len=17)

"""In-context scores on hand-built logits: a model that copies the token one period back scores
log V on the first copy and 0 on the second, a constant model has ICL score 0, packed rows pair
each document's late and early losses, and bad arguments raise by name."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from momentum_jax.analysis import in_context as ic
from momentum_jax.data import repeated_random_tokens

VOCAB = 11


def copying_logits(tokens_BxT: np.ndarray, period: int) -> np.ndarray:
  """Logits of a model that puts all its mass, at position t, on the token at t + 1 − period
  (the token seen one period before the one it predicts), and is uniform before it can."""
  batch, seq = tokens_BxT.shape
  logits_BxTxV = np.zeros((batch, seq, VOCAB), np.float32)
  for t in range(period - 1, seq):
    logits_BxTxV[:, t] = -1e9
    logits_BxTxV[np.arange(batch), t, tokens_BxT[:, t + 1 - period]] = 0.0
  return logits_BxTxV


def test_token_losses_match_a_loop_over_log_softmax():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((2, 5, VOCAB)).astype(np.float32)
  targets = rng.integers(0, VOCAB, (2, 5))
  expected = [[np.log(np.exp(logits[b, t]).sum()) - logits[b, t, targets[b, t]]
               for t in range(5)] for b in range(2)]
  np.testing.assert_allclose(ic.token_losses(logits, targets), expected, rtol=1e-5)
  np.testing.assert_allclose(ic.next_token_losses(logits, targets),
                             ic.token_losses(logits[:, :-1], targets[:, 1:]))


@pytest.mark.parametrize("offset", [0, 1])
def test_exact_copier_scores_log_v_then_zero_on_repeated_tokens(offset):
  repeat_len = 6
  tokens = np.asarray(repeated_random_tokens(jax.random.key(0), 3, repeat_len, VOCAB))
  tokens = np.concatenate([np.zeros((3, offset), np.int32), tokens], axis=1)
  # The copier knows the period; with the prefix, its copy starts where the second copy does.
  logits = copying_logits(tokens, repeat_len)
  losses = ic.next_token_losses(logits, tokens)
  first, second = ic.repeated_segment_losses(losses, repeat_len, offset=offset)
  if offset == 0:  # uniform over the whole first copy: it cannot copy yet
    np.testing.assert_allclose(first, math.log(VOCAB), rtol=1e-6)
  np.testing.assert_allclose(second, 0.0, atol=1e-6)
  # A model ignoring its context has no induction signal.
  flat = ic.repeated_segment_losses(ic.next_token_losses(np.zeros_like(logits), tokens),
                                    repeat_len, offset=offset)
  np.testing.assert_allclose(flat.first - flat.second, 0.0, atol=1e-6)


def test_repeated_segment_losses_average_the_copies_tokens_after_the_first():
  losses = jnp.arange(14, dtype=jnp.float32)[None] * jnp.array([[1.0], [2.0]])
  out = ic.repeated_segment_losses(losses, 7, offset=1)  # 1 + 2·7 − 1 = 14 predictions
  np.testing.assert_allclose(out.first, [np.mean(np.arange(1, 7)), 2 * np.mean(np.arange(1, 7))])
  np.testing.assert_allclose(out.second, [np.mean(np.arange(8, 14)),
                                          2 * np.mean(np.arange(8, 14))])


def test_constant_model_has_icl_score_zero_and_copier_minus_log_v():
  tokens = np.asarray(repeated_random_tokens(jax.random.key(1), 4, 8, VOCAB))
  constant = ic.next_token_losses(np.zeros((4, 16, VOCAB), np.float32), tokens)  # log V
  out = ic.in_context_score(constant, late=14, early=1)
  assert float(out.score) == 0.0 and int(out.count) == 4
  copier = ic.next_token_losses(copying_logits(tokens, 8), tokens)  # [4, 15]
  out = ic.in_context_score(copier, late=14, early=1)
  np.testing.assert_allclose(out.score, -math.log(VOCAB), rtol=1e-6)
  np.testing.assert_allclose((out.late_loss, out.early_loss), (0.0, math.log(VOCAB)), atol=1e-6)


def test_icl_score_pairs_late_and_early_losses_inside_each_document_piece():
  # Row 0: one piece over the whole row. Row 1: a piece of 3 positions, then one reaching 4.
  # Row 2: one piece too short to reach late = 4.
  positions = np.array([[0, 1, 2, 3, 4, 5, 6, 7],
                        [0, 1, 2, 0, 1, 2, 3, 4],
                        [0, 1, 2, 3, 0, 1, 2, 3]])
  losses = np.arange(24, dtype=np.float32).reshape(3, 8) ** 2
  out = ic.in_context_score(losses, late=4, early=1, positions_BxT=positions)
  assert int(out.count) == 2
  late, early = (losses[0, 4] + losses[1, 7]) / 2, (losses[0, 1] + losses[1, 4]) / 2
  np.testing.assert_allclose((out.late_loss, out.early_loss, out.score),
                             (late, early, late - early), rtol=1e-6)
  differences = np.array([losses[0, 4] - losses[0, 1], losses[1, 7] - losses[1, 4]])
  np.testing.assert_allclose(out.stderr, np.std(differences, ddof=1) / np.sqrt(2), rtol=1e-6)
  # A masked loss removes its pair; no pair left gives NaN, not a number.
  mask = np.ones((3, 8), np.float32)
  mask[1, 4] = 0.0
  one = ic.in_context_score(losses, late=4, early=1, positions_BxT=positions,
                            loss_mask_BxT=mask)
  assert int(one.count) == 1 and math.isnan(float(one.stderr))  # no spread from one document
  assert math.isnan(float(ic.in_context_score(losses[1:], late=7, early=6,
                                              positions_BxT=positions[1:]).score))


@pytest.mark.parametrize("kwargs, match", [
    (dict(late=8, early=1), r"late must be in \[1, 8\).*late=8"),
    (dict(late=3, early=3), r"early must be in \[0, 3\).*early=3"),
    (dict(late=3, early=-1), r"early must be in \[0, 3\).*early=-1"),
    (dict(late=3, early=1, positions_BxT=np.zeros((2, 7), np.int32)), r"positions.shape=\(2, 7\)"),
    (dict(late=3, early=1, loss_mask_BxT=np.ones((8,))), r"loss_mask.shape=\(8,\)"),
])
def test_icl_score_bad_arguments_raise_by_name(kwargs, match):
  with pytest.raises(ValueError, match=match):
    ic.in_context_score(np.zeros((2, 8), np.float32), **kwargs)
  with pytest.raises(TypeError, match="late must be an int"):
    ic.in_context_score(np.zeros((2, 8), np.float32), late=3.0, early=1)


def test_repeated_segment_and_token_losses_bad_arguments_raise_by_name():
  losses = np.zeros((2, 9), np.float32)
  with pytest.raises(ValueError, match=r"repeat_len must be in \[2, 6\).*repeat_len=6"):
    ic.repeated_segment_losses(losses, 6)
  with pytest.raises(ValueError, match=r"repeat_len must be in \[2, 5\).*offset=1"):
    ic.repeated_segment_losses(losses, 5, offset=1)
  with pytest.raises(ValueError, match=r"repeat_len must be in \[2,.*repeat_len=1"):
    ic.repeated_segment_losses(losses, 1)
  with pytest.raises(ValueError, match=r"losses must have rank 2.*losses.shape=\(9,\)"):
    ic.repeated_segment_losses(losses[0], 2)
  with pytest.raises(ValueError, match=r"targets.shape=\(2, 4\)"):
    ic.token_losses(np.zeros((2, 5, VOCAB)), np.zeros((2, 4), np.int32))
  with pytest.raises(TypeError, match="targets must be integers"):
    ic.token_losses(np.zeros((2, 5, VOCAB)), np.zeros((2, 5)))
  with pytest.raises(ValueError, match=r"tokens.shape=\(2, 1\)"):
    ic.next_token_losses(np.zeros((2, 1, VOCAB)), np.zeros((2, 1), np.int32))

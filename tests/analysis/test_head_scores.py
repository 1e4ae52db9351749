"""Head pattern scores against loop oracles, hand-built attention maps with known scores, and a
constructed one-layer model with an exact previous-token head planted through RoPE."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from momentum_jax.analysis import head_scores as hs
from momentum_jax.core.rope import apply_rope
from momentum_jax.nn import Transformer, TransformerConfig


def random_weights(rng, batch, heads, seq):
  logits = rng.standard_normal((batch, heads, seq, seq))
  logits = np.where(np.tri(seq, dtype=bool), logits, -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  return (weights / weights.sum(-1, keepdims=True)).astype(np.float32)


def oracle_patterns(tokens):
  seq = len(tokens)
  dup, ind = np.zeros((seq, seq)), np.zeros((seq, seq))
  for t in range(seq):
    for s in range(t):
      if tokens[t] == tokens[s]:
        dup[t, s] = 1
    for s in range(1, t + 1):
      if dup[t, s - 1]:
        ind[t, s] = 1
  return dup, ind


def oracle_mul(weights, pattern):
  num = den = 0.0
  for t in range(weights.shape[0]):
    for s in range(weights.shape[1]):
      num += weights[t, s] * pattern[t, s]
      den += weights[t, s]
  return num / den


def one_hot_rows(seq, key_of_row):
  weights = np.zeros((1, 1, seq, seq), np.float32)
  for t in range(seq):
    weights[0, 0, t, key_of_row(t)] = 1.0
  return weights


def test_scores_match_loop_oracle():
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 4, (2, 11))
  weights = random_weights(rng, 2, 3, 11)
  dup = hs.duplicate_token_score(jnp.asarray(weights), tokens)
  ind = hs.induction_score(jnp.asarray(weights), tokens)
  prev = hs.previous_token_score(jnp.asarray(weights))
  for b in range(2):
    p_dup, p_ind = oracle_patterns(tokens[b])
    assert p_dup.any() and p_ind.any()
    np.testing.assert_array_equal(hs.duplicate_token_pattern(tokens)[b], p_dup)
    np.testing.assert_array_equal(hs.induction_pattern(tokens)[b], p_ind)
    for n in range(3):
      np.testing.assert_allclose(dup[b, n], oracle_mul(weights[b, n], p_dup), rtol=1e-5)
      np.testing.assert_allclose(ind[b, n], oracle_mul(weights[b, n], p_ind), rtol=1e-5)
      sub = [weights[b, n, t, t - 1] for t in range(1, 11)]
      np.testing.assert_allclose(prev[b, n], np.mean(sub), rtol=1e-5)


def test_hand_built_maps():
  seq = 6
  tokens = np.array([[5, 7, 9, 5, 7, 9]])
  previous = one_hot_rows(seq, lambda t: max(t - 1, 0))
  induction = one_hot_rows(seq, lambda t: t - 2 if t >= 3 else 0)
  duplicate = one_hot_rows(seq, lambda t: t - 3 if t >= 3 else 0)
  uniform = np.tri(seq)[None, None] / np.arange(1, seq + 1)[None, None, :, None]

  assert hs.previous_token_score(jnp.asarray(previous))[0, 0] == 1.0
  # The "mul" score of the previous-token pattern is (T - 1) / T: row 0 has no previous token.
  np.testing.assert_allclose(
      hs.pattern_score(jnp.asarray(previous), hs.previous_token_pattern(seq))[0, 0], 5 / 6)
  np.testing.assert_allclose(hs.previous_token_score(jnp.asarray(uniform[:, :, :4, :4]))[0, 0],
                             (1 / 2 + 1 / 3 + 1 / 4) / 3, rtol=1e-6)
  # Rows 3..5 of 6 follow the induction / duplicate stripes: score 3/6.
  np.testing.assert_allclose(hs.induction_score(jnp.asarray(induction), tokens)[0, 0], 0.5)
  np.testing.assert_allclose(hs.duplicate_token_score(jnp.asarray(duplicate), tokens)[0, 0], 0.5)
  assert hs.induction_score(jnp.asarray(duplicate), tokens)[0, 0] == 0.0
  assert hs.prefix_matching_score(jnp.asarray(induction), 3)[0, 0] == 1.0
  assert hs.prefix_matching_score(jnp.asarray(duplicate), 3)[0, 0] == 0.0
  # exclude_bos drops key 0 from numerator and denominator: only the stripe rows remain.
  np.testing.assert_allclose(
      hs.pattern_score(jnp.asarray(induction), hs.induction_pattern(tokens), exclude_bos=True),
      [[1.0]])

  found = hs.detect_heads({0: jnp.asarray(np.concatenate([previous, induction], axis=1))},
                          tokens, 0.9, repeat_len=3)
  assert [hit[:4] for hit in found] == [(0, 0, "previous_token", 1.0),
                                        (0, 1, "prefix_matching", 1.0)]
  chance = hs.chance_scores(tokens, repeat_len=3)
  np.testing.assert_allclose([hit.lift for hit in found],
                             [1 / chance["previous_token"][0], 1 / chance["prefix_matching"][0]],
                             rtol=1e-6)


def test_chance_scores_are_the_uniform_heads():
  seq = 6
  tokens = jnp.asarray([[3, 1, 2, 3, 1, 2]])
  chance = hs.chance_scores(tokens, repeat_len=3)
  np.testing.assert_allclose(chance["previous_token"], [np.mean(1 / np.arange(2, seq + 1))],
                             rtol=1e-6)
  # Induction keys: row 3 -> key 1, row 4 -> key 2, row 5 -> key 3; uniform rows weigh 1/(t+1).
  np.testing.assert_allclose(chance["induction"], [(1 / 4 + 1 / 5 + 1 / 6) / seq], rtol=1e-6)
  np.testing.assert_allclose(chance["prefix_matching"], [(1 / 4 + 1 / 5 + 1 / 6) / 3], rtol=1e-6)
  bidirectional = hs.chance_scores(tokens, causal=False)
  np.testing.assert_allclose(bidirectional["previous_token"], [1 / seq], rtol=1e-6)
  # The uniform head itself has lift 1 on every kind with a non-zero null.
  uniform = hs.uniform_weights(1, seq)
  found = hs.detect_heads({0: uniform}, tokens, 0.0, repeat_len=3)
  assert {hit.kind for hit in found} == {"previous_token", "duplicate_token", "induction",
                                         "prefix_matching"}
  np.testing.assert_allclose([hit.lift for hit in found], 1.0, rtol=1e-6)
  np.testing.assert_allclose(jax.jit(hs.chance_scores, static_argnames="repeat_len")(
      tokens, repeat_len=3)["induction"], chance["induction"], rtol=1e-6)


def test_min_lift_drops_heads_that_score_by_chance():
  """On T = 4 the uniform head scores 0.36 on previous-token: over a 0.3 threshold, at lift 1."""
  seq = 4
  tokens = jnp.asarray([[0, 1, 2, 3]])
  previous = one_hot_rows(seq, lambda t: max(t - 1, 0))
  patterns = {0: jnp.concatenate([jnp.asarray(previous), hs.uniform_weights(1, seq)], axis=1)}
  by_score = hs.detect_heads(patterns, tokens, 0.3)
  assert [(hit.head, hit.kind) for hit in by_score] == [(0, "previous_token"),
                                                        (1, "previous_token")]
  by_lift = hs.detect_heads(patterns, tokens, 0.3, min_lift=2.0)
  assert [(hit.head, hit.kind) for hit in by_lift] == [(0, "previous_token")]
  np.testing.assert_allclose(by_lift[0].lift, 1 / np.mean([1 / 2, 1 / 3, 1 / 4]), rtol=1e-6)


def test_prefix_matching_with_bos_offset():
  seq, length = 9, 4  # BOS + 4 tokens + the same 4 tokens
  weights = one_hot_rows(seq, lambda t: t - length + 1 if t >= 1 + length else 0)
  assert hs.prefix_matching_score(jnp.asarray(weights), length, offset=1)[0, 0] == 1.0
  assert hs.prefix_matching_score(jnp.asarray(weights), length, offset=0)[0, 0] < 1.0


def test_jit():
  rng = np.random.default_rng(1)
  weights, tokens = jnp.asarray(random_weights(rng, 1, 2, 7)), rng.integers(0, 3, (1, 7))
  np.testing.assert_allclose(jax.jit(hs.induction_score)(weights, tokens),
                             hs.induction_score(weights, tokens), rtol=1e-6)


def planted_previous_token_model(vocab=8, seq=16, d_model=32, head_dim=16):
  """Head 0 of layer 0 attends exactly to the previous token; head 1 has q = 0 (uniform).

  Every embedding is e_0 + e_{1+v}, so RMSNorm gives the same 4·e_0 component for every token;
  W_q maps it to u and W_k to w = R(1)u (RoPE at position 1), hence q_t·k_s = uᵀR(s − t + 1)u,
  which peaks at s = t − 1. u lives on the two fastest RoPE pairs with a large norm.
  """
  cfg = TransformerConfig(vocab_size=vocab, context_len=seq, num_layers=1, d_model=d_model,
                          num_heads=2, head_dim=head_dim)
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  embed = np.zeros((vocab, d_model), np.float32)
  embed[:, 0] = 1.0
  embed[np.arange(vocab), 1 + np.arange(vocab)] = 1.0
  model.embed.embedding[...] = jnp.asarray(embed)
  u = np.zeros(head_dim, np.float32)
  u[[0, 1]] = 14.0
  w = np.asarray(apply_rope(jnp.asarray(u)[None, None, None], jnp.ones((1, 1))))[0, 0, 0]
  w_q, w_k = np.zeros((2, d_model, 2 * head_dim), np.float32)
  w_q[0, :head_dim], w_k[0, :head_dim] = u / 4, w / 4
  model.blocks[0].attn.q_proj.kernel[...] = jnp.asarray(w_q)
  model.blocks[0].attn.k_proj.kernel[...] = jnp.asarray(w_k)
  return model


def test_detects_planted_previous_token_head():
  model = planted_previous_token_model()
  tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, 8)
  _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
  found = hs.detect_heads(cache, tokens, 0.5)
  assert [(hit.layer, hit.head, hit.kind) for hit in found] == [(0, 0, "previous_token")]
  assert found[0].score > 0.999
  all_scores = hs.detect_heads(cache, tokens, -1.0)
  uniform_prev = [hit.score for hit in all_scores if hit[:3] == (0, 1, "previous_token")][0]
  np.testing.assert_allclose(uniform_prev, np.mean(1 / np.arange(2, 17)), rtol=1e-5)


def test_validation():
  weights = jnp.ones((1, 2, 5, 5)) / 5
  with pytest.raises(ValueError, match="weights"):
    hs.previous_token_score(jnp.ones((2, 5, 5)))
  with pytest.raises(ValueError, match="tokens"):
    hs.induction_score(weights, jnp.zeros((1, 4), jnp.int32))
  with pytest.raises(ValueError, match="pattern"):
    hs.pattern_score(weights, jnp.ones((4, 5)))
  with pytest.raises(ValueError, match="repeat_len"):
    hs.prefix_matching_score(weights, 3)
  with pytest.raises(ValueError, match="min_lift=-1"):
    hs.detect_heads({0: weights}, jnp.zeros((1, 5), jnp.int32), 0.5, min_lift=-1.0)
  with pytest.raises(ValueError, match="seq_len=0"):
    hs.uniform_weights(1, 0)
  with pytest.raises(ValueError, match="tokens"):
    hs.chance_scores(jnp.zeros((5,), jnp.int32))
  with pytest.raises(ValueError, match="hook_pattern"):
    hs.detect_heads({"blocks.0.hook_resid_post": weights}, jnp.zeros((1, 5), jnp.int32), 0.5)

"""Interventions on attention weights against loop oracles written from the authors' procedures,
hand-checked rows, and property tests (rows stay normalised, mass moves as specified)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from flax import nnx

from momentum_jax.analysis import interventions as iv
from momentum_jax.nn import Transformer, TransformerConfig

PROPERTY = settings(max_examples=20, deadline=None)
# One compiled function per property test: examples vary the values, not the shapes.
act_jit = jax.jit(iv.act_calibrate)
var_jit = jax.jit(iv.var_redistribute, static_argnames="min_target_mass")


def random_weights(rng, batch, heads, seq, sinks=(0,), boost=3.0):
  logits = rng.standard_normal((batch, heads, seq, seq))
  for k in sinks:
    logits[..., k] += boost
  logits = np.where(np.tri(seq, dtype=bool), logits, -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  return (weights / weights.sum(-1, keepdims=True)).astype(np.float32)


def act_oracle(head, beta, threshold):
  """One head, following the authors' steps: indices, drop the first, scale, redistribute."""
  seq = head.shape[0]
  scores = [sum(head[t, k] for t in range(seq)) / (seq - k) for k in range(seq)]
  sinks = [k for k in range(seq) if scores[k] > threshold][1:]
  out = head.astype(np.float64).copy()
  for t in range(seq):
    rest = sum(head[t, k] for k in range(seq) if k not in sinks)
    if rest == 0:
      continue
    freed = (1 - beta) * sum(head[t, k] for k in sinks)
    for k in range(seq):
      out[t, k] = beta * head[t, k] if k in sinks else head[t, k] + freed * head[t, k] / rest
  return out, sinks


def var_oracle(head, sinks, targets, p, rho, summ):
  out = head.astype(np.float64).copy()
  if not targets:
    return out
  for t in range(head.shape[0]):
    row = head[t].astype(np.float64)
    mass = sum(row[s] for s in targets)
    portion = sum(row[s] for s in targets if s in sinks) / sum(row[s] + 1e-6 for s in targets)
    receivers = [s for s in targets if s not in sinks]
    total = sum(row[s] for s in receivers)
    if portion > rho or mass < summ or total == 0:
      continue
    budget = (1 - p) * sum(row[s] for s in sinks)
    for s in range(len(row)):
      out[t, s] = p * row[s] if s in sinks else row[s]
    for s in receivers:
      out[t, s] += budget * row[s] / total
  return out


def test_act_hand_rows():
  weights = np.array([[[[1, 0, 0], [0.5, 0.5, 0], [0.2, 0.6, 0.2]]]], np.float32)
  # Scores 1.7/3, 1.1/2, 0.2: all flagged at 0.1, key 0 exempt, so S = {1, 2}.
  np.testing.assert_allclose(iv.act_calibrate(jnp.asarray(weights))[0, 0],
                             [[1, 0, 0], [0.8, 0.2, 0], [0.68, 0.24, 0.08]], atol=1e-6)
  # At threshold 0.3 key 2 is not a sink: row 2 gives 0.36 to keys 0 and 2 equally.
  np.testing.assert_allclose(iv.act_calibrate(jnp.asarray(weights), threshold=0.3)[0, 0, 2],
                             [0.38, 0.24, 0.38], atol=1e-6)


def test_act_matches_oracle_and_head_selection():
  rng = np.random.default_rng(0)
  weights = random_weights(rng, 2, 3, 9, sinks=(0, 4))
  heads = np.array([True, False, True])
  out = np.asarray(iv.act_calibrate(jnp.asarray(weights), heads=jnp.asarray(heads)))
  columns = np.asarray(iv.act_sink_columns(jnp.asarray(weights)))
  for b in range(2):
    for n in range(3):
      expected, sinks = act_oracle(weights[b, n], 0.4, 0.1)
      assert 4 in sinks and 0 not in sinks
      np.testing.assert_array_equal(np.flatnonzero(columns[b, n]), sinks)
      np.testing.assert_allclose(out[b, n], expected if heads[n] else weights[b, n], atol=1e-6)


@PROPERTY
@given(seed=st.integers(0, 10_000), beta=st.floats(0.0, 1.0))
def test_act_properties(seed, beta):
  rng = np.random.default_rng(seed)
  weights = random_weights(rng, 2, 2, 7, sinks=(0, int(rng.integers(1, 7))))
  out = np.asarray(act_jit(jnp.asarray(weights), beta=beta), np.float64)
  sinks = np.asarray(iv.act_sink_columns(jnp.asarray(weights)))[:, :, None, :]
  np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(np.where(sinks, out, 0), np.where(sinks, beta * weights, 0),
                             atol=1e-6)
  gain = np.where(sinks, 0, out - weights)
  assert (gain >= -1e-6).all()
  freed = (1 - beta) * np.where(sinks, weights, 0).sum(-1)
  rest = np.where(sinks, 0, weights).sum(-1)
  moved = np.where(rest > 0, freed, 0)
  np.testing.assert_allclose(gain.sum(-1), moved, atol=1e-5)
  np.testing.assert_allclose(gain, moved[..., None] * np.where(sinks, 0, weights)
                             / np.where(rest > 0, rest, 1)[..., None], atol=1e-5)


def test_var_hand_rows_and_selection():
  weights = np.array([[[[0.3, 0.2, 0.3, 0.1, 0.1],      # selected: mass 0.6, portion ~0.5
                        [0.3, 0.1, 0.4, 0.1, 0.1],      # sink portion 2/3 > rho
                        [0.85, 0.05, 0.0, 0.05, 0.05]]]], np.float32)  # target mass 0.1
  sinks = jnp.asarray([True, False, True, False, False])
  targets = jnp.asarray([False, True, True, True, False])
  np.testing.assert_array_equal(iv.var_selection(jnp.asarray(weights), sinks, targets)[0, 0],
                                [True, False, False])
  out = iv.var_redistribute(jnp.asarray(weights), sinks, targets)[0, 0]
  np.testing.assert_allclose(out[0], [0.18, 0.36, 0.18, 0.18, 0.1], atol=1e-6)
  np.testing.assert_allclose(out[1:], weights[0, 0, 1:])
  masked = iv.var_redistribute(jnp.asarray(weights), sinks, targets,
                               query_mask=jnp.asarray([False, True, True]))
  np.testing.assert_allclose(masked, weights)


@PROPERTY
@given(seed=st.integers(0, 10_000), p=st.floats(0.0, 1.0))
def test_var_matches_oracle_and_keeps_rows_normalised(seed, p):
  rng = np.random.default_rng(seed)
  seq = 6
  weights = random_weights(rng, 2, 2, seq, sinks=(0,), boost=1.0)
  sinks = rng.random((2, seq)) < 0.3
  targets = rng.random((2, seq)) < 0.6
  out = np.asarray(var_jit(jnp.asarray(weights), jnp.asarray(sinks), jnp.asarray(targets), p=p,
                           min_target_mass=0.1))
  np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)
  for b in range(2):
    for n in range(2):
      expected = var_oracle(weights[b, n], set(np.flatnonzero(sinks[b])),
                            list(np.flatnonzero(targets[b])), p, 0.5, 0.1)
      np.testing.assert_allclose(out[b, n], expected, atol=1e-5)


def test_vhr_scales_and_reweighting():
  divergence = jnp.asarray([[1.0, 2.0, 3.0, 4.0, 10.0], [0.0, 1.0, 2.0, 3.0, 1.5]])
  # Layer 0: median 3, mean + std = 4 + sqrt(10); 10 is a surge. Layer 1: median 1.5, mean 1.5,
  # std 1, so 2 <= 2.5 is scaled and 3 is a surge.
  np.testing.assert_array_equal(iv.vhr_head_scales(divergence),
                                [[1, 1, 1, 2, 1], [1, 1, 2, 1, 1]])
  weights = jnp.asarray(random_weights(np.random.default_rng(1), 2, 3, 4))
  out = iv.reweight_heads(weights, jnp.asarray([1.0, 2.0, 0.5]))
  np.testing.assert_allclose(out.sum(-1), np.broadcast_to([[[1.0], [2.0], [0.5]]], (2, 3, 4)),
                             rtol=1e-6)


def test_column_editing():
  weights = jnp.asarray([[[[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]]]])
  token1, token0 = jnp.asarray([False, True, False]), jnp.asarray([True, False, False])
  np.testing.assert_allclose(iv.scale_token_columns(weights, token1, 2.0)[0, 0, 0],
                             [0.4, 0.4, 0.2], rtol=1e-6)
  np.testing.assert_allclose(iv.scale_token_columns(weights, token1, 2.0, renormalize=False)
                             [0, 0, 0], [0.5, 0.5, 0.25])
  suppressed = iv.suppress_tokens(weights, token0)[0, 0]
  np.testing.assert_allclose(suppressed[0], [0.0, 0.5, 0.5])
  np.testing.assert_allclose(suppressed[1], [0.0, 0.0, 0.0])  # nothing left to renormalise
  source = jnp.asarray([[[[0.1, 0.8, 0.1], [0.2, 0.3, 0.5]]]])
  replaced = iv.replace_token_columns(weights, source, token1)[0, 0]
  np.testing.assert_allclose(replaced, [[0.5 / 1.55, 0.8 / 1.55, 0.25 / 1.55],
                                        [1 / 1.3, 0.3 / 1.3, 0.0]], rtol=1e-6)
  per_batch = iv.scale_token_columns(jnp.concatenate([weights, weights]),
                                     jnp.asarray([[True, False, False], [False, True, False]]),
                                     2.0)
  np.testing.assert_allclose(per_batch[0, 0, 0], [2 / 3, 1 / 6, 1 / 6], rtol=1e-6)
  np.testing.assert_allclose(per_batch[1, 0, 0], [0.4, 0.4, 0.2], rtol=1e-6)


def test_positional_debiasing():
  positions = np.arange(12)
  mean_attention = 0.01 * np.exp(0.3 * positions) * (1 + 0.05 * np.cos(positions))
  trend = np.asarray(iv.fit_recency_trend(jnp.asarray(mean_attention)))
  slope, intercept = np.polyfit(positions, np.log(mean_attention), 1)
  np.testing.assert_allclose(trend, np.exp(intercept + slope * positions), rtol=1e-4)
  scores = jnp.asarray(np.stack([mean_attention, np.ones(12)]))
  debiased = np.asarray(iv.debias_scores(scores, jnp.asarray(trend)))
  np.testing.assert_allclose(debiased[1], np.exp(-slope * positions), rtol=1e-4)
  assert debiased[0].max() / debiased[0].min() < 1.2 < mean_attention.max() / mean_attention.min()
  # A decreasing profile has no recency trend: the slope is clamped to 0 and scores are kept.
  flat = iv.fit_recency_trend(jnp.asarray(np.exp(-0.2 * positions)))
  np.testing.assert_allclose(iv.debias_scores(scores, flat), scores, rtol=1e-6)


def test_jit_and_validation():
  weights = jnp.asarray(random_weights(np.random.default_rng(2), 1, 2, 5))
  np.testing.assert_allclose(jax.jit(iv.act_calibrate)(weights), iv.act_calibrate(weights),
                             atol=1e-6)
  with pytest.raises(ValueError, match="weights"):
    iv.act_calibrate(jnp.ones((1, 2, 4, 5)))
  with pytest.raises(ValueError, match="heads"):
    iv.act_calibrate(weights, heads=jnp.ones((3,), bool))
  with pytest.raises(ValueError, match="sink_tokens"):
    iv.var_redistribute(weights, jnp.ones((4,), bool), jnp.ones((5,), bool))
  with pytest.raises(ValueError, match="target_tokens"):
    iv.var_redistribute(weights, jnp.ones((5,), bool), jnp.ones((5,), jnp.int32))
  with pytest.raises(ValueError, match="head_scale"):
    iv.reweight_heads(weights, jnp.ones((3,)))
  with pytest.raises(ValueError, match="source"):
    iv.replace_token_columns(weights, weights[:, :1], jnp.ones((5,), bool))
  with pytest.raises(ValueError, match="factor"):
    iv.scale_token_columns(weights, jnp.ones((5,), bool), -1.0)
  with pytest.raises(ValueError, match="trend"):
    iv.debias_scores(jnp.ones((2, 4)), jnp.ones((5,)))


def test_act_calibration_edits_a_model_pattern_through_run_with_hooks_under_jit():
  model = Transformer(TransformerConfig(vocab_size=16, context_len=12, num_layers=1, d_model=16,
                                        num_heads=2), rngs=nnx.Rngs(0))
  tokens_BxT = jax.random.randint(jax.random.key(1), (2, 12), 0, 16)

  def plant(pattern_BxNxTxT):
    # A sink on key 3 (not the exempt first token): half of every row that can see it.
    sink_BxNxTxT = jnp.zeros_like(pattern_BxNxTxT).at[..., 3:, 3].set(1.0)
    sees_Tx1 = (jnp.arange(pattern_BxNxTxT.shape[2]) >= 3)[:, None]
    return jnp.where(sees_Tx1, 0.5 * pattern_BxNxTxT + 0.5 * sink_BxNxTxT, pattern_BxNxTxT)

  def plant_sink_then_calibrate(pattern_BxNxTxT, name):
    return iv.act_calibrate(plant(pattern_BxNxTxT), beta=0.4, threshold=0.1)

  name = "blocks.0.attn.hook_pattern"
  hooked = jax.jit(lambda tokens: model.run_with_hooks(
      tokens, fwd_hooks=[(name, plant_sink_then_calibrate)]))
  identity = jax.jit(lambda tokens: model.run_with_hooks(
      tokens, fwd_hooks=[(name, lambda pattern, name: pattern)]))
  logits_hooked, logits_identity = hooked(tokens_BxT), identity(tokens_BxT)
  np.testing.assert_allclose(logits_identity, model(tokens_BxT), rtol=1e-5, atol=1e-5)
  assert np.all(np.isfinite(logits_hooked))
  assert not np.allclose(logits_hooked, logits_identity, atol=1e-4)
  _, cache = model.run_with_cache(tokens_BxT, names_filter=name)
  edited = plant_sink_then_calibrate(cache[name], name)
  np.testing.assert_allclose(jnp.sum(edited, axis=-1), 1.0, rtol=1e-5)
  planted_mass = float(jnp.mean(plant(cache[name])[..., 3:, 3]))
  assert planted_mass > 0.5
  np.testing.assert_allclose(float(jnp.mean(edited[..., 3:, 3])), 0.4 * planted_mass, rtol=1e-5)

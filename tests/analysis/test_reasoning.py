"""Reasoning metrics against loop oracles and hand-checked maps: head distance, local/global split,
WAAD, FAI, head divergence and the top-k token score."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from momentum_jax.analysis import reasoning as rs


def random_weights(rng, *lead, seq):
  logits = rng.standard_normal(lead + (seq, seq))
  logits = np.where(np.tri(seq, dtype=bool), logits, -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  return (weights / weights.sum(-1, keepdims=True)).astype(np.float32)


def one_hot_rows(seq, key_of_row):
  weights = np.zeros((1, seq, seq), np.float32)
  for t in range(seq):
    weights[0, t, key_of_row(t)] = 1.0
  return weights


def uniform_causal(seq):
  return (np.tri(seq) / np.arange(1, seq + 1)[:, None])[None].astype(np.float32)


def test_head_distance_oracle_and_hand_values():
  rng = np.random.default_rng(0)
  weights = random_weights(rng, 2, 3, seq=9)
  rows = rng.random((2, 9)) < 0.6
  rows[:, -1] = True
  dist = rs.head_distance(jnp.asarray(weights), jnp.asarray(rows))
  for b in range(2):
    for n in range(3):
      per_row = [sum(weights[b, n, t, s] * (t - s) for s in range(9)) for t in range(9)]
      np.testing.assert_allclose(dist[b, n], np.mean([per_row[t] for t in range(9) if rows[b, t]]),
                                 rtol=1e-5)
  previous = one_hot_rows(8, lambda t: max(t - 1, 0))[None]
  np.testing.assert_allclose(rs.head_distance(jnp.asarray(previous)), [[7 / 8]])
  np.testing.assert_allclose(rs.head_distance(jnp.asarray(previous), jnp.arange(8) > 0), [[1.0]])
  # Uniform causal rows: row t looks back t/2 on average, so d = (T - 1)/4.
  np.testing.assert_allclose(rs.head_distance(jnp.asarray(uniform_causal(9)[None])), [[2.0]],
                             rtol=1e-6)


def test_split_local_global():
  distance = jnp.asarray([[0.5, 3.0, 1.0], [7.0, 2.0, 0.1]])
  local, global_ = rs.split_local_global(distance)  # k = max(1, floor(1.8)) = 1
  np.testing.assert_array_equal(local, [[0, 0, 0], [0, 0, 1]])
  np.testing.assert_array_equal(global_, [[0, 0, 0], [1, 0, 0]])
  local, global_ = rs.split_local_global(distance, 0.5)
  np.testing.assert_array_equal(local, [[1, 0, 1], [0, 0, 1]])
  np.testing.assert_array_equal(global_, [[0, 1, 0], [1, 1, 0]])


def test_mean_head_attention_waad_fai_oracles():
  rng = np.random.default_rng(1)
  weights = random_weights(rng, 2, 2, 3, seq=13)
  heads = np.array([[True, False, True], [False, False, True]])
  avg = np.asarray(rs.mean_head_attention(jnp.asarray(weights), jnp.asarray(heads)))
  np.testing.assert_allclose(avg, (weights[0, :, 0] + weights[0, :, 2] + weights[1, :, 2]) / 3,
                             rtol=1e-5)
  w_out = np.asarray(rs.waad(jnp.asarray(avg), window=4))
  f_out = np.asarray(rs.fai(jnp.asarray(avg), 2, 5))
  for b in range(2):
    for t in range(13):
      expected = sum(avg[b, t, s] * min(t - s, 4) for s in range(t + 1))
      np.testing.assert_allclose(w_out[b, t], expected, rtol=1e-5, atol=1e-7)
    for s in range(13):
      ts = range(s + 2, min(12, s + 5) + 1)
      expected = np.mean([avg[b, t, s] for t in ts]) if len(ts) else 0.0
      np.testing.assert_allclose(f_out[b, s], expected, rtol=1e-5, atol=1e-7)


def test_waad_fai_hand_values():
  first = one_hot_rows(14, lambda t: 0)
  np.testing.assert_allclose(rs.waad(jnp.asarray(first))[0], np.minimum(np.arange(14), 10))
  previous = one_hot_rows(6, lambda t: max(t - 1, 0))
  np.testing.assert_allclose(rs.waad(jnp.asarray(previous))[0], [0, 1, 1, 1, 1, 1])
  # Uniform rows 1/(t + 1); H = 1..2, T = 5: FAI_0 = (1/2 + 1/3)/2, FAI_3 = 1/5, FAI_4 = 0.
  np.testing.assert_allclose(rs.fai(jnp.asarray(uniform_causal(5)), 1, 2)[0],
                             [5 / 12, (1 / 3 + 1 / 4) / 2, (1 / 4 + 1 / 5) / 2, 1 / 5, 0.0],
                             rtol=1e-6)


def test_head_divergence_and_top_k():
  rng = np.random.default_rng(2)
  z_with = rng.standard_normal((2, 5, 3, 6)).astype(np.float32)
  z_without = z_with.copy()
  z_without[:, :, 1] += 2.0  # head 1 moves by 2 in each of 6 dims: distance 2 sqrt(6)
  z_without[0, 4, 2] += np.array([3, 4, 0, 0, 0, 0], np.float32)
  vhd = np.asarray(rs.head_divergence(jnp.asarray(z_with), jnp.asarray(z_without)))
  np.testing.assert_allclose(vhd[:, :, 1], 2 * np.sqrt(6), rtol=1e-6)
  assert vhd[0, 4, 2] == pytest.approx(5.0) and vhd[1, :, 0].max() == 0.0
  np.testing.assert_allclose(rs.top_k_head_score(jnp.asarray(vhd), 2)[0, 4],
                             (2 * np.sqrt(6) + 5) / 2, rtol=1e-6)
  stacked = np.stack([vhd, 2 * vhd], axis=2)  # [B, T, L = 2, N = 3]
  score = np.asarray(rs.top_k_head_score(jnp.asarray(stacked), 3))
  for b in range(2):
    for t in range(5):
      np.testing.assert_allclose(score[b, t], np.mean(np.sort(stacked[b, t].ravel())[-3:]),
                                 rtol=1e-6)


def test_jit_and_validation():
  weights = jnp.asarray(random_weights(np.random.default_rng(3), 1, 2, seq=7))
  np.testing.assert_allclose(jax.jit(rs.head_distance)(weights), rs.head_distance(weights),
                             rtol=1e-6)
  with pytest.raises(ValueError, match="weights"):
    rs.head_distance(jnp.ones((1, 2, 6, 7)))
  with pytest.raises(ValueError, match="rows"):
    rs.head_distance(weights, jnp.ones((6,), bool))
  with pytest.raises(ValueError, match="fraction"):
    rs.split_local_global(jnp.ones((2, 3)), 0.7)
  with pytest.raises(ValueError, match="heads"):
    rs.mean_head_attention(weights[None], jnp.ones((1, 3), bool))
  with pytest.raises(ValueError, match="horizon"):
    rs.fai(weights[:, 0], 3, 2)
  with pytest.raises(ValueError, match="z_without"):
    rs.head_divergence(jnp.ones((1, 2, 3, 4)), jnp.ones((1, 2, 3, 5)))
  with pytest.raises(ValueError, match="k must"):
    rs.top_k_head_score(jnp.ones((1, 2, 3)), 4)

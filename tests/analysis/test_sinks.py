"""Sink metric, secondary sinks and massive activations against loop oracles, hand-built hidden
states with known sink levels, and activations captured from a small model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from momentum_jax.analysis import sinks
from momentum_jax.nn import Transformer, TransformerConfig


def random_weights(rng, batch, heads, seq, sink_logit=0.0):
  logits = rng.standard_normal((batch, heads, seq, seq))
  logits[..., 0] += sink_logit
  logits = np.where(np.tri(seq, dtype=bool), logits, -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  return (weights / weights.sum(-1, keepdims=True)).astype(np.float32)


def oracle_alpha(weights):
  batch, heads, seq, _ = weights.shape
  alpha = np.zeros((batch, heads, seq))
  for b in range(batch):
    for n in range(heads):
      for k in range(seq):
        alpha[b, n, k] = np.mean([weights[b, n, t, k] for t in range(k, seq)])
  return alpha


def test_alpha_and_rate_match_oracle():
  rng = np.random.default_rng(0)
  layers = [random_weights(rng, 3, 4, 9, sink_logit=s) for s in (0.0, 3.0)]
  alpha = jnp.stack([sinks.sink_alpha(jnp.asarray(w)) for w in layers])
  expected = np.stack([oracle_alpha(w) for w in layers])
  np.testing.assert_allclose(alpha, expected, rtol=1e-5)
  rate = sinks.sink_rate(alpha, 0.3)
  for k in range(9):
    count = sum(expected[l, b, n, k] > 0.3 for l in range(2) for b in range(3) for n in range(4))
    np.testing.assert_allclose(rate[k], 100 * count / 24, rtol=1e-6)
  assert 0 < rate[0] <= 100 and rate[0] > rate[1:].max()
  np.testing.assert_allclose(sinks.head_sink_scores(jnp.asarray(layers[1])),
                             expected[1, :, :, 0].mean(0), rtol=1e-5)


def test_alpha_hand_values():
  uniform = np.tri(4)[None, None] / np.arange(1, 5)[None, None, :, None]
  np.testing.assert_allclose(sinks.sink_alpha(jnp.asarray(uniform))[0, 0],
                             [25 / 48, 13 / 36, 7 / 24, 1 / 4], rtol=1e-6)
  first = np.zeros((1, 1, 4, 4))
  first[..., 0] = 1.0
  alpha = sinks.sink_alpha(jnp.asarray(first))
  np.testing.assert_allclose(alpha[0, 0], [1, 0, 0, 0])
  np.testing.assert_allclose(sinks.sink_rate(alpha), [100, 0, 0, 0])


def test_secondary_sink_levels():
  layers, dims = 8, 4
  e = np.eye(dims)
  hidden = np.zeros((layers, 1, 6, dims))
  hidden[:, 0, 0] = e[0] + 0.1 * e[2]  # aligned with the sink but before it: never flagged
  hidden[:, 0, 1] = 10 * e[0]          # the BOS sink (largest norm among {0, 1})
  hidden[:, 0, 2] = e[1]
  hidden[:, 0, 3] = e[2]
  hidden[2:, 0, 3] = e[0] + 0.1 * e[1]  # flagged at layers 2..7: lifetime 6
  hidden[:, 0, 4] = e[3]
  hidden[3:5, 0, 4] = 2 * e[0]          # flagged at layers 3, 4: lifetime 2
  hidden[:, 0, 5] = -e[0]               # |cos| = 1 at every layer: lifetime 8
  levels = sinks.secondary_sinks(jnp.asarray(hidden, jnp.float32))
  assert int(levels.bos[0]) == 1
  np.testing.assert_array_equal(levels.lifetime[0], [0, 0, 0, 6, 2, 8])
  np.testing.assert_array_equal(levels.first_layer[0], [-1, -1, -1, 2, 3, 0])
  # L = 8: primary when lifetime >= 8 - 15 * 8/48 = 5.5, secondary when 4 * 8/48 < lifetime < 5.5.
  np.testing.assert_array_equal(levels.primary[0], [0, 0, 0, 1, 0, 1])
  np.testing.assert_array_equal(levels.secondary[0], [0, 0, 0, 0, 1, 0])
  assert sinks.sink_thresholds(48) == (33.0, 4.0)


def test_flags_match_oracle():
  rng = np.random.default_rng(1)
  hidden = rng.standard_normal((5, 2, 7, 6)).astype(np.float32)
  hidden[:, :, 1] *= 5
  hidden[1:4, 0, 5] = 3 * hidden[1:4, 0, 1] + 0.05
  bos = np.asarray(sinks.select_bos(jnp.asarray(hidden)))
  for b in range(2):
    norms = [np.mean([np.linalg.norm(hidden[l, b, c]) for l in range(5)]) for c in (0, 1)]
    assert bos[b] == int(np.argmax(norms))
  flags = np.asarray(sinks.sink_flags(jnp.asarray(hidden), jnp.asarray(bos)))
  for l in range(5):
    for b in range(2):
      for j in range(7):
        x, y = hidden[l, b, j], hidden[l, b, bos[b]]
        cos = x @ y / (np.linalg.norm(x) * np.linalg.norm(y))
        assert flags[l, b, j] == (j > bos[b] and abs(cos) > 0.9), (l, b, j)
  assert flags[1:4, 0, 5].all()


def test_massive_activations_and_dimension_sinks():
  rng = np.random.default_rng(2)
  hidden = rng.standard_normal((2, 5, 8)).astype(np.float32)
  hidden[1, 2, 3] = -5000.0
  hidden[0, 4, 6] = 300.0  # > 100 but only ~300 x median: not massive at ratio 1000
  top = sinks.top_activations(jnp.asarray(hidden), k=2)
  np.testing.assert_allclose(top.value, [-5000.0, 300.0])
  np.testing.assert_array_equal(top.position, [1 * 5 + 2, 0 * 5 + 4])
  np.testing.assert_array_equal(top.dim, [3, 6])
  median = np.median(np.abs(hidden))
  np.testing.assert_allclose(top.median_ratio, [5000 / median, 300 / median], rtol=1e-5)
  assert 300 / median < 1000 < 5000 / median
  np.testing.assert_array_equal(sinks.massive_activation_dims(jnp.asarray(hidden)),
                                np.arange(8) == 3)

  tokens = np.asarray(sinks.dimension_sink_tokens(jnp.asarray(hidden), [3, 6], tau=2.0))
  for b in range(2):
    for t in range(5):
      x = hidden[b, t].astype(np.float64)
      normed = x / np.sqrt(np.mean(x**2) + 1e-6)
      assert tokens[b, t] == (max(abs(normed[3]), abs(normed[6])) > 2.0)
  assert tokens[1, 2] and tokens[0, 4] and tokens.sum() >= 2


def test_jit_and_validation():
  weights = jnp.asarray(random_weights(np.random.default_rng(3), 1, 2, 5))
  np.testing.assert_allclose(jax.jit(sinks.sink_alpha)(weights), sinks.sink_alpha(weights),
                             rtol=1e-6)
  with pytest.raises(ValueError, match="weights"):
    sinks.sink_alpha(jnp.ones((1, 2, 4, 5)))
  with pytest.raises(ValueError, match="hidden"):
    sinks.secondary_sinks(jnp.ones((3, 4, 5)))
  with pytest.raises(ValueError, match="candidates"):
    sinks.select_bos(jnp.ones((2, 1, 3, 4)), candidates=(0, 3))
  with pytest.raises(ValueError, match="sink_dims"):
    sinks.dimension_sink_tokens(jnp.ones((1, 3, 4)), [4])


def test_on_captured_activations():
  cfg = TransformerConfig(vocab_size=16, context_len=12, num_layers=2, d_model=16, num_heads=2)
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(1), (3, 12), 0, 16)
  _, cache = model.run_with_cache(
      tokens, names_filter=lambda name: name.endswith(("hook_pattern", "hook_resid_post")))
  patterns = [cache[f"blocks.{l}.attn.hook_pattern"] for l in range(2)]
  alpha = jnp.stack([sinks.sink_alpha(p) for p in patterns])
  expected = np.stack([oracle_alpha(np.asarray(p)) for p in patterns])
  np.testing.assert_allclose(alpha, expected, rtol=1e-5)
  np.testing.assert_allclose(sinks.sink_rate(alpha, 0.3)[0],
                             100 * np.mean(expected[..., 0] > 0.3), rtol=1e-6)
  hidden = jnp.stack([cache[f"blocks.{l}.hook_resid_post"] for l in range(2)])
  levels = sinks.secondary_sinks(hidden)
  assert levels.lifetime.shape == (3, 12) and set(np.asarray(levels.bos)) <= {0, 1}
  assert (np.asarray(levels.lifetime) <= 2).all()

"""The momentum shear: hand values, per-head γ, segments, filter response, logit identity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import momentum_jax.attention as attn
from momentum_jax.attention.kv_shift import kv_shift_attention
from momentum_jax.core.rope import apply_rope


def normal(rng, *shape):
  return jnp.asarray(rng.standard_normal(shape), jnp.float32)


def ramp(seq=5):
  return jnp.arange(1.0, seq + 1).reshape(1, seq, 1, 1)


def test_unit_gamma_on_a_ramp():
  # x_t = t + 1, γ = 1: x̂_t = 2 x_t − x_{t−1} = t + 2 for t >= 1.
  zero = attn.momentum_shear(ramp(), 1.0)
  replicate = attn.momentum_shear(ramp(), 1.0, boundary="replicate")
  np.testing.assert_array_equal(zero.ravel(), [2, 3, 4, 5, 6])
  np.testing.assert_array_equal(replicate.ravel(), [1, 3, 4, 5, 6])


def test_zero_gamma_is_identity():
  x = normal(np.random.default_rng(0), 2, 7, 4, 24)
  np.testing.assert_array_equal(attn.momentum_shear(x, 0.0), x)


def test_per_head_gamma_matches_scalar_per_head():
  x = normal(np.random.default_rng(0), 2, 7, 4, 24)
  gamma = jnp.array([0.0, 0.5, 1.0, 2.0])
  out = attn.momentum_shear(x, gamma)
  for n in range(4):
    single = attn.momentum_shear(x, float(gamma[n]))
    np.testing.assert_allclose(out[:, :, n], single[:, :, n], rtol=1e-6)


@pytest.mark.parametrize("boundary", ["zero", "replicate"])
def test_segments_restart_the_difference(boundary):
  x = normal(np.random.default_rng(1), 1, 9, 4, 24)
  ids = jnp.array([[3, 3, 3, 3, 7, 7, 1, 1, 1]])
  out = attn.momentum_shear(x, 0.8, boundary=boundary, segment_ids=ids)
  pieces = [attn.momentum_shear(x[:, a:b], 0.8, boundary=boundary)
            for a, b in ((0, 4), (4, 6), (6, 9))]
  np.testing.assert_allclose(out, jnp.concatenate(pieces, axis=1), rtol=1e-6)


@pytest.mark.parametrize("omega", [0.0, 0.3, np.pi / 2, 2.5, np.pi])
@pytest.mark.parametrize("gamma", [0.5, 1.0, 4.17])
def test_steady_state_gain_and_phase(omega, gamma):
  # x_t = e^{iωt} as a (cos, sin) channel pair: x̂_t = H(e^{iω}) e^{iωt} for t >= 1.
  t = np.arange(33)
  x = np.stack([np.cos(omega * t), np.sin(omega * t)], -1)[None, :, None, :]
  x = jnp.asarray(x, jnp.float32)
  out = np.asarray(attn.momentum_shear(x, gamma), np.float64)[0, 1:, 0]
  response = (out[:, 0] + 1j * out[:, 1]) * np.exp(-1j * omega * t[1:])
  transfer = 1 + gamma * (1 - np.exp(-1j * omega))
  np.testing.assert_allclose(np.abs(response), np.abs(transfer), rtol=1e-5)
  gain_squared = 1 + 2 * gamma * (1 + gamma) * (1 - np.cos(omega))
  np.testing.assert_allclose(np.abs(transfer) ** 2, gain_squared, rtol=1e-12)
  phase = np.arctan2(gamma * np.sin(omega), 1 + gamma - gamma * np.cos(omega))
  np.testing.assert_allclose(response, np.abs(transfer) * np.exp(1j * phase), atol=1e-5)


def test_logit_identity():
  # q̂_t·k̂_s = (1+γ)² q_t·k_s − γ(1+γ)[q_t·k_{s−1} + q_{t−1}·k_s] + γ² q_{t−1}·k_{s−1}, x_{−1} = 0.
  rng = np.random.default_rng(2)
  gamma = 0.7
  q, k = normal(rng, 1, 11, 1, 40), normal(rng, 1, 11, 1, 40)
  dots = lambda a, b: np.asarray(a[0, :, 0], np.float64) @ np.asarray(b[0, :, 0], np.float64).T
  shift = lambda x: jnp.pad(x[:, :-1], ((0, 0), (1, 0), (0, 0), (0, 0)))
  lhs = dots(attn.momentum_shear(q, gamma), attn.momentum_shear(k, gamma))
  rhs = ((1 + gamma) ** 2 * dots(q, k)
         - gamma * (1 + gamma) * (dots(q, shift(k)) + dots(shift(q), k))
         + gamma**2 * dots(shift(q), shift(k)))
  np.testing.assert_allclose(lhs, rhs, rtol=1e-5, atol=1e-4)


def test_kv_shift_generalises_the_key_shear():
  rng = np.random.default_rng(3)
  q, k, v = normal(rng, 2, 33, 4, 24), normal(rng, 2, 33, 2, 24), normal(rng, 2, 33, 2, 24)
  ids = jnp.asarray(np.repeat([[0, 1, 2]], 11, axis=1).reshape(1, 33).repeat(2, 0))
  gamma = 0.6
  shifted = kv_shift_attention(q, k, v, alpha=jnp.array([1 + gamma, -gamma]),
                                    beta=jnp.array([1.0, 0.0]), segment_ids=ids)
  k_hat = attn.momentum_shear(k, gamma, segment_ids=ids)
  sheared = attn.softmax_attention(q, k_hat, v, segment_ids=ids)
  np.testing.assert_allclose(shifted, sheared, rtol=1e-5, atol=1e-6)


def test_momentum_attention_is_rope_shear_softmax():
  rng = np.random.default_rng(4)
  q, k, v = normal(rng, 2, 7, 4, 24), normal(rng, 2, 7, 2, 24), normal(rng, 2, 7, 2, 24)
  gamma = jnp.array([0.3, 1.2])  # one per kv head, shared by its query heads (n // 2)
  out = attn.momentum_attention(q, k, v, gamma=gamma)
  q_hat = attn.momentum_shear(apply_rope(q), jnp.array([0.3, 0.3, 1.2, 1.2]))
  k_hat = attn.momentum_shear(apply_rope(k), gamma)
  np.testing.assert_allclose(out, attn.softmax_attention(q_hat, k_hat, v), rtol=1e-6, atol=1e-6)
  registered = attn.get_attention("momentum").fn(q, k, v, gamma=gamma)  # no RoPE inside
  no_rope = attn.momentum_attention(q, k, v, gamma=gamma, rope=False)
  np.testing.assert_array_equal(registered, no_rope)
  np.testing.assert_allclose(attn.momentum_attention(q, k, v, gamma=0.0, rope=False),
                             attn.softmax_attention(q, k, v), rtol=1e-6, atol=1e-6)


def test_per_query_head_gamma_is_rejected_under_gqa():
  rng = np.random.default_rng(5)
  q, k = normal(rng, 1, 7, 4, 24), normal(rng, 1, 7, 2, 24)
  with pytest.raises(ValueError, match=r"gamma.*\[2\].*kv head.*\(4,\)"):
    attn.momentum_attention(q, k, k, gamma=jnp.ones(4))


def test_gamma_is_differentiable_and_traced_gamma_is_not_checked():
  x = normal(np.random.default_rng(6), 1, 7, 4, 24)
  grad = jax.grad(lambda g: jnp.sum(attn.momentum_shear(x, g) ** 2))(0.5)
  assert np.isfinite(grad) and grad != 0
  # Documented: traced values are not checked; γ = −1 gives x̂_t = x_{t−1}.
  out = jax.jit(lambda g: attn.momentum_shear(x, g))(-1.0)
  np.testing.assert_allclose(out, jnp.pad(x[:, :-1], ((0, 0), (1, 0), (0, 0), (0, 0))), atol=1e-6)

"""RoPE: relative positions, norms, conventions and errors."""

import jax.numpy as jnp
import numpy as np
import pytest

from momentum_jax.core.rope import apply_rope, rope_frequencies


def normal(rng, *shape):
  return jnp.asarray(rng.standard_normal(shape), jnp.float32)


def test_rotate_half_convention():
  # H = 4: pairs (0, 2) at frequency 1 and (1, 3) at frequency base^(-1/2).
  x = jnp.array([1.0, 0.0, 0.0, 0.0]).reshape(1, 1, 1, 4)
  out = apply_rope(x, jnp.array([[3]]), base=100.0)
  np.testing.assert_allclose(out.ravel(), [np.cos(3), 0, np.sin(3), 0], atol=1e-6)
  np.testing.assert_allclose(rope_frequencies(4, base=100.0), [1.0, 0.1], rtol=1e-6)


@pytest.mark.parametrize("head_dim", [24, 40])
def test_scores_depend_on_relative_position_only(head_dim):
  rng = np.random.default_rng(0)
  q, k = normal(rng, 1, 1, 1, head_dim), normal(rng, 1, 1, 1, head_dim)

  def score(m, n):
    rq = apply_rope(q, jnp.array([[m]]))
    rk = apply_rope(k, jnp.array([[n]]))
    return float(jnp.sum(rq * rk))

  for m, n in [(5, 2), (9, 9), (0, 7)]:
    assert score(m, n) == pytest.approx(score(m + 100, n + 100), rel=1e-4, abs=1e-4)
  assert score(5, 2) != pytest.approx(score(5, 3), rel=1e-3)


def test_preserves_norms_and_dtype():
  x = normal(np.random.default_rng(1), 2, 33, 4, 40)
  out = apply_rope(x)
  np.testing.assert_allclose(jnp.linalg.norm(out, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5)
  assert apply_rope(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_default_positions_are_arange():
  x = normal(np.random.default_rng(2), 2, 7, 4, 24)
  np.testing.assert_array_equal(apply_rope(x), apply_rope(x, jnp.arange(7)))
  per_batch = jnp.tile(jnp.arange(7), (2, 1))
  np.testing.assert_array_equal(apply_rope(x), apply_rope(x, per_batch))
  np.testing.assert_array_equal(apply_rope(x, jnp.zeros((2, 7), jnp.int32)), x)


def test_errors():
  with pytest.raises(ValueError, match=r"head_dim=25"):
    apply_rope(jnp.ones((1, 7, 4, 25)))
  with pytest.raises(ValueError, match=r"positions.shape=\(2, 6\).*x.shape=\(2, 7, 4, 24\)"):
    apply_rope(jnp.ones((2, 7, 4, 24)), jnp.zeros((2, 6)))
  with pytest.raises(TypeError, match=r"x.dtype=int32"):
    apply_rope(jnp.ones((2, 7, 4, 24), jnp.int32))

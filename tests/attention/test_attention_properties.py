"""Registry, causality by gradients, jit / vmap, and fully masked rows."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import momentum_jax.attention as attn
from momentum_jax.attention.ema_value import ema_value_attention

jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

PARAMS = {
    "softmax": {},
    "momentum": {"gamma": 0.9},
    "kv_shift": {"alpha": jnp.array([1.5, -0.5]), "beta": jnp.array([[0.7, 0.3], [1.0, -0.2]])},
    "ema_value": {"eta": 0.6},
}


def inputs(seq=7, kv_heads=2, seed=0):
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  return normal(2, seq, 4, 24), normal(2, seq, kv_heads, 24), normal(2, seq, kv_heads, 24)


def test_registry_names_and_params():
  assert set(attn.available_attention()) >= set(PARAMS)
  assert attn.get_attention("momentum").params == ("gamma", "boundary", "normalize_gain")
  assert attn.get_attention("kv_shift").params == ("alpha", "beta")
  assert attn.get_attention("ema_value").params == ("eta",)
  assert attn.get_attention("softmax").params == ()
  with pytest.raises(ValueError, match=r"'nope'.*ema_value.*kv_shift.*momentum.*softmax"):
    attn.get_attention("nope")


@pytest.mark.parametrize("extras", [{}, {"window": 3, "sinks": True, "segments": True}])
@pytest.mark.parametrize("name", sorted(PARAMS))
def test_causal_by_gradient(name, extras):
  """d out[:, t] / d inputs at positions > t is exactly zero."""
  q, k, v = inputs()
  kwargs = dict(PARAMS[name])
  if extras:
    kwargs.update(window=extras["window"], sinks=jnp.arange(4.0),
                  segment_ids=jnp.array([[0, 0, 0, 0, 1, 1, 1]] * 2))
  fn = attn.get_attention(name).fn
  per_t = lambda q, k, v: jnp.sum(fn(q, k, v, **kwargs), axis=(0, 2, 3))
  jacobians = jit(jax.jacrev(per_t, argnums=(0, 1, 2)))(q, k, v)
  for jac_TxBxSxKxH in jacobians:
    jac = np.asarray(jac_TxBxSxKxH)
    assert jac.any()
    for t in range(7):
      assert not jac[t, :, t + 1:].any(), (name, t)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_jit_and_vmap(name):
  variant = attn.get_attention(name)
  q, k, v = inputs(seq=7)
  fn = functools.partial(variant.fn, **PARAMS[name])
  jitted = jit(fn)
  reference = jit(functools.partial(variant.reference, **PARAMS[name]))
  np.testing.assert_allclose(jitted(q, k, v), reference(q, k, v), rtol=1e-5, atol=1e-6)
  stacked = [jnp.stack([x, x[::-1]]) for x in (q, k, v)]
  mapped = jit(jax.vmap(fn))(*stacked)
  np.testing.assert_allclose(mapped[0], jitted(q, k, v), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(mapped[1], jitted(q[::-1], k[::-1], v[::-1]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("with_sinks", [False, True])
@pytest.mark.parametrize("name", sorted(PARAMS))
def test_fully_masked_head_has_no_nan(name, with_sinks):
  variant = attn.get_attention(name)
  q, k, v = inputs(seq=7)
  bias = jnp.zeros((1, 4, 7, 7)).at[:, 2].set(-jnp.inf)  # head 2 sees no key at all
  kwargs = dict(PARAMS[name], bias=bias, sinks=jnp.ones(4) if with_sinks else None)

  def loss(fn, q, k, v):
    out = fn(q, k, v, **kwargs)
    return jnp.sum(out**2), out

  for fn in (variant.fn, variant.reference):
    grad_fn = jax.grad(functools.partial(loss, fn), argnums=(0, 1, 2), has_aux=True)
    grads, out = jit(grad_fn)(q, k, v)
    assert np.isfinite(out).all() and all(np.isfinite(g).all() for g in grads)
    if name == "softmax":
      np.testing.assert_array_equal(out[:, :, 2], 0.0)
      np.testing.assert_array_equal(grads[0][:, :, 2], 0.0)


def test_segments_without_causality_are_block_diagonal():
  q, k, v = inputs(seq=7, kv_heads=4)
  ids = jnp.array([[0, 0, 0, 1, 1, 1, 1]] * 2)
  out = jit(functools.partial(attn.softmax_attention, causal=False, segment_ids=ids))(q, k, v)
  whole = jit(functools.partial(attn.softmax_attention, causal=False))
  first, second = whole(q[:, :3], k[:, :3], v[:, :3]), whole(q[:, 3:], k[:, 3:], v[:, 3:])
  np.testing.assert_allclose(out, jnp.concatenate([first, second], axis=1), rtol=1e-5, atol=1e-6)


def test_window_one_returns_values():
  q, k, v = inputs(seq=7, kv_heads=4)
  out = jit(functools.partial(attn.softmax_attention, window=1))(q, k, v)
  np.testing.assert_allclose(out, v, rtol=1e-6)


def test_ema_value_adds_the_decayed_past():
  q, k, v = inputs(seq=7, kv_heads=4)
  q = jnp.zeros_like(q)  # uniform causal weights: attention is the running mean of values
  out = jit(functools.partial(ema_value_attention, eta=0.5))(q, k, v)
  v64 = np.asarray(v, np.float64)
  running_mean = np.cumsum(v64, axis=1) / np.arange(1, 8)[None, :, None, None]
  lagged = lambda lag: np.pad(v64[:, :-lag], ((0, 0), (lag, 0), (0, 0), (0, 0)))
  ema = sum(0.5**lag * lagged(lag) for lag in range(1, 7))
  np.testing.assert_allclose(out, running_mean + ema, rtol=1e-5, atol=1e-6)

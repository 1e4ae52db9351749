"""Learned multi-dimensional EMA attention ('ema_value_learned'): FFT form against the explicit
Toeplitz reference (output and the gradients of q, k, v, delta, gamma), a NumPy recurrence,
causality, the model path and validation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attention_testing import forward_and_grads, jit, rel_err

import momentum_jax.attention as attn
from momentum_jax.attention.mega_ema import mega_ema_attention, mega_ema_attention_reference
from momentum_jax.nn import Transformer, TransformerConfig

B, N = 2, 4


def make(seq, head_dim, kv_heads, dtype=jnp.float32, comps=3, seed=0):
  rng = np.random.default_rng(seed)
  arr = lambda *s, std=1.0: jnp.asarray(std * rng.standard_normal(s), dtype)
  return {"q": arr(B, seq, N, head_dim), "k": arr(B, seq, kv_heads, head_dim),
          "v": arr(B, seq, kv_heads, head_dim), "delta": arr(kv_heads, head_dim, comps, std=1.5),
          "gamma": arr(kv_heads, head_dim, comps)}


def compare(diff, tol, **kwargs):
  variant = attn.get_attention("ema_value_learned")
  cot = jnp.asarray(np.random.default_rng(9).standard_normal(diff["q"].shape), diff["q"].dtype)

  def loss(fn, d):
    out = fn(d["q"], d["k"], d["v"], delta=d["delta"], gamma=d["gamma"], **kwargs)
    return jnp.sum(out * cot), out

  (_, out), grads = jit(jax.value_and_grad(lambda d: loss(variant.fn, d), has_aux=True))(diff)
  (_, ref), grads_ref = jit(
      jax.value_and_grad(lambda d: loss(variant.reference, d), has_aux=True))(diff)
  assert out.dtype == ref.dtype == diff["q"].dtype
  assert rel_err(out, ref) <= tol, rel_err(out, ref)
  for name in diff:
    assert np.isfinite(grads[name]).all(), name
    err = rel_err(grads[name], grads_ref[name])
    assert err <= tol, (name, err)


@pytest.mark.parametrize("case", [(1, 6, 2), (13, 12, 2), (37, 6, 4)], ids=str)
def test_fft_matches_toeplitz_reference_x64(case):
  # 1e-6: the softmax part (jax.nn.dot_product_attention) is itself only ~1e-7 exact in float64.
  with jax.enable_x64(True):
    compare(make(*case, dtype=jnp.float64), 1e-6)


def test_float32_window_bias_sinks():
  bias = jnp.asarray(np.random.default_rng(3).standard_normal((N, 37, 37)), jnp.float32)
  compare(make(37, 12, 2), 1e-5, window=5, sinks=jnp.zeros(N))
  compare(make(37, 12, 2), 1e-5, bias=bias)


def test_reference_matches_numpy_recurrence():
  d = make(9, 6, 2, comps=2)
  q, k, v, delta, gamma = (np.asarray(d[n], np.float64) for n in ("q", "k", "v", "delta", "gamma"))
  p = 1 / (1 + np.exp(-delta))
  state = np.zeros((B, 2, 6, 2))
  ema = np.zeros((B, 9, 2, 6))
  for t in range(9):  # h_t = p h_{t-1} + v_t per component; y_t = Σ_i γ_i h_t,i / √n
    state = p * state + v[:, t, :, :, None]
    ema[:, t] = np.sum(gamma * state, axis=-1) / np.sqrt(2)
  expected = np.asarray(attn.softmax_attention_reference(d["q"], d["k"], d["v"]), np.float64)
  expected += np.repeat(ema, 2, axis=2)
  out, _, weights = jit(functools.partial(mega_ema_attention_reference, return_weights=True))(
      d["q"], d["k"], d["v"], delta=d["delta"], gamma=d["gamma"])
  assert rel_err(out, expected) <= 1e-5
  assert weights.shape == (B, N, 9, 9)
  fast = jit(mega_ema_attention)(d["q"], d["k"], d["v"], delta=d["delta"], gamma=d["gamma"])
  assert rel_err(fast, expected) <= 1e-5


def test_causal_by_gradient():
  d = make(11, 6, 2)
  per_t = lambda v: jnp.sum(mega_ema_attention(
      d["q"], d["k"], v, delta=d["delta"], gamma=d["gamma"]), axis=(0, 2, 3))
  jac = np.asarray(jit(jax.jacrev(per_t))(d["v"]))
  assert jac.any()
  for t in range(10):
    assert np.abs(jac[t, :, t + 1:]).max() <= 1e-5 * np.abs(jac).max(), t


def test_in_transformer_learns_delta_and_gamma():
  config = TransformerConfig(vocab_size=32, context_len=16, num_layers=1, d_model=32,
                             num_heads=4, num_kv_heads=2, attention="ema_value_learned")
  model = Transformer(config, rngs=nnx.Rngs(0))
  params = model.blocks[0].attn.variant_params
  assert params["delta"].shape == params["gamma"].shape == (2, 8, 8)
  tokens = jnp.arange(32).reshape(2, 16) % 32
  logits, grads = forward_and_grads(model, tokens)
  assert logits.shape == (2, 16, 32) and np.isfinite(logits).all()
  for name in ("delta", "gamma"):
    g = np.asarray(grads.blocks[0].attn.variant_params[name][...])
    assert np.isfinite(g).all() and np.abs(g).max() > 0, name


@pytest.mark.parametrize("fn", [mega_ema_attention, mega_ema_attention_reference],
                         ids=lambda f: f.__name__)
@pytest.mark.parametrize("kwargs,message", [
    ({"causal": False}, "causal=False"),
    ({"segment_ids": jnp.zeros((B, 7), jnp.int32)}, r"segment_ids.shape=\(2, 7\)"),
    ({"delta": jnp.zeros((2, 5, 3))}, r"delta.shape=\(2, 5, 3\)"),
    ({"gamma": jnp.zeros((2, 6, 4))}, r"gamma.shape=\(2, 6, 4\)"),
])
def test_validation(fn, kwargs, message):
  d = make(7, 6, 2)
  args = {"delta": d["delta"], "gamma": d["gamma"], **kwargs}
  with pytest.raises(ValueError, match=message):
    fn(d["q"], d["k"], d["v"], **args)

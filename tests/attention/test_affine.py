"""Affine-scaled attention: the prefix-sum fast form against the explicit T×S reference (output and
every gradient, α included), the softmax limit α = α_ma = 1, row sums and validation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import momentum_jax.attention as attn
from momentum_jax.attention.affine import affine_attention, affine_attention_reference

B, N = 2, 4

jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def make_inputs(seq, head_dim, kv_heads, seed=0, seq_k=None):
  rng = np.random.default_rng(seed)
  seq_k = seq if seq_k is None else seq_k
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  return {"q": normal(B, seq, N, head_dim), "k": normal(B, seq_k, kv_heads, head_dim),
          "v": normal(B, seq_k, kv_heads, head_dim),
          "alpha_BxTxN": jnp.asarray(rng.uniform(0.0, 1.0, (B, seq, N)), jnp.float32)}


# (T, S, H, K, options): odd lengths, head dims 6 / 12, GQA 4:2 and 4:4, every mask.
CASES = [
    (37, 37, 12, 4, {"window": 5}),
    (13, 13, 6, 2, {"segments": True, "window": 4}),
    (13, 13, 12, 2, {"causal": False, "segments": True}),
    (7, 11, 6, 2, {}),
    (11, 7, 6, 2, {"window": 5}),
]


def _kwargs(seq, options):
  kwargs = {key: val for key, val in options.items() if key != "segments"}
  if options.get("segments"):
    kwargs["segment_ids"] = jnp.asarray(
        np.repeat([[0, 1, 2], [5, 5, 7]], [4, 5, seq - 9], axis=1), jnp.int32)
  return kwargs


@pytest.mark.parametrize("seq,seq_k,head_dim,kv_heads,options", CASES)
def test_fast_matches_reference_outputs_and_gradients(seq, seq_k, head_dim, kv_heads, options):
  diff = make_inputs(seq, head_dim, kv_heads, seq_k=seq_k)
  alpha_ma = jnp.asarray([0.2, 0.5, 0.9, 1.0], jnp.float32)
  kwargs = _kwargs(seq, options)
  cotangent = jnp.asarray(np.random.default_rng(9).standard_normal((B, seq, N, head_dim)),
                          jnp.float32)

  def loss(fn, d):
    out = fn(d["q"], d["k"], d["v"], alpha_BxTxN=d["alpha_BxTxN"], alpha_ma=alpha_ma, **kwargs)
    return jnp.sum(out * cotangent), out

  (_, out), grads = jit(jax.value_and_grad(
      lambda d: loss(affine_attention, d), has_aux=True))(diff)
  (_, ref), grads_ref = jit(jax.value_and_grad(
      lambda d: loss(affine_attention_reference, d), has_aux=True))(diff)
  assert rel_err(out, ref) < 1e-5, rel_err(out, ref)
  for name in diff:
    assert rel_err(grads[name], grads_ref[name]) < 1e-5, (name, rel_err(grads[name],
                                                                        grads_ref[name]))


@pytest.mark.parametrize("options", [{}, {"segments": True, "window": 4}, {"causal": False}])
def test_alpha_one_is_softmax_exactly(options):
  d = make_inputs(13, 6, 2, seed=3)
  kwargs = _kwargs(13, options)
  out = affine_attention(d["q"], d["k"], d["v"], alpha_BxTxN=1.0, alpha_ma=1.0, **kwargs)
  soft = attn.softmax_attention(d["q"], d["k"], d["v"], **kwargs)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(soft))
  ref = affine_attention_reference(d["q"], d["k"], d["v"], **kwargs)
  soft_ref = attn.softmax_attention_reference(d["q"], d["k"], d["v"], **kwargs)
  np.testing.assert_allclose(ref, soft_ref, rtol=1e-6, atol=1e-6)


def test_weights_rows_sum_to_alpha_ma_and_are_causal():
  d = make_inputs(13, 6, 2, seed=4)
  alpha_ma = jnp.asarray([0.2, 0.5, 0.9, 1.0], jnp.float32)
  out, scores, weights = affine_attention_reference(
      d["q"], d["k"], d["v"], alpha_BxTxN=d["alpha_BxTxN"], alpha_ma=alpha_ma,
      return_weights=True)
  assert weights.shape == scores.shape == (B, N, 13, 13)
  np.testing.assert_allclose(weights.sum(-1), np.broadcast_to(alpha_ma[None, :, None],
                                                              (B, N, 13)), rtol=1e-5)
  assert float(jnp.abs(jnp.triu(weights, k=1)).max()) == 0.0
  # β: the uniform share moves from α to α_ma; with α = 0 the row is uniform over the prefix.
  _, _, uniform = affine_attention_reference(
      d["q"], d["k"], d["v"], alpha_BxTxN=0.0, alpha_ma=1.0, return_weights=True)
  np.testing.assert_allclose(uniform[0, 0, 4, :5], 0.2, rtol=1e-6)


def test_registered_and_jits_with_traced_alpha():
  variant = attn.get_attention("affine")
  assert variant.fn is affine_attention and "alpha_BxTxN" in variant.params
  d = make_inputs(13, 6, 2, seed=5)
  out = jax.jit(lambda a, m: variant.fn(d["q"], d["k"], d["v"], alpha_BxTxN=a, alpha_ma=m))(
      d["alpha_BxTxN"], jnp.float32(0.7))
  assert out.shape == (B, 13, N, 6) and bool(jnp.all(jnp.isfinite(out)))


@pytest.mark.parametrize("kwargs,words", [
    ({"alpha_BxTxN": jnp.ones((B, 13, 3))}, "alpha_BxTxN must be broadcastable"),
    ({"alpha_ma": jnp.ones((3,))}, "alpha_ma must be a scalar or have shape"),
    ({"alpha_BxTxN": jnp.ones((B, 13, N), jnp.int32)}, "alpha_BxTxN must have a floating"),
])
def test_bad_alpha_raises(kwargs, words):
  d = make_inputs(13, 6, 2)
  error = TypeError if "floating" in words else ValueError
  for fn in (affine_attention, affine_attention_reference):
    with pytest.raises(error, match=words):
      fn(d["q"], d["k"], d["v"], **kwargs)

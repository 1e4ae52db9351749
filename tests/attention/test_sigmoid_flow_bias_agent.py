"""Sigmoid, flow, FlashBias and agent attention: fast forms against their explicit references
(outputs and every gradient), causality by gradient, bf16, jit, large logits and validation.

The fast-versus-reference comparisons run in float64 (``jax.enable_x64``): at T = 1 normalised
rows have gradients that are pure rounding noise in float32. Float32 is checked separately.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import momentum_jax.attention as attn
from momentum_jax.attention.agent import agent_attention, agent_attention_reference, pooling_matrix
from momentum_jax.attention.flash_bias import (
    flash_bias_attention, flash_bias_attention_reference, low_rank_bias_factors,
)
from momentum_jax.attention.flow import flow_attention, flow_attention_reference
from momentum_jax.attention.sigmoid import sigmoid_attention, sigmoid_attention_reference
from momentum_jax.nn import Transformer, TransformerConfig

B, N = 2, 4
TOL = 1e-5

jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

# (T, H, K): odd lengths, head dims not a power of two, GQA 4:2 and 4:4.
CASES = [(1, 24, 2), (7, 40, 4), (33, 24, 2)]


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def normal(rng, *shape, dtype=jnp.float32, std=1.0):
  return jnp.asarray(std * rng.standard_normal(shape), dtype)


def make_qkv(seq, head_dim, kv_heads, dtype=jnp.float32, seed=0, seq_k=None):
  rng = np.random.default_rng(seed)
  seq_k = seq if seq_k is None else seq_k
  return {"q": normal(rng, B, seq, N, head_dim, dtype=dtype),
          "k": normal(rng, B, seq_k, kv_heads, head_dim, dtype=dtype),
          "v": normal(rng, B, seq_k, kv_heads, head_dim, dtype=dtype)}


def compare(name, diff, tol=TOL, **kwargs):
  """Fast form vs reference: output and the gradient of every array in ``diff``."""
  variant = attn.get_attention(name)
  cotangent = normal(np.random.default_rng(9), *diff["q"].shape[:3], diff["v"].shape[3])

  def loss(fn, d):
    extra = {key: val for key, val in d.items() if key not in ("q", "k", "v")}
    out = fn(d["q"], d["k"], d["v"], **extra, **kwargs)
    return jnp.sum(out.astype(jnp.float32) * cotangent), out

  (_, out), grads = jit(jax.value_and_grad(lambda d: loss(variant.fn, d), has_aux=True))(diff)
  (_, ref), grads_ref = jit(
      jax.value_and_grad(lambda d: loss(variant.reference, d), has_aux=True))(diff)
  assert out.dtype == ref.dtype == diff["q"].dtype
  assert np.isfinite(out).all() and rel_err(out, ref) <= tol, rel_err(out, ref)
  for arg in diff:
    assert np.isfinite(grads[arg]).all(), arg
    assert rel_err(grads[arg], grads_ref[arg]) <= tol, (arg, rel_err(grads[arg], grads_ref[arg]))
  return out, grads


def causal_by_gradient(fn, arrays, seq):
  per_t = lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32), axis=(0, 2, 3))
  for jac_TxBxSxKxH in jit(jax.jacrev(per_t, argnums=(0, 1, 2)))(*arrays.values()):
    jac = np.asarray(jac_TxBxSxKxH)
    assert jac.any()
    for t in range(seq):
      assert not jac[t, :, t + 1:].any(), t


# ---------------------------------------------------------------------------------------------
# sigmoid


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("kwargs", [
    {"causal": True, "block_size": 5},
    {"causal": False, "block_size": 64, "normalize": True},
    {"causal": True, "window": 3, "block_size": 4, "sigmoid_bias": -1.5},
], ids=["causal", "normalized", "window"])
def test_sigmoid_matches_reference_x64(case, kwargs):
  with jax.enable_x64(True):
    compare("sigmoid", make_qkv(*case, dtype=jnp.float64), **kwargs)


def test_sigmoid_segments_bias_and_cross_lengths():
  with jax.enable_x64(True):
    diff = make_qkv(11, 24, 2, dtype=jnp.float64)
    ids = jnp.asarray(np.repeat([[0] * 4 + [1] * 7], B, axis=0))
    diff["bias"] = normal(np.random.default_rng(3), N, 11, 11, dtype=jnp.float64)
    compare("sigmoid", diff, segment_ids=ids, block_size=3)
    diff = make_qkv(5, 24, 2, dtype=jnp.float64, seq_k=13)
    diff["bias"] = normal(np.random.default_rng(4), B, 1, 5, 13, dtype=jnp.float64)
    compare("sigmoid", diff, causal=False, block_size=4, normalize=True)


def test_sigmoid_float32_matches_reference():
  compare("sigmoid", make_qkv(33, 40, 2), tol=1e-5, block_size=8)
  compare("sigmoid", make_qkv(33, 40, 2), tol=1e-4, causal=False, normalize=True)


def test_sigmoid_reference_matches_numpy():
  arrays = make_qkv(7, 24, 2)
  q, k, v = (np.asarray(arrays[n], np.float64) for n in "qkv")
  expected = np.zeros_like(q)
  for b in range(B):
    for n in range(N):
      for t in range(7):
        logits = k[b, :t + 1, n // 2] @ q[b, t, n] / np.sqrt(24) - np.log(7)
        expected[b, t, n] = (1 / (1 + np.exp(-logits))) @ v[b, :t + 1, n // 2]
  out, scores, weights = sigmoid_attention_reference(*arrays.values(), return_weights=True)
  assert rel_err(out, expected) <= TOL
  assert np.isneginf(scores[0, 0, 0, 1]) and weights[0, 0, 0, 1] == 0
  assert rel_err(sigmoid_attention(*arrays.values(), block_size=3), expected) <= TOL


def test_sigmoid_causal_by_gradient():
  arrays = make_qkv(9, 24, 2)
  causal_by_gradient(functools.partial(sigmoid_attention, block_size=4), arrays, 9)


def test_sigmoid_bf16_and_large_logits():
  arrays = make_qkv(33, 40, 2, dtype=jnp.bfloat16)
  fn = functools.partial(sigmoid_attention, block_size=8)
  out = jit(fn)(*arrays.values())
  ref = sigmoid_attention_reference(*arrays.values())
  assert out.dtype == jnp.bfloat16 and rel_err(out, ref) <= 2e-2
  arrays = make_qkv(33, 40, 2)
  big = {n: x * (1e2 if n in "qk" else 1.0) for n, x in arrays.items()}  # logits ~ ±1e4
  for norm in (False, True):
    loss = lambda q, k, v: jnp.mean(fn(q, k, v, normalize=norm))
    grads = jit(jax.grad(loss, argnums=(0, 1, 2)))(*big.values())
    assert all(np.isfinite(g).all() for g in grads)


def test_sigmoid_in_transformer():
  config = TransformerConfig(vocab_size=32, context_len=16, num_layers=1, d_model=32,
                             num_heads=4, num_kv_heads=2, attention="sigmoid",
                             attention_params={"normalize": True})
  model = Transformer(config, rngs=nnx.Rngs(0))
  logits = model(jnp.zeros((2, 16), jnp.int32))
  assert logits.shape == (2, 16, 32) and np.isfinite(logits).all()


@pytest.mark.parametrize("fn", [sigmoid_attention, sigmoid_attention_reference],
                         ids=lambda f: f.__name__)
@pytest.mark.parametrize("kwargs,message", [
    ({"sinks": jnp.zeros(4)}, "sinks.shape=(4,)"),
    ({"sigmoid_bias": jnp.zeros(2)}, "sigmoid_bias.shape=(2,)"),
    ({"block_size": 0}, "block_size=0"),
    ({"bias": jnp.zeros((3, 7))}, "bias.shape=(3, 7)"),
])
def test_sigmoid_validation(fn, kwargs, message):
  q, k, v = make_qkv(7, 24, 2).values()
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    fn(q, k, v, **kwargs)


# ---------------------------------------------------------------------------------------------
# FlashBias


def bias_factors(seq, seq_k, heads, rank, dtype=jnp.float32, seed=5):
  rng = np.random.default_rng(seed)
  return {"q_bias": normal(rng, B, seq, N, rank, dtype=dtype),
          "k_bias": normal(rng, B, seq_k, heads, rank, dtype=dtype)}


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("causal,factor_heads", [(True, "kv"), (False, "q")])
def test_flash_bias_matches_reference(case, causal, factor_heads):
  seq, head_dim, kv_heads = case
  diff = make_qkv(*case)
  diff.update(bias_factors(seq, seq, kv_heads if factor_heads == "kv" else N, 3))
  compare("flash_bias", diff, causal=causal)


def test_flash_bias_with_masks_bias_and_sinks():
  diff = make_qkv(11, 40, 2)
  diff.update(bias_factors(11, 11, 2, 5))
  diff["bias"] = normal(np.random.default_rng(6), N, 11, 11)
  diff["sinks"] = normal(np.random.default_rng(7), N)
  ids = jnp.asarray(np.repeat([[0] * 4 + [1] * 7], B, axis=0))
  compare("flash_bias", diff, segment_ids=ids)
  del diff["sinks"], diff["bias"]
  compare("flash_bias", diff, window=3)


def test_flash_bias_equals_softmax_with_explicit_bias():
  arrays = make_qkv(9, 24, 2)
  factors = bias_factors(9, 9, 2, 4)
  explicit = jnp.einsum("btnr,bsnr->bnts", factors["q_bias"],
                        jnp.repeat(factors["k_bias"], 2, axis=2))
  out = jit(flash_bias_attention)(*arrays.values(), **factors)
  expected = attn.softmax_attention(*arrays.values(), bias=explicit)
  assert rel_err(out, expected) <= TOL
  plain = flash_bias_attention(*arrays.values())
  assert rel_err(plain, attn.softmax_attention(*arrays.values())) <= TOL


def test_low_rank_bias_factors():
  rng = np.random.default_rng(8)
  exact = jnp.asarray(rng.standard_normal((N, 7, 3)) @ rng.standard_normal((N, 3, 13)),
                      jnp.float32)
  q_bias, k_bias, err = low_rank_bias_factors(exact, 3)
  assert q_bias.shape == (1, 7, N, 3) and k_bias.shape == (1, 13, N, 3)
  assert float(err) <= 1e-5
  rebuilt = jnp.einsum("btnr,bsnr->bnts", q_bias, k_bias)[0]
  assert rel_err(rebuilt, exact) <= 1e-5
  noisy = exact + 0.1 * jnp.asarray(rng.standard_normal(exact.shape), jnp.float32)
  errors = [float(low_rank_bias_factors(noisy[None], r)[2]) for r in (1, 3, 7)]
  assert errors[0] > errors[1] > 0.0 and errors[2] <= 1e-5
  q_bias, k_bias, err = low_rank_bias_factors(noisy, 2)
  direct = rel_err(jnp.einsum("btnr,bsnr->bnts", q_bias, k_bias)[0], noisy)
  assert abs(float(err) - direct) <= 1e-5


def test_flash_bias_bf16_and_large_logits():
  arrays = make_qkv(33, 40, 2, dtype=jnp.bfloat16)
  factors = bias_factors(33, 33, 2, 4, dtype=jnp.bfloat16)
  out = jit(flash_bias_attention)(*arrays.values(), **factors)
  ref = flash_bias_attention_reference(*arrays.values(), **factors)
  assert out.dtype == jnp.bfloat16 and rel_err(out, ref) <= 2e-2
  arrays = make_qkv(33, 40, 2)
  factors = {n: 1e2 * x for n, x in bias_factors(33, 33, 2, 4).items()}  # bias logits ~ ±1e4
  loss = lambda d: jnp.mean(flash_bias_attention(
      d["q"], d["k"], d["v"], q_bias=d["q_bias"], k_bias=d["k_bias"]))
  grads = jit(jax.grad(loss))({**arrays, **factors})
  assert all(np.isfinite(g).all() for g in grads.values())
  causal_by_gradient(functools.partial(flash_bias_attention, **bias_factors(9, 9, 2, 2)),
                     make_qkv(9, 24, 2), 9)


@pytest.mark.parametrize("fn", [flash_bias_attention, flash_bias_attention_reference],
                         ids=lambda f: f.__name__)
@pytest.mark.parametrize("kwargs,message", [
    ({"q_bias": jnp.zeros((2, 7, 4, 3))}, "q_bias and k_bias"),
    ({"q_bias": jnp.zeros((2, 7, 3)), "k_bias": jnp.zeros((2, 7, 2, 3))}, "q_bias.shape=(2, 7, 3)"),
    ({"q_bias": jnp.zeros((2, 7, 4, 3)), "k_bias": jnp.zeros((2, 7, 3, 3))},
     "k_bias.shape=(2, 7, 3, 3)"),
    ({"q_bias": jnp.zeros((2, 7, 4, 3)), "k_bias": jnp.zeros((2, 7, 2, 2))},
     "k_bias.shape=(2, 7, 2, 2)"),
])
def test_flash_bias_validation(fn, kwargs, message):
  q, k, v = make_qkv(7, 24, 2).values()
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    fn(q, k, v, **kwargs)


@pytest.mark.parametrize("kwargs,message", [({"rank": 0}, "rank=0"), ({"rank": 8}, "rank=8"),
                                            ({"rank": 2.0}, "rank=2.0")])
def test_low_rank_bias_factors_validation(kwargs, message):
  with pytest.raises(ValueError, match=message):
    low_rank_bias_factors(jnp.zeros((4, 7, 9)), **kwargs)
  with pytest.raises(ValueError, match="bias.shape="):
    low_rank_bias_factors(jnp.zeros((7, 9)), 2)


# ---------------------------------------------------------------------------------------------
# flow (Flowformer)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_flow_matches_reference_x64(case, causal):
  with jax.enable_x64(True):
    compare("flow", make_qkv(*case, dtype=jnp.float64), causal=causal, block_size=5)


def test_flow_float32_and_cross_lengths():
  compare("flow", make_qkv(33, 40, 2), tol=1e-4, block_size=8)
  compare("flow", make_qkv(7, 24, 2, seq_k=13), tol=1e-4, causal=False, scale=0.5)


def test_flow_matches_numpy_port_of_the_formulas():
  arrays = make_qkv(6, 5, 1)
  q, k, v = (np.asarray(arrays[n][0, :, 0], np.float64) for n in "qkv")
  sig = lambda x: 1 / (1 + np.exp(-x))
  fq, fk, eps, norm = sig(q), sig(k), 1e-6, np.arange(1.0, 7.0)
  incoming = norm / np.sum((fq + eps) * (np.cumsum(fk, 0) + eps), 1)
  outgoing = norm / np.sum((fk + eps) * (np.cumsum(fq, 0) + eps), 1)
  sink = np.sum((fq + eps) * (np.cumsum(fk * outgoing[:, None], 0) + eps), 1) / norm
  source = np.sum((fk + eps) * (np.cumsum(fq * incoming[:, None], 0) + eps), 1) / norm
  competition = np.exp(np.clip(source, -1, 1)) / np.cumsum(np.exp(np.clip(source, -1, 1))) * norm
  expected = np.stack([
      sig(sink[t]) * (fq[t] * incoming[t] / norm[t])
      @ (fk[:t + 1].T @ (v[:t + 1] * competition[:t + 1, None])) for t in range(6)])
  out = flow_attention(*[x[:1, :, :1] for x in arrays.values()], block_size=4)
  assert rel_err(out[0, :, 0], expected) <= TOL
  incoming = 1 / np.sum((fq + eps) * (fk.sum(0) + eps), 1)
  outgoing = 1 / np.sum((fk + eps) * (fq.sum(0) + eps), 1)
  sink = np.sum((fq + eps) * ((fk * outgoing[:, None]).sum(0) + eps), 1)
  source = np.clip(np.sum((fk + eps) * ((fq * incoming[:, None]).sum(0) + eps), 1), -1, 1)
  competition = np.exp(source) / np.exp(source).sum() * 6
  expected = sig(sink)[:, None] * (fq * incoming[:, None]) @ (fk.T @ (v * competition[:, None]))
  out = flow_attention_reference(*[x[:1, :, :1] for x in arrays.values()], causal=False)
  assert rel_err(out[0, :, 0], expected) <= TOL


def test_flow_causal_by_gradient_bf16_and_large_inputs():
  causal_by_gradient(functools.partial(flow_attention, block_size=4), make_qkv(9, 24, 2), 9)
  arrays = make_qkv(33, 40, 2, dtype=jnp.bfloat16)
  for causal in (True, False):
    fn = functools.partial(flow_attention, causal=causal, block_size=8)
    out = jit(fn)(*arrays.values())
    ref = flow_attention_reference(*arrays.values(), causal=causal)
    assert out.dtype == jnp.bfloat16 and rel_err(out, ref) <= 3e-2
    big = [1e4 * x.astype(jnp.float32) for x in arrays.values()]
    grads = jit(jax.grad(lambda q, k, v: jnp.mean(fn(q, k, v)), argnums=(0, 1, 2)))(*big)
    assert all(np.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("fn", [flow_attention, flow_attention_reference],
                         ids=lambda f: f.__name__)
@pytest.mark.parametrize("kwargs,message", [
    ({"window": 3}, "window=3"),
    ({"sinks": jnp.zeros(4)}, "sinks.shape=(4,)"),
    ({"segment_ids": jnp.zeros((2, 7), jnp.int32)}, "segment_ids.shape=(2, 7)"),
    ({"eps": 0.0}, "eps=0.0"),
    ({"block_size": 0}, "block_size=0"),
    ({"k": jnp.ones((2, 5, 2, 24))}, "S == T"),
])
def test_flow_validation(fn, kwargs, message):
  arrays = make_qkv(7, 24, 2)
  kwargs = dict(kwargs)
  arrays.update({n: kwargs.pop(n) for n in list(kwargs) if n in "qkv"})
  if arrays["k"].shape != arrays["v"].shape:
    arrays["v"] = jnp.ones_like(arrays["k"])
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    fn(*arrays.values(), **kwargs)


# ---------------------------------------------------------------------------------------------
# agent


def agent_biases(seq, seq_k, agents, seed=11):
  rng = np.random.default_rng(seed)
  return {"agent_bias": normal(rng, N, agents, seq_k), "query_bias": normal(rng, N, seq, agents)}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("agents", [3, 8])
def test_agent_matches_reference(case, agents):
  diff = make_qkv(*case)
  diff.update(agent_biases(case[0], case[0], agents))
  compare("agent", diff, causal=False, num_agents=agents)
  compare("agent", make_qkv(*case), causal=False, num_agents=agents, scale=0.3)


def test_agent_pooling_and_weights():
  np.testing.assert_allclose(pooling_matrix(5, 2),
                             [[1 / 3] * 3 + [0, 0], [0, 0] + [1 / 3] * 3])
  np.testing.assert_allclose(pooling_matrix(2, 3), [[1, 0], [0.5, 0.5], [0, 1]])
  arrays = make_qkv(7, 24, 2, seq_k=13)
  out, scores, weights = agent_attention_reference(
      *arrays.values(), causal=False, num_agents=3, return_weights=True)
  np.testing.assert_allclose(np.sum(weights, -1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(jax.nn.softmax(scores, -1), weights, rtol=1e-4, atol=1e-7)
  v = jnp.repeat(arrays["v"], 2, axis=2)
  assert rel_err(jnp.einsum("bnts,bsnh->btnh", weights, v), out) <= TOL
  fast = agent_attention(*arrays.values(), causal=False, num_agents=3)
  assert rel_err(fast, out) <= TOL
  q, k, v = (np.asarray(arrays[n][0, :, 0], np.float64) for n in "qkv")
  softmax = lambda x: np.exp(x - x.max(-1, keepdims=True)) / np.exp(
      x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)
  agents = np.stack([q[0:3].mean(0), q[2:5].mean(0), q[4:7].mean(0)])  # bins of T = 7 into 3
  agent_v = softmax(agents @ k.T / np.sqrt(24)) @ v
  assert rel_err(out[0, :, 0], softmax(q @ agents.T / np.sqrt(24)) @ agent_v) <= TOL


def test_agent_bf16_and_large_logits():
  arrays = make_qkv(33, 40, 2, dtype=jnp.bfloat16)
  fn = functools.partial(agent_attention, causal=False, num_agents=4)
  out = jit(fn)(*arrays.values())
  ref = agent_attention_reference(*arrays.values(), causal=False, num_agents=4)
  assert out.dtype == jnp.bfloat16 and rel_err(out, ref) <= 2e-2
  big = [x.astype(jnp.float32) * s for x, s in zip(arrays.values(), (1e2, 1e2, 1.0))]
  grads = jit(jax.grad(lambda q, k, v: jnp.mean(fn(q, k, v)), argnums=(0, 1, 2)))(*big)
  assert all(np.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("fn", [agent_attention, agent_attention_reference],
                         ids=lambda f: f.__name__)
@pytest.mark.parametrize("kwargs,message", [
    ({"causal": True}, "causal=True"),
    ({"num_agents": 0}, "num_agents=0"),
    ({"agent_bias": jnp.zeros((4, 5, 7))}, "agent_bias.shape=(4, 5, 7)"),
    ({"query_bias": jnp.zeros((4, 3, 4))}, "query_bias.shape=(4, 3, 4)"),
    ({"bias": jnp.zeros((7, 7))}, "bias.shape=(7, 7)"),
    ({"segment_ids": jnp.zeros((2, 7), jnp.int32)}, "segment_ids.shape=(2, 7)"),
])
def test_agent_validation(fn, kwargs, message):
  kwargs = {"causal": False, "num_agents": 4, **kwargs}
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    fn(*make_qkv(7, 24, 2).values(), **kwargs)

"""The "Deconstructing Attention" relaxations: chunked Taylor and scanned self-gated forms against
their T×T references, fixed-q/k attention against the softmax reference (outputs and the gradients
of q, k, v and the learned fixed_q / fixed_k), NumPy transcriptions of the paper's equations,
causality, the model path and validation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attention_testing import forward_and_grads, jit
from attention_testing import rel_err as _rel_err

import momentum_jax.attention as attn
from momentum_jax.attention.deconstructed import (
    deconstructed_fixed_qk_attention, deconstructed_mlp_attention,
    deconstructed_self_gated_attention, deconstructed_self_gated_attention_reference,
    deconstructed_taylor_attention_reference,
)
from momentum_jax.nn import Transformer, TransformerConfig

B, N = 2, 4

# T = 1: the gradients of q and k are 0, so the error is relative to at least 1e-3.
rel_err = functools.partial(_rel_err, floor=1e-3)


def make(seq, head_dim, kv_heads, dtype=jnp.float32, seed=0, std=1.0):
  rng = np.random.default_rng(seed)
  arr = lambda *s: jnp.asarray(std * rng.standard_normal(s), dtype)
  return {"q": arr(B, seq, N, head_dim), "k": arr(B, seq, kv_heads, head_dim),
          "v": arr(B, seq, kv_heads, head_dim)}


def compare(name, diff, tol, **kwargs):
  variant = attn.get_attention(name)
  cot = jnp.asarray(np.random.default_rng(9).standard_normal(diff["q"].shape), diff["q"].dtype)

  def loss(fn, d):
    extra = {key: val for key, val in d.items() if key not in ("q", "k", "v")}
    out = fn(d["q"], d["k"], d["v"], **extra, **kwargs)
    return jnp.sum(out * cot), out

  (_, out), grads = jit(jax.value_and_grad(lambda d: loss(variant.fn, d), has_aux=True))(diff)
  (_, ref), grads_ref = jit(
      jax.value_and_grad(lambda d: loss(variant.reference, d), has_aux=True))(diff)
  assert out.dtype == ref.dtype == diff["q"].dtype
  assert np.isfinite(out).all() and rel_err(out, ref) <= tol, rel_err(out, ref)
  for arg in diff:
    assert np.isfinite(grads[arg]).all(), arg
    assert rel_err(grads[arg], grads_ref[arg]) <= tol, (arg, rel_err(grads[arg], grads_ref[arg]))
  return grads


@pytest.mark.slow
@pytest.mark.parametrize("name,case,kwargs", [
    ("deconstructed_taylor", (1, 6, 2), {"block_size": 64}),
    ("deconstructed_taylor", (13, 12, 4), {"block_size": 4}),
    ("deconstructed_taylor", (37, 6, 2), {"block_size": 8}),
    ("deconstructed_self_gated", (1, 6, 2), {}),
    ("deconstructed_self_gated", (37, 12, 4), {}),
], ids=["taylor-1", "taylor-13", "taylor-37", "self_gated-1", "self_gated-37"])
def test_fast_matches_reference_x64(name, case, kwargs):
  with jax.enable_x64(True):
    compare(name, make(*case, dtype=jnp.float64), 1e-10, **kwargs)


def test_float32_and_large_logits():
  compare("deconstructed_taylor", make(37, 12, 2), 1e-5, block_size=8)
  compare("deconstructed_self_gated", make(37, 12, 2), 1e-5)
  # Gates ~ ±1e3: the scan's running max keeps every prefix and every gradient finite (the
  # gradients themselves are rounding-level against one-hot weights, so only outputs compare).
  big = make(37, 12, 2, std=30.0)
  fast = deconstructed_self_gated_attention
  out = jit(fast)(*big.values())
  assert rel_err(out, deconstructed_self_gated_attention_reference(*big.values())) <= 1e-5
  grads = jit(jax.grad(lambda q, k, v: jnp.sum(fast(q, k, v)), argnums=(0, 1, 2)))(*big.values())
  assert all(np.isfinite(g).all() for g in grads)


def test_fixed_qk_matches_softmax_reference_and_ignores_q_k():
  diff = make(13, 6, 2)
  rng = np.random.default_rng(4)
  diff["fixed_q"] = jnp.asarray(rng.standard_normal((16, N, 6)), jnp.float32)
  diff["fixed_k"] = jnp.asarray(rng.standard_normal((16, 2, 6)), jnp.float32)
  grads = compare("deconstructed_fixed_qk", diff, 1e-5)
  assert not np.asarray(grads["q"]).any() and not np.asarray(grads["k"]).any()
  assert not np.asarray(grads["fixed_q"][13:]).any() and np.asarray(grads["fixed_q"][:13]).any()
  ids = jnp.asarray(np.repeat([[0] * 5 + [1] * 8], B, axis=0))
  compare("deconstructed_fixed_qk", diff, 1e-5, window=4, segment_ids=ids)
  fn = jit(deconstructed_fixed_qk_attention)
  out = fn(diff["q"], diff["k"], diff["v"], fixed_q=diff["fixed_q"], fixed_k=diff["fixed_k"])
  out2 = fn(-diff["q"], 2 * diff["k"], diff["v"], fixed_q=diff["fixed_q"], fixed_k=diff["fixed_k"])
  assert np.array_equal(out, out2)


def test_references_match_numpy_transcriptions():
  d = make(9, 6, 2)
  q, k, v = (np.asarray(d[n], np.float64) for n in "qkv")
  silu = lambda x: x / (1 + np.exp(-x))
  taylor, gated = np.zeros_like(q), np.zeros_like(q)
  for b in range(B):
    for n in range(N):
      kk, vv = k[b, :, n // 2], v[b, :, n // 2]
      gates = np.exp(np.sum(silu(q[b, :, n]) * kk, axis=-1) / np.sqrt(6))  # Eqs. 7, 8
      for t in range(9):
        x = kk[:t + 1] @ q[b, t, n] / np.sqrt(6)  # Eq. 6
        w = 1 + x + x**2 / 2
        taylor[b, t, n] = w @ vv[:t + 1] / w.sum()
        gated[b, t, n] = gates[:t + 1] @ vv[:t + 1] / gates[:t + 1].sum()  # Eq. 18
  assert rel_err(deconstructed_taylor_attention_reference(*d.values()), taylor) <= 1e-5
  assert rel_err(deconstructed_self_gated_attention_reference(*d.values()), gated) <= 1e-5
  mlp, scores, weights = deconstructed_mlp_attention(*d.values(), return_weights=True)
  assert rel_err(mlp, silu(q) * np.repeat(v, 2, axis=2)) <= 1e-6
  assert np.array_equal(weights[0, 0], np.eye(9)) and np.isneginf(scores[0, 0, 1, 0])


@pytest.mark.parametrize("name,kwargs", [
    ("deconstructed_taylor", {"block_size": 4}), ("deconstructed_self_gated", {}),
    ("deconstructed_mlp", {})])
def test_causal_by_gradient(name, kwargs):
  d = make(11, 6, 2)
  fn = functools.partial(attn.get_attention(name).fn, **kwargs)
  per_t = lambda q, k, v: jnp.sum(fn(q, k, v), axis=(0, 2, 3))
  for jac in jit(jax.jacrev(per_t, argnums=(0, 2)))(d["q"], d["k"], d["v"]):
    jac = np.asarray(jac)
    assert jac.any()
    for t in range(10):
      assert not jac[t, :, t + 1:].any(), t


@pytest.mark.parametrize("name", ["deconstructed_mlp", "deconstructed_taylor",
                                  "deconstructed_self_gated", "deconstructed_fixed_qk"])
def test_in_transformer(name):
  params = {"block_size": 4} if name == "deconstructed_taylor" else {}
  config = TransformerConfig(vocab_size=32, context_len=16, num_layers=1, d_model=32,
                             num_heads=4, num_kv_heads=2, attention=name, attention_params=params)
  model = Transformer(config, rngs=nnx.Rngs(0))
  tokens = jnp.arange(24).reshape(2, 12) % 32
  logits, grads = forward_and_grads(model, tokens)
  assert logits.shape == (2, 12, 32) and np.isfinite(logits).all()
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  if name == "deconstructed_fixed_qk":
    learned = model.blocks[0].attn.variant_params
    assert learned["fixed_q"].shape == (16, 4, 8) and learned["fixed_k"].shape == (16, 2, 8)
    assert np.abs(grads.blocks[0].attn.variant_params["fixed_k"][...]).max() > 0


@pytest.mark.parametrize("name,kwargs,message", [
    ("deconstructed_taylor", {"causal": False}, "causal=False"),
    ("deconstructed_taylor", {"block_size": 0}, "block_size=0"),
    ("deconstructed_self_gated", {"causal": False}, "causal=False"),
    ("deconstructed_self_gated", {"window": 3}, "window=3"),
    ("deconstructed_self_gated", {"segment_ids": jnp.zeros((B, 7), jnp.int32)},
     r"segment_ids.shape=\(2, 7\)"),
    ("deconstructed_mlp", {"scale": 0.5}, "scale=0.5"),
    ("deconstructed_mlp", {"bias": jnp.zeros((7, 7))}, r"bias.shape=\(7, 7\)"),
    ("deconstructed_fixed_qk", {"fixed_q": jnp.zeros((5, N, 6)), "fixed_k": jnp.zeros((7, 2, 6))},
     r"fixed_q.shape=\(5, 4, 6\)"),
    ("deconstructed_fixed_qk", {"fixed_q": jnp.zeros((7, N, 6)), "fixed_k": jnp.zeros((7, 4, 6))},
     r"fixed_k.shape=\(7, 4, 6\)"),
])
def test_validation(name, kwargs, message):
  d = make(7, 6, 2)
  variant = attn.get_attention(name)
  for fn in (variant.fn, variant.reference):
    with pytest.raises(ValueError, match=message):
      fn(d["q"], d["k"], d["v"], **kwargs)

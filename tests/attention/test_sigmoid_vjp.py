"""Sigmoid attention's custom VJP: every gradient (q, k, v, bias, the offset b) against autodiff
of the explicit reference at awkward sizes, plain and normalised, and the residuals it keeps
(no per-block weights).

Comparisons run in float64 (``jax.enable_x64``) so that they check the algebra of the backward
pass, not float32 rounding; one float32 case guards the compute-dtype path.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from momentum_jax.attention.sigmoid import sigmoid_attention, sigmoid_attention_reference

B, N = 2, 4
TOL = 1e-9

jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def arrays(seq, head_dim, kv_heads, *, seq_k=None, dtype=jnp.float64, seed=0):
  rng = np.random.default_rng(seed)
  seq_k = seq if seq_k is None else seq_k
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), dtype)
  return {"q": normal(B, seq, N, head_dim), "k": normal(B, seq_k, kv_heads, head_dim),
          "v": normal(B, seq_k, kv_heads, head_dim)}


def compare(diff, tol=TOL, **kwargs):
  """Fast form vs reference: output and the gradient of every array in ``diff``."""
  cotangent = jnp.asarray(np.random.default_rng(9).standard_normal(
      (*diff["q"].shape[:3], diff["v"].shape[3])), diff["q"].dtype)

  def loss(fn, d):
    extra = {key: val for key, val in d.items() if key not in ("q", "k", "v")}
    out = fn(d["q"], d["k"], d["v"], **extra, **kwargs)
    return jnp.sum(out * cotangent), out

  (_, out), grads = jit(jax.value_and_grad(
      lambda d: loss(sigmoid_attention, d), has_aux=True))(diff)
  (_, ref), grads_ref = jit(jax.value_and_grad(
      lambda d: loss(sigmoid_attention_reference, d), has_aux=True))(diff)
  assert rel_err(out, ref) <= tol, rel_err(out, ref)
  for name in diff:
    assert np.isfinite(grads[name]).all(), name
    assert np.asarray(grads_ref[name]).any(), name
    assert rel_err(grads[name], grads_ref[name]) <= tol, (name, rel_err(grads[name],
                                                                        grads_ref[name]))


def segments(seq):
  ids = np.zeros((B, seq), np.int32)
  ids[0, seq // 3:] = 1
  ids[1, seq // 2:] = 4
  return jnp.asarray(ids)


@pytest.mark.slow
@pytest.mark.parametrize("normalize", [False, True], ids=["plain", "normalized"])
@pytest.mark.parametrize("case", [
    {"seq": 13, "head_dim": 6, "kv_heads": 2, "causal": True, "block_size": 4},
    {"seq": 37, "head_dim": 12, "kv_heads": 4, "causal": True, "window": 5, "block_size": 8},
    {"seq": 37, "head_dim": 6, "kv_heads": 2, "causal": True, "segments": True,
     "block_size": 5},
    {"seq": 13, "head_dim": 12, "kv_heads": 2, "causal": False, "seq_k": 29, "block_size": 7},
], ids=["causal", "window", "segments", "cross"])
def test_gradients_match_reference(case, normalize):
  case = dict(case)
  with jax.enable_x64(True):
    diff = arrays(case.pop("seq"), case.pop("head_dim"), case.pop("kv_heads"),
                  seq_k=case.pop("seq_k", None))
    if case.pop("segments", False):
      case["segment_ids"] = segments(diff["q"].shape[1])
    diff["sigmoid_bias"] = jnp.asarray(-1.3, jnp.float64)  # the offset b, differentiated
    compare(diff, normalize=normalize, **case)


@pytest.mark.slow
@pytest.mark.parametrize("normalize", [False, True], ids=["plain", "normalized"])
@pytest.mark.parametrize("bias_shape", [(B, N, 13, 13), (N, 13, 1), (B, 1, 1, 13), (13, 13)],
                         ids=str)
def test_bias_gradients_match_reference(bias_shape, normalize):
  with jax.enable_x64(True):
    diff = arrays(13, 6, 2, seed=1)
    rng = np.random.default_rng(2)
    bias = rng.standard_normal(bias_shape)
    if len(bias_shape) == 4:
      bias[0, ..., 3] = -np.inf  # a key invisible through the bias: weight 0, gradient 0
    diff["bias"] = jnp.asarray(bias, jnp.float64)
    compare(diff, normalize=normalize, block_size=4, causal=len(bias_shape) != 2)


def test_float32_gradients_match_reference():
  diff = arrays(37, 12, 2, dtype=jnp.float32)
  compare(diff, tol=1e-5, block_size=8)
  compare(diff, tol=1e-5, block_size=8, normalize=True, window=9)


@pytest.mark.parametrize("normalize", [False, True])
def test_backward_keeps_no_per_block_weights(normalize):
  """The saved residuals are O(T·H) arrays (q, k, v, offset; normalised also out and row sums),
  far below one T×S weight matrix per head, which autodiff of the scan would keep."""
  seq, heads, head_dim = 256, 4, 8
  q = jnp.zeros((1, seq, heads, head_dim))
  k = v = jnp.zeros((1, seq, 2, head_dim))
  fn = functools.partial(sigmoid_attention, block_size=16, normalize=normalize)
  _, vjp = jax.vjp(fn, q, k, v)
  saved = sum(np.size(x) for x in jax.tree_util.tree_leaves(vjp))
  assert saved <= 3 * seq * heads * head_dim + 2 * seq * heads + seq, saved
  assert saved < seq * seq

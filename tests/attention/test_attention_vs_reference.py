"""Every fast attention form against its float32 reference: outputs and every gradient."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import momentum_jax.attention as attn

B, N = 2, 4
TOL = 1e-5

# Tiny shapes: XLA's LLVM optimisation would dominate the run time, so compile without it.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

# (T, H, K, options); options name the masks and extras of one case.
CASES = [
    (1, 24, 4, {}),
    (7, 40, 2, {}),
    (33, 24, 2, {"window": 5}),
    (33, 40, 4, {"segments": True}),
    (7, 24, 2, {"sinks": True}),
    (7, 24, 4, {"bias": "full"}),
    (33, 24, 2, {"causal": False, "bias": "broadcast"}),
    (7, 24, 4, {"causal": False, "segments": True, "sinks": True}),
    (33, 40, 2, {"window": 4, "segments": True, "sinks": True, "bias": "full"}),
]


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def make_case(seq, head_dim, kv_heads, options, seed=0):
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  arrays = {
      "q": normal(B, seq, N, head_dim),
      "k": normal(B, seq, kv_heads, head_dim),
      "v": normal(B, seq, kv_heads, head_dim),
  }
  kwargs = {"causal": options.get("causal", True), "window": options.get("window")}
  if options.get("segments"):
    ids = np.zeros((B, seq), np.int32)
    ids[0, seq // 3:] = 1
    ids[0, 2 * seq // 3:] = 2
    ids[1, seq // 2:] = 5
    kwargs["segment_ids"] = jnp.asarray(ids)
  if options.get("sinks"):
    arrays["sinks"] = normal(N)
  if options.get("bias") == "full":
    bias = rng.standard_normal((B, N, seq, seq)).astype(np.float32)
    bias[rng.random(bias.shape) < 0.3] = -np.inf
    bias[0, 1, seq // 2, :] = -np.inf  # a query row with no visible key
    arrays["bias"] = jnp.asarray(bias)
  elif options.get("bias") == "broadcast":
    arrays["bias"] = normal(seq)
  return arrays, kwargs


def variant_params(name, kv_heads, options, seed=1):
  """Differentiable variant parameters and fixed keyword arguments."""
  rng = np.random.default_rng(seed)
  if name == "momentum":
    gamma = 0.3 + rng.random(kv_heads) if options.get("causal", True) else 0.8
    boundary = "replicate" if options.get("segments") else "zero"
    return {"gamma": jnp.asarray(gamma, jnp.float32)}, {"boundary": boundary}
  if name == "kv_shift":
    alpha = jnp.asarray(rng.standard_normal((kv_heads, 2)), jnp.float32)
    beta = jnp.asarray(rng.standard_normal(2), jnp.float32)
    return {"alpha": alpha, "beta": beta}, {}
  if name == "ema_value":
    return {}, {"eta": 0.7}
  return {}, {}


def run_case(name, seq, head_dim, kv_heads, options):
  if name == "ema_value" and not options.get("causal", True):
    pytest.skip("ema_value is causal only")
  variant = attn.get_attention(name)
  arrays, kwargs = make_case(seq, head_dim, kv_heads, options)
  params, fixed = variant_params(name, kv_heads, options)
  cotangent = jnp.asarray(np.random.default_rng(9).standard_normal(arrays["q"].shape), jnp.float32)

  def loss(fn, diff):
    out = fn(diff["q"], diff["k"], diff["v"], **{k: v for k, v in diff.items() if k not in "qkv"},
             **kwargs, **fixed)
    return jnp.sum(out * cotangent), out

  diff = {**arrays, **params}
  (_, out), grads = jit(jax.value_and_grad(lambda d: loss(variant.fn, d), has_aux=True))(diff)
  (_, out_ref), grads_ref = jit(
      jax.value_and_grad(lambda d: loss(variant.reference, d), has_aux=True))(diff)
  assert np.isfinite(out).all() and np.isfinite(out_ref).all()
  assert rel_err(out, out_ref) <= TOL
  for arg in diff:
    assert np.isfinite(grads[arg]).all(), arg
    assert rel_err(grads[arg], grads_ref[arg]) <= TOL, (arg, rel_err(grads[arg], grads_ref[arg]))
  return out, grads


@pytest.mark.slow
@pytest.mark.parametrize("name", ["softmax", "momentum", "kv_shift", "ema_value"])
@pytest.mark.parametrize("seq,head_dim,kv_heads,options", CASES)
def test_fast_matches_reference(name, seq, head_dim, kv_heads, options):
  run_case(name, seq, head_dim, kv_heads, options)


def test_empty_rows_are_zero_with_zero_gradients():
  out, grads = run_case("softmax", 7, 24, 4, {"bias": "full"})
  np.testing.assert_array_equal(out[0, 3, 1], 0.0)
  np.testing.assert_array_equal(grads["q"][0, 3, 1], 0.0)
  np.testing.assert_array_equal(grads["bias"][0, 1, 3], 0.0)


def test_momentum_with_rope_matches_reference():
  arrays, kwargs = make_case(33, 40, 2, {"segments": True, "sinks": True})
  positions = jnp.broadcast_to(jnp.arange(33) + 5, (B, 33))
  args = dict(gamma=jnp.array([0.5, 1.5]), boundary="zero", positions=positions,
              sinks=arrays["sinks"],
              **kwargs)

  def loss(fn, q, k, v, gamma):
    return jnp.sum(fn(q, k, v, **{**args, "gamma": gamma}) ** 2)

  inputs = (arrays["q"], arrays["k"], arrays["v"], args["gamma"])
  fast = jit(jax.grad(lambda *a: loss(attn.momentum_attention, *a), argnums=(0, 1, 2, 3)))(*inputs)
  ref = jit(jax.grad(lambda *a: loss(attn.momentum_attention_reference, *a), argnums=(0, 1, 2, 3)))(
      *inputs)
  for a, b in zip(fast, ref):
    assert rel_err(a, b) <= TOL


@pytest.mark.parametrize("boundary", ["zero", "replicate"])
@pytest.mark.parametrize("segments", [False, True])
def test_shear_matches_reference(boundary, segments):
  arrays, kwargs = make_case(33, 24, 4, {"segments": segments})
  gamma = jnp.array([0.0, 0.5, 1.0, 4.17])
  args = dict(boundary=boundary, segment_ids=kwargs.get("segment_ids"))

  def loss(fn, x, gamma):
    return jnp.sum(jnp.sin(fn(x, gamma, **args)))

  fast = jit(jax.value_and_grad(lambda *a: loss(attn.momentum_shear, *a), argnums=(0, 1)))(
      arrays["q"], gamma)
  ref = jit(jax.value_and_grad(lambda *a: loss(attn.momentum_shear_reference, *a), argnums=(0, 1)))(
      arrays["q"], gamma)
  assert rel_err(fast[0], ref[0]) <= TOL
  for a, b in zip(fast[1], ref[1]):
    assert rel_err(a, b) <= TOL


def test_softmax_reference_matches_numpy_loop():
  arrays, kwargs = make_case(7, 24, 2, {"sinks": True, "bias": "full", "window": 3})
  out, scores, weights = attn.softmax_attention_reference(
      arrays["q"], arrays["k"], arrays["v"], sinks=arrays["sinks"], bias=arrays["bias"],
      return_weights=True, **kwargs)
  q, k, v = (np.asarray(arrays[n], np.float64) for n in "qkv")
  bias, sinks = np.asarray(arrays["bias"], np.float64), np.asarray(arrays["sinks"], np.float64)
  expected = np.zeros_like(q)
  for b in range(B):
    for n in range(N):
      for t in range(7):
        j = n // 2
        logits = np.array([q[b, t, n] @ k[b, s, j] / np.sqrt(24) + bias[b, n, t, s]
                           if t - 3 < s <= t else -np.inf for s in range(7)])
        m = max(logits.max(), sinks[n])
        e = np.exp(logits - m)
        w = e / (e.sum() + np.exp(sinks[n] - m))
        expected[b, t, n] = w @ v[b, :, j]
        np.testing.assert_allclose(weights[b, n, t], w, atol=1e-6)
        assert np.array_equal(np.isneginf(scores[b, n, t]), np.isneginf(logits))
  assert rel_err(out, expected) <= TOL
  assert (np.asarray(weights).sum(-1) < 1).all()


@pytest.mark.parametrize("name", ["softmax", "momentum", "kv_shift", "ema_value"])
def test_bf16_in_bf16_out(name):
  variant = attn.get_attention(name)
  arrays, kwargs = make_case(33, 40, 2, {"segments": True, "sinks": True, "window": 9})
  params, fixed = variant_params(name, 2, {})
  q, k, v = (arrays[n].astype(jnp.bfloat16) for n in "qkv")
  sinks = arrays["sinks"].astype(jnp.bfloat16)
  out = jit(lambda q, k, v: variant.fn(q, k, v, sinks=sinks, **params, **fixed, **kwargs))(q, k, v)
  ref = jit(lambda q, k, v: variant.reference(q, k, v, sinks=sinks, **params, **fixed, **kwargs))(
      q, k, v)
  assert out.dtype == ref.dtype == jnp.bfloat16
  assert rel_err(out, ref) <= 2e-2
  grad = jit(jax.grad(
      lambda q: jnp.sum(variant.fn(q, k, v, **params, **fixed, **kwargs).astype(jnp.float32))))(q)
  assert grad.dtype == jnp.bfloat16 and np.isfinite(np.asarray(grad, np.float32)).all()

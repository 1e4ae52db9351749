"""Linear and lightning attention: chunked fast forms against their T×T references (outputs and
every gradient), causality by gradient, dtypes, jit / vmap, validation and large inputs.

The fast-versus-reference comparisons run in float64 (``jax.enable_x64``): they check the blocked
algebra, and at T = 1 the q and k gradients of linear attention are O(eps) differences that float32
cannot resolve. Float32 is checked separately at 1e-5 (lightning) and 1e-4 (linear, whose
normalised non-causal outputs are small averages of many values).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import momentum_jax.attention as attn
from momentum_jax.attention.lightning import lightning_attention, lightning_attention_reference
from momentum_jax.attention.linear import linear_attention, linear_attention_reference
from momentum_jax.core.alibi import alibi_slopes
from momentum_jax.experiments.bench import linear_attention as bench_linear_attention
from momentum_jax.nn import Transformer, TransformerConfig

B, N = 2, 4
TOL = 1e-5

jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

# (T, H, K, block_size, segments): block sizes that do not divide T, GQA 4:2 and 4:4.
CASES = [
    (1, 24, 4, 5, False),
    (7, 40, 2, 3, False),
    (33, 24, 2, 8, True),
    (70, 40, 2, 16, True),
    (70, 24, 4, 64, False),
]


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def make_inputs(seq, head_dim, kv_heads, segments, dtype, seed=0):
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), dtype)
  arrays = {"q": normal(B, seq, N, head_dim), "k": normal(B, seq, kv_heads, head_dim),
            "v": normal(B, seq, kv_heads, head_dim)}
  ids = None
  if segments:
    ids = np.zeros((B, seq), np.int32)
    ids[0, seq // 3:] = 1
    ids[0, 2 * seq // 3:] = 0  # an id that recurs: a new segment
    ids[1, seq // 2:] = 5
    ids = jnp.asarray(ids)
  return arrays, ids, normal(B, seq, N, head_dim)


def compare(name, case, dtype, tol, **kwargs):
  seq, head_dim, kv_heads, block_size, segments = case
  variant = attn.get_attention(name)
  diff, ids, cotangent = make_inputs(seq, head_dim, kv_heads, segments, dtype)
  if name == "lightning":
    diff["decay"] = jnp.asarray(np.random.default_rng(1).random(N) * 0.5, dtype)

  def loss(fn, d):
    out = fn(d["q"], d["k"], d["v"], segment_ids=ids, block_size=block_size, **kwargs,
             **{key: val for key, val in d.items() if key not in "qkv"})
    return jnp.sum(out * cotangent), out

  (_, out), grads = jit(jax.value_and_grad(lambda d: loss(variant.fn, d), has_aux=True))(diff)
  (_, ref), grads_ref = jit(
      jax.value_and_grad(lambda d: loss(variant.reference, d), has_aux=True))(diff)
  assert out.dtype == ref.dtype == dtype
  assert np.isfinite(out).all() and rel_err(out, ref) <= tol, rel_err(out, ref)
  for arg in diff:
    assert np.isfinite(grads[arg]).all(), arg
    if np.any(grads_ref[arg]):  # the decay gradient at T = 1 is exactly zero
      assert rel_err(grads[arg], grads_ref[arg]) <= tol, (arg, rel_err(grads[arg], grads_ref[arg]))


LINEAR_CASES = [
    *((case, causal, "elu+1") for case in CASES for causal in (True, False)),
    (CASES[3], True, "relu"),
    (CASES[2], False, "softmax"),
]


@pytest.mark.slow
@pytest.mark.parametrize("case,causal,feature_map", LINEAR_CASES, ids=str)
def test_linear_matches_reference_x64(case, causal, feature_map):
  with jax.enable_x64(True):
    compare("linear", case, jnp.float64, TOL, causal=causal, feature_map=feature_map)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=str)
def test_lightning_matches_reference_x64(case):
  with jax.enable_x64(True):
    compare("lightning", case, jnp.float64, TOL)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES[1:], ids=str)
def test_float32_matches_reference(case):
  compare("lightning", case, jnp.float32, TOL)
  compare("linear", case, jnp.float32, 1e-4, causal=True)
  compare("linear", case, jnp.float32, 1e-4, causal=False, scale=0.5)


def test_lightning_default_decay_and_scale():
  arrays, _, _ = make_inputs(33, 24, 2, False, jnp.float32)
  q, k, v = arrays["q"], arrays["k"], arrays["v"]
  out = jit(functools.partial(lightning_attention, scale=0.3, block_size=7))(q, k, v)
  ref = lightning_attention_reference(q, k, v, decay=alibi_slopes(N), scale=0.3)
  assert rel_err(out, ref) <= TOL
  np.testing.assert_allclose(alibi_slopes(8), 2.0 ** (-np.arange(1, 9)))


def test_references_match_numpy_loops():
  arrays, _, _ = make_inputs(7, 24, 2, False, jnp.float32)
  q, k, v = (np.asarray(arrays[n], np.float64) for n in "qkv")
  slopes = np.array([0.1, 0.2, 0.3, 0.4])
  phi = lambda x: np.where(x > 0, x + 1, np.exp(x))
  lin = np.zeros_like(q)
  light = np.zeros_like(q)
  for b in range(B):
    for n in range(N):
      j = n // 2
      for t in range(7):
        kern = phi(k[b, :t + 1, j]) @ phi(q[b, t, n])
        lin[b, t, n] = kern @ v[b, :t + 1, j] / (kern.sum() + 1e-6)
        mix = (k[b, :t + 1, j] @ q[b, t, n]) * np.exp(-slopes[n] * np.arange(t, -1, -1))
        light[b, t, n] = mix @ v[b, :t + 1, j]
  out, _, weights = linear_attention_reference(*arrays.values(), return_weights=True)
  assert rel_err(out, lin) <= TOL
  assert rel_err(np.einsum("bnts,bsnh->btnh", weights, np.repeat(v, 2, axis=2)), lin) <= TOL
  out, scores, weights = lightning_attention_reference(
      *arrays.values(), decay=jnp.asarray(slopes, jnp.float32), return_weights=True)
  assert rel_err(out, light) <= TOL
  assert np.isneginf(scores[0, 0, 0, 1]) and weights[0, 0, 0, 1] == 0


@pytest.mark.parametrize("name,kwargs", [("linear", {}), ("lightning", {}),
                                         ("linear", {"segments": True}),
                                         ("lightning", {"segments": True})])
def test_causal_by_gradient(name, kwargs):
  arrays, _, _ = make_inputs(11, 24, 2, False, jnp.float32)
  ids = jnp.array([[0] * 4 + [1] * 7] * 2) if kwargs else None
  fn = functools.partial(attn.get_attention(name).fn, segment_ids=ids, block_size=4)
  per_t = lambda q, k, v: jnp.sum(fn(q, k, v), axis=(0, 2, 3))
  for jac_TxBxSxKxH in jit(jax.jacrev(per_t, argnums=(0, 1, 2)))(*arrays.values()):
    jac = np.asarray(jac_TxBxSxKxH)
    assert jac.any()
    for t in range(11):
      assert not jac[t, :, t + 1:].any(), (name, t)
      if ids is not None and t >= 4:
        assert not jac[t, :, :4].any(), (name, t)


@pytest.mark.parametrize("name", ["linear", "lightning"])
def test_bf16_in_bf16_out(name):
  variant = attn.get_attention(name)
  arrays, ids, _ = make_inputs(33, 40, 2, True, jnp.bfloat16)
  q, k, v = arrays.values()
  fn = functools.partial(variant.fn, segment_ids=ids, block_size=8)
  out = jit(fn)(q, k, v)
  ref = jit(functools.partial(variant.reference, segment_ids=ids))(q, k, v)
  assert out.dtype == ref.dtype == jnp.bfloat16
  assert rel_err(out, ref) <= 2e-2
  grad = jit(jax.grad(lambda q: jnp.sum(fn(q, k, v).astype(jnp.float32))))(q)
  assert grad.dtype == jnp.bfloat16 and np.isfinite(np.asarray(grad, np.float32)).all()


@pytest.mark.parametrize("name", ["linear", "lightning"])
def test_jit_and_vmap(name):
  variant = attn.get_attention(name)
  arrays, _, _ = make_inputs(9, 24, 2, False, jnp.float32)
  q, k, v = arrays.values()
  fn = jit(functools.partial(variant.fn, block_size=4))
  stacked = [jnp.stack([x, x[:, ::-1]]) for x in (q, k, v)]
  mapped = jit(jax.vmap(functools.partial(variant.fn, block_size=4)))(*stacked)
  np.testing.assert_allclose(mapped[0], fn(q, k, v), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(mapped[1], fn(q[:, ::-1], k[:, ::-1], v[:, ::-1]), rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize("name", ["linear", "lightning"])
def test_large_inputs_have_finite_gradients(name):
  arrays, ids, _ = make_inputs(70, 24, 2, True, jnp.float32)
  fn = functools.partial(attn.get_attention(name).fn, segment_ids=ids, block_size=16)
  loss = lambda q, k, v: jnp.mean(fn(q, k, v))
  grads = jit(jax.grad(loss, argnums=(0, 1, 2)))(*(30.0 * x for x in arrays.values()))
  assert all(np.isfinite(g).all() and np.any(g) for g in grads)


Q = jnp.ones((2, 7, 4, 24))
KV = jnp.ones((2, 7, 2, 24))
FUNCTIONS = [linear_attention, linear_attention_reference, lightning_attention,
             lightning_attention_reference]


@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("kwargs,message", [
    ({"window": 3}, "window=3"),
    ({"bias": jnp.zeros((7, 7))}, "bias.shape=(7, 7)"),
    ({"sinks": jnp.zeros(4)}, "sinks.shape=(4,)"),
    ({"block_size": 0}, "block_size=0"),
    ({"block_size": 2.0}, "block_size=2.0"),
])
def test_unsupported_options_raise(fn, kwargs, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    fn(Q, KV, KV, **kwargs)


@pytest.mark.parametrize("fn", FUNCTIONS[:2], ids=lambda f: f.__name__)
def test_linear_errors(fn):
  with pytest.raises(ValueError, match=r"feature_map='tanh'"):
    fn(Q, KV, KV, feature_map="tanh")
  with pytest.raises(ValueError, match=r"eps=0.0"):
    fn(Q, KV, KV, eps=0.0)
  with pytest.raises(ValueError, match=r"q.shape=\(2, 7, 4, 24\) and k.shape=\(2, 5, 2, 24\)"):
    fn(Q, KV[:, :5], KV[:, :5])
  assert fn(Q, KV[:, :5], KV[:, :5], causal=False).shape == Q.shape


@pytest.mark.parametrize("fn", FUNCTIONS[2:], ids=lambda f: f.__name__)
def test_lightning_errors(fn):
  with pytest.raises(ValueError, match=r"causal=False"):
    fn(Q, KV, KV, causal=False)
  with pytest.raises(ValueError, match=r"decay.shape=\(2,\)"):
    fn(Q, KV, KV, decay=jnp.ones(2))
  with pytest.raises(ValueError, match=r"decay=-0.5"):
    fn(Q, KV, KV, decay=-0.5)
  with pytest.raises(ValueError, match=r"q.shape=\(2, 7, 4, 24\) and k.shape=\(2, 5, 2, 24\)"):
    fn(Q, KV[:, :5], KV[:, :5])


def test_registry_and_transformer_forward():
  assert attn.get_attention("linear").params == ("feature_map", "eps", "block_size")
  assert attn.get_attention("lightning").params == ("decay", "block_size")
  for name in ("linear", "lightning"):
    cfg = TransformerConfig(vocab_size=32, context_len=12, d_model=32, num_heads=4, num_kv_heads=2,
                            num_layers=1, attention=name, attention_params={"block_size": 5})
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    logits = model(jnp.zeros((2, 12), jnp.int32))
    assert logits.shape == (2, 12, 32) and np.isfinite(logits).all()


@pytest.mark.slow
def test_bench_linear_attention_tiny(capsys):
  results = bench_linear_attention.main([
      "--seq-lens", "8", "16", "--dense-seq-lens", "16", "--memory-seq-len", "16", "--heads", "2",
      "--head-dim", "8", "--block-size", "4", "--repeats", "1"])
  assert set(results["times"]) == {8, 16}
  assert {"lightning x2", "linear x2", "dense/lightning"} <= set(results["times"][16])
  assert results["memory"]["dense"] > 0 and results["memory"]["lightning/dense"] > 0
  assert "dense/lightning" in capsys.readouterr().out

"""One conformance suite over every registered attention variant.

Parametrised over ``available_attention()`` at import time, so a newly registered variant is
checked without touching this file; what a variant needs beyond the default (causal, no extra
parameters, learned parameters from its registered initialisers) goes in ``NEEDS``. Checks, at
awkward sizes (T = 13, H = 6, N = 4 query heads over K = 2 kv heads):
  - output shape and dtype for float32 and bfloat16 inputs; bf16 against the f32 reference;
  - ``jax.jit``, ``jax.vmap`` over an extra leading axis and ``jax.grad``;
  - finite outputs and gradients when q and k are scaled so the logits reach ±1e4;
  - causality by gradient for causal variants: the loss at position t has exactly zero
    gradient w.r.t. q, k and v after t (round-off only, for an FFT convolution);
  - fast form vs float32 reference: outputs and the gradients w.r.t. q, k, v and every floating
    array parameter, by relative error;
  - ``ValueError`` naming the argument (its shape) for k with another head dim, v with another
    length, and N not divisible by K.
Each variant's forms are compiled once per dtype and shape (``_compiled``) and reused by every
check.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import momentum_jax.attention as attn

B, T, N, K, H = 2, 13, 4, 2, 6
LOGIT_SCALE = 100.0  # q, k × 100: scale · q·k has standard deviation 1e4 at H = 6

jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _normal(seed, *shape):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _uniform(seed, *shape):
  return jnp.asarray(np.random.default_rng(seed).uniform(size=shape), jnp.float32)


# What a variant needs beyond the default. Keys: "causal" (False: the variant is non-causal only
# and is called with causal=False), "params" (keyword arguments; floating jax arrays among them
# are differentiated), "tol" (relative error of fast vs reference, default TOL), "bf16_tol"
# (bf16 fast form vs f32 reference, default BF16_TOL), "causal_rtol" (largest gradient at a
# future position relative to the largest gradient, default 0: exactly zero) and "unused" (inputs
# the variant ignores by design: their gradients must be exactly zero). Small block sizes make
# T = 13 span several blocks with a ragged last one.
NEEDS = {
    "affine": {"params": {"alpha_BxTxN": _uniform(5, B, T, N),
                          "alpha_ma": jnp.array([0.2, 0.5, 0.7, 0.9])}},
    "agent": {"causal": False, "params": {"num_agents": 3}},
    "deconstructed_fixed_qk": {"unused": ("q", "k")},
    "deconstructed_mlp": {"unused": ("k",)},
    "deconstructed_taylor": {"params": {"block_size": 4}},
    "ema_value": {"params": {"eta": 0.6}},
    # A causal convolution by FFT: future positions get round-off, not exact zeros.
    "ema_value_learned": {"causal_rtol": 1e-5},
    "flash_bias": {"params": {"q_bias": _normal(7, B, T, N, 2), "k_bias": _normal(8, B, T, K, 2)}},
    "flex": {"params": {"block_q": 4, "block_k": 8}},
    "flow": {"params": {"block_size": 4}},
    "kv_shift": {"params": {"alpha": jnp.array([[1.5, -0.5], [0.8, 0.4]]),
                            "beta": jnp.array([[0.7, 0.3], [1.0, -0.2]])}},
    "lightning": {"params": {"block_size": 4}},
    "linear": {"params": {"block_size": 4}},
    "momentum": {"params": {"gamma": 0.5}},
    "sigmoid": {"params": {"block_size": 4}},
    # Keeps 1 of up to 4 causal key blocks: the rest goes through the projected linear branch.
    "sla": {"params": {"block_size": 4, "ratio": 0.25, "proj": 0.3 * _normal(6, N, H, H)}},
}
TOL = 1e-4
BF16_TOL = 5e-2
NAMES = attn.available_attention()
CAUSAL = [name for name in NAMES if NEEDS.get(name, {}).get("causal", True)]


def need(name: str, key: str, default):
  return NEEDS.get(name, {}).get(key, default)


def is_array_param(x) -> bool:
  return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.floating)


@functools.cache
def params(name: str) -> tuple[dict, dict]:
  """(floating array parameters, other keyword arguments) of ``name``."""
  dims = attn.AttentionDims(N, K, H, T)
  learned = attn.get_attention(name).learned
  kwargs = {p: init(dims, jax.random.key(i)) for i, (p, init) in enumerate(learned.items())}
  kwargs.update(need(name, "params", {}))
  kwargs["causal"] = need(name, "causal", True)
  arrays = {p: x for p, x in kwargs.items() if is_array_param(x)}
  return arrays, {p: x for p, x in kwargs.items() if p not in arrays}


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def inputs(seed: int = 0, dtype=jnp.float32) -> dict[str, jax.Array]:
  return {"q": _normal(seed, B, T, N, H).astype(dtype),
          "k": _normal(seed + 1, B, T, K, H).astype(dtype),
          "v": _normal(seed + 2, B, T, K, H).astype(dtype)}


COTANGENT = _normal(9, B, T, N, H)


@functools.cache
def _compiled(name: str, form: str, kind: str):
  """Jitted forms of a variant, built once.

  kind "grad": ``(diff, cotangent) -> ((Σ out ⊙ cotangent, out), gradients w.r.t. diff)`` where
  diff holds q, k, v and the array parameters; "call": ``(q, k, v) -> out``; "vmap": the call
  mapped over a leading axis of q, k and v.
  """
  fn = getattr(attn.get_attention(name), form)
  arrays, static = params(name)

  def call(d):
    extra = {p: d[p] for p in arrays}
    return fn(d["q"], d["k"], d["v"], **extra, **static)

  if kind == "grad":
    def loss(d, cotangent):
      out = call(d)
      return jnp.sum(out.astype(jnp.float32) * cotangent), out
    return jit(jax.value_and_grad(loss, has_aux=True))
  qkv = lambda q, k, v: call({"q": q, "k": k, "v": v, **arrays})
  return jit(jax.vmap(qkv) if kind == "vmap" else qkv)


def run(name: str, form: str, diff: dict, cotangent=COTANGENT):
  (_, out), grads = _compiled(name, form, "grad")({**diff, **params(name)[0]}, cotangent)
  return out, grads


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_matches_reference_outputs_and_every_gradient(name):
  out, grads = run(name, "fn", inputs())
  ref, grads_ref = run(name, "reference", inputs())
  assert out.shape == ref.shape == (B, T, N, H) and out.dtype == ref.dtype == jnp.float32
  tol = need(name, "tol", TOL)
  assert np.isfinite(out).all() and rel_err(out, ref) <= tol, rel_err(out, ref)
  assert set(grads) == {"q", "k", "v", *params(name)[0]}
  unused = need(name, "unused", ())
  for arg in grads:
    if arg in unused:
      assert not np.any(grads[arg]) and not np.any(grads_ref[arg]), arg
      continue
    error = rel_err(grads[arg], grads_ref[arg])
    assert np.isfinite(grads[arg]).all() and error <= tol, (arg, error)
    assert np.any(grads_ref[arg]), arg


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_shape_dtype_and_parity(name):
  x = inputs(dtype=jnp.bfloat16)
  out = _compiled(name, "fn", "call")(*x.values())
  assert out.shape == (B, T, N, H) and out.dtype == jnp.bfloat16
  ref, _ = run(name, "reference", {n: a.astype(jnp.float32) for n, a in x.items()})
  assert np.isfinite(np.asarray(out, np.float32)).all()
  assert rel_err(out, ref) <= need(name, "bf16_tol", BF16_TOL), rel_err(out, ref)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_jit_vmap_and_grad(name):
  x, y = inputs(0), inputs(3)
  stacked = [jnp.stack([a, b]) for a, b in zip(x.values(), y.values())]
  mapped = _compiled(name, "fn", "vmap")(*stacked)
  assert mapped.shape == (2, B, T, N, H)
  for i, d in enumerate((x, y)):
    out, grads = run(name, "fn", d)
    np.testing.assert_allclose(mapped[i], out, rtol=1e-5, atol=1e-5)
    unused = need(name, "unused", ())
    assert all(np.isfinite(g).all() and (arg in unused or np.any(g)) for arg, g in grads.items())


@pytest.mark.parametrize("name", NAMES)
def test_large_logits_keep_gradients_finite(name):
  x = inputs()
  big = {n: a * (LOGIT_SCALE if n in "qk" else 1.0) for n, a in x.items()}
  logits = jnp.einsum("btnh,bsnh->bnts", big["q"][:, :, ::2], big["k"]) / np.sqrt(H)
  assert float(jnp.max(jnp.abs(logits))) >= 1e4
  out, grads = run(name, "fn", big)
  assert np.isfinite(out).all()
  for arg, g in grads.items():
    assert np.isfinite(g).all(), arg


@pytest.mark.parametrize("name", CAUSAL)
def test_causal_by_gradient(name):
  """The loss at position t alone has exactly zero gradient w.r.t. q, k, v at positions > t."""
  x = inputs()
  rtol = need(name, "causal_rtol", 0.0)
  seen = dict.fromkeys("qkv", False)
  for t in range(T):
    cotangent = COTANGENT * (jnp.arange(T) == t)[None, :, None, None]
    _, grads = run(name, "fn", x, cotangent)
    for arg in "qkv":
      g = np.abs(np.asarray(grads[arg]))
      assert g[:, t + 1:].max(initial=0.0) <= rtol * g.max(), (arg, t, g[:, t + 1:].max())
      seen[arg] |= bool(g.any())
  assert all(seen[arg] for arg in "qkv" if arg not in need(name, "unused", ())), seen


@pytest.mark.parametrize("form", ["fn", "reference"])
@pytest.mark.parametrize("name", NAMES)
def test_bad_shapes_raise_value_error_naming_the_argument(name, form):
  fn = getattr(attn.get_attention(name), form)
  arrays, static = params(name)
  q, k, v = inputs().values()
  wide = jnp.ones((B, T, K, H + 2))
  cases = [
      ("k.shape=(2, 13, 2, 8)", wide, wide),  # k (and v) with another head dim than q
      ("v.shape=(2, 12, 2, 6)", k, v[:, :-1]),  # v with another length S than k
      ("k.shape=(2, 13, 3, 6)", jnp.ones((B, T, 3, H)), jnp.ones((B, T, 3, H))),  # N % K != 0
  ]
  for message, bad_k, bad_v in cases:
    with pytest.raises(ValueError, match=re.escape(message)):
      fn(q, bad_k, bad_v, **arrays, **static)

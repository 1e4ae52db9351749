"""SLA (sparse + linear attention): the gathered-block fast form against the dense T×S reference
(output and the gradients of q, k, v and proj) with and without the negligible tier, a NumPy
transcription of the authors' algorithm and of the three-tier classification, skipped blocks
contributing nothing, limits (all blocks kept = softmax attention), causality by perturbation,
the model path and validation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attention_testing import FAST_COMPILE, forward_and_grads, jit, rel_err

import momentum_jax.attention as attn
from momentum_jax.attention.sla import sla_attention, sla_attention_reference, sla_block_selection
from momentum_jax.nn import Transformer, TransformerConfig

B, N = 2, 4
jit_static = functools.partial(jax.jit, compiler_options=FAST_COMPILE,
                               static_argnames=("causal", "ratio", "negligible", "block_size"))


def make(seq, head_dim, kv_heads, dtype=jnp.float32, seq_k=None, seed=0):
  rng = np.random.default_rng(seed)
  seq_k = seq if seq_k is None else seq_k
  arr = lambda *s: jnp.asarray(rng.standard_normal(s), dtype)
  return {"q": arr(B, seq, N, head_dim), "k": arr(B, seq_k, kv_heads, head_dim),
          "v": arr(B, seq_k, kv_heads, head_dim), "proj": arr(N, head_dim, head_dim)}


def compare(diff, tol, **kwargs):
  variant = attn.get_attention("sla")
  cot = jnp.asarray(np.random.default_rng(9).standard_normal(diff["q"].shape), diff["q"].dtype)

  def loss(fn, d):
    out = fn(d["q"], d["k"], d["v"], proj=d["proj"], **kwargs)
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


@pytest.mark.slow
@pytest.mark.parametrize("case,kwargs", [
    ((37, 6, 2, 37), {"block_size": 8, "ratio": 0.4}),
    ((13, 12, 4, 13), {"block_size": 4, "ratio": 0.5}),
    ((37, 6, 2, 21), {"block_size": 8, "ratio": 0.5, "causal": False}),
    ((13, 6, 2, 13), {"block_size": 4, "ratio": 1.0, "causal": False}),
    ((37, 6, 2, 37), {"block_size": 4, "ratio": 0.2, "negligible": 0.4}),
    ((37, 6, 2, 23), {"block_size": 4, "ratio": 0.2, "negligible": 0.5, "causal": False}),
    ((29, 6, 1, 21), {"block_size": 4, "ratio": 0.3, "negligible": 0.3, "causal": False}),
], ids=["causal-37", "causal-13-mha", "cross-37x21", "all-kept", "tiers-causal-37",
        "tiers-cross-37x23", "tiers-cross-29x21-mqa"])
def test_fast_matches_reference_x64(case, kwargs):
  seq, head_dim, kv_heads, seq_k = case
  with jax.enable_x64(True):
    compare(make(seq, head_dim, kv_heads, jnp.float64, seq_k), 1e-10, **kwargs)


def test_float32_matches_reference():
  compare(make(37, 12, 2), 1e-5, block_size=4, ratio=0.3)


def test_three_tiers_float32_match_reference():
  compare(make(37, 6, 2, seed=3), 1e-5, block_size=4, ratio=0.2, negligible=0.4)


def test_three_tier_classification_matches_numpy():
  # Causal, T = 37 with blocks of 4: 10 query and key blocks, query block i sees i + 1 of them.
  seq, block, ratio, negligible = 37, 4, 0.2, 0.5
  d = make(seq, 6, 2, seed=4)
  index, valid, marginal = jit_static(sla_block_selection)(
      d["q"], d["k"], causal=True, ratio=ratio, block_size=block, negligible=negligible)
  q, k = np.asarray(d["q"], np.float64), np.asarray(d["k"], np.float64)
  nb = 10
  pool = lambda x, n: np.stack([x[:, j * block:(j + 1) * block].mean(1) for j in range(n)], 1)
  qbar = pool(q, nb)  # [B, Q, N, H]
  for b in range(B):
    for n in range(N):
      kk = k[b, :, n // 2]
      for i in range(nb):
        visible = i + 1
        keys = kk[:min(seq, visible * block)]
        kbar = pool((keys - keys.mean(0))[None], visible)[0]
        score = kbar @ qbar[b, i, n]
        score[i] = np.inf
        critical = set(np.argsort(-score, kind="stable")[:2])  # ⌈0.2 · 10⌉
        rest = [j for j in np.argsort(score, kind="stable") if j not in critical]
        skipped = set(rest[:int(negligible * visible)])
        expected = [j < visible and j not in critical and j not in skipped for j in range(nb)]
        got_kept = {int(j) for j, ok in zip(index[b, n // 2, n % 2, i], valid[b, n // 2, n % 2, i])
                    if ok}
        assert got_kept == critical, (b, n, i)
        assert list(np.asarray(marginal[b, n // 2, n % 2, i])) == expected, (b, n, i)


@pytest.mark.parametrize("fn", [sla_attention, sla_attention_reference],
                         ids=lambda f: f.__name__)
def test_negligible_blocks_contribute_nothing(fn):
  # Non-causal, 8 key blocks of 4 (the last one short): 2 critical, then of the other 6 the 4
  # lowest-scoring negligible, 2 marginal.
  d = make(29, 6, 2, seq_k=31, seed=5)
  kwargs = {"causal": False, "block_size": 4, "ratio": 0.25}
  _, _, marginal = sla_block_selection(d["q"], d["k"], negligible=0.5, **kwargs)
  index, valid, _ = sla_block_selection(d["q"], d["k"], **kwargs)
  head, query_block = 1, 2
  marginal = np.asarray(marginal[0, head // 2, head % 2, query_block])
  kept = set(np.asarray(index[0, head // 2, head % 2, query_block]))
  skipped = [j for j in range(8) if not marginal[j] and j not in kept]
  assert len(kept) == 2 and len(skipped) == 4 and marginal.sum() == 2  # ⌊0.5 · 8⌋ skipped
  rows = slice(4 * query_block, 4 * query_block + 4)
  call = jit_static(fn, static_argnames=("causal", "ratio", "negligible", "block_size"))
  out = call(d["q"], d["k"], d["v"], proj=d["proj"], negligible=0.5, **kwargs)[0, rows, head]

  def changed(j):  # 100 × the values of key block j: the classification depends on q, k only
    v = d["v"].at[:, 4 * j:4 * j + 4].multiply(100.0)
    return call(d["q"], d["k"], v, proj=d["proj"], negligible=0.5, **kwargs)[0, rows, head]

  for j in skipped:
    np.testing.assert_allclose(changed(j), out, rtol=1e-6, atol=1e-6, err_msg=f"block {j}")
  for j in np.flatnonzero(marginal):
    assert not np.allclose(changed(int(j)), out, rtol=1e-3), f"block {j}"


def test_large_logits_stay_finite():
  # q, k × 100: φ = softmax over the features is one-hot and φ(q)·Σφ(k) underflows.
  d = {n: x * (100.0 if n in "qk" else 1.0) for n, x in make(13, 6, 2).items()}
  fast = functools.partial(sla_attention, block_size=4, ratio=0.25)
  out = jit(fast)(d["q"], d["k"], d["v"], proj=d["proj"])
  ref = sla_attention_reference(d["q"], d["k"], d["v"], proj=d["proj"], block_size=4,
                                     ratio=0.25)
  assert np.isfinite(out).all() and rel_err(out, ref) <= 1e-4
  loss = lambda q, k, v, proj: jnp.sum(fast(q, k, v, proj=proj))
  grads = jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(d["q"], d["k"], d["v"], d["proj"])
  assert all(np.isfinite(g).all() for g in grads)


def test_matches_numpy_transcription_of_authors_algorithm():
  # Non-causal, T a multiple of the block and ratio·blocks an integer: the authors' setting.
  d = make(32, 6, 4, seed=1)
  q, k, v, proj = (np.asarray(d[n], np.float64) for n in ("q", "k", "v", "proj"))
  block, keep, nb = 4, 3, 8
  softmax = lambda x: np.exp(x - x.max(-1, keepdims=True)) / np.exp(
      x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)
  expected = np.zeros_like(q)
  for b in range(B):
    for n in range(N):
      qq, kk, vv = q[b, :, n], k[b, :, n], v[b, :, n]
      qbar = qq.reshape(nb, block, 6).mean(1)
      kbar = (kk - kk.mean(0)).reshape(nb, block, 6).mean(1)
      top = np.argsort(-(qbar @ kbar.T), axis=1)[:, :keep]
      for i in range(nb):
        rows = slice(i * block, (i + 1) * block)
        cols = np.concatenate([np.arange(j * block, (j + 1) * block) for j in top[i]])
        rest = np.setdiff1d(np.arange(32), cols)
        o_s = softmax(qq[rows] @ kk[cols].T / np.sqrt(6)) @ vv[cols]
        fq, fk = softmax(qq[rows]), softmax(kk[rest])
        o_l = (fq @ (fk.T @ vv[rest])) / (fq @ fk.sum(0))[:, None]
        expected[b, rows, n] = o_s + o_l @ proj[n]
  kwargs = {"proj": d["proj"], "causal": False, "block_size": block, "ratio": keep / nb}
  assert rel_err(jit_static(sla_attention)(d["q"], d["k"], d["v"], **kwargs), expected) <= 1e-5
  assert rel_err(jit_static(sla_attention_reference)(d["q"], d["k"], d["v"], **kwargs),
                 expected) <= 1e-5


@pytest.mark.parametrize("causal", [True, False])
def test_all_blocks_kept_is_softmax_attention(causal):
  d = make(21, 6, 2)
  out = jit_static(sla_attention)(d["q"], d["k"], d["v"], proj=d["proj"], causal=causal,
                                block_size=4, ratio=1.0)
  expected = attn.softmax_attention_reference(d["q"], d["k"], d["v"], causal=causal)
  assert rel_err(out, expected) <= 1e-5


def test_causal_by_perturbing_the_future():
  d = make(37, 6, 2)
  later = {n: d[n].at[:, 20:].set(5.0 * d[n][:, 20:]) for n in ("q", "k", "v")}
  fn = functools.partial(jit_static(sla_attention), proj=d["proj"], block_size=4, ratio=0.3)
  out, out_later = fn(d["q"], d["k"], d["v"]), fn(later["q"], later["k"], later["v"])
  assert np.array_equal(out[:, :20], out_later[:, :20])
  assert not np.allclose(out[:, 20:], out_later[:, 20:])


def test_reference_weights_cover_kept_blocks_only():
  d = make(16, 6, 2)
  reference = functools.partial(sla_attention_reference, block_size=4, ratio=0.25,
                                return_weights=True)
  _, scores, weights = jit(reference)(d["q"], d["k"], d["v"], proj=d["proj"])
  assert scores.shape == weights.shape == (B, N, 16, 16)
  np.testing.assert_allclose(np.sum(weights, axis=-1), 1.0, rtol=1e-6)
  # ratio 0.25 of 4 blocks keeps one: the diagonal block, so every weight lies in it.
  blocks = np.arange(16) // 4
  assert not np.asarray(weights)[..., blocks[:, None] != blocks[None, :]].any()


def test_in_transformer_learns_proj():
  config = TransformerConfig(vocab_size=32, context_len=16, num_layers=1, d_model=32,
                             num_heads=4, num_kv_heads=2, attention="sla",
                             attention_params={"block_size": 4, "ratio": 0.25})
  model = Transformer(config, rngs=nnx.Rngs(0))
  proj = model.blocks[0].attn.variant_params["proj"]
  assert proj.shape == (4, 8, 8) and not np.asarray(proj[...]).any()
  tokens = jnp.arange(32).reshape(2, 16) % 32
  logits, grads = forward_and_grads(model, tokens)
  assert logits.shape == (2, 16, 32) and np.isfinite(logits).all()
  g = np.asarray(grads.blocks[0].attn.variant_params["proj"][...])
  assert np.isfinite(g).all() and np.abs(g).max() > 0


@pytest.mark.parametrize("fn", [sla_attention, sla_attention_reference],
                         ids=lambda f: f.__name__)
@pytest.mark.parametrize("kwargs,message", [
    ({"window": 3}, "window=3"),
    ({"segment_ids": jnp.zeros((B, 8), jnp.int32)}, r"segment_ids.shape=\(2, 8\)"),
    ({"sinks": jnp.zeros(N)}, r"sinks.shape=\(4,\)"),
    ({"ratio": 0.0}, "ratio=0.0"),
    ({"ratio": 1.5}, "ratio=1.5"),
    ({"negligible": 1.0}, "negligible=1.0"),
    ({"negligible": -0.1}, "negligible=-0.1"),
    ({"ratio": 0.6, "negligible": 0.5}, "ratio \\+ negligible must be at most 1"),
    ({"block_size": 0}, "block_size=0"),
    ({"proj": jnp.zeros((6, 5))}, r"proj.shape=\(6, 5\)"),
])
def test_validation(fn, kwargs, message):
  d = make(8, 6, 2)
  args = {"proj": d["proj"], **kwargs}
  with pytest.raises(ValueError, match=message):
    fn(d["q"], d["k"], d["v"], **args)


def test_causal_needs_equal_lengths():
  d = make(8, 6, 2, seq_k=9)
  with pytest.raises(ValueError, match="S == T"):
    sla_attention(d["q"], d["k"], d["v"], proj=d["proj"])

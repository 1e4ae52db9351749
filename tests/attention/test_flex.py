"""FlexAttention: the block-sparse chunked form against the dense reference and against softmax
attention (outputs and every gradient), block-mask classification and use, reuse under jit,
causality by gradient, empty rows and validation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import momentum_jax.attention as attn
from momentum_jax.attention.flex import (
    flex_attention, flex_attention_reference, flex_softmax_attention,
    flex_softmax_attention_reference,
)
from momentum_jax.attention.flex_mods import (
    alibi_score, and_masks, causal_mask, segment_mask, sliding_window_mask, softcap_score,
    streaming_llm_mask,
)
from momentum_jax.core.block_mask import create_block_mask
from momentum_jax.core.block_mask import EMPTY, FULL, PARTIAL
from momentum_jax.experiments.bench import flex_attention as bench_flex_attention

B, N, K, H = 2, 4, 2, 24
BLOCK = 16
TOL = 1e-5

jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def make_inputs(seq, seed=0):
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  return normal(B, seq, N, H), normal(B, seq, K, H), normal(B, seq, K, H), normal(B, seq, N, H)


def segment_ids(seq):
  ids = np.zeros((B, seq), np.int32)
  ids[0, seq // 3:] = 1
  ids[1, seq // 2:] = 5
  return jnp.asarray(ids)


SLOPES = jnp.asarray([0.5, 0.25, 0.125, 0.0625], jnp.float32)

# name -> (mask_mod, score_mod) for a sequence length.
MODS = {
    "none": lambda seq: (None, None),
    "causal": lambda seq: (causal_mask, None),
    "window": lambda seq: (sliding_window_mask(20), None),
    "segments": lambda seq: (segment_mask(segment_ids(seq)), None),
    "causal_segments": lambda seq: (
        and_masks(causal_mask, segment_mask(segment_ids(seq))), None),
    "streaming_llm": lambda seq: (streaming_llm_mask(4, 10), None),
    "alibi": lambda seq: (causal_mask, alibi_score(SLOPES)),
    "softcap": lambda seq: (sliding_window_mask(24), softcap_score(2.0)),
}


def value_and_grads(fn, q, k, v, cotangent):
  loss = lambda q, k, v: jnp.sum(fn(q, k, v) * cotangent)
  return jit(jax.value_and_grad(lambda *a: (loss(*a), fn(*a)), argnums=(0, 1, 2),
                                has_aux=True))(q, k, v)


def assert_close(got, want):
  (_, out), grads = got
  (_, ref), grads_ref = want
  assert np.isfinite(out).all() and rel_err(out, ref) <= TOL, rel_err(out, ref)
  for name, g, g_ref in zip("qkv", grads, grads_ref):
    assert np.isfinite(g).all() and rel_err(g, g_ref) <= TOL, (name, rel_err(g, g_ref))


# Mods that softmax_attention_reference expresses too: its keyword arguments.
SOFTMAX_KWARGS = {"causal": {}, "window": {"window": 20}, "segments": {"causal": False},
                  "causal_segments": {}}


@pytest.mark.slow
@pytest.mark.parametrize("seq", [33, 70])
@pytest.mark.parametrize("name", sorted(MODS))
def test_matches_dense_and_softmax_references(name, seq):
  mask_mod, score_mod = MODS[name](seq)
  q, k, v, cotangent = make_inputs(seq)
  kwargs = dict(mask_mod=mask_mod, score_mod=score_mod)
  got = value_and_grads(functools.partial(flex_attention, block_q=BLOCK, block_k=BLOCK,
                                          **kwargs), q, k, v, cotangent)
  want = value_and_grads(functools.partial(flex_attention_reference, **kwargs),
                         q, k, v, cotangent)
  assert_close(got, want)
  if name in SOFTMAX_KWARGS:
    ids = segment_ids(seq) if "segments" in name else None
    want = value_and_grads(functools.partial(attn.softmax_attention_reference, segment_ids=ids,
                                             **SOFTMAX_KWARGS[name]), q, k, v, cotangent)
    assert_close(got, want)


def test_scale_and_block_shapes():
  q, k, v, cotangent = make_inputs(33, seed=1)
  kwargs = dict(mask_mod=causal_mask, scale=0.3)
  got = value_and_grads(functools.partial(flex_attention, block_q=8, block_k=32, **kwargs),
                        q, k, v, cotangent)
  want = value_and_grads(functools.partial(flex_attention_reference, **kwargs),
                         q, k, v, cotangent)
  assert_close(got, want)


def test_registered_flex_matches_softmax():
  variant = attn.get_attention("flex")
  assert variant.params == ("block_q", "block_k")
  q, k, v, cotangent = make_inputs(33, seed=2)
  ids = segment_ids(33)
  for kwargs in ({"segment_ids": ids}, {"window": 7}):
    got = value_and_grads(functools.partial(variant.fn, block_q=BLOCK, block_k=BLOCK, **kwargs),
                          q, k, v, cotangent)
    want = value_and_grads(functools.partial(attn.softmax_attention_reference, **kwargs),
                           q, k, v, cotangent)
    assert_close(got, want)
    ref = variant.reference(q, k, v, **kwargs)
    assert rel_err(ref, attn.softmax_attention_reference(q, k, v, **kwargs)) <= TOL


def test_alibi_slopes_gradient():
  q, k, v, cotangent = make_inputs(33, seed=3)

  def loss(fn, slopes):
    out = fn(q, k, v, mask_mod=causal_mask, score_mod=alibi_score(slopes))
    return jnp.sum(out * cotangent)

  fast = functools.partial(flex_attention, block_q=BLOCK, block_k=BLOCK)
  grad = jit(jax.grad(functools.partial(loss, fast)))(SLOPES)
  grad_ref = jit(jax.grad(functools.partial(loss, flex_attention_reference)))(SLOPES)
  assert np.any(grad_ref) and rel_err(grad, grad_ref) <= TOL


def test_causal_block_mask_classification_and_skipping():
  mask = create_block_mask(causal_mask, None, None, 64, 64, BLOCK, BLOCK)
  kind = np.asarray(mask.kind_BxNxQxK[0, 0])
  blocks = np.arange(4)
  expected = np.where(blocks[:, None] > blocks[None], FULL,
                      np.where(blocks[:, None] == blocks[None], PARTIAL, EMPTY))
  np.testing.assert_array_equal(kind, expected)
  np.testing.assert_array_equal(mask.kv_count_BxNxQ[0, 0], [1, 2, 3, 4])
  np.testing.assert_array_equal(mask.kv_index_BxNxQxM[0, 0, 2], [0, 1, 2, 0])
  assert int(np.sum(mask.kv_count_BxNxQ)) == 10 < kind.size  # 10 of 16 tiles processed
  # Padding: T = 70 gives 5 query and 5 key blocks; the last key block is partial.
  mask = create_block_mask(causal_mask, None, None, 70, 70, BLOCK, BLOCK)
  kind = np.asarray(mask.kind_BxNxQxK[0, 0])
  assert kind.shape == (5, 5) and kind[4, 3] == FULL and kind[4, 4] == PARTIAL
  # Window 16 on 16-blocks: two partial tiles per row, everything else empty.
  mask = create_block_mask(sliding_window_mask(16), None, None, 64, 64, BLOCK, BLOCK)
  assert mask.kv_index_BxNxQxM.shape[-1] == 2 and not np.any(mask.kind_BxNxQxK == FULL)


def test_block_mask_per_batch_and_head():
  ids = segment_ids(70)
  by_head = lambda b, n, t, s: (s <= t) & (t - s < 8 * (n + 1))
  mask_mod = and_masks(segment_mask(ids), by_head)
  mask = create_block_mask(mask_mod, B, N, 70, 70, BLOCK, BLOCK)
  assert mask.shape == (B, N, 70, 70)
  q, k, v, cotangent = make_inputs(70, seed=4)
  got = value_and_grads(functools.partial(flex_attention, block_mask=mask), q, k, v,
                        cotangent)
  want = value_and_grads(functools.partial(flex_attention_reference, mask_mod=mask_mod),
                         q, k, v, cotangent)
  assert_close(got, want)


def test_block_mask_reused_under_jit_without_recompiling():
  mask = create_block_mask(causal_mask, None, None, 33, 33, BLOCK, BLOCK)
  fn = jit(lambda q, k, v, mask: flex_attention(q, k, v, block_mask=mask))
  outs = [fn(*make_inputs(33, seed=seed)[:3], mask) for seed in range(3)]
  again = create_block_mask(causal_mask, None, None, 33, 33, BLOCK, BLOCK)
  outs.append(fn(*make_inputs(33)[:3], again))
  assert fn._cache_size() == 1
  np.testing.assert_array_equal(outs[0], outs[3])


def test_block_mask_built_under_jit_is_concrete_and_skips_tiles():
  widths = []

  @jax.jit
  def attend(q_BxTxNxH):
    block_mask = create_block_mask(sliding_window_mask(64), None, None, 512, 512, 64, 64)
    widths.append(block_mask.kv_index_BxNxQxM)
    return flex_attention(q_BxTxNxH, q_BxTxNxH, q_BxTxNxH, block_mask=block_mask)

  attend(jnp.ones((1, 512, 2, 8)))
  (kv_index_BxNxQxM,) = widths
  assert not isinstance(kv_index_BxNxQxM, jax.core.Tracer)
  # A 64-token window touches at most 2 of the 8 key blocks per query block.
  assert kv_index_BxNxQxM.shape == (1, 1, 8, 2)


def test_causal_by_gradient():
  q, k, v, _ = make_inputs(21)
  fn = functools.partial(flex_attention, mask_mod=causal_mask, block_q=8, block_k=4)
  per_t = lambda q, k, v: jnp.sum(fn(q, k, v), axis=(0, 2, 3))
  for jac_TxBxSxKxH in jit(jax.jacrev(per_t, argnums=(0, 1, 2)))(q, k, v):
    jac = np.asarray(jac_TxBxSxKxH)
    assert jac.any()
    for t in range(21):
      assert not jac[t, :, t + 1:].any(), t


def test_rows_without_visible_keys_are_zero():
  q, k, v, cotangent = make_inputs(33)
  strictly_past = lambda b, n, t, s: s < t  # row 0 sees nothing
  fn = functools.partial(flex_attention, mask_mod=strictly_past, block_q=BLOCK,
                         block_k=BLOCK)
  (_, out), grads = value_and_grads(fn, q, k, v, cotangent)
  assert not np.any(out[:, 0]) and np.isfinite(out).all()
  assert all(np.isfinite(g).all() for g in grads) and not np.any(grads[0][:, 0])
  ref = flex_attention_reference(q, k, v, mask_mod=strictly_past)
  assert rel_err(out, ref) <= TOL


Q = jnp.ones((2, 33, 4, 24))
KV = jnp.ones((2, 33, 2, 24))


@pytest.mark.parametrize("kwargs,message", [
    ({"block_q": 0}, "block_q=0"),
    ({"block_k": -3}, "block_k=-3"),
    ({"block_q": 2.0}, "block_q=2.0"),
    ({"block_mask": create_block_mask(causal_mask, None, None, 32, 33, 16, 16)},
     r"block_mask.shape=\(1, 1, 32, 33\)"),
    ({"block_mask": create_block_mask(causal_mask, 3, None, 33, 33, 16, 16)},
     r"block_mask.shape=\(3, 1, 33, 33\)"),
    ({"block_mask": create_block_mask(causal_mask, None, None, 33, 33, 16, 16),
      "block_q": 8}, "block_q=8"),
    ({"block_mask": create_block_mask(causal_mask, None, None, 33, 33, 16, 16),
      "mask_mod": sliding_window_mask(3)}, "mask_mod"),
    ({"block_mask": "causal"}, "block_mask"),
])
@pytest.mark.parametrize("fn", [flex_attention, flex_attention_reference],
                         ids=lambda f: f.__name__)
def test_bad_inputs_raise(fn, kwargs, message):
  with pytest.raises(ValueError, match=message):
    fn(Q, KV, KV, **kwargs)


def test_bad_mod_and_registry_arguments_raise():
  with pytest.raises(ValueError, match="block_k=0"):
    create_block_mask(causal_mask, None, None, 8, 8, 4, 0)
  with pytest.raises(ValueError, match="N=0"):
    create_block_mask(causal_mask, None, 0, 8, 8)
  with pytest.raises(ValueError, match="window=0"):
    sliding_window_mask(0)
  with pytest.raises(ValueError, match="cap=0"):
    softcap_score(0)
  for fn in (flex_softmax_attention, flex_softmax_attention_reference):
    with pytest.raises(ValueError, match=r"bias.shape=\(33, 33\)"):
      fn(Q, KV, KV, bias=jnp.zeros((33, 33)))
    with pytest.raises(ValueError, match=r"sinks.shape=\(4,\)"):
      fn(Q, KV, KV, sinks=jnp.zeros(4))


@pytest.mark.slow
def test_bench_flex_attention_tiny(capsys):
  results = bench_flex_attention.main([
      "--seq-len", "32", "--window-seq-len", "64", "--memory-seq-len", "32", "--window", "8",
      "--heads", "2", "--head-dim", "8", "--block", "8", "--repeats", "1"])
  assert results["causal"]["flex causal"] > 0 and results["causal"]["dense/flex"] > 0
  assert results["window"]["flex window"] > 0
  assert results["memory"]["flex window long"] > 0 and results["memory"]["flex/dense"] > 0
  assert "dense/flex" in capsys.readouterr().out

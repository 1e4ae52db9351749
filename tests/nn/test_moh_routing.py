"""MoH compute skipping: routed heads computed only at the rows of the tokens that chose them.

The routed form against the dense-gated form (softmax reference times the gates) on outputs and
gradients (q, k, v, gates) at an odd T with segments, sinks, GQA whose groups straddle the shared
heads, a window and no causal mask; with tokens over capacity against the dense form under the
kept gates; the slots and capacity by hand; the model (learned-γ momentum) against
moh_capacity_factor=None including the router's gradients, its dropped share, its dense fallback
when hooks need every head, causality under drops, and the config's errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from momentum_jax.attention.softmax import softmax_attention_reference
from momentum_jax.nn import Transformer, TransformerConfig
from momentum_jax.nn.moh import (
    dropped_fraction, head_capacity, head_slots, kept_gates, routed_head_attention)

B, T, N, K, H, E, TOP_K = 2, 13, 6, 3, 4, 5, 2
SEGMENTS = jnp.asarray([[0] * 5 + [1] * 8, [0] * 9 + [2] * 4])


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  top_BxTxK = jax.lax.top_k(normal(B, T, E), TOP_K)[1]
  chosen_BxTxE = jnp.sum(jax.nn.one_hot(top_BxTxK, E), axis=-2) > 0
  gates = jnp.asarray(rng.random((B, T, N)) + 0.1, jnp.float32)
  gates = kept_gates(gates, chosen_BxTxE)  # unchosen routed heads gated to zero, as the router
  return normal(B, T, N, H), normal(B, T, K, H), normal(B, T, K, H), gates, chosen_BxTxE, normal(
      B, T, N, H)


@jax.jit(static_argnums=0)
def _values_and_grads(fn, q, k, v, gates, cotangent):
  out, vjp = jax.vjp(fn, q, k, v, gates)
  return out, vjp(cotangent)


SEGMENTS_SINKS = {"segment_ids": SEGMENTS, "sinks": jnp.linspace(-1.0, 1.0, N)}


@pytest.mark.parametrize("options, capacity", [
    ({**SEGMENTS_SINKS, "causal": False}, T), ({**SEGMENTS_SINKS, "window": 4}, 4)],
    ids=["bidirectional_segments_sinks", "window_segments_sinks_drops"])
def test_routed_heads_equal_the_dense_gated_form(options, capacity):
  q, k, v, gates, chosen, cotangent = _inputs()
  slots = head_slots(chosen, capacity)
  assert (float(dropped_fraction(chosen, slots.kept_BxTxE)) == 0) == (capacity == T)
  routed = jax.tree_util.Partial(
      lambda q, k, v, g: routed_head_attention(q, k, v, g, slots, **options))
  # The dense form: every head computed, multiplied by the gates of the kept assignments (all
  # the router's gates when nothing is dropped).
  dense = jax.tree_util.Partial(
      lambda q, k, v, g: softmax_attention_reference(q, k, v, **options) * kept_gates(
          g, slots.kept_BxTxE)[..., None])
  got, got_grads = _values_and_grads(routed, q, k, v, gates, cotangent)
  want, want_grads = _values_and_grads(dense, q, k, v, gates, cotangent)
  np.testing.assert_allclose(got, want, atol=2e-6)
  for name, a, b in zip("qkvg", got_grads, want_grads):
    np.testing.assert_allclose(a, b, atol=5e-6, err_msg=name)
  if capacity < T:  # dropped assignments are zero; and the gradient reaches no dropped row
    dropped = np.asarray(chosen & ~slots.kept_BxTxE)
    assert dropped.any()
    assert np.all(np.asarray(got)[:, :, N - E:][dropped] == 0)


def test_head_slots_keep_the_first_tokens_by_position():
  chosen = jnp.asarray([[[1, 0], [1, 1], [0, 1], [1, 1], [1, 0]]], bool)  # [1, 5, 2]
  slots = head_slots(chosen, 2)
  np.testing.assert_array_equal(slots.kept_BxTxE[0], [[1, 0], [1, 1], [0, 1], [0, 0], [0, 0]])
  np.testing.assert_array_equal(slots.index_BxExC[0, :, :2], [[0, 1], [1, 2]])
  np.testing.assert_array_equal(slots.valid_BxExC[0], [[1, 1], [1, 1]])
  np.testing.assert_allclose(dropped_fraction(chosen, slots.kept_BxTxE), 3 / 7)
  few = head_slots(jnp.asarray([[[0], [1], [0]]], bool), 2)
  np.testing.assert_array_equal(few.valid_BxExC[0, 0], [True, False])
  assert int(few.index_BxExC[0, 0, 0]) == 1 and int(few.index_BxExC[0, 0, 1]) != 1
  with pytest.raises(ValueError, match=r"capacity must be in \[1, T=3\], got capacity=4"):
    head_slots(few.kept_BxTxE, 4)


def test_head_capacity():
  assert head_capacity(4096, 2, 6, 1.25) == 1707  # ⌈1.25 · 4096 · 2 / 6⌉
  assert head_capacity(13, 2, 5, 1.0) == 6
  assert head_capacity(13, 2, 5, 10.0) == 13  # never more than T
  for bad in (0.0, -1.0, float("nan"), float("inf"), True):
    with pytest.raises(ValueError, match="capacity_factor must be a finite number > 0"):
      head_capacity(13, 2, 5, bad)


def test_routed_head_attention_names_bad_shapes():
  q, k, v, gates, chosen, _ = _inputs()
  slots = head_slots(chosen, T)
  with pytest.raises(ValueError, match=r"gates must be \[B, T, N\]"):
    routed_head_attention(q, k, v, gates[..., 1:], slots)
  with pytest.raises(ValueError, match="k and v must be"):
    routed_head_attention(q, k[:, :-1], v, gates, slots)
  with pytest.raises(ValueError, match="window=3 needs causal=True"):
    routed_head_attention(q, k, v, gates, slots, causal=False, window=3)


# --- the model ------------------------------------------------------------------------------

CONFIG = TransformerConfig(vocab_size=23, context_len=T, d_model=24, num_heads=N, num_kv_heads=K,
                           head_dim=H, moh=True, moh_shared_heads=N - E, moh_top_k=TOP_K,
                           learnable_sinks=True)
TOKENS = jax.random.randint(jax.random.key(0), (B, T), 0, CONFIG.vocab_size)


def _model(factor, **changes):
  return Transformer(dataclasses.replace(CONFIG, moh_capacity_factor=factor, **changes),
                     rngs=nnx.Rngs(0))


def _logits_aux_and_grads(model, tokens=TOKENS, hooks=()):
  """Logits, auxiliary losses (none with hooks) and the gradients of Σ logits ⊙ cotangent."""
  cotangent = jax.random.normal(jax.random.key(1), (B, T, CONFIG.vocab_size))

  def loss(model, tokens):
    if hooks:
      logits, aux = model.run_with_hooks(tokens, hooks, segment_ids_BxT=SEGMENTS), {}
    else:
      logits, aux = model.logits_and_aux_loss(tokens, segment_ids_BxT=SEGMENTS)
    return jnp.sum(logits * cotangent), (logits, aux)

  with jax.default_matmul_precision("highest"):
    (_, (logits, aux)), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(model, tokens)
  return logits, aux, grads


def _assert_trees_close(got, want, atol):
  for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(got),
                               jax.tree_util.tree_leaves_with_path(want), strict=True):
    np.testing.assert_allclose(a, b, atol=atol, err_msg=jax.tree_util.keystr(path))


def test_model_without_drops_equals_the_dense_form_with_the_router_gradients():
  # Momentum attention with γ learned: the routed heads attend on the sheared q and k.
  changes = {"attention": "momentum_learned", "attention_init": {"gamma": 0.4}}
  dense_logits, dense_aux, dense_grads = _logits_aux_and_grads(_model(None, **changes))
  logits, aux, grads = _logits_aux_and_grads(_model(10.0, **changes))
  assert "moh_dropped" not in dense_aux
  assert float(aux["moh_dropped"]) == 0.0 and float(aux["blocks.0.attn.moh_dropped"]) == 0.0
  np.testing.assert_allclose(logits, dense_logits, atol=2e-5)
  _assert_trees_close(grads, dense_grads, atol=2e-5)
  assert float(jnp.abs(grads["blocks"][0]["attn"]["moh"]["routed"]["kernel"][...]).sum()) > 0


def test_model_with_drops_equals_its_dense_fallback_reports_the_share_and_stays_causal():
  model = _model(0.5)
  assert head_capacity(T, TOP_K, E, 0.5) == 3  # of the 13 · 2 / 5 ≈ 5.2 tokens per head
  logits, aux, grads = _logits_aux_and_grads(model)
  assert 0.3 < float(aux["moh_dropped"]) < 0.7
  # A hook on z needs every head at every row: the layer runs the dense form under the same
  # kept gates, which gives the same logits and gradients.
  z_hook = [("blocks.0.attn.hook_z", lambda z, name: None)]
  dense_logits, _, dense_grads = _logits_aux_and_grads(model, hooks=z_hook)
  np.testing.assert_allclose(logits, dense_logits, atol=2e-5)
  _assert_trees_close(grads, dense_grads, atol=2e-5)
  # Priority by position: later tokens never evict earlier ones, so the model stays causal.
  later = TOKENS.at[:, 8:].set((TOKENS[:, 8:] + 1) % CONFIG.vocab_size)
  later_logits, later_aux, _ = _logits_aux_and_grads(model, later)
  assert float(later_aux["moh_dropped"]) > 0
  np.testing.assert_allclose(later_logits[:, :8], logits[:, :8], atol=1e-5)
  assert not np.allclose(later_logits[:, 8:], logits[:, 8:], atol=1e-3)


@pytest.mark.parametrize("changes, message", [
    ({"moh": False}, "moh_capacity_factor=1.25 routes MoH heads: it needs moh=True"),
    ({"attention": "linear"}, "attention='linear' is not: it supports"),
    ({"moh_capacity_factor": 0.0}, "moh_capacity_factor must be None or a finite float > 0"),
    ({"moh_capacity_factor": float("nan")}, "moh_capacity_factor must be None or a finite"),
])
def test_config_names_a_bad_capacity_option(changes, message):
  with pytest.raises(ValueError, match=message):
    dataclasses.replace(CONFIG, **{"moh_capacity_factor": 1.25, **changes})

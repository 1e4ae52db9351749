"""Flux routing at inference: each layer decides once per sequence from the prompt and decoding
computes only the chosen branch (a max_len cache or a window ring, the prefill in window chunks);
prefill and single-token steps equal the full pass whose router took the same decisions, on
outputs and gradients, for batches that agree and disagree, with left-padded prompts, sinks and
grouped kv heads; the decision is the full pass's at the prompt's last row."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from momentum_jax.attention.decoding import DecodeContext, init_kv_cache
from momentum_jax.attention.registry import AttentionDims
from momentum_jax.attention.softmax import attend_written
from momentum_jax.nn import Transformer, TransformerConfig, decode, decoding_form, init_cache
from momentum_jax.nn.flux_router import FluxCache, prefix_mean

CONFIG = TransformerConfig(vocab_size=37, context_len=24, num_layers=2, d_model=32, num_heads=4,
                           num_kv_heads=2, mlp_dim=48, attention="softmax", flux_router=True,
                           flux_window=4)
B, T, PREFILL = 3, 13, 9  # the prefill is 1 + 2 chunks of the window
# Row 0: a prompt of 5 after 4 pads; row 1: no pads; row 2: 2 pads, then two documents.
SEGMENTS = jnp.asarray([[0] * 4 + [1] * 9, [1] * 13, [0] * 2 + [1] * 3 + [2] * 8])
# [layer, sequence]: sparse; layer 0's batch agrees, layer 1's does not.
MIXED = np.array([[True, True, True], [False, True, False]])


def _model(**changes):
  model = Transformer(dataclasses.replace(CONFIG, **changes), rngs=nnx.Rngs(0))
  model.eval()
  return model


def _forced(sparse_LxB):
  """Hooks that make layer l's router choose ``sparse_LxB[l, b]`` at every row of sequence b."""
  def hook(layer):
    return lambda choice_BxTx2, name: jnp.broadcast_to(
        jax.nn.one_hot(jnp.asarray(sparse_LxB[layer], jnp.int32), 2)[:, None], choice_BxTx2.shape)
  return [(f"blocks.{l}.attn.hook_router", hook(l)) for l in range(len(sparse_LxB))]


@nnx.jit(static_argnums=(4,))
def _step(model, tokens, cache, ids, sparse_LxB):
  return model.run_with_hooks(tokens, _forced(np.asarray(sparse_LxB)), segment_ids_BxT=ids,
                              decode_state=cache)


@nnx.jit(static_argnums=(3,))
def _full_pass(model, tokens, ids, sparse_LxB):
  """The training form in evaluation mode with the decisions forced at every row."""
  return model.run_with_hooks(tokens, _forced(np.asarray(sparse_LxB)), segment_ids_BxT=ids)


def _key(sparse_LxB):
  return tuple(map(tuple, np.asarray(sparse_LxB).tolist()))


def _decode_in_steps(model, tokens, sparse_LxB, segment_ids):
  cache = init_cache(model, B, T, segments=True)
  key = _key(sparse_LxB)
  pieces, start = [], 0
  for stop in [PREFILL, *range(PREFILL + 1, T + 1)]:
    logits, cache = _step(model, tokens[:, start:stop], cache, segment_ids[:, start:stop], key)
    pieces.append(logits)
    start = stop
  return jnp.concatenate(pieces, axis=1), cache


def _assert_close(got, want, atol=2e-5):
  scale = float(jnp.max(jnp.abs(want)))
  np.testing.assert_allclose(got / scale, want / scale, rtol=0, atol=atol)


def test_prefill_and_steps_equal_the_full_pass_with_the_same_decisions():
  # Sinks, one kv head, scanned layers (the unscanned model is the decision test's).
  sparse_LxB = MIXED
  model = _model(learnable_sinks=True, num_kv_heads=1, scan_layers=True)
  nnx.update(model, jax.tree_util.tree_map_with_path(
      lambda path, x: jax.random.normal(jax.random.key(9), x.shape) if "sinks" in str(path)
      else x, nnx.state(model)))
  assert decoding_form(model.config) == "flux"
  tokens = jax.random.randint(jax.random.key(1), (B, T), 0, CONFIG.vocab_size)
  with jax.default_matmul_precision("highest"):
    want = _full_pass(model, tokens, SEGMENTS, _key(sparse_LxB))
    got, cache = _decode_in_steps(model, tokens, sparse_LxB, SEGMENTS)
  _assert_close(got, want)
  state = cache.layers  # the layers' states stacked
  assert isinstance(state, FluxCache)
  np.testing.assert_array_equal(state.sparse, sparse_LxB)
  assert state.ring.k.shape[2] == CONFIG.flux_window and state.full.k.shape[2] == T


@pytest.mark.slow
def test_the_prefill_gradient_equals_the_full_pass_gradient():
  model = _model(num_layers=1)  # sequences that disagree: the per-sequence branches
  tokens = jax.random.randint(jax.random.key(2), (B, PREFILL), 0, CONFIG.vocab_size)
  ids = SEGMENTS[:, :PREFILL]
  weights = jax.random.normal(jax.random.key(3), (B, PREFILL, CONFIG.vocab_size))

  def loss(model, cache):
    hooks = _forced(MIXED[1:])
    if cache is None:
      logits = model.run_with_hooks(tokens, hooks, segment_ids_BxT=ids)
    else:
      logits, _ = model.run_with_hooks(tokens, hooks, segment_ids_BxT=ids, decode_state=cache)
    return jnp.sum(weights * logits)

  with jax.default_matmul_precision("highest"):
    want = nnx.jit(nnx.grad(loss))(model, None)
    got = nnx.jit(nnx.grad(loss))(model, init_cache(model, B, T, segments=True))
  for (path, g), (_, w) in zip(jax.tree_util.tree_leaves_with_path(got),
                               jax.tree_util.tree_leaves_with_path(want)):
    if float(jnp.max(jnp.abs(w))):
      _assert_close(g, w, atol=1e-4)
    else:  # the router's: the forced choice takes no gradient
      np.testing.assert_array_equal(g, w, err_msg=str(path))


@nnx.jit
def _captured(model, tokens, ids):
  names = lambda name: name.endswith(("hook_router", "blocks.0.hook_resid_pre"))
  return model.run_with_cache(tokens, segment_ids_BxT=ids, names_filter=names)[1]


def test_the_decision_is_the_full_pass_choice_at_the_last_prompt_row_and_is_kept():
  model = _model()
  tokens = jax.random.randint(jax.random.key(4), (B, T), 0, CONFIG.vocab_size)
  # Layer 0's boundary between the sequences' router margins at the last prompt row (the
  # whole-prompt mean of its last segment), so that they disagree.
  attn = model.blocks[0].attn
  x_BxTxD = model.blocks[0].attn_norm(_captured(model, tokens, SEGMENTS)["blocks.0.hook_resid_pre"])
  logits_Bx2 = attn.flux.proj(prefix_mean(x_BxTxD, SEGMENTS))[:, PREFILL - 1]
  margin = float(jnp.median(logits_Bx2[:, 1] - logits_Bx2[:, 0]))
  attn.flux.proj.bias[...] = attn.flux.proj.bias[...].at[1].add(1e-4 - margin)
  # Layer 1 full for all: the batch agrees.
  model.blocks[1].attn.flux.proj.bias[...] = jnp.asarray([0.0, -1e4])
  seen = _captured(model, tokens, SEGMENTS)
  step = nnx.jit(decode)
  cache = init_cache(model, B, T, segments=True)
  pieces, start = [], 0
  with jax.default_matmul_precision("highest"):
    for stop in [PREFILL, *range(PREFILL + 1, T + 1)]:
      logits, cache = step(model, tokens[:, start:stop], cache,
                           segment_ids_BxT=SEGMENTS[:, start:stop])
      pieces.append(logits)
      start = stop
  decided_LxB = np.stack([np.asarray(state.sparse) for state in cache.layers])
  for layer in range(CONFIG.num_layers):
    router_BxTx2 = seen[f"blocks.{layer}.attn.hook_router"]
    np.testing.assert_array_equal(decided_LxB[layer], router_BxTx2[:, PREFILL - 1, 1] > 0.5)
  assert 0 < decided_LxB[0].sum() < B and not decided_LxB[1].any()
  with jax.default_matmul_precision("highest"):
    want = _full_pass(model, tokens, SEGMENTS, _key(decided_LxB))
  _assert_close(jnp.concatenate(pieces, axis=1), want)


def test_attend_written_names_what_does_not_fit():
  dims = AttentionDims(4, 2, 8, 16)
  cache = init_kv_cache(2, 6, dims)
  with pytest.raises(ValueError, match=r"queries \(2, 3, 3, 8\) do not fit the cache"):
    attend_written(jnp.zeros((2, 3, 3, 8)), cache, DecodeContext(jnp.int32(0)))
  with pytest.raises(ValueError, match="T=3 rows after length=4 pass the cache end max_len=6"):
    attend_written(jnp.zeros((2, 3, 4, 8)), cache, DecodeContext(jnp.int32(4)))

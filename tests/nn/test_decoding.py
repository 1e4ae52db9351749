"""Transformer decoding: for every causal registered variant, a prefill then single tokens give the
logits of the full forward pass at every position, with left-padded prompts in their own segment
where the variant takes segment ids; the variants' own decoding steps also with a longer cache, a
sliding window (ring buffer), sinks, output gates and MoH; the flux router by recomputation; a
decoding step's hooks capture and edit what the full pass's do at its rows; the memory of each
form; jit compiles once per shape; bad inputs are named."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from momentum_jax.attention import available_attention, get_attention
from momentum_jax.attention.decoding import cache_bytes, kv_cache_bytes_per_token
from momentum_jax.nn import (
    RecomputeCache, Transformer, TransformerConfig, decode, decoding_form, init_cache)

BASE = TransformerConfig(vocab_size=37, context_len=24, num_layers=2, d_model=32, num_heads=4,
                         num_kv_heads=2, mlp_dim=64)
# The fixed values of the variants' required parameters (a new variant with a required
# parameter fails test_every_required_parameter_has_a_value until it is added here).
REQUIRED = {"momentum": {"gamma": 0.5}, "ema_value": {"eta": 0.5}}
CAUSAL = [n for n in available_attention() if get_attention(n).masking != "bidirectional"]
WITH_STEP = [n for n in CAUSAL if get_attention(n).decoding is not None]
B, T = 3, 13
# Row 0: a prompt of 9 after 4 pads; row 1: no pads; row 2: 2 pads, then two documents.
SEGMENTS = jnp.asarray([[0] * 4 + [1] * 9, [1] * 13, [0] * 2 + [1] * 6 + [2] * 5])


def _model(name, **changes):
  config = dataclasses.replace(BASE, attention=name, attention_params=REQUIRED.get(name, {}),
                               **changes)
  model = Transformer(config, rngs=nnx.Rngs(0))
  model.eval()  # frozen running statistics (affine attention's α_ma)
  return model


def _takes_segments(model, tokens):
  try:
    model(tokens, segment_ids_BxT=SEGMENTS)
  except ValueError as error:
    assert "segment_ids are not supported" in str(error)
    return False
  return True


def _decode_in_steps(model, tokens, max_len, prefill, segment_ids=None):
  step = nnx.jit(decode)
  cache = init_cache(model, tokens.shape[0], max_len, segments=segment_ids is not None)
  pieces, start = [], 0
  for stop in [prefill, *range(prefill + 1, tokens.shape[1] + 1)]:
    ids = None if segment_ids is None else segment_ids[:, start:stop]
    logits, cache = step(model, tokens[:, start:stop], cache, segment_ids_BxT=ids)
    pieces.append(logits)
    start = stop
  return jnp.concatenate(pieces, axis=1), cache


def _assert_close(got, full):
  scale = float(jnp.max(jnp.abs(full)))
  np.testing.assert_allclose(got / scale, full / scale, rtol=0, atol=1e-5)


def test_every_required_parameter_has_a_value():
  for name in CAUSAL:
    assert set(get_attention(name).required_params) <= set(REQUIRED.get(name, {})), name


@pytest.mark.slow
@pytest.mark.parametrize("name", CAUSAL)
def test_every_causal_variant_decodes_like_the_full_forward_pass(name):
  model = _model(name)
  tokens = jax.random.randint(jax.random.key(1), (B, T), 0, BASE.vocab_size)
  segments = SEGMENTS if _takes_segments(model, tokens) else None
  full = model(tokens, segment_ids_BxT=segments)
  # A cache longer than the text: nothing may depend on how many rows the cache holds.
  got, cache = _decode_in_steps(model, tokens, BASE.context_len, prefill=5, segment_ids=segments)
  _assert_close(got, full)
  assert int(cache.length) == T


@pytest.mark.parametrize("name", ["sigmoid", "deconstructed_fixed_qk"])
def test_length_dependent_variants_decode_alike_with_any_cache_and_padding(name):
  """Sigmoid attention's offset b is −log(context_len) in a model, not −log of the call's length;
  the fixed queries and keys are read at positions within the segment. So the full pass at a
  shorter length, decoding with a longer cache and a left-padded prompt all give the logits of
  the prompt alone."""
  model = _model(name)
  prompt = jax.random.randint(jax.random.key(6), (1, 9), 0, BASE.vocab_size)
  alone = model(prompt)
  got, _ = _decode_in_steps(model, prompt, BASE.context_len, prefill=4)
  _assert_close(got, alone)
  padded = jnp.concatenate([jnp.zeros((1, 4), prompt.dtype), prompt], axis=1)
  full = model(padded, segment_ids_BxT=SEGMENTS[:1])
  _assert_close(full[:, 4:], alone)
  got, _ = _decode_in_steps(model, padded, BASE.context_len, prefill=6,
                            segment_ids=SEGMENTS[:1])
  _assert_close(got[:, 4:], alone)


@pytest.mark.slow
@pytest.mark.parametrize("name", CAUSAL)
def test_a_left_padded_prompt_gives_the_logits_of_the_prompt_alone(name):
  model = _model(name)
  prompt = jax.random.randint(jax.random.key(7), (1, 9), 0, BASE.vocab_size)
  padded = jnp.concatenate([jnp.full((1, 4), 3, prompt.dtype), prompt], axis=1)
  if not _takes_segments(model, jnp.zeros((B, T), jnp.int32)):
    return
  with jax.default_matmul_precision("highest"):
    _assert_close(model(padded, segment_ids_BxT=SEGMENTS[:1])[:, 4:], model(prompt))


@pytest.mark.slow
@pytest.mark.parametrize("name", WITH_STEP)
@pytest.mark.parametrize("changes", [
    {}, {"window": 4}, {"learnable_sinks": True}, {"gate": "elementwise"},
    {"moh": True, "moh_shared_heads": 1, "moh_top_k": 2}, {"num_kv_heads": 1, "gate": "headwise"},
], ids=["longer_cache", "window", "sinks", "gate", "moh", "mqa_headwise_gate"])
def test_variant_steps_decode_with_every_layer_option(name, changes):
  model = _model(name, **changes)
  tokens = jax.random.randint(jax.random.key(2), (B, T), 0, BASE.vocab_size)
  if ("window" in changes or "learnable_sinks" in changes) and name in ("linear", "lightning"):
    with pytest.raises(ValueError, match="not supported"):
      model(tokens)
    return
  assert decoding_form(model.config) == "variant"
  with jax.default_matmul_precision("highest"):
    full = model(tokens, segment_ids_BxT=SEGMENTS)
    got, _ = _decode_in_steps(model, tokens, 19, prefill=7, segment_ids=SEGMENTS)
  _assert_close(got, full)


@pytest.mark.slow
def test_the_flux_router_decodes_by_recomputation():
  model = _model("momentum", flux_router=True, flux_window=3)
  assert decoding_form(model.config) == "recompute"
  tokens = jax.random.randint(jax.random.key(3), (B, T), 0, BASE.vocab_size)
  got, cache = _decode_in_steps(model, tokens, T, prefill=4, segment_ids=SEGMENTS)
  _assert_close(got, model(tokens, segment_ids_BxT=SEGMENTS))
  assert isinstance(cache.layers[0], RecomputeCache)


@pytest.mark.slow
@pytest.mark.parametrize("name, changes", [
    ("momentum", {"gate": "elementwise", "moh": True, "moh_shared_heads": 1, "moh_top_k": 2}),
    ("affine", {}),
    ("momentum", {"flux_router": True, "flux_window": 3}),
], ids=["variant_step_gate_moh", "recompute_affine", "recompute_flux"])
def test_a_decoding_step_captures_what_the_full_pass_captures_at_its_rows(name, changes):
  model = _model(name, **changes)
  tokens = jax.random.randint(jax.random.key(4), (B, T), 0, BASE.vocab_size)
  with jax.default_matmul_precision("highest"):
    _, full = model.run_with_cache(tokens)
    _, cache = decode(model, tokens[:, :5], init_cache(model, B, T))
    _, step, cache = model.run_with_cache(tokens[:, 5:7], decode_state=cache)
  # A variant's own step keeps no pattern and shears q and k itself; recomputation has all.
  unavailable = ("hook_attn_scores", "hook_pattern", "hook_q_shear", "hook_k_shear")
  if decoding_form(model.config) == "variant":
    expected = {n for n in full if not n.endswith(unavailable)}
  else:
    expected = set(full)
  assert set(step) == expected and any(n.endswith("hook_z") for n in step)
  for hook, got in step.items():
    rows = full[hook][:, :, 5:7] if hook.endswith(unavailable[:2]) else full[hook][:, 5:7]
    np.testing.assert_allclose(got, rows, rtol=1e-5, atol=1e-5, err_msg=hook)
  assert int(cache.length) == 7


def test_a_hook_edits_a_decoding_step_as_it_edits_the_full_pass():
  model = _model("momentum")
  tokens = jax.random.randint(jax.random.key(5), (B, T), 0, BASE.vocab_size)
  hooks = [("blocks.0.attn.hook_z", lambda z, name: 2 * z)]
  full = model.run_with_hooks(tokens, hooks)
  _, cache = model.run_with_hooks(tokens[:, :5], hooks, decode_state=init_cache(model, B, T))
  got, _ = model.run_with_hooks(tokens[:, 5:6], hooks, decode_state=cache)
  _assert_close(got, full[:, 5:6])
  with pytest.raises(ValueError, match="'blocks.0.attn.hook_pattern' cannot edit a decoding"):
    model.run_with_hooks(tokens[:, 5:6], [("blocks.0.attn.hook_pattern", lambda w, name: w)],
                         decode_state=cache)


@pytest.mark.slow
def test_positions_restart_in_each_segment_and_continue_across_steps():
  model = _model("softmax")
  cache = init_cache(model, 1, 10, segments=True)
  _, cache = decode(model, jnp.zeros((1, 4), jnp.int32), cache,
                    segment_ids_BxT=jnp.asarray([[0, 0, 1, 1]]))
  _, cache = decode(model, jnp.zeros((1, 2), jnp.int32), cache)
  _, cache = decode(model, jnp.zeros((1, 1), jnp.int32), cache, segment_ids_BxT=jnp.asarray([[5]]))
  np.testing.assert_array_equal(cache.positions[0, :7], [0, 1, 0, 1, 2, 3, 0])
  np.testing.assert_array_equal(cache.segment_ids[0, :7], [0, 0, 1, 1, 1, 1, 5])


def test_cache_memory_follows_the_form():
  per_row = kv_cache_bytes_per_token(BASE.num_kv_heads, BASE.head_dim, jnp.float32)
  assert per_row == 2 * BASE.num_kv_heads * BASE.head_dim * 4
  for max_len in (8, 20):
    softmax = init_cache(_model("softmax"), 2, max_len)
    assert cache_bytes(softmax.layers[0]) == 2 * max_len * per_row  # batch 2
    window = init_cache(_model("softmax", window=5), 2, max_len)
    assert cache_bytes(window.layers[0]) == 2 * min(5, max_len) * per_row
    linear = init_cache(_model("linear"), 2, max_len)
    h = BASE.head_dim
    assert cache_bytes(linear.layers[0]) == 2 * BASE.num_kv_heads * (h * h + h) * 4
    lightning = init_cache(_model("lightning"), 2, max_len)
    assert cache_bytes(lightning.layers[0]) == 2 * BASE.num_heads * h * h * 4
    momentum = init_cache(_model("momentum"), 2, max_len)
    last_rows = 2 * (BASE.num_heads + BASE.num_kv_heads) * h * 4
    assert cache_bytes(momentum.layers[0]) == 2 * max_len * per_row + last_rows
    assert len(softmax.layers) == BASE.num_layers


def test_one_token_steps_compile_once():
  model = _model("momentum")
  traces = []
  traced = nnx.jit(lambda m, t, c: (traces.append(1), decode(m, t, c))[1])
  _, cache = traced(model, jnp.zeros((2, 3), jnp.int32), init_cache(model, 2, 9))
  for _ in range(4):
    _, cache = traced(model, jnp.zeros((2, 1), jnp.int32), cache)
  assert len(traces) == 2


@pytest.mark.parametrize("name, changes, match", [
    ("agent", {"causal": False}, "got causal=False with attention='agent'"),
    ("softmax", {"causal": False}, "decoding needs a causal model, got causal=False"),
])
def test_configurations_without_a_causal_form_are_named(name, changes, match):
  config = dataclasses.replace(BASE, attention=name, **changes)
  with pytest.raises(ValueError, match=match):
    init_cache(Transformer(config, rngs=nnx.Rngs(0)), 2, 8)


def test_bad_cache_sizes_batches_and_segments_are_refused():
  model = _model("softmax")
  with pytest.raises(ValueError, match=r"max_len must be an int in \[1, context_len=24\]"):
    init_cache(model, 2, 25)
  with pytest.raises(ValueError, match="batch must be an int >= 1, got batch=0"):
    init_cache(model, 0, 8)
  cache = init_cache(model, 2, 8)
  with pytest.raises(ValueError, match=r"tokens must be \[batch=2, T\] like the cache"):
    decode(model, jnp.zeros((3, 1), jnp.int32), cache)
  with pytest.raises(ValueError, match=r"segments=True"):
    decode(model, jnp.zeros((2, 1), jnp.int32), cache, segment_ids_BxT=jnp.zeros((2, 1), int))
  _, cache = decode(model, jnp.zeros((2, 6), jnp.int32), cache)
  with pytest.raises(ValueError, match="passes the cache end max_len=8"):
    decode(model, jnp.zeros((2, 3), jnp.int32), cache)
  segmented = init_cache(model, 2, 8, segments=True)
  with pytest.raises(ValueError, match=r"segment_ids must be integers shaped like tokens \(2, 3\)"):
    decode(model, jnp.zeros((2, 3), jnp.int32), segmented,
           segment_ids_BxT=jnp.zeros((2, 2), jnp.int32))

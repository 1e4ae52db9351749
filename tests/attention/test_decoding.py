"""Every registered decoding step (K/V cache, ring buffer, recurrent state) equals its variant's
full causal forward pass at every row: a prefill then single rows, in chunks of awkward sizes,
with GQA, segment restarts, windows and sinks where the variant has them; the cache's size
formula; compile once per shape; the errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from momentum_jax.attention import AttentionDims, available_attention, get_attention
from momentum_jax.attention.decoding import (
    DecodeContext, cache_bytes, cache_capacity, init_kv_cache, kv_cache_bytes_per_token,
)
from momentum_jax.attention.softmax import softmax_decode

B, T, N, K, H, MAX_LEN = 3, 13, 4, 2, 8, 17
DIMS = AttentionDims(N, K, H, MAX_LEN)
SEGMENTS = jnp.asarray([[0] * 4 + [1] * 9, [1] * 13, [0] * 2 + [1] * 6 + [2] * 5])
PAIRS = jnp.asarray([[1.2, -0.4], [0.7, 0.5]])
# Parameter settings per variant with a decoding step; each runs against the variant's fn.
SETTINGS = {
    "softmax": [{}],
    "momentum": [{"gamma": 0.5}, {"gamma": jnp.asarray([0.25, 1.5]), "boundary": "replicate"},
                 {"gamma": jnp.asarray([0.5, 3.0]), "normalize_gain": True}],
    "momentum_learned": [{"gamma": jnp.asarray([0.7, 0.1])}],
    "kv_shift": [{"alpha": PAIRS, "beta": PAIRS[::-1]}],
    "ema_value": [{"eta": 0.7}],
    "linear": [{}, {"feature_map": "relu", "eps": 1e-3}],
    "lightning": [{}, {"decay": jnp.asarray([0.1, 0.3, 0.5, 0.9])}],
}
RECURRENT = ("linear", "lightning")  # no window, no sinks
CASES = [(name, i) for name, settings in SETTINGS.items() for i in range(len(settings))]
CHUNKS = [(5, 1, 1, 1, 1, 1, 1, 1, 1), (1,) * T, (7, 6), (T,)]


def _qkv(seed=0):
  q, k, v = jax.random.normal(jax.random.key(seed), (3, B, T, N, H))
  return q, k[:, :, :K], v[:, :, :K]


def _decode_in_chunks(step, state, q, k, v, chunks, segment_ids):
  outs, start = [], 0
  for size in chunks:
    context = DecodeContext(jnp.asarray(start, jnp.int32), segment_ids)
    rows = slice(start, start + size)
    out, state = step(q[:, rows], k[:, rows], v[:, rows], state, context)
    outs.append(out)
    start += size
  assert start == q.shape[1]
  return jnp.concatenate(outs, axis=1), state


def test_every_variant_with_a_decoding_step_has_settings():
  with_step = {n for n in available_attention() if get_attention(n).decoding is not None}
  assert with_step == set(SETTINGS)


@pytest.mark.slow
@pytest.mark.parametrize("name, setting", CASES)
@pytest.mark.parametrize("chunks", CHUNKS)
@pytest.mark.parametrize("segmented", [False, True])
def test_decoding_steps_equal_the_full_forward_pass(name, setting, chunks, segmented):
  variant, params = get_attention(name), SETTINGS[name][setting]
  q, k, v = _qkv(setting)
  segment_ids = SEGMENTS if segmented else None
  full = variant.fn(q, k, v, causal=True, segment_ids=segment_ids, **params)
  state = variant.decoding.init(B, MAX_LEN, DIMS, jnp.float32)
  step = jax.jit(lambda q, k, v, s, c: variant.decoding.step(q, k, v, s, c, window=None,
                                                             sinks=None, **params))
  out, _ = _decode_in_chunks(step, state, q, k, v, chunks, segment_ids)
  np.testing.assert_allclose(out, full, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in SETTINGS if n not in RECURRENT])
@pytest.mark.parametrize("window", [1, 3, 5])
@pytest.mark.parametrize("chunks", [(1,) * T, (7, 6), (T,)])
def test_a_window_decodes_through_a_ring_buffer_of_window_rows(name, window, chunks):
  variant, params = get_attention(name), SETTINGS[name][0]
  q, k, v = _qkv(4)
  sinks = jnp.asarray([0.5, -1.0, 2.0, 0.0])
  full = variant.fn(q, k, v, causal=True, window=window, segment_ids=SEGMENTS, sinks=sinks,
                    **params)
  state = variant.decoding.init(B, cache_capacity(MAX_LEN, window), DIMS, jnp.float32)
  kv = getattr(state, "kv", state)
  assert kv.k.shape[1] == window
  step = lambda q, k, v, s, c: variant.decoding.step(q, k, v, s, c, window=window, sinks=sinks,
                                                     **params)
  out, _ = _decode_in_chunks(step, state, q, k, v, chunks, SEGMENTS)
  np.testing.assert_allclose(out, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", RECURRENT)
def test_recurrent_states_do_not_grow_with_the_context(name):
  variant = get_attention(name)
  sizes = {cache_bytes(variant.decoding.init(B, max_len, DIMS, jnp.bfloat16))
           for max_len in (1, 64, 4096)}
  assert len(sizes) == 1
  with pytest.raises(ValueError, match="window"):
    variant.decoding.step(*_qkv()[:3], variant.decoding.init(B, 1, DIMS),
                          DecodeContext(jnp.asarray(0)), window=4, sinks=None)


def test_one_token_steps_compile_once():
  q, k, v = _qkv()
  step = jax.jit(lambda q, k, v, cache, context: softmax_decode(q, k, v, cache, context))
  _decode_in_chunks(step, init_kv_cache(B, MAX_LEN, DIMS), q, k, v, (1,) * T, None)
  assert step._cache_size() == 1


def test_cache_bytes_per_token_is_two_rows_of_kv_heads():
  cache = init_kv_cache(2, 10, DIMS, jnp.bfloat16)
  per_token = kv_cache_bytes_per_token(K, H, jnp.bfloat16)
  assert per_token == 2 * K * H * 2
  assert cache_bytes(cache) == 2 * 10 * per_token


def test_writing_past_the_cache_end_is_refused():
  q, k, v = _qkv()
  cache = init_kv_cache(B, 8, DIMS)
  _, cache = softmax_decode(q[:, :6], k[:, :6], v[:, :6], cache, DecodeContext(jnp.asarray(0)))
  with pytest.raises(ValueError, match=r"writing T=3 rows after length=6 passes the cache end "
                                       r"max_len=8"):
    softmax_decode(q[:, 6:9], k[:, 6:9], v[:, 6:9], cache, DecodeContext(jnp.asarray(6)))


def test_rows_that_do_not_fit_the_cache_are_refused():
  q, k, v = _qkv()
  with pytest.raises(ValueError, match=r"do not fit the cache \[B=2"):
    softmax_decode(q, k, v, init_kv_cache(2, MAX_LEN, DIMS), DecodeContext(jnp.asarray(0)))
  with pytest.raises(ValueError, match="capacity must be an int >= 1"):
    init_kv_cache(B, 0, DIMS)

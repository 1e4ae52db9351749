"""KV-cache decoding of softmax and momentum attention equals the full causal forward pass at
every position: a prefill then single tokens, in chunks of awkward sizes, with GQA and per-head
γ; the cache's size formula and its errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from momentum_jax.attention import momentum_attention, softmax_attention
from momentum_jax.attention.decoding import (
    init_kv_cache, init_momentum_cache, kv_cache_bytes_per_token, momentum_decode,
    softmax_decode)

B, T, N, K, H, MAX_LEN = 3, 13, 4, 2, 8, 17


def _qkv(seed=0):
  q, k, v = jax.random.normal(jax.random.key(seed), (3, B, T, N, H))
  return q, k[:, :, :K], v[:, :, :K]


def _decode_in_chunks(step, cache, q, k, v, chunks):
  outs, start = [], 0
  for size in chunks:
    out, cache = step(q[:, start:start + size], k[:, start:start + size],
                      v[:, start:start + size], cache)
    outs.append(out)
    start += size
  assert start == q.shape[1]
  return jnp.concatenate(outs, axis=1), cache


CHUNKS = [(5, 1, 1, 1, 1, 1, 1, 1, 1), (1,) * T, (7, 6), (T,)]


@pytest.mark.parametrize("chunks", CHUNKS)
def test_softmax_decoding_equals_the_full_forward_pass(chunks):
  q, k, v = _qkv()
  full = softmax_attention(q, k, v, causal=True)
  step = jax.jit(softmax_decode)
  out, cache = _decode_in_chunks(step, init_kv_cache(B, MAX_LEN, K, H), q, k, v, chunks)
  np.testing.assert_allclose(out, full, rtol=1e-5, atol=1e-5)
  assert cache.length.tolist() == [T] * B


@pytest.mark.parametrize("chunks", CHUNKS)
@pytest.mark.parametrize("boundary", ["zero", "replicate"])
@pytest.mark.parametrize("gamma", [0.5, jnp.asarray([0.25, 1.5])], ids=["scalar", "per_kv_head"])
def test_momentum_decoding_equals_the_full_forward_pass(chunks, boundary, gamma):
  q, k, v = _qkv(1)
  full = momentum_attention(q, k, v, gamma=gamma, boundary=boundary, rope=False, causal=True)
  step = jax.jit(lambda q, k, v, c: momentum_decode(q, k, v, c, gamma=gamma,
                                                    boundary=boundary))
  out, cache = _decode_in_chunks(step, init_momentum_cache(B, MAX_LEN, N, K, H), q, k, v,
                                 chunks)
  np.testing.assert_allclose(out, full, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(cache.last_k, k[:, -1])


def test_one_token_steps_compile_once():
  q, k, v = _qkv()
  step = jax.jit(lambda q, k, v, cache: softmax_decode(q, k, v, cache))  # its own compile cache
  _decode_in_chunks(step, init_kv_cache(B, MAX_LEN, K, H), q, k, v, (1,) * T)
  assert step._cache_size() == 1


def test_cache_bytes_per_token_is_two_rows_of_kv_heads():
  cache = init_kv_cache(2, 10, K, H, jnp.bfloat16)
  per_token = kv_cache_bytes_per_token(K, H, jnp.bfloat16)
  assert per_token == 2 * K * H * 2
  assert cache.k.nbytes + cache.v.nbytes == 2 * 10 * per_token


def test_writing_past_the_cache_end_is_refused():
  q, k, v = _qkv()
  cache = init_kv_cache(B, 8, K, H)
  _, cache = softmax_decode(q[:, :6], k[:, :6], v[:, :6], cache)
  with pytest.raises(ValueError, match=r"writing T=3 rows after length=6 passes the cache end "
                                       r"max_len=8"):
    softmax_decode(q[:, 6:9], k[:, 6:9], v[:, 6:9], cache)


def test_rows_that_do_not_fit_the_cache_are_refused():
  q, k, v = _qkv()
  with pytest.raises(ValueError, match=r"do not fit the cache \[B=2"):
    softmax_decode(q, k, v, init_kv_cache(2, MAX_LEN, K, H))
  with pytest.raises(ValueError, match="max_len must be an int >= 1"):
    init_kv_cache(B, 0, K, H)

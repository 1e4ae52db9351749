"""Decoding forms of softmax and momentum attention: a preallocated contiguous K/V cache.

A cache of ``max_len`` rows per sequence holds the keys and values of every token written so far
(for momentum attention the *sheared* keys k̂); ``length[b]`` counts the rows of sequence b.
Appending T new rows at ``length[b] .. length[b] + T − 1`` and attending their queries to rows
``s <= length[b] + t`` gives, row for row, causal attention over the whole sequence:

    out_t = Σ_{s ≤ L+t} softmax_s(scale · q̂_t · k̂_s) v_s,

so a prefill (T = prompt length) followed by single-token steps (T = 1) reproduces the full
forward pass. The cache is contiguous, not paged (vAttention, arXiv 2405.04437: contiguous
virtual memory keeps the attention kernel unchanged); it costs
``2 · K · H · itemsize`` bytes per token per layer (:func:`kv_cache_bytes_per_token`).

Momentum attention (Maitra, arXiv 2602.04902) shears q and k after RoPE,
x̂_t = x_t + γ (x_t − x_{t−1}); the shear of a new row needs the pre-shear row before it, so the
momentum cache also keeps the last pre-shear q and k of each sequence (``boundary="zero"``:
x_{−1} = 0; ``"replicate"``: x̂_0 = x_0). Only the k̂ rows are cached: a query is sheared when it
arrives and never needed again.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from momentum_jax.core.heads import repeat_kv
from momentum_jax.core.checks import check_boundary, is_concrete
from momentum_jax.core.shear import Gamma


class KVCache(NamedTuple):
  """A contiguous key/value cache of one attention layer.

  Attributes:
    k: ``[B, max_len, K, H]`` keys as the attention sees them (sheared for momentum).
    v: ``[B, max_len, K, H]`` values.
    length: ``[B]`` int32, rows written per sequence.
  """

  k: jax.Array
  v: jax.Array
  length: jax.Array


class MomentumCache(NamedTuple):
  """A :class:`KVCache` of sheared keys plus the last pre-shear q and k row per sequence.

  Attributes:
    kv: the cache of k̂ and v.
    last_q: ``[B, N, H]`` float32 pre-shear query of the last written row (zeros before any).
    last_k: ``[B, K, H]`` float32 pre-shear key of the last written row (zeros before any).
  """

  kv: KVCache
  last_q: jax.Array
  last_k: jax.Array


def init_kv_cache(batch: int, max_len: int, num_kv_heads: int, head_dim: int,
                  dtype: jnp.dtype = jnp.float32) -> KVCache:
  """An empty cache of ``max_len`` rows per sequence (``length`` 0)."""
  for name, value in (("batch", batch), ("max_len", max_len), ("num_kv_heads", num_kv_heads),
                      ("head_dim", head_dim)):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f"{name} must be an int >= 1, got {name}={value!r}")
  zeros = jnp.zeros((batch, max_len, num_kv_heads, head_dim), dtype)
  return KVCache(k=zeros, v=zeros, length=jnp.zeros((batch,), jnp.int32))


def init_momentum_cache(batch: int, max_len: int, num_heads: int, num_kv_heads: int,
                        head_dim: int, dtype: jnp.dtype = jnp.float32) -> MomentumCache:
  """An empty momentum cache: :func:`init_kv_cache` and zero last rows."""
  if not isinstance(num_heads, int) or num_heads < 1 or num_heads % max(num_kv_heads, 1):
    raise ValueError(f"num_heads must be a positive multiple of num_kv_heads={num_kv_heads}, "
                     f"got num_heads={num_heads!r}")
  kv = init_kv_cache(batch, max_len, num_kv_heads, head_dim, dtype)
  return MomentumCache(kv=kv, last_q=jnp.zeros((batch, num_heads, head_dim), jnp.float32),
                       last_k=jnp.zeros((batch, num_kv_heads, head_dim), jnp.float32))


def kv_cache_bytes_per_token(num_kv_heads: int, head_dim: int,
                             dtype: jnp.dtype = jnp.float32) -> int:
  """Bytes one token adds to one layer's cache: ``2 · K · H · itemsize`` (a key and a value)."""
  return 2 * num_kv_heads * head_dim * jnp.dtype(dtype).itemsize


def _check_append(cache: KVCache, k_BxTxKxH: jax.Array) -> None:
  batch, max_len, kv_heads, head_dim = cache.k.shape
  b, t, k, h = k_BxTxKxH.shape
  if (b, k, h) != (batch, kv_heads, head_dim):
    raise ValueError(f"the new keys [B={b}, T={t}, K={k}, H={h}] do not fit the cache "
                     f"[B={batch}, max_len={max_len}, K={kv_heads}, H={head_dim}]")
  if t > max_len:
    raise ValueError(f"T={t} new rows exceed the cache's max_len={max_len}")
  if is_concrete(cache.length):
    longest = int(jnp.max(cache.length)) + t
    if longest > max_len:
      raise ValueError(f"writing T={t} rows after length={int(jnp.max(cache.length))} passes "
                       f"the cache end max_len={max_len}")


def _write(cache: KVCache, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array) -> KVCache:
  """The cache with the new rows written at ``length[b]``; ``length`` advanced by T."""
  def write_one(buffer_SxKxH, rows_TxKxH, start):
    rows_TxKxH = rows_TxKxH.astype(buffer_SxKxH.dtype)
    return jax.lax.dynamic_update_slice_in_dim(buffer_SxKxH, rows_TxKxH, start, axis=0)
  k = jax.vmap(write_one)(cache.k, k_BxTxKxH, cache.length)
  v = jax.vmap(write_one)(cache.v, v_BxTxKxH, cache.length)
  return KVCache(k=k, v=v, length=cache.length + k_BxTxKxH.shape[1])


def softmax_decode(q_BxTxNxH: jax.Array, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array,
                   cache: KVCache, *, scale: float | None = None
                   ) -> tuple[jax.Array, KVCache]:
  """Appends T rows of k and v to ``cache`` and attends the T queries causally to the cache.

  Equal, row for row, to ``softmax_attention(q, k, v, causal=True)`` over the whole sequence
  written so far (computed in float32 over all ``max_len`` slots, the unwritten ones masked).

  Args:
    q_BxTxNxH: the new queries (after RoPE); N a multiple of the cache's K.
    k_BxTxKxH, v_BxTxKxH: the new keys and values.
    cache: the layer's cache.
    scale: logit scale, default ``1 / sqrt(H)``.

  Returns:
    ``(out [B, T, N, H] in q's dtype, the cache with the rows written)``.

  Raises:
    ValueError: the new rows do not fit the cache's batch, heads or head size, or (for a
      concrete ``length``) writing them passes ``max_len``.
  """
  _check_append(cache, k_BxTxKxH)
  start_B = cache.length
  cache = _write(cache, k_BxTxKxH, v_BxTxKxH)
  heads, head_dim = q_BxTxNxH.shape[2], q_BxTxNxH.shape[3]
  scale = head_dim**-0.5 if scale is None else scale
  k_BxSxNxH = repeat_kv(cache.k, heads).astype(jnp.float32)
  v_BxSxNxH = repeat_kv(cache.v, heads).astype(jnp.float32)
  logits_BxNxTxS = scale * jnp.einsum("btnh,bsnh->bnts", q_BxTxNxH.astype(jnp.float32),
                                      k_BxSxNxH, precision=jax.lax.Precision.HIGHEST)
  t, s = q_BxTxNxH.shape[1], cache.k.shape[1]
  query_at_BxT = start_B[:, None] + jnp.arange(t)[None, :]
  visible_Bx1xTxS = (jnp.arange(s)[None, None, :] <= query_at_BxT[:, :, None])[:, None]
  logits_BxNxTxS = jnp.where(visible_Bx1xTxS, logits_BxNxTxS, -jnp.inf)
  weights_BxNxTxS = jax.nn.softmax(logits_BxNxTxS, axis=-1)
  out_BxTxNxH = jnp.einsum("bnts,bsnh->btnh", weights_BxNxTxS, v_BxSxNxH,
                           precision=jax.lax.Precision.HIGHEST)
  return out_BxTxNxH.astype(q_BxTxNxH.dtype), cache


def _shear_rows(x_BxTxNxH: jax.Array, last_BxNxH: jax.Array, started_B: jax.Array,
                gamma_N: jax.Array, boundary: str) -> jax.Array:
  """x̂ of T new rows given the pre-shear row before them (``started`` False: none yet)."""
  x32 = x_BxTxNxH.astype(jnp.float32)
  before_BxNxH = last_BxNxH
  if boundary == "replicate":
    before_BxNxH = jnp.where(started_B[:, None, None], last_BxNxH, x32[:, 0])
  prev_BxTxNxH = jnp.concatenate([before_BxNxH[:, None], x32[:, :-1]], axis=1)
  gamma_1x1xNx1 = gamma_N[:, None] if gamma_N.ndim else gamma_N
  return x32 + gamma_1x1xNx1 * (x32 - prev_BxTxNxH)


def momentum_decode(q_BxTxNxH: jax.Array, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array,
                    cache: MomentumCache, *, gamma: Gamma, boundary: str = "zero",
                    scale: float | None = None) -> tuple[jax.Array, MomentumCache]:
  """Shears T new q and k rows with the cached last rows, appends k̂ and v, attends causally.

  Equal, row for row, to ``momentum_attention(q, k, v, gamma=gamma, boundary=boundary,
  rope=False, causal=True)`` over the whole sequence written so far.

  Args:
    q_BxTxNxH, k_BxTxKxH, v_BxTxKxH: the new rows (q and k after RoPE).
    cache: the layer's :class:`MomentumCache`.
    gamma: γ >= 0, a float, a scalar array or ``[K]`` (one per kv head).
    boundary: ``"zero"`` or ``"replicate"``, as in ``momentum_jax.core.momentum_shear``.
    scale: logit scale, default ``1 / sqrt(H)``.

  Returns:
    ``(out [B, T, N, H] in q's dtype, the cache with the rows written)``.
  """
  check_boundary(boundary)
  heads, kv_heads = q_BxTxNxH.shape[2], k_BxTxKxH.shape[2]
  gamma_K = jnp.asarray(gamma, jnp.float32)
  gamma_N = jnp.repeat(gamma_K, heads // kv_heads) if gamma_K.ndim else gamma_K
  started_B = cache.kv.length > 0
  q_hat = _shear_rows(q_BxTxNxH, cache.last_q, started_B, gamma_N, boundary)
  k_hat = _shear_rows(k_BxTxKxH, cache.last_k, started_B, gamma_K, boundary)
  out_BxTxNxH, kv = softmax_decode(q_hat.astype(q_BxTxNxH.dtype), k_hat.astype(k_BxTxKxH.dtype),
                                   v_BxTxKxH, cache.kv, scale=scale)
  return out_BxTxNxH, MomentumCache(kv=kv, last_q=q_BxTxNxH[:, -1].astype(jnp.float32),
                                    last_k=k_BxTxKxH[:, -1].astype(jnp.float32))

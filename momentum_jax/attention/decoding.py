"""Decoding forms of the softmax-family variants: a preallocated contiguous K/V cache.

A decode step receives T new rows of q, k and v per sequence, at positions ``length .. length +
T − 1`` (every sequence of a batch advances together; prompts of different lengths are
left-padded into their own segment), and returns the attention output of those rows, equal to
the full causal forward pass over the whole sequence at the same rows:

    out_t = Σ_{s visible to t} softmax_s(scale · q_t·k_s) v_s,

with s visible when s ≤ t, t − s < window (when there is one) and s and t share a segment id.
The cache holds ``capacity`` rows per sequence: ``max_len`` rows, or ``window`` rows for
sliding-window attention, a ring buffer whose slot c holds the newest row s ≡ c (mod window), so
its memory is O(window), not O(context). It is contiguous, not paged (vAttention, arXiv
2405.04437: contiguous memory keeps the attention kernel unchanged), and costs
``2 · K · H · itemsize`` bytes per cached row (:func:`kv_cache_bytes_per_token`); segment ids
and positions are kept once for all layers (:class:`DecodeContext`), not per layer.

The variants whose rows depend on the row before carry that row:

- momentum (Maitra, arXiv 2602.04902): the shear x̂_t = x_t + γ (x_t − x_{t−1}) of q and k after
  RoPE; the cache holds the sheared keys k̂ and the last pre-shear q and k of each sequence.
- KV-shift (Xu et al., arXiv 2411.19574): k̃_t = α₁ k_t + α₂ k_{t−1}, ṽ_t = β₁ v_t + β₂ v_{t−1};
  the cache holds k̃, ṽ and the last k and v.
- EMA of values (Dai et al., arXiv 2212.10559): softmax attention plus m_t with
  m_t = η (m_{t−1} + v_{t−1}); the cache holds the last m and v.

At a segment start the previous row is the boundary value (zero, or x_t itself for momentum's
``boundary="replicate"``), as in the full forms. Each decode step is registered on its variant
(``AttentionVariant.decoding``); the recurrent forms of linear and Lightning attention are in
:mod:`momentum_jax.attention.decoding_recurrent`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from momentum_jax.attention.kv_shift import _check_pair, _pair_Kx2
from momentum_jax.attention.momentum import gain_normalize
from momentum_jax.attention.registry import AttentionDims
from momentum_jax.core.checks import check_boundary, is_concrete
from momentum_jax.core.shear import Gamma

_HI = jax.lax.Precision.HIGHEST


class DecodeContext(NamedTuple):
  """What the decode steps of every layer share.

  Attributes:
    length: int32 scalar, rows written before the new ones (the same for every sequence).
    segment_ids: ``[B, max_len]`` int32 segment id of every row, the new rows included (rows not
      yet written hold anything), or None when the whole batch is one segment per sequence.
  """

  length: jax.Array
  segment_ids: jax.Array | None = None


class KVCache(NamedTuple):
  """A contiguous key/value cache of one attention layer.

  Attributes:
    k: ``[B, C, K, H]`` keys as the attention sees them (sheared for momentum, shifted for
      KV-shift); C is ``max_len``, or ``window`` for a ring buffer.
    v: ``[B, C, K, H]`` values.
  """

  k: jax.Array
  v: jax.Array


class ShiftCache(NamedTuple):
  """A :class:`KVCache` plus the last pre-shift rows that the next row's shift reads.

  Attributes:
    kv: the cache.
    last_a: float32 ``[B, heads, H]`` last pre-shift row of q for momentum attention, of k for
      KV-shift (zeros before any row).
    last_b: float32 ``[B, heads, H]`` last pre-shift row of k for momentum attention, of v for
      KV-shift (zeros before any row).
  """

  kv: KVCache
  last_a: jax.Array
  last_b: jax.Array


class EmaCache(NamedTuple):
  """A :class:`KVCache` plus the value EMA m of the last row and that row's value.

  Attributes:
    kv: the cache.
    ema: float32 ``[B, K, H]``, m of the last written row.
    last_v: float32 ``[B, K, H]``, v of the last written row.
  """

  kv: KVCache
  ema: jax.Array
  last_v: jax.Array


def _check_sizes(**sizes: object) -> None:
  for name, value in sizes.items():
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f"{name} must be an int >= 1, got {name}={value!r}")


def init_kv_cache(batch: int, capacity: int, dims: AttentionDims,
                  dtype: jnp.dtype = jnp.float32) -> KVCache:
  """An empty cache of ``capacity`` rows per sequence (:func:`cache_capacity`)."""
  _check_sizes(batch=batch, capacity=capacity)
  shape = (batch, capacity, dims.num_kv_heads, dims.head_dim)
  # Separate buffers, so that a jitted step may donate the cache.
  return KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype))


def kv_cache_bytes_per_token(num_kv_heads: int, head_dim: int,
                             dtype: jnp.dtype = jnp.float32) -> int:
  """Bytes one cached row costs one layer: ``2 · K · H · itemsize`` (a key and a value)."""
  return 2 * num_kv_heads * head_dim * jnp.dtype(dtype).itemsize


def cache_bytes(cache: object) -> int:
  """Bytes of every array in a cache (any pytree of arrays)."""
  return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize
             for x in jax.tree_util.tree_leaves(cache))


def cache_capacity(max_len: int, window: int | None) -> int:
  """Rows a K/V cache keeps: ``min(window, max_len)`` with a window, else ``max_len``."""
  return max_len if window is None else min(window, max_len)


def new_rows(context: DecodeContext, t: int) -> jax.Array:
  """Int32 ``[T]`` positions in the sequence of the T new rows."""
  return context.length + jnp.arange(t, dtype=jnp.int32)


def row_starts(context: DecodeContext, t: int) -> jax.Array:
  """Boolean ``[B or 1, T]``: the new row begins a segment (row 0, or its id differs from the
  row before), where the momentum shear, the KV shift and the recurrent states restart."""
  at_T = new_rows(context, t)
  first_1xT = (at_T == 0)[None]
  if context.segment_ids is None:
    return first_1xT
  ids_BxT = jnp.take(context.segment_ids, at_T, axis=1)
  before_BxT = jnp.take(context.segment_ids, jnp.maximum(at_T - 1, 0), axis=1)
  return first_1xT | (ids_BxT != before_BxT)


def _slot_rows(capacity: int, length: jax.Array) -> jax.Array:
  """Int32 ``[C]`` position of the row each slot holds before a write (−1: empty): the newest
  row s < ``length`` with s ≡ c (mod C)."""
  slot_C = jnp.arange(capacity, dtype=jnp.int32)
  last = length - 1
  row_C = slot_C + capacity * jnp.floor_divide(last - slot_C, capacity)
  return jnp.where(slot_C <= last, row_C, -1)


def _visible(context: DecodeContext, capacity: int, t: int, window: int | None) -> jax.Array:
  """Boolean ``[B or 1, T, C + T]``: which cached and new rows each new query sees."""
  query_T = new_rows(context, t)
  key_S = jnp.concatenate([_slot_rows(capacity, context.length), query_T])
  lag_TxS = query_T[:, None] - key_S[None, :]
  visible_TxS = (key_S[None, :] >= 0) & (lag_TxS >= 0)
  if window is not None:
    visible_TxS &= lag_TxS < window
  if context.segment_ids is None:
    return visible_TxS[None]
  query_ids_BxT = jnp.take(context.segment_ids, query_T, axis=1)
  key_ids_BxS = jnp.take(context.segment_ids, jnp.maximum(key_S, 0), axis=1)
  return visible_TxS[None] & (query_ids_BxT[:, :, None] == key_ids_BxS[:, None, :])


def _write(cache: KVCache, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array,
           length: jax.Array) -> KVCache:
  """The cache with the new rows in their slots (row s in slot s mod C; only the newest C of
  the T rows when T > C)."""
  capacity, t = cache.k.shape[1], k_BxTxKxH.shape[1]
  kept = min(t, capacity)
  slots = jnp.mod(length + jnp.arange(t - kept, t, dtype=jnp.int32), capacity)
  return KVCache(k=cache.k.at[:, slots].set(k_BxTxKxH[:, t - kept:].astype(cache.k.dtype)),
                 v=cache.v.at[:, slots].set(v_BxTxKxH[:, t - kept:].astype(cache.v.dtype)))


def _check_rows(cache: KVCache, q_BxTxNxH: jax.Array, k_BxTxKxH: jax.Array,
                v_BxTxKxH: jax.Array) -> None:
  batch, capacity, kv_heads, head_dim = cache.k.shape
  b, t, k, h = k_BxTxKxH.shape
  if (b, k, h) != (batch, kv_heads, head_dim) or v_BxTxKxH.shape != k_BxTxKxH.shape:
    raise ValueError(f"the new keys [B={b}, T={t}, K={k}, H={h}] and values "
                     f"{tuple(v_BxTxKxH.shape)} do not fit the cache [B={batch}, C={capacity}, "
                     f"K={kv_heads}, H={head_dim}]")
  if q_BxTxNxH.shape[:2] != (b, t) or q_BxTxNxH.shape[2] % k or q_BxTxNxH.shape[3] != h:
    raise ValueError(f"the new queries {tuple(q_BxTxNxH.shape)} do not match the new keys "
                     f"{tuple(k_BxTxKxH.shape)} (same B, T and H; N a multiple of K)")


def softmax_decode(q_BxTxNxH: jax.Array, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array,
                   cache: KVCache, context: DecodeContext, *, window: int | None = None,
                   sinks: jax.Array | None = None, scale: float | None = None
                   ) -> tuple[jax.Array, KVCache]:
  """Attends T new queries to the cached rows and the new ones, then writes the new k and v.

  Equal, row for row, to ``softmax_attention(q, k, v, causal=True, window=window,
  segment_ids=..., sinks=sinks, scale=scale)`` over the whole sequence (float32 compute).

  Args:
    q_BxTxNxH: the new queries (after RoPE); N a multiple of the cache's K.
    k_BxTxKxH, v_BxTxKxH: the new keys and values.
    cache: the layer's cache, ``max_len`` rows (or ``window`` rows with a window).
    context: rows written before these and the segment ids.
    window: query t sees keys t − window < s ≤ t.
    sinks: ``[N]`` sink logits (an extra softmax term with a zero value).
    scale: logit scale, default ``1 / sqrt(H)``.

  Returns:
    ``(out [B, T, N, H] in q's dtype, the cache with the new rows written)``.

  Raises:
    ValueError: the new rows do not fit the cache's batch, heads or head size, or (with a
      concrete ``context.length``) they pass the end of a cache that is not a window's ring.
  """
  _check_rows(cache, q_BxTxNxH, k_BxTxKxH, v_BxTxKxH)
  heads, head_dim = q_BxTxNxH.shape[2], q_BxTxNxH.shape[3]
  t, capacity = q_BxTxNxH.shape[1], cache.k.shape[1]
  if (window is None or capacity < window) and is_concrete(context.length):
    if int(context.length) + t > capacity:
      raise ValueError(f"writing T={t} rows after length={int(context.length)} passes the cache "
                       f"end max_len={capacity}")
  scale = head_dim**-0.5 if scale is None else scale
  batch, kv_heads = q_BxTxNxH.shape[0], cache.k.shape[2]
  # Query heads grouped by their kv head, so no K/V row is repeated or copied.
  q_BxTxKxGxH = q_BxTxNxH.astype(jnp.float32).reshape(
      batch, t, kv_heads, heads // kv_heads, head_dim)
  logits = lambda k_BxSxKxH: scale * jnp.einsum(
      "btkgh,bskh->bkgts", q_BxTxKxGxH, k_BxSxKxH.astype(jnp.float32), precision=_HI)
  logits_BxKxGxTxS = jnp.concatenate([logits(cache.k), logits(k_BxTxKxH)], axis=-1)
  visible_Bx1x1xTxS = _visible(context, capacity, t, window)[:, None, None]
  logits_BxKxGxTxS = jnp.where(visible_Bx1x1xTxS, logits_BxKxGxTxS, -jnp.inf)
  if sinks is not None:
    sink_1xKxGx1x1 = jnp.asarray(sinks, jnp.float32).reshape(1, kv_heads, -1, 1, 1)
    sink_BxKxGxTx1 = jnp.broadcast_to(sink_1xKxGx1x1, logits_BxKxGxTxS.shape[:4] + (1,))
    logits_BxKxGxTxS = jnp.concatenate([sink_BxKxGxTx1, logits_BxKxGxTxS], axis=-1)
  weights_BxKxGxTxS = jax.nn.softmax(logits_BxKxGxTxS, axis=-1)[..., -(capacity + t):]
  mix = lambda w_BxKxGxTxS, v_BxSxKxH: jnp.einsum(
      "bkgts,bskh->btkgh", w_BxKxGxTxS, v_BxSxKxH.astype(jnp.float32), precision=_HI)
  out_BxTxKxGxH = (mix(weights_BxKxGxTxS[..., :capacity], cache.v)
                   + mix(weights_BxKxGxTxS[..., capacity:], v_BxTxKxH))
  return (out_BxTxKxGxH.reshape(q_BxTxNxH.shape).astype(q_BxTxNxH.dtype),
          _write(cache, k_BxTxKxH, v_BxTxKxH, context.length))


def _previous_rows(x_BxTxNxH: jax.Array, last_BxNxH: jax.Array, starts_BxT: jax.Array,
                   boundary: str) -> jax.Array:
  """Float32 x_{t−1} of T new rows given the row before them; at a segment start the boundary
  value (zero, or x_t itself for ``"replicate"``)."""
  x32 = x_BxTxNxH.astype(jnp.float32)
  prev_BxTxNxH = jnp.concatenate([last_BxNxH[:, None].astype(jnp.float32), x32[:, :-1]], axis=1)
  fill_BxTxNxH = x32 if boundary == "replicate" else jnp.zeros_like(x32)
  return jnp.where(starts_BxT[:, :, None, None], fill_BxTxNxH, prev_BxTxNxH)


def init_momentum_cache(batch: int, capacity: int, dims: AttentionDims,
                        dtype: jnp.dtype = jnp.float32) -> ShiftCache:
  """An empty momentum cache: a K/V cache and zero last q (N heads) and k (K heads) rows."""
  return ShiftCache(kv=init_kv_cache(batch, capacity, dims, dtype),
                    last_a=jnp.zeros((batch, dims.num_heads, dims.head_dim), jnp.float32),
                    last_b=jnp.zeros((batch, dims.num_kv_heads, dims.head_dim), jnp.float32))


def init_kv_shift_cache(batch: int, capacity: int, dims: AttentionDims,
                        dtype: jnp.dtype = jnp.float32) -> ShiftCache:
  """An empty KV-shift cache: a K/V cache and zero last k and v rows (K heads)."""
  shape = (batch, dims.num_kv_heads, dims.head_dim)
  return ShiftCache(kv=init_kv_cache(batch, capacity, dims, dtype),
                    last_a=jnp.zeros(shape, jnp.float32), last_b=jnp.zeros(shape, jnp.float32))


def momentum_decode(q_BxTxNxH: jax.Array, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array,
                    cache: ShiftCache, context: DecodeContext, *, gamma: Gamma,
                    boundary: str = "zero", normalize_gain: bool = False,
                    window: int | None = None,
                    sinks: jax.Array | None = None, scale: float | None = None
                    ) -> tuple[jax.Array, ShiftCache]:
  """Shears the new q and k with the cached last rows, then :func:`softmax_decode` on q̂, k̂, v.

  Equal, row for row, to ``momentum_attention(q, k, v, gamma=gamma, boundary=boundary,
  rope=False, causal=True, ...)`` over the whole sequence.

  Args:
    q_BxTxNxH, k_BxTxKxH, v_BxTxKxH: the new rows (q and k after RoPE).
    cache: a :class:`ShiftCache` whose last rows are the pre-shear q (``last_a``, N heads) and
      k (``last_b``, K heads).
    context, window, sinks, scale: as in :func:`softmax_decode`.
    gamma: γ >= 0, a float, a scalar array or ``[K]`` (one per kv head).
    boundary: ``"zero"`` or ``"replicate"``, as in ``momentum_jax.core.momentum_shear``.
    normalize_gain: the gain-normalised shear (``momentum_jax.attention.momentum.gain_normalize``;
      the cached last rows are then the normalised pre-shear rows).
  """
  check_boundary(boundary)
  if normalize_gain:
    q_BxTxNxH, k_BxTxKxH = gain_normalize(q_BxTxNxH, k_BxTxKxH, gamma)
  heads, kv_heads, t = q_BxTxNxH.shape[2], k_BxTxKxH.shape[2], q_BxTxNxH.shape[1]
  gamma_K = jnp.asarray(gamma, jnp.float32)
  gamma_N = jnp.repeat(gamma_K, heads // kv_heads) if gamma_K.ndim else gamma_K
  starts_BxT = row_starts(context, t)
  shear = lambda x, last, g: x.astype(jnp.float32) + (g[:, None] if g.ndim else g) * (
      x.astype(jnp.float32) - _previous_rows(x, last, starts_BxT, boundary))
  q_hat = shear(q_BxTxNxH, cache.last_a, gamma_N).astype(q_BxTxNxH.dtype)
  k_hat = shear(k_BxTxKxH, cache.last_b, gamma_K).astype(k_BxTxKxH.dtype)
  out_BxTxNxH, kv = softmax_decode(q_hat, k_hat, v_BxTxKxH, cache.kv, context, window=window,
                                   sinks=sinks, scale=scale)
  return out_BxTxNxH, ShiftCache(kv=kv, last_a=q_BxTxNxH[:, -1].astype(jnp.float32),
                                 last_b=k_BxTxKxH[:, -1].astype(jnp.float32))


def kv_shift_decode(q_BxTxNxH: jax.Array, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array,
                    cache: ShiftCache, context: DecodeContext, *, alpha: jax.Array,
                    beta: jax.Array, window: int | None = None, sinks: jax.Array | None = None,
                    scale: float | None = None) -> tuple[jax.Array, ShiftCache]:
  """Shifts the new k and v with the cached last rows, then :func:`softmax_decode` on q, k̃, ṽ.

  Equal, row for row, to ``kv_shift_attention(q, k, v, alpha=alpha, beta=beta, causal=True,
  ...)`` over the whole sequence. ``cache.last_a`` / ``last_b`` are the last pre-shift k and v.

  Args:
    alpha, beta: ``[2]`` or ``[K, 2]`` mixing pairs, as in ``kv_shift_attention``.
    the rest: as in :func:`momentum_decode`.
  """
  kv_heads, t = k_BxTxKxH.shape[2], k_BxTxKxH.shape[1]
  _check_pair("alpha", alpha, kv_heads)
  _check_pair("beta", beta, kv_heads)
  starts_BxT = row_starts(context, t)

  def shift(x_BxTxKxH, last_BxKxH, pair):
    pair_Kx2 = _pair_Kx2(pair, kv_heads)
    prev_BxTxKxH = _previous_rows(x_BxTxKxH, last_BxKxH, starts_BxT, "zero")
    out = pair_Kx2[:, 0, None] * x_BxTxKxH.astype(jnp.float32) + pair_Kx2[:, 1, None] * prev_BxTxKxH
    return out.astype(x_BxTxKxH.dtype)

  out_BxTxNxH, kv = softmax_decode(
      q_BxTxNxH, shift(k_BxTxKxH, cache.last_a, alpha), shift(v_BxTxKxH, cache.last_b, beta),
      cache.kv, context, window=window, sinks=sinks, scale=scale)
  return out_BxTxNxH, ShiftCache(kv=kv, last_a=k_BxTxKxH[:, -1].astype(jnp.float32),
                                 last_b=v_BxTxKxH[:, -1].astype(jnp.float32))


def init_ema_cache(batch: int, capacity: int, dims: AttentionDims,
                   dtype: jnp.dtype = jnp.float32) -> EmaCache:
  """An empty :class:`EmaCache`: a K/V cache, zero EMA and zero last value (K heads)."""
  shape = (batch, dims.num_kv_heads, dims.head_dim)
  return EmaCache(kv=init_kv_cache(batch, capacity, dims, dtype),
                  ema=jnp.zeros(shape, jnp.float32), last_v=jnp.zeros(shape, jnp.float32))


def ema_value_decode(q_BxTxNxH: jax.Array, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array,
                     cache: EmaCache, context: DecodeContext, *, eta: float | jax.Array,
                     window: int | None = None, sinks: jax.Array | None = None,
                     scale: float | None = None) -> tuple[jax.Array, EmaCache]:
  """:func:`softmax_decode` plus the value EMA m_t = η (m_{t−1} + v_{t−1}), 0 at segment starts.

  Equal, row for row, to ``ema_value_attention(q, k, v, eta=eta, causal=True, ...)`` over the
  whole sequence; the EMA of kv head j is added to each of its query heads, and ``window`` limits
  only the softmax part.
  """
  if np.shape(eta) != ():
    raise ValueError(f"eta must be a scalar, got eta.shape={np.shape(eta)}")
  batch, t, heads, head_dim = q_BxTxNxH.shape
  kv_heads = k_BxTxKxH.shape[2]
  eta = jnp.asarray(eta, jnp.float32)
  starts_TxB = jnp.broadcast_to(row_starts(context, t), (batch, t)).T
  v_TxBxKxH = jnp.moveaxis(v_BxTxKxH.astype(jnp.float32), 1, 0)

  def step(carry, row):
    ema_BxKxH, last_v_BxKxH = carry
    start_B, v_BxKxH = row
    ema_BxKxH = jnp.where(start_B[:, None, None], 0.0, eta * (ema_BxKxH + last_v_BxKxH))
    return (ema_BxKxH, v_BxKxH), ema_BxKxH

  (ema_BxKxH, last_v_BxKxH), ema_TxBxKxH = jax.lax.scan(
      step, (cache.ema, cache.last_v), (starts_TxB, v_TxBxKxH))
  attn_BxTxNxH, kv = softmax_decode(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, cache.kv, context,
                                    window=window, sinks=sinks, scale=scale)
  attn_BxTxKxGxH = attn_BxTxNxH.astype(jnp.float32).reshape(
      batch, t, kv_heads, heads // kv_heads, head_dim)
  out_BxTxKxGxH = attn_BxTxKxGxH + jnp.moveaxis(ema_TxBxKxH, 0, 1)[:, :, :, None]
  return (out_BxTxKxGxH.reshape(q_BxTxNxH.shape).astype(q_BxTxNxH.dtype),
          EmaCache(kv=kv, ema=ema_BxKxH, last_v=last_v_BxKxH))

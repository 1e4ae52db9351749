"""Softmax attention plus an exponential moving average of past values (Dai et al., "Why Can GPT
Learn In-Context? Language Models Secretly Perform Gradient Descent as Meta-Optimizers",
arXiv 2212.10559):

    MoAttn(q_t) = softmax attention(q_t) + Σ_{i<t} η^{t−i} v_i,        0 < η < 1

The EMA term m_t = Σ_{i<t} η^{t−i} v_i obeys the linear recurrence m_t = η (m_{t−1} + v_{t−1}),
m_0 = 0, evaluated in O(T) work with ``jax.lax.associative_scan``. It restarts at every segment
start, ignores ``window`` (it spans the whole past of the segment), and for GQA the EMA of kv
head j is added to each of its query heads. The EMA term is causal by definition, so
``causal=False`` raises, and it pairs query t with value t, so it needs S == T. η is fixed (not
learned).

Decoding (:func:`ema_value_decode`) carries m and the last value of each sequence
(:class:`EmaCache`) beside the K/V cache of :func:`momentum_jax.attention.softmax.softmax_decode`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from momentum_jax.attention.decoding import DecodeContext, KVCache, init_kv_cache, row_starts
from momentum_jax.attention.registry import (
    AttentionDims, AttentionVariant, Decoding, register_attention,
)
from momentum_jax.attention.softmax import (
    softmax_attention, softmax_attention_reference, softmax_decode,
)
from momentum_jax.core.checks import check_attention_inputs, is_concrete
from momentum_jax.core.heads import repeat_kv
from momentum_jax.core.masks import previous_step, segment_starts, visibility_mask


def _check_ema(q: jax.Array, k: jax.Array, eta: float | jax.Array, causal: bool) -> None:
  if not causal:
    raise ValueError("ema_value attention is causal by definition, got causal=False")
  if q.shape[1] != k.shape[1]:
    raise ValueError(
        f"ema_value attention needs S == T, got q.shape={q.shape} and k.shape={k.shape}"
    )
  if np.shape(eta) != ():
    raise ValueError(f"eta must be a scalar, got eta.shape={np.shape(eta)}")
  if is_concrete(eta) and not 0 < float(eta) < 1:
    raise ValueError(f"eta must lie in (0, 1), got eta={eta}")


def value_ema(
    v_BxTxKxH: jax.Array, eta: float | jax.Array, segment_ids: jax.Array | None = None
) -> jax.Array:
  """Float32 m_t = Σ_{i<t, same segment} η^{t−i} v_i via an associative scan of
  m_t = a_t m_{t−1} + b_t with a_t = η (0 at segment starts) and b_t = η v_{t−1}."""
  seq = v_BxTxKxH.shape[1]
  eta = jnp.asarray(eta, jnp.float32)
  decay_BxTx1x1 = jnp.where(segment_starts(seq, segment_ids), 0.0, eta)[:, :, None, None]
  prev_BxTxKxH = previous_step(v_BxTxKxH.astype(jnp.float32), segment_ids=segment_ids)
  decay_BxTx1x1 = jnp.broadcast_to(decay_BxTx1x1, prev_BxTxKxH.shape[:2] + (1, 1))

  def combine(earlier, later):
    a1, b1 = earlier
    a2, b2 = later
    return a1 * a2, a2 * b1 + b2

  _, ema_BxTxKxH = jax.lax.associative_scan(combine, (decay_BxTx1x1, eta * prev_BxTxKxH), axis=1)
  return ema_BxTxKxH


def ema_value_attention(
    q_BxTxNxH: jax.Array,
    k_BxSxKxH: jax.Array,
    v_BxSxKxH: jax.Array,
    *,
    eta: float | jax.Array,
    causal: bool = True,
    window: int | None = None,
    segment_ids: jax.Array | None = None,
    bias: jax.Array | None = None,
    sinks: jax.Array | None = None,
    scale: float | None = None,
) -> jax.Array:
  """:func:`softmax_attention` plus Σ_{i<t} η^{t−i} v_i (O(T) associative scan).

  Args:
    q_BxTxNxH, k_BxSxKxH, v_BxSxKxH: as in :func:`softmax_attention`, with S == T.
    eta: fixed decay, a scalar in (0, 1); concrete values outside raise ``ValueError``.
    causal: must be True.
    window, segment_ids, bias, sinks, scale: as in :func:`softmax_attention`; ``segment_ids``
      restart the EMA, ``window`` does not limit it.

  Returns:
    ``[B, T, N, H]`` in q's dtype.
  """
  check_attention_inputs(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks,
  )
  _check_ema(q_BxTxNxH, k_BxSxKxH, eta, causal)
  batch, seq, heads, head_dim = q_BxTxNxH.shape
  kv_heads = k_BxSxKxH.shape[2]
  attn_BxTxNxH = softmax_attention(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, causal=causal, window=window, segment_ids=segment_ids,
      bias=bias, sinks=sinks, scale=scale,
  )
  ema_BxTxKx1xH = value_ema(v_BxSxKxH, eta, segment_ids)[:, :, :, None]
  attn_BxTxKxGxH = attn_BxTxNxH.reshape(batch, seq, kv_heads, heads // kv_heads, head_dim)
  out_BxTxKxGxH = attn_BxTxKxGxH.astype(jnp.float32) + ema_BxTxKx1xH
  return out_BxTxKxGxH.reshape(q_BxTxNxH.shape).astype(q_BxTxNxH.dtype)


def ema_value_attention_reference(
    q_BxTxNxH: jax.Array,
    k_BxSxKxH: jax.Array,
    v_BxSxKxH: jax.Array,
    *,
    eta: float | jax.Array,
    causal: bool = True,
    window: int | None = None,
    segment_ids: jax.Array | None = None,
    bias: jax.Array | None = None,
    sinks: jax.Array | None = None,
    scale: float | None = None,
    return_weights: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array, jax.Array]:
  """Float32 reference of :func:`ema_value_attention` with the explicit T×T decay matrix
  D[t, i] = η^{t−i} (i < t, same segment); with ``return_weights`` the scores and weights are
  those of the softmax part."""
  check_attention_inputs(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks,
  )
  _check_ema(q_BxTxNxH, k_BxSxKxH, eta, causal)
  seq, heads = q_BxTxNxH.shape[1:3]
  result = softmax_attention_reference(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, causal=causal, window=window, segment_ids=segment_ids,
      bias=bias, sinks=sinks, scale=scale, return_weights=return_weights,
  )
  attn_BxTxNxH = result[0] if return_weights else result
  lag_TxT = jnp.arange(seq)[:, None] - jnp.arange(seq)[None, :]
  past_Bx1xTxT = visibility_mask(seq, seq, causal=True, window=None, segment_ids=segment_ids)
  past_BxTxT = past_Bx1xTxT[:, 0] & (lag_TxT > 0)
  eta = jnp.asarray(eta, jnp.float32)
  decay_BxTxT = jnp.where(past_BxTxT, eta ** jnp.maximum(lag_TxT, 0), 0.0)
  v_BxTxNxH = repeat_kv(v_BxSxKxH.astype(jnp.float32), heads)
  ema_BxTxNxH = jnp.einsum(
      "bts,bsnh->btnh", decay_BxTxT, v_BxTxNxH, precision=jax.lax.Precision.HIGHEST
  )
  out_BxTxNxH = (attn_BxTxNxH.astype(jnp.float32) + ema_BxTxNxH).astype(q_BxTxNxH.dtype)
  if return_weights:
    return out_BxTxNxH, result[1], result[2]
  return out_BxTxNxH


class EmaCache(NamedTuple):
  """A :class:`~momentum_jax.attention.decoding.KVCache` plus the value EMA m of the last row and
  that row's value.

  Attributes:
    kv: the cache.
    ema: float32 ``[B, K, H]``, m of the last written row.
    last_v: float32 ``[B, K, H]``, v of the last written row.
  """

  kv: KVCache
  ema: jax.Array
  last_v: jax.Array


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
  """:func:`~momentum_jax.attention.softmax.softmax_decode` plus the value EMA
  m_t = η (m_{t−1} + v_{t−1}), 0 at segment starts.

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


register_attention(
    "ema_value",
    AttentionVariant(ema_value_attention, ema_value_attention_reference, params=("eta",),
                     masking="causal", decoding=Decoding(init_ema_cache, ema_value_decode)),
)

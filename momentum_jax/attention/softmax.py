"""Softmax attention with causal / sliding-window / segment masks, additive bias and learned sinks.

    out_t = Σ_s e^{l_ts} v_s / (e^{sink_n} + Σ_s e^{l_ts}),   l_ts = scale · q_t·k_s + bias_ts

over the keys s visible to query t (causal: s <= t; window w: t - w < s <= t; equal segment ids).
For S != T the causal mask is aligned at the first position, as in jax.nn.dot_product_attention.
Without sinks the e^{sink_n} term is absent. Learned sinks as in gpt-oss and StreamingLLM
(Xiao et al., arXiv 2309.17453). A query row with no visible key (every visible logit is -inf,
which only an additive ``bias`` can cause) returns zeros, and its gradients are zeros.

Decoding (:func:`softmax_decode`) attends the new rows to a preallocated contiguous K/V cache
(:mod:`momentum_jax.attention.decoding`), a ring buffer of ``window`` rows with a window.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from momentum_jax.attention.decoding import (
    DecodeContext, KVCache, check_new_rows, init_kv_cache, new_rows, visible_rows, write_rows,
)
from momentum_jax.attention.dispatch import softmax_call, softmax_route
from momentum_jax.attention.registry import AttentionVariant, Decoding, register_attention
from momentum_jax.attention.splash import splash_softmax_attention
from momentum_jax.core.checks import check_attention_inputs, is_concrete
from momentum_jax.core.heads import repeat_kv
from momentum_jax.core.masks import visibility_mask
from momentum_jax.kernels.flash_attention import flash_attention

_HI = jax.lax.Precision.HIGHEST

# -inf entries of ``bias`` are clamped to this finite value so that no softmax row is all -inf.
_BIAS_FLOOR = -1e30


def _bias_4d(bias: jax.Array) -> jax.Array:
  return jnp.reshape(bias, (1,) * (4 - bias.ndim) + bias.shape)


def softmax_attention(
    q_BxTxNxH: jax.Array,
    k_BxSxKxH: jax.Array,
    v_BxSxKxH: jax.Array,
    *,
    causal: bool = True,
    window: int | None = None,
    segment_ids: jax.Array | None = None,
    bias: jax.Array | None = None,
    sinks: jax.Array | None = None,
    scale: float | None = None,
    implementation: str | None = None,
) -> jax.Array:
  """Softmax attention, layout ``[B, T, N, H]``: XLA's materialised form, cuDNN or a kernel.

  For cuDNN, causal and window masks go through ``is_causal`` / ``local_window_size`` so that its
  fast paths apply; the XLA form applies one boolean visibility mask to the logits. Sinks are a
  zero key/value column prepended to k and v whose logit is ``sinks[n]`` (given as bias).
  GQA: query head n reads kv head n // (N // K).

  Args:
    q_BxTxNxH: queries (after any RoPE).
    k_BxSxKxH: keys; K divides N.
    v_BxSxKxH: values.
    causal: mask keys s > t.
    window: with ``causal``, query t sees the ``window`` keys t - window < s <= t.
    segment_ids: ``[B, T]`` ints for packed sequences (needs S == T); attend within equal ids.
    bias: additive logits broadcastable to ``[B, N, T, S]``; -inf masks an entry.
    sinks: ``[N]`` per-head sink logits (an extra softmax term with a zero value vector).
    scale: logit scale, default ``1 / sqrt(H)``.
    implementation: None picks by the table of :mod:`momentum_jax.attention.dispatch` (on a GPU
      cuDNN where it supports the call, else the fused kernel; elsewhere XLA); ``"xla"`` runs
      the materialised T×S form (our einsum form without bias and sinks,
      ``jax.nn.dot_product_attention``'s XLA form with them); ``"cudnn"`` its cuDNN form;
      ``"pallas"`` the fused Pallas kernel
      (:func:`momentum_jax.kernels.flash_attention.flash_attention`; interpret mode off the GPU);
      ``"splash"`` JAX's TPU splash kernel (interpret mode off the TPU). A forced choice that
      cannot run the call raises ``ValueError`` naming why.

  Returns:
    ``[B, T, N, H]`` in q's dtype.
  """
  check_attention_inputs(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks,
  )
  route = softmax_route(implementation, softmax_call(
      q_BxTxNxH, k_BxSxKxH, causal=causal, window=window, segment_ids=segment_ids, bias=bias,
      sinks=sinks, scale=scale))
  if route == "pallas":
    return flash_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, scale=scale, causal=causal,
                           window=window, segment_ids=segment_ids, sinks=sinks)
  if route == "splash":
    return splash_softmax_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, causal=causal,
                                    window=window, segment_ids=segment_ids, scale=scale)
  _, seq_q, _, head_dim = q_BxTxNxH.shape
  seq_k = k_BxSxKxH.shape[1]
  scale = head_dim**-0.5 if scale is None else scale
  keep_BxNxT = None
  if bias is not None:
    bias = _bias_4d(bias).astype(jnp.float32)
    if sinks is None:
      visible = visibility_mask(seq_q, seq_k, causal=causal, window=window, segment_ids=segment_ids)
      finite = bias > -jnp.inf
      keep_BxNxT = jnp.any(finite if visible is None else visible & finite, axis=-1)
    bias = jnp.maximum(bias, _BIAS_FLOOR)

  if sinks is None and bias is None and route == "xla":
    return _masked_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, scale, visibility_mask(
        seq_q, seq_k, causal=causal, window=window, segment_ids=segment_ids))
  if sinks is None:
    mask = None
    if segment_ids is not None:
      mask = visibility_mask(seq_q, seq_k, causal=False, window=None, segment_ids=segment_ids)
    out_BxTxNxH = jax.nn.dot_product_attention(
        q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, bias=bias, mask=mask, scale=scale, is_causal=causal,
        local_window_size=None if window is None else (window - 1, 0),
        implementation="cudnn" if route == "cudnn" else None,
    )
    if keep_BxNxT is None:
      return out_BxTxNxH
    # Rows whose every visible logit was -inf: the clamp kept them finite, now zero them.
    keep_BxTxNx1 = jnp.transpose(keep_BxNxT, (0, 2, 1))[..., None]
    return out_BxTxNxH * keep_BxTxNx1.astype(out_BxTxNxH.dtype)

  # Sinks: key/value column 0 is zero, its logit 0·scale + bias is sinks[n]; B, T may be 1 here.
  heads = q_BxTxNxH.shape[2]
  pad_S = ((0, 0), (1, 0), (0, 0), (0, 0))
  k_BxS1xKxH = jnp.pad(k_BxSxKxH, pad_S)
  v_BxS1xKxH = jnp.pad(v_BxSxKxH, pad_S)
  bias_BxNxTxS = jnp.zeros((1, heads, 1, seq_k), jnp.float32) if bias is None else bias
  batch, _, rows, _ = bias_BxNxTxS.shape
  sink_1xNx1x1 = sinks.astype(jnp.float32)[None, :, None, None]
  sink_BxNxTx1 = jnp.broadcast_to(sink_1xNx1x1, (batch, heads, rows, 1))
  bias_BxNxTxS = jnp.broadcast_to(bias_BxNxTxS, (batch, heads, rows, seq_k))
  bias_BxNxTxS1 = jnp.concatenate([sink_BxNxTx1, bias_BxNxTxS], axis=-1)
  mask = visibility_mask(seq_q, seq_k, causal=causal, window=window, segment_ids=segment_ids)
  if mask is not None:
    mask = jnp.pad(mask, ((0, 0), (0, 0), (0, 0), (1, 0)), constant_values=True)
  return jax.nn.dot_product_attention(
      q_BxTxNxH, k_BxS1xKxH, v_BxS1xKxH, bias=bias_BxNxTxS1, mask=mask, scale=scale
  )


def _masked_attention(q_BxTxNxH: jax.Array, k_BxSxKxH: jax.Array, v_BxSxKxH: jax.Array,
                      scale: float | jax.Array, visible: jax.Array | None) -> jax.Array:
  """The XLA form without bias or sinks: logits ``[B, K, G, T, S]`` (query heads grouped by the kv
  head they read), masked once by ``visible`` (``[B or 1, 1, T, S]``; every row keeps a key),
  softmax in float32, and the weighted sum of values, in q's dtype.

  ``jax.nn.dot_product_attention``'s XLA form computes the same, but it also masks inside the
  softmax (``where=``) and its backward pass reduces over the keys in a slower loop: on the CPU
  at nanoGPT's shape (B 12, T 64, N 4, H 32) this form costs 7 % less of the whole train step.
  """
  b, t, n, h = q_BxTxNxH.shape
  kv_heads = k_BxSxKxH.shape[2]
  q_BxTxKxGxH = q_BxTxNxH.reshape(b, t, kv_heads, n // kv_heads, h)
  logits_BxKxGxTxS = scale * jnp.einsum("btkgh,bskh->bkgts", q_BxTxKxGxH, k_BxSxKxH,
                                        preferred_element_type=jnp.float32)
  if visible is not None:
    logits_BxKxGxTxS = jnp.where(visible[:, :, None], logits_BxKxGxTxS,
                                 jnp.finfo(jnp.float32).min)
  weights_BxKxGxTxS = jax.nn.softmax(logits_BxKxGxTxS, axis=-1).astype(v_BxSxKxH.dtype)
  out_BxTxKxGxH = jnp.einsum("bkgts,bskh->btkgh", weights_BxKxGxTxS, v_BxSxKxH)
  return out_BxTxKxGxH.reshape(b, t, n, h).astype(q_BxTxNxH.dtype)


def softmax_attention_reference(
    q_BxTxNxH: jax.Array,
    k_BxSxKxH: jax.Array,
    v_BxSxKxH: jax.Array,
    *,
    causal: bool = True,
    window: int | None = None,
    segment_ids: jax.Array | None = None,
    bias: jax.Array | None = None,
    sinks: jax.Array | None = None,
    scale: float | None = None,
    return_weights: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array, jax.Array]:
  """Float32 reference of :func:`softmax_attention` with an explicit T×S einsum.

  Returns ``out_BxTxNxH`` in q's dtype, or with ``return_weights`` the tuple
  ``(out_BxTxNxH, scores_BxNxTxS, weights_BxNxTxS)`` in float32: scores are the scaled logits plus
  bias with masked entries set to -inf; weights are the softmax rows without the sink column (so
  with sinks a row sums to less than 1, and a row with no visible key is all zeros).
  """
  check_attention_inputs(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks,
  )
  _, seq_q, heads, head_dim = q_BxTxNxH.shape
  seq_k = k_BxSxKxH.shape[1]
  scale = head_dim**-0.5 if scale is None else scale
  hi = jax.lax.Precision.HIGHEST
  q32 = q_BxTxNxH.astype(jnp.float32)
  k32 = repeat_kv(k_BxSxKxH.astype(jnp.float32), heads)
  v32 = repeat_kv(v_BxSxKxH.astype(jnp.float32), heads)

  scores_BxNxTxS = scale * jnp.einsum("btnh,bsnh->bnts", q32, k32, precision=hi)
  if bias is not None:
    scores_BxNxTxS = scores_BxNxTxS + bias.astype(jnp.float32)
  visible = visibility_mask(seq_q, seq_k, causal=causal, window=window, segment_ids=segment_ids)
  if visible is not None:
    scores_BxNxTxS = jnp.where(visible, scores_BxNxTxS, -jnp.inf)

  max_BxNxTx1 = jnp.max(scores_BxNxTxS, axis=-1, keepdims=True)
  if sinks is not None:
    sink_1xNx1x1 = sinks.astype(jnp.float32)[None, :, None, None]
    max_BxNxTx1 = jnp.maximum(max_BxNxTx1, sink_1xNx1x1)
  max_BxNxTx1 = jax.lax.stop_gradient(jnp.where(jnp.isfinite(max_BxNxTx1), max_BxNxTx1, 0.0))
  exp_BxNxTxS = jnp.exp(scores_BxNxTxS - max_BxNxTx1)
  denom_BxNxTx1 = jnp.sum(exp_BxNxTxS, axis=-1, keepdims=True)
  if sinks is not None:
    denom_BxNxTx1 = denom_BxNxTx1 + jnp.exp(sink_1xNx1x1 - max_BxNxTx1)
  weights_BxNxTxS = exp_BxNxTxS / jnp.where(denom_BxNxTx1 > 0, denom_BxNxTx1, 1.0)

  out_BxTxNxH = jnp.einsum("bnts,bsnh->btnh", weights_BxNxTxS, v32, precision=hi)
  out_BxTxNxH = out_BxTxNxH.astype(q_BxTxNxH.dtype)
  if return_weights:
    return out_BxTxNxH, scores_BxNxTxS, weights_BxNxTxS
  return out_BxTxNxH


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
  check_new_rows(cache, q_BxTxNxH, k_BxTxKxH, v_BxTxKxH)
  heads, head_dim = q_BxTxNxH.shape[2], q_BxTxNxH.shape[3]
  t, capacity = q_BxTxNxH.shape[1], cache.k.shape[1]
  if (window is None or capacity < window) and is_concrete(context.length):
    if int(context.length) + t > capacity:
      raise ValueError(f"writing T={t} rows after length={int(context.length)} passes the cache "
                       f"end max_len={capacity}")
  if window is None:
    # Written first, then read: reading the cache before writing it made XLA copy the whole
    # cache on every step (twice the step's time at 4096 rows).
    cache = write_rows(cache, k_BxTxKxH, v_BxTxKxH, context.length)
    return attend_written(q_BxTxNxH, cache, context, sinks=sinks, scale=scale), cache
  scale = head_dim**-0.5 if scale is None else scale
  batch, kv_heads = q_BxTxNxH.shape[0], cache.k.shape[2]
  # A window's ring: the new rows may overwrite slots that earlier new queries still see, so the
  # cached rows are read before the new ones are written.
  # Query heads grouped by their kv head, so no K/V row is repeated or copied.
  q_BxTxKxGxH = q_BxTxNxH.astype(jnp.float32).reshape(
      batch, t, kv_heads, heads // kv_heads, head_dim)
  logits = lambda k_BxSxKxH: scale * jnp.einsum(
      "btkgh,bskh->bkgts", q_BxTxKxGxH, k_BxSxKxH.astype(jnp.float32), precision=_HI)
  logits_BxKxGxTxS = jnp.concatenate([logits(cache.k), logits(k_BxTxKxH)], axis=-1)
  visible_Bx1x1xTxS = visible_rows(context, capacity, t, window)[:, None, None]
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
          write_rows(cache, k_BxTxKxH, v_BxTxKxH, context.length))


def attend_written(q_BxTxNxH: jax.Array, cache: KVCache, context: DecodeContext, *,
                   sinks: jax.Array | None = None, scale: float | None = None) -> jax.Array:
  """Causal softmax attention of T new queries over a ``max_len`` cache that already holds them.

  The new rows are in the cache (:func:`~momentum_jax.attention.decoding.write_rows` at
  ``context.length``), so query t sees the rows s ≤ t of its segment among the C slots, and

      out_t = Σ_s e^{l_ts} v_s / (e^{sink_n} + Σ_s e^{l_ts}),   l_ts = scale · q_t·k_s,

  equal row for row to ``softmax_attention(q, k, v, causal=True, segment_ids=..., sinks=sinks,
  scale=scale)`` over the whole sequence (float32 compute). Not for a ring buffer (its slots
  hold only the newest C rows).

  Returns:
    ``[B, T, N, H]`` in q's dtype.

  Raises:
    ValueError: q does not fit the cache's batch, heads or head size, or (with a concrete
      ``context.length``) the new rows pass the cache's end.
  """
  batch, capacity, kv_heads, head_dim = cache.k.shape
  b, t, heads, h = q_BxTxNxH.shape
  if b != batch or heads % kv_heads or h != head_dim:
    raise ValueError(f"the new queries {tuple(q_BxTxNxH.shape)} do not fit the cache "
                     f"[B={batch}, C={capacity}, K={kv_heads}, H={head_dim}] (same B and H; N a "
                     f"multiple of K)")
  if is_concrete(context.length) and int(context.length) + t > capacity:
    raise ValueError(f"T={t} rows after length={int(context.length)} pass the cache end "
                     f"max_len={capacity}")
  scale = head_dim**-0.5 if scale is None else scale
  q_BxTxKxGxH = q_BxTxNxH.astype(jnp.float32).reshape(batch, t, kv_heads, heads // kv_heads, h)
  logits_BxKxGxTxS = scale * jnp.einsum("btkgh,bskh->bkgts", q_BxTxKxGxH,
                                        cache.k.astype(jnp.float32), precision=_HI)
  query_T = new_rows(context, t)
  key_S = jnp.arange(capacity, dtype=jnp.int32)
  visible_BxTxS = (key_S[None, None, :] <= query_T[None, :, None])
  if context.segment_ids is not None:
    # The ids may cover fewer rows than the cache holds; later slots are masked as s > t anyway.
    query_ids_BxT = jnp.take(context.segment_ids, query_T, axis=1)
    last_id_row = context.segment_ids.shape[1] - 1
    key_ids_BxS = jnp.take(context.segment_ids, jnp.minimum(key_S, last_id_row), axis=1)
    visible_BxTxS = visible_BxTxS & (query_ids_BxT[:, :, None] == key_ids_BxS[:, None, :])
  logits_BxKxGxTxS = jnp.where(visible_BxTxS[:, None, None], logits_BxKxGxTxS, -jnp.inf)
  if sinks is not None:
    sink_1xKxGx1x1 = jnp.asarray(sinks, jnp.float32).reshape(1, kv_heads, -1, 1, 1)
    sink_BxKxGxTx1 = jnp.broadcast_to(sink_1xKxGx1x1, logits_BxKxGxTxS.shape[:4] + (1,))
    logits_BxKxGxTxS = jnp.concatenate([sink_BxKxGxTx1, logits_BxKxGxTxS], axis=-1)
  weights_BxKxGxTxS = jax.nn.softmax(logits_BxKxGxTxS, axis=-1)[..., -capacity:]
  out_BxTxKxGxH = jnp.einsum("bkgts,bskh->btkgh", weights_BxKxGxTxS,
                             cache.v.astype(jnp.float32), precision=_HI)
  return out_BxTxKxGxH.reshape(q_BxTxNxH.shape).astype(q_BxTxNxH.dtype)


register_attention(
    "softmax",
    AttentionVariant(softmax_attention, softmax_attention_reference,
                     decoding=Decoding(init_kv_cache, softmax_decode)),
)

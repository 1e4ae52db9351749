"""Affine-scaled attention (arXiv 2602.23057): softmax attention rescaled per token and head, plus
a uniform term over the visible keys,

    out_t = Σ_s [α_t · softmax_s(l_ts) + β_t] v_s = α_t · SDPA(q, k, v)_t + β_t · Σ_{s visible} v_s,
    β_t = (α_ma − α_t) / S_t,

where S_t is the number of keys query t sees. α (per token and head, in [0, 1] when it comes from
the model's projection α = clip(0.1·W_a x + 0.5, 0, 1)) is an argument here, and so is α_ma (the
per-head running mean of α kept by the layer, see ``momentum_jax.nn.affine``). Each row of weights
sums to α_ma instead of 1. With α = α_ma = 1, β = 0 and the output is softmax attention exactly.

Visible keys follow the masks of softmax attention: causal s ≤ t (aligned at the first position
when S != T), sliding window t − w < s ≤ t, equal segment ids. Under a causal mask Σ_{s visible}
v_s and S_t are taken over the prefix of visible keys, so the uniform term stays causal **[our
choice; the paper writes the non-causal form with S the sequence length]**. The fast form is one
softmax attention call plus prefix sums of v (O(T·H) for the extra term); the reference builds
the T×S weight matrix. An additive ``bias`` and ``sinks`` act on the softmax term only; a key
masked by a −inf bias still counts as visible for the uniform term. No official code exists.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from momentum_jax.attention.registry import AttentionVariant, register_attention
from momentum_jax.attention.softmax import softmax_attention, softmax_attention_reference
from momentum_jax.core.checks import check_attention_inputs, check_floating
from momentum_jax.core.heads import compute_dtype, repeat_kv
from momentum_jax.core.masks import segment_starts, visibility_mask


def _check_alpha(q: jax.Array, alpha_BxTxN: jax.Array | float, alpha_ma: jax.Array | float
                 ) -> None:
  batch, seq_q, heads, _ = q.shape
  target = (batch, seq_q, heads)
  for name, value in (("alpha_BxTxN", alpha_BxTxN), ("alpha_ma", alpha_ma)):
    if isinstance(value, jax.Array | np.ndarray):
      check_floating(name, value)
  shape = np.shape(alpha_BxTxN)
  try:
    ok = len(shape) <= 3 and np.broadcast_shapes(shape, target) == target
  except ValueError:
    ok = False
  if not ok:
    raise ValueError(
        f"alpha_BxTxN must be broadcastable to [B, T, N] = {target}, got alpha_BxTxN.shape={shape}"
    )
  if np.shape(alpha_ma) not in ((), (heads,)):
    raise ValueError(
        f"alpha_ma must be a scalar or have shape [N] = {(heads,)}, "
        f"got alpha_ma.shape={np.shape(alpha_ma)}"
    )


def _visible_range(seq_q: int, seq_k: int, *, causal: bool, window: int | None,
                   segment_ids: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """``[B or 1, T]`` int32 bounds lo ≤ s < hi of the keys query t sees (a contiguous range)."""
  t_1xT = jnp.arange(seq_q, dtype=jnp.int32)[None]
  if causal:
    hi_1xT = jnp.minimum(t_1xT, seq_k - 1) + 1
    lo_1xT = jnp.zeros_like(t_1xT) if window is None else jnp.maximum(t_1xT - window + 1, 0)
  else:
    hi_1xT = jnp.full_like(t_1xT, seq_k)
    lo_1xT = jnp.zeros_like(t_1xT)
  if segment_ids is None:
    return jnp.minimum(lo_1xT, hi_1xT), hi_1xT
  # Segments (S == T): keys from the segment's first position, and (non-causal) up to its last.
  starts_BxT = segment_starts(seq_q, segment_ids)
  first_BxT = jax.lax.cummax(jnp.where(starts_BxT, t_1xT, 0), axis=1)
  lo_BxT = jnp.maximum(lo_1xT, first_BxT)
  if causal:
    return jnp.minimum(lo_BxT, hi_1xT), jnp.broadcast_to(hi_1xT, lo_BxT.shape)
  ends_BxT = jnp.concatenate([starts_BxT[:, 1:], jnp.ones_like(starts_BxT[:, :1])], axis=1)
  last_BxT = jax.lax.cummin(jnp.where(ends_BxT, t_1xT, seq_q), axis=1, reverse=True)
  return lo_BxT, last_BxT + 1


def affine_attention(
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
    alpha_BxTxN: jax.Array | float = 1.0,
    alpha_ma: jax.Array | float = 1.0,
) -> jax.Array:
  """Affine-scaled attention: α·SDPA(q, k, v) + β·Σ_{s visible} v_s, β = (α_ma − α)/S_t.

  The visible sums are differences of one prefix sum of v (in float32, float64 for float64
  inputs), so this form costs one softmax attention call plus O(T·H) per head.
  GQA: query head n reads kv head n // (N // K).

  Args:
    q_BxTxNxH: queries (after any RoPE).
    k_BxSxKxH: keys; K divides N.
    v_BxSxKxH: values.
    causal: mask keys s > t; the uniform term then sums the visible prefix.
    window: with ``causal``, query t sees the ``window`` keys t − window < s <= t.
    segment_ids: ``[B, T]`` ints for packed sequences (needs S == T); attend within equal ids.
    bias: additive logits of the softmax term, broadcastable to ``[B, N, T, S]``.
    sinks: ``[N]`` per-head sink logits of the softmax term.
    scale: logit scale, default ``1 / sqrt(H)``.
    alpha_BxTxN: α, broadcastable to ``[B, T, N]`` (differentiable).
    alpha_ma: α_ma, a scalar or ``[N]``, the per-head running mean of α (treat as constant).

  Returns:
    ``[B, T, N, H]`` in q's dtype.
  """
  check_attention_inputs(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks,
  )
  _check_alpha(q_BxTxNxH, alpha_BxTxN, alpha_ma)
  batch, seq_q, heads, head_dim = q_BxTxNxH.shape
  seq_k, kv_heads = k_BxSxKxH.shape[1:3]
  dtype = compute_dtype(q_BxTxNxH)
  soft_BxTxNxH = softmax_attention(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, causal=causal, window=window, segment_ids=segment_ids,
      bias=bias, sinks=sinks, scale=scale).astype(dtype)

  lo_BxT, hi_BxT = _visible_range(seq_q, seq_k, causal=causal, window=window,
                                  segment_ids=segment_ids)
  v_BxSxKxH = v_BxSxKxH.astype(dtype)
  # prefix_BxS1xKxH[:, j] = Σ_{s < j} v_s, so the sum over lo ≤ s < hi is prefix[hi] − prefix[lo].
  prefix_BxS1xKxH = jnp.pad(jnp.cumsum(v_BxSxKxH, axis=1), ((0, 0), (1, 0), (0, 0), (0, 0)))
  take = lambda idx_BxT: jnp.take_along_axis(
      prefix_BxS1xKxH, jnp.broadcast_to(idx_BxT, (batch, seq_q))[:, :, None, None], axis=1)
  sum_BxTxKxH = take(hi_BxT) - take(lo_BxT)
  count_BxT = jnp.broadcast_to(hi_BxT - lo_BxT, (batch, seq_q)).astype(dtype)

  alpha_BxTxN = jnp.broadcast_to(jnp.asarray(alpha_BxTxN, dtype), (batch, seq_q, heads))
  alpha_ma_N = jnp.broadcast_to(jnp.asarray(alpha_ma, dtype), (heads,))
  beta_BxTxN = (alpha_ma_N - alpha_BxTxN) / jnp.maximum(count_BxT, 1.0)[..., None]
  groups = heads // kv_heads
  alpha_BxTxKxGx1 = alpha_BxTxN.reshape(batch, seq_q, kv_heads, groups, 1)
  beta_BxTxKxGx1 = beta_BxTxN.reshape(batch, seq_q, kv_heads, groups, 1)
  soft_BxTxKxGxH = soft_BxTxNxH.reshape(batch, seq_q, kv_heads, groups, head_dim)
  out_BxTxKxGxH = alpha_BxTxKxGx1 * soft_BxTxKxGxH + beta_BxTxKxGx1 * sum_BxTxKxH[:, :, :, None]
  return out_BxTxKxGxH.reshape(q_BxTxNxH.shape).astype(q_BxTxNxH.dtype)


def affine_attention_reference(
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
    alpha_BxTxN: jax.Array | float = 1.0,
    alpha_ma: jax.Array | float = 1.0,
    return_weights: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array, jax.Array]:
  """Float32 (float64 for float64 inputs) reference of :func:`affine_attention` with the explicit
  T×S weights W_ts = α_t · softmax_s(l_ts) + β_t over the visible keys (0 elsewhere).

  With ``return_weights`` returns ``(out_BxTxNxH, scores_BxNxTxS, weights_BxNxTxS)``: scores are
  the softmax logits (−inf where masked) and weights are W, whose rows sum to α_ma (less the sink
  share of the softmax term when ``sinks`` are given).
  """
  check_attention_inputs(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks,
  )
  _check_alpha(q_BxTxNxH, alpha_BxTxN, alpha_ma)
  batch, seq_q, heads, _ = q_BxTxNxH.shape
  seq_k = k_BxSxKxH.shape[1]
  dtype = compute_dtype(q_BxTxNxH)
  hi = jax.lax.Precision.HIGHEST
  cast = lambda x: None if x is None else x.astype(dtype)
  _, scores_BxNxTxS, soft_BxNxTxS = softmax_attention_reference(
      cast(q_BxTxNxH), cast(k_BxSxKxH), cast(v_BxSxKxH), causal=causal, window=window,
      segment_ids=segment_ids, bias=bias, sinks=sinks, scale=scale, return_weights=True)
  visible = visibility_mask(seq_q, seq_k, causal=causal, window=window, segment_ids=segment_ids)
  if visible is None:
    visible = jnp.ones((1, 1, seq_q, seq_k), bool)
  visible_BxNxTxS = jnp.broadcast_to(visible, (batch, heads, seq_q, seq_k)).astype(dtype)
  count_BxNxTx1 = jnp.sum(visible_BxNxTxS, axis=-1, keepdims=True)
  alpha_BxTxN = jnp.broadcast_to(jnp.asarray(alpha_BxTxN, dtype), (batch, seq_q, heads))
  alpha_BxNxTx1 = jnp.transpose(alpha_BxTxN, (0, 2, 1))[..., None]
  alpha_ma_1xNx1x1 = jnp.broadcast_to(jnp.asarray(alpha_ma, dtype), (heads,))[None, :, None, None]
  beta_BxNxTx1 = (alpha_ma_1xNx1x1 - alpha_BxNxTx1) / jnp.maximum(count_BxNxTx1, 1.0)
  weights_BxNxTxS = alpha_BxNxTx1 * soft_BxNxTxS.astype(dtype) + beta_BxNxTx1 * visible_BxNxTxS
  v_BxSxNxH = repeat_kv(v_BxSxKxH.astype(dtype), heads)
  out_BxTxNxH = jnp.einsum("bnts,bsnh->btnh", weights_BxNxTxS, v_BxSxNxH, precision=hi)
  out_BxTxNxH = out_BxTxNxH.astype(q_BxTxNxH.dtype)
  if return_weights:
    return out_BxTxNxH, scores_BxNxTxS, weights_BxNxTxS
  return out_BxTxNxH


register_attention(
    "affine",
    AttentionVariant(affine_attention, affine_attention_reference,
                     params=("alpha_BxTxN", "alpha_ma"), token_params="affine"),
)
